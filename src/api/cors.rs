//! Cross-origin requests from browser front-ends on other origins, off
//! unless the operator lists origins (`server.cors_allowed_origins`).
//!
//! Murmur's credentials are bearer tokens, never cookies, so a listed
//! origin only lets a page *read* answers its user's token already allows.
//! A preflight (`OPTIONS` with `Access-Control-Request-Method`) from a
//! listed origin answers 204 with the methods and headers the API uses; from
//! any other origin 403 `cors_forbidden`. Other requests are served as
//! always; answers to a listed origin carry `Access-Control-Allow-Origin`
//! (the origin itself, with `Vary: Origin`) and expose the headers clients
//! read (`x-request-id`, `content-disposition`, `retry-after`).

use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::ApiError;

/// The origins allowed to read answers; empty: cross-origin reading off.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

const METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
const HEADERS: &str = "authorization, content-type";
const EXPOSED: &str = "x-request-id, content-disposition, retry-after";
const MAX_AGE_S: &str = "600";

impl Cors {
    /// From the setting: origins as `scheme://host[:port]`, or `*` for any.
    pub fn new(allowed: &[String]) -> Cors {
        let origins: Vec<String> = allowed
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The answer to a preflight from `origin`, when CORS is on.
    pub fn preflight(&self, origin: &str) -> Option<Response> {
        if !self.enabled() {
            return None;
        }
        if !self.allows(origin) {
            return Some(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cors_forbidden",
                    format!("the origin {origin} may not call this API from a browser"),
                )
                .into_response(),
            );
        }
        let mut res = StatusCode::NO_CONTENT.into_response();
        let headers = res.headers_mut();
        self.allow(headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_S),
        );
        Some(res)
    }

    /// Adds the headers that let `origin` read an answer, if it is listed.
    pub fn decorate(&self, headers: &mut HeaderMap, origin: Option<&str>) {
        match origin {
            Some(origin) if self.enabled() && self.allows(origin) => {
                self.allow(headers, origin);
                headers.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static(EXPOSED),
                );
            }
            _ => {}
        }
    }

    fn allow(&self, headers: &mut HeaderMap, origin: &str) {
        if let Ok(v) = HeaderValue::from_str(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_allowed() {
        let cors = Cors::new(&["https://app.example/".into(), " ".into()]);
        assert!(cors.enabled());
        assert!(cors.allows("https://app.example"));
        assert!(cors.allows("HTTPS://APP.EXAMPLE"));
        assert!(!cors.allows("https://app.example.evil"));
        assert!(!cors.allows("http://app.example"));
        assert!(!Cors::new(&[]).enabled());
        assert!(Cors::new(&["*".into()]).allows("https://anyone.example"));
        let refused = cors.preflight("https://evil.example").unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let ok = cors.preflight("https://app.example").unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        let mut headers = HeaderMap::new();
        cors.decorate(&mut headers, Some("https://evil.example"));
        assert!(headers.is_empty());
    }
}
