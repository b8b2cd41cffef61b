//! The dashboard: the static page in `web/`, served at `/`. The files are
//! embedded at build time (see `build.rs`); `server.web_dir` serves them from
//! disk instead while working on them. Everything the page shows comes from
//! the public API, so the page needs no route of its own beyond its files.

use std::path::{Component, Path, PathBuf};

use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::AppState;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// What the page may load and talk to: only this server (the WebSocket too).
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; \
                   media-src 'self' blob:; style-src 'self'; script-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let dir = state.settings.server.web_dir.trim().to_string();
    let dir = (!dir.is_empty()).then(|| PathBuf::from(dir));
    warp::get()
        .and(warp::path::tail())
        .and_then(move |tail: warp::path::Tail| {
            let dir = dir.clone();
            async move {
                let rel = match tail.as_str() {
                    "" => "index.html",
                    other => other,
                };
                match asset(dir.as_deref(), rel).await {
                    Some(bytes) => Ok(reply(rel, bytes)),
                    None => Err(warp::reject::not_found()),
                }
            }
        })
        .boxed()
}

/// The bytes of `rel` (a path under `web/`), from disk or the embedded copy.
async fn asset(dir: Option<&Path>, rel: &str) -> Option<Vec<u8>> {
    let rel_path = Path::new(rel);
    // Only plain names below the folder: no `..`, no absolute paths.
    if !rel_path
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return None;
    }
    if rel
        .split('/')
        .any(|part| part.starts_with('.') || part == "tests" || part == "node_modules")
    {
        return None;
    }
    match dir {
        Some(dir) => tokio::fs::read(dir.join(rel_path)).await.ok(),
        None => WEB_ASSETS
            .iter()
            .find(|(name, _)| *name == rel)
            .map(|(_, b)| b.to_vec()),
    }
}

fn reply(rel: &str, bytes: Vec<u8>) -> Response {
    let mut res = warp::reply::with_status(bytes, StatusCode::OK).into_response();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(rel)),
    );
    // The page is small and changes with the binary: always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

fn content_type(rel: &str) -> &'static str {
    match rel.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "webmanifest" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_paths_outside_the_folder() {
        for bad in [
            "../Cargo.toml",
            "/etc/passwd",
            "a/../../x",
            ".git/config",
            "tests/x.mjs",
        ] {
            assert!(asset(None, bad).await.is_none(), "{bad} must not be served");
        }
    }

    #[test]
    fn the_page_is_embedded() {
        assert!(
            WEB_ASSETS
                .iter()
                .any(|(name, bytes)| *name == "index.html" && !bytes.is_empty()),
            "web/index.html must be built into the binary"
        );
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x.unknown"), "application/octet-stream");
    }
}
