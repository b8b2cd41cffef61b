//! Murmur: a multi-tenant speech-to-text service. See docs/ARCHITECTURE.md for
//! the map; this crate is the service (HTTP API, auth, store, billing).

pub mod admission;
pub mod api;
pub mod auth;
pub mod billing;
pub mod config;
pub mod engine;
pub mod ids;
pub mod jobs;
pub mod media;
pub mod outbound;
pub mod retention;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod webhooks;
