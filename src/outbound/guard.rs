//! The SSRF guard: which addresses an outbound request may reach.
//!
//! A tenant names the URL (a webhook, a callback, audio to fetch), so a
//! request must not reach the server's own machine, its private network or
//! a cloud metadata service. Names are resolved here, every address is
//! checked, and the connection is made to exactly the addresses checked
//! ([`GuardedResolver`] is reqwest's resolver): a name that answers a
//! public address to the check and a private one to the connect (DNS
//! rebinding) cannot get through. IP literals never reach a resolver, so
//! [`Guard::check_literal`] checks them before every request and redirect.
//!
//! Limits: the operator's `allowed_hosts` are compared with the URL's host
//! as written (a name or an IP literal), not with what a name resolves to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A target the guard refuses: the host and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{host} is {addr}, a {kind} address: this server sends no requests to loopback, private, \
     link-local or other non-public networks (an operator may allow a host with \
     outbound.allowed_hosts)"
)]
pub struct Refused {
    pub host: String,
    pub addr: IpAddr,
    pub kind: &'static str,
}

/// What the operator allows beyond public addresses.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Every address allowed (`outbound.allow_private`): for closed networks.
    allow_private: bool,
    /// Hosts (names or IP literals, lowercase) allowed whatever they are.
    allowed_hosts: Vec<String>,
}

impl Guard {
    pub fn new(allow_private: bool, allowed_hosts: &[String]) -> Guard {
        Guard {
            allow_private,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| normalise_host(h))
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.allow_private
            || self
                .allowed_hosts
                .iter()
                .any(|h| *h == normalise_host(host))
    }

    /// Checks one address reached through `host`.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), Refused> {
        if self.host_allowed(host) {
            return Ok(());
        }
        match forbidden_kind(addr) {
            Some(kind) => Err(Refused {
                host: host.to_string(),
                addr,
                kind,
            }),
            None => Ok(()),
        }
    }

    /// Checks a URL's host when it is an IP literal (names are checked
    /// when resolved).
    pub fn check_literal(&self, url: &reqwest::Url) -> Result<(), Refused> {
        let host = url.host_str().unwrap_or_default();
        let addr = match url.host() {
            Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
            Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
            _ => return Ok(()),
        };
        self.check_addr(host, addr)
    }

    /// Resolves `host` and checks every address it answers: one forbidden
    /// address refuses the host (a name that mixes public and private
    /// addresses is not one to trust).
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let host = normalise_host(host);
        if let Ok(addr) = host.parse::<IpAddr>() {
            self.check_addr(&host, addr)?;
            return Ok(vec![SocketAddr::new(addr, 0)]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
            .await
            .map_err(|e| ResolveError::Lookup {
                host: host.clone(),
                reason: e.to_string(),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ResolveError::Lookup {
                host,
                reason: "no addresses".into(),
            });
        }
        for a in &addrs {
            self.check_addr(&host, a.ip())?;
        }
        Ok(addrs)
    }
}

/// Why a name could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("cannot resolve {host}: {reason}")]
    Lookup { host: String, reason: String },
}

fn normalise_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// reqwest's resolver: resolves through [`Guard::resolve`], so the client
/// connects only to addresses the guard accepted.
pub struct GuardedResolver(pub Arc<Guard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = guard.resolve(&host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why `addr` is not a public unicast address, or `None` when it is.
pub fn forbidden_kind(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) => forbidden_v4(a),
        IpAddr::V6(a) => forbidden_v6(a),
    }
}

fn forbidden_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [o0, o1, o2, _] = a.octets();
    Some(match () {
        _ if o0 == 0 => "unspecified (0.0.0.0/8)",
        _ if a.is_loopback() => "loopback",
        _ if a.is_private() => "private (RFC 1918)",
        _ if a.is_link_local() => "link-local (169.254.0.0/16, cloud metadata)",
        _ if o0 == 100 && (o1 & 0xc0) == 64 => "carrier-grade NAT (100.64.0.0/10)",
        _ if a.is_multicast() => "multicast",
        _ if a.is_broadcast() => "broadcast",
        _ if o0 >= 240 => "reserved (240.0.0.0/4)",
        _ if o0 == 192 && o1 == 0 && o2 == 0 => "IETF protocol assignment (192.0.0.0/24)",
        _ if o0 == 198 && (o1 & 0xfe) == 18 => "benchmarking (198.18.0.0/15)",
        _ => return None,
    })
}

fn forbidden_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    // Addresses that carry an IPv4 address are judged by it: mapped
    // (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and
    // 6to4 (2002:AABB:CCDD::/48).
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = a.to_ipv4_mapped() {
        return forbidden_v4(v4).map(|_| "IPv4-mapped non-public");
    }
    if a.is_unspecified() {
        return Some("unspecified");
    }
    if a.is_loopback() {
        return Some("loopback");
    }
    if s[..6] == [0; 6] {
        return forbidden_v4(embedded(s[6], s[7])).map(|_| "IPv4-compatible non-public");
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return forbidden_v4(embedded(s[6], s[7])).map(|_| "NAT64 of a non-public");
    }
    if s[0] == 0x2002 {
        return forbidden_v4(embedded(s[1], s[2])).map(|_| "6to4 of a non-public");
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        x if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        x if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        x if x & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> Option<&'static str> {
        forbidden_kind(s.parse().unwrap())
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for a in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
        ] {
            assert!(kind(a).is_some(), "{a} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
        ] {
            assert_eq!(kind(a), None, "{a} is public");
        }
    }

    #[tokio::test]
    async fn names_are_checked_by_what_they_resolve_to_and_hosts_can_be_allowed() {
        let guard = Guard::new(false, &[]);
        assert!(matches!(
            guard.resolve("localhost").await,
            Err(ResolveError::Refused(_))
        ));
        let url: reqwest::Url = "http://[::ffff:7f00:1]:8080/x".parse().unwrap();
        assert!(guard.check_literal(&url).is_err());
        let allowed = Guard::new(false, &["127.0.0.1".into(), "LocalHost".into()]);
        let url: reqwest::Url = "http://127.0.0.1:9/x".parse().unwrap();
        assert!(allowed.check_literal(&url).is_ok());
        assert!(allowed.resolve("localhost").await.is_ok());
        // Allowing one host allows no other.
        assert!(allowed
            .check_addr("10.0.0.1", "10.0.0.1".parse().unwrap())
            .is_err());
        assert!(Guard::new(true, &[])
            .check_addr("10.0.0.1", "10.0.0.1".parse().unwrap())
            .is_ok());
    }
}
