//! Query values as that backend's clients write them (httpx: `true` /
//! `false`, `inf`, `None` for unset), parsed with problem answers that name
//! the parameter.

use crate::api::ApiError;

/// Absent there: empty, or `null` / `None` spelt out.
pub fn blank(value: &str) -> bool {
    value.is_empty() || value == "null" || value == "None"
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

pub fn boolean(name: &str, value: &str) -> Result<bool, ApiError> {
    parse_bool(value).ok_or_else(|| ApiError::invalid(format!("{name} must be true or false")))
}

pub fn number(name: &str, value: &str) -> Result<f64, ApiError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| !v.is_nan())
        .ok_or_else(|| ApiError::invalid(format!("{name} must be a number")))
}

pub fn whole(name: &str, value: &str) -> Result<u32, ApiError> {
    value
        .parse::<u32>()
        .map_err(|_| ApiError::invalid(format!("{name} must be a whole number of milliseconds")))
}
