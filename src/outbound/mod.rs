//! The one outbound HTTP client: webhook deliveries, audio fetched from a
//! URL, RevenueCat's REST sync. reqwest on rustls (no OpenSSL), behind the
//! SSRF guard of [`guard`]; no proxy from the environment (a proxy would
//! connect on our behalf to whatever it resolves, past the guard).
//!
//! Every request goes through [`Outbound::request`], which checks the URL
//! (scheme, IP literal) first; names are checked as they are resolved, and
//! each redirect hop is checked again. Timeouts bound connecting and the
//! whole exchange; [`read_capped`] bounds what an answer may send.
//!
//! Cloning is shallow (reqwest clients share their pool).

pub mod guard;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

pub use guard::{Guard, Refused, ResolveError};

/// `[outbound]` in the config.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboundSettings {
    /// Allow every address, private ones included (closed networks only).
    #[serde(default)]
    pub allow_private: bool,
    /// Hosts (names or IP literals as written in URLs) allowed even when
    /// they are not public. A list, or one comma-separated string (so an
    /// environment variable can set it).
    #[serde(default, deserialize_with = "crate::config::list_or_commas")]
    pub allowed_hosts: Vec<String>,
    /// PEM files of certificate authorities trusted beside the built-in
    /// web roots (a company CA, a test CA).
    #[serde(default, deserialize_with = "crate::config::list_or_commas")]
    pub extra_root_certs: Vec<String>,
    pub connect_timeout_ms: u64,
    /// Longest a request may take, answer included.
    pub timeout_ms: u64,
    /// Longest fetching audio from a URL may take (`POST /v1/files` with
    /// a `url`): a long recording over a slow link takes a while.
    pub fetch_timeout_ms: u64,
    /// Redirects followed (each checked like the first URL) where a caller
    /// follows any; webhooks never do.
    pub max_redirects: usize,
    /// Largest answer read from a webhook receiver or an API.
    pub max_response_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{0}")]
    BadUrl(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("{0}")]
    Lookup(String),
    #[error("{url}: {reason}")]
    Failed { url: String, reason: String },
    #[error("{url}: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("cannot set up the outbound client: {0}")]
    Setup(String),
}

impl From<ResolveError> for OutboundError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Refused(r) => OutboundError::Refused(r),
            other => OutboundError::Lookup(other.to_string()),
        }
    }
}

/// Whether a request may follow redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    Follow,
    /// A 3xx is the answer (webhooks: a receiver that moved must be
    /// re-registered, not followed).
    Refuse,
}

/// The guarded client. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    guard: Arc<Guard>,
    follow: reqwest::Client,
    exact: reqwest::Client,
    settings: Arc<OutboundSettings>,
}

impl Outbound {
    pub fn new(settings: &OutboundSettings) -> Result<Outbound, OutboundError> {
        let guard = Arc::new(Guard::new(settings.allow_private, &settings.allowed_hosts));
        let mut roots = Vec::new();
        for path in &settings.extra_root_certs {
            let pem = std::fs::read(path).map_err(|e| {
                OutboundError::Setup(format!("outbound.extra_root_certs {path}: {e}"))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                OutboundError::Setup(format!("outbound.extra_root_certs {path}: {e}"))
            })?;
            roots.extend(certs);
        }
        let build = |policy: reqwest::redirect::Policy| {
            let mut b = reqwest::Client::builder()
                .use_rustls_tls()
                .no_proxy()
                .dns_resolver(Arc::new(guard::GuardedResolver(guard.clone())))
                .connect_timeout(Duration::from_millis(settings.connect_timeout_ms.max(1)))
                .timeout(Duration::from_millis(settings.timeout_ms.max(1)))
                .user_agent(concat!("Murmur/", env!("CARGO_PKG_VERSION")))
                .redirect(policy);
            for cert in &roots {
                b = b.add_root_certificate(cert.clone());
            }
            b.build().map_err(|e| OutboundError::Setup(e.to_string()))
        };
        let max = settings.max_redirects;
        let hop_guard = guard.clone();
        let follow = build(reqwest::redirect::Policy::custom(move |attempt| {
            // `previous` holds every URL asked so far, the first included.
            if attempt.previous().len() > max {
                return attempt.error(format!("more than {max} redirects"));
            }
            if let Err(e) = check_scheme(attempt.url()) {
                return attempt.error(e);
            }
            // Names are checked by the resolver when the hop connects.
            match hop_guard.check_literal(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        }))?;
        let exact = build(reqwest::redirect::Policy::none())?;
        Ok(Outbound {
            guard,
            follow,
            exact,
            settings: Arc::new(settings.clone()),
        })
    }

    pub fn settings(&self) -> &OutboundSettings {
        &self.settings
    }

    /// Parses `url` and checks it as a target: http or https, a host, and
    /// every address it resolves to allowed. For refusing a URL when it is
    /// given (a webhook, audio to fetch) rather than when it is used; every
    /// request is checked again as it connects.
    pub async fn check_url(&self, url: &str) -> Result<reqwest::Url, OutboundError> {
        let parsed = parse_url(url)?;
        let host = parsed.host_str().unwrap_or_default().to_string();
        self.guard.resolve(&host).await?;
        Ok(parsed)
    }

    /// A request to `url`, its IP literal checked (names are checked when
    /// resolved). Send it with [`Outbound::send`].
    pub fn request(
        &self,
        method: reqwest::Method,
        url: &reqwest::Url,
        redirects: Redirects,
    ) -> Result<reqwest::RequestBuilder, OutboundError> {
        check_scheme(url).map_err(OutboundError::BadUrl)?;
        self.guard.check_literal(url)?;
        let client = match redirects {
            Redirects::Follow => &self.follow,
            Redirects::Refuse => &self.exact,
        };
        Ok(client.request(method, url.clone()))
    }

    /// Sends a request, telling a guard refusal apart from other failures.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, OutboundError> {
        let (client, request) = request.build_split();
        let request = request.map_err(|e| OutboundError::BadUrl(e.to_string()))?;
        let url = request.url().to_string();
        client.execute(request).await.map_err(|e| classify(&url, e))
    }

