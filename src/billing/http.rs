//! The one small HTTP/1 client Murmur needs (RevenueCat's REST sync, the
//! operator CLI talking to a running server), on the hyper client warp
//! already brings. Plain `http://` only: no TLS is built in, so an HTTPS
//! endpoint is reached through a local TLS-terminating proxy.

use std::time::Duration;

/// Sends one request and answers the status and the body, or why it could
/// not be sent.
pub async fn request(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    json_body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(u16, bytes::Bytes), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{url}: only http:// is supported (put a TLS proxy in front for https)"
        ));
    }
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("accept", "application/json");
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let body = match json_body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            hyper::Body::from(b)
        }
        None => hyper::Body::empty(),
    };
    let req = req.body(body).map_err(|e| format!("{url}: {e}"))?;
    let client = hyper::Client::new();
    let exchange = async {
        let res = client
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = res.status().as_u16();
        let body = hyper::body::to_bytes(res.into_body())
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {} ms", timeout.as_millis()))?
}
