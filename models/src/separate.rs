//! Background-music separation (WIP).
pub mod tfbundle;