    /// Sends a request and reads at most `outbound.max_response_bytes` of
    /// its answer: the status and the body.
    pub async fn call(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Bytes), OutboundError> {
        let response = self.send(request).await?;
        let status = response.status().as_u16();
        let body = read_capped(response, self.settings.max_response_bytes).await?;
        Ok((status, body))
    }
}

/// Reads an answer's body, failing once it passes `limit` bytes (whatever
/// its Content-Length claims).
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Bytes, OutboundError> {
    let url = response.url().to_string();
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(OutboundError::TooLarge { url, limit });
    }
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(&url, e))? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(OutboundError::TooLarge { url, limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

fn parse_url(url: &str) -> Result<reqwest::Url, OutboundError> {
    let parsed: reqwest::Url = url
        .trim()
        .parse()
        .map_err(|e| OutboundError::BadUrl(format!("{url:?} is not a URL: {e}")))?;
    check_scheme(&parsed).map_err(OutboundError::BadUrl)?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(OutboundError::BadUrl(
            "URLs with a user name or password are not accepted".into(),
        ));
    }
    Ok(parsed)
}

fn check_scheme(url: &reqwest::Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{url}: only http:// and https:// URLs are accepted"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url}: the URL has no host"));
    }
    Ok(())
}

/// A reqwest error as ours: the guard's refusal when it is one (it may
/// come wrapped from the resolver or the redirect policy).
fn classify(url: &str, e: reqwest::Error) -> OutboundError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return OutboundError::Refused(r.clone());
        }
        if let Some(ResolveError::Refused(r)) = err.downcast_ref::<ResolveError>() {
            return OutboundError::Refused(r.clone());
        }
        source = err.source();
    }
    let reason = if e.is_timeout() {
        "no answer in time".to_string()
    } else {
        // reqwest's own message is terse ("error sending request"): add
        // the innermost cause, which says what went wrong.
        let mut inner = e.to_string();
        let mut s = std::error::Error::source(&e);
        while let Some(err) = s {
            inner = err.to_string();
            s = err.source();
        }
        if inner == e.to_string() {
            inner
        } else {
            format!("{e}: {inner}")
        }
    };
    OutboundError::Failed {
        url: url.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutboundSettings {
        OutboundSettings {
            allow_private: false,
            allowed_hosts: vec![],
            extra_root_certs: vec![],
            connect_timeout_ms: 1000,
            timeout_ms: 2000,
            fetch_timeout_ms: 2000,
            max_redirects: 3,
            max_response_bytes: 1024,
        }
    }

    /// A refused target is refused before any connection, however it is
    /// spelled, and the error says so (not "connection failed").
    #[tokio::test]
    async fn private_targets_are_refused_as_such() {
        let out = Outbound::new(&settings()).unwrap();
        for url in [
            "http://127.0.0.1:9/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://localhost:9/",
            // Other spellings of 127.0.0.1 that URL parsers accept.
            "http://2130706433/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://[0:0:0:0:0:ffff:7f00:1]/",
        ] {
            assert!(
                matches!(out.check_url(url).await, Err(OutboundError::Refused(_))),
                "{url}"
            );
        }
        // Sending without a check first is refused too: by the literal
        // check, and for names by the resolver.
        for url in ["http://127.0.0.1:9/", "http://localhost:9/"] {
            let u: reqwest::Url = url.parse().unwrap();
            let sent = match out.request(reqwest::Method::GET, &u, Redirects::Follow) {
                Ok(rb) => out.send(rb).await.map(|_| ()),
                Err(e) => Err(e),
            };
            assert!(
                matches!(sent, Err(OutboundError::Refused(_))),
                "{url}: {sent:?}"
            );
        }
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://u:p@example.com/",
        ] {
            assert!(
                matches!(out.check_url(bad).await, Err(OutboundError::BadUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn host_lists_come_as_lists_or_comma_separated() {
        let s: OutboundSettings = serde_json::from_value(serde_json::json!({
            "allowed_hosts": "127.0.0.1, localhost",
            "extra_root_certs": ["/a.pem"],
            "connect_timeout_ms": 1, "timeout_ms": 1, "fetch_timeout_ms": 1, "max_redirects": 0,
            "max_response_bytes": 1
        }))
        .unwrap();
        assert_eq!(s.allowed_hosts, ["127.0.0.1", "localhost"]);
        assert_eq!(s.extra_root_certs, ["/a.pem"]);
    }
}
