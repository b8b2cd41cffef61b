//! The client's address for rate limiting. Behind a reverse proxy every
//! request comes from the proxy, so one client's floods would lock out all
//! the others: when the connection comes from an address the operator
//! trusts (`server.trusted_proxies`), the client is the right-most address
//! of `X-Forwarded-For` that is not itself a trusted proxy. Addresses a
//! client writes into the header itself are left of what its proxy appends,
//! so they are never taken. Only rate limiting uses this; the operator
//! endpoint's loopback check uses the connection's own address.

use std::net::{IpAddr, SocketAddr};

use warp::Filter;

use super::remote_addr;

/// Networks whose connections may name the client (`X-Forwarded-For`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// From the setting: addresses (`10.0.0.5`, `::1`) or networks
    /// (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (addr, bits) = match entry.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (entry, None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("server.trusted_proxies: {entry:?} is not an address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits =
                match bits {
                    Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| {
                        format!("server.trusted_proxies: bad prefix in {entry:?}")
                    })?,
                    None => max,
                };
            nets.push((ip, bits));
        }
        Ok(TrustedProxies(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0
            .iter()
            .any(|(net, bits)| in_network(ip, canonical(*net), *bits))
    }

    /// The client behind `peer`, given the `X-Forwarded-For` values.
    pub fn client(&self, peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let Some(header) = forwarded else {
            return peer;
        };
        let mut client = peer;
        // From the right: each hop appended the address it saw.
        for hop in header.rsplit(',').map(str::trim) {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                // Garbage from the client's side of the chain: stop at the
                // last address a trusted proxy vouched for.
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The client's address for rate limiting (see the module documentation).
pub fn client_ip(
    proxies: TrustedProxies,
) -> impl Filter<Extract = (Option<IpAddr>,), Error = warp::Rejection> + Clone {
    remote_addr()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .map(move |peer: Option<SocketAddr>, forwarded: Option<String>| {
            peer.map(|p| proxies.client(p.ip(), forwarded.as_deref()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_proxies_name_the_client() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("203.0.113.9"), Some("1.2.3.4")),
            ip("203.0.113.9")
        );
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        // Through one proxy.
        assert_eq!(
            proxies.client(ip("10.1.2.3"), Some("198.51.100.7")),
            ip("198.51.100.7")
        );
        // A client forging the header: its fake entries are left of what
        // the proxy appended, so the proxy's entry wins.
        assert_eq!(
            proxies.client(ip("10.1.2.3"), Some("6.6.6.6, 198.51.100.7")),
            ip("198.51.100.7")
        );
        // Two trusted hops, then the client.
        assert_eq!(
            proxies.client(ip("10.0.0.1"), Some("198.51.100.7, 10.0.0.2")),
            ip("198.51.100.7")
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(proxies.client(ip("10.0.0.1"), None), ip("10.0.0.1"));
        assert_eq!(
            proxies.client(ip("10.0.0.1"), Some("nonsense")),
            ip("10.0.0.1")
        );
        // An untrusted peer's header is ignored.
        assert_eq!(
            proxies.client(ip("192.0.2.1"), Some("198.51.100.7")),
            ip("192.0.2.1")
        );
        // IPv6 and IPv4-mapped forms.
        assert_eq!(
            proxies.client(ip("::1"), Some("2001:db8::5")),
            ip("2001:db8::5")
        );
        assert_eq!(
            proxies.client(ip("::ffff:10.0.0.1"), Some("198.51.100.7")),
            ip("198.51.100.7")
        );
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.example".into()]).is_err());
    }
}
