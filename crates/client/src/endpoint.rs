//! What an endpoint may look like, checked before any connection is tried: a malformed one
//! (a flag name taken as a value, a missing port) would otherwise be retried as a host name
//! until a timeout, with an error that names DNS rather than the typo.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::ConnectError;

/// A parsed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Whether the scheme was `https://`.
    pub tls: bool,
    /// The host: an IP address (IPv6 without brackets) or a DNS name.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// A network address `host:port`: an IPv4 address, a bracketed IPv6 address or an RFC 1123
/// DNS name, and a port from 1 to 65535. Nothing else gets through: it is the form every
/// address ferry writes into a configuration file or dials must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host: an IP address (IPv6 without brackets) or a DNS name.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// Why a text is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddrError(pub String);

impl HostPort {
    /// Parses `host:port` or `[v6]:port`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, AddrError> {
        let bad = |reason: &str| AddrError(reason.to_string());
        let (host, port) = if let Some(v6) = text.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs a closing ]"))?;
            addr.parse::<Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address between [ and ]"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("no :port after the address"))?;
            (addr.to_string(), port)
        } else {
            let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no :port"))?;
            if !is_dns_name(host) && host.parse::<Ipv4Addr>().is_err() {
                return Err(bad("the host is neither an IP address nor a DNS name"));
            }
            (host.to_string(), port)
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        Ok(Self { host, port })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `[http://|https://]host:port`, where host is an IPv4 address, a bracketed IPv6
/// address or a DNS name; the error names what is wrong.
pub fn parse_endpoint(endpoint: &str) -> Result<Endpoint, ConnectError> {
    let bad = |reason: &str| ConnectError::BadEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let (tls, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (false, rest)
    } else if endpoint.contains("://") {
        return Err(bad("the scheme must be http:// or https://"));
    } else {
        (false, endpoint)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let HostPort { host, port } = HostPort::parse(rest).map_err(|e| bad(&e.0))?;
    Ok(Endpoint { tls, host, port })
}

/// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
pub fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_etcdctl_accepts() {
        let e = parse_endpoint("127.0.0.1:2379").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "127.0.0.1", 2379));
        let e = parse_endpoint("https://etcd-0.example.com:2379").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port),
            (true, "etcd-0.example.com", 2379)
        );
        let e = parse_endpoint("http://[::1]:2379/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 2379));
        assert!(parse_endpoint("localhost:1").is_ok());
        assert_eq!(HostPort::parse("[::1]:80").unwrap().to_string(), "[::1]:80");
    }

    #[test]
    fn refuses_malformed_endpoints_naming_the_problem() {
        for (endpoint, reason) in [
            ("--endpoints", "no :port"),
            ("127.0.0.1", "no :port"),
            ("127.0.0.1:0", "port"),
            ("127.0.0.1:70000", "port"),
            ("127.0.0.1:http", "port"),
            ("unix:///tmp/sock", "scheme"),
            ("-bad-:2379", "neither an IP address nor a DNS name"),
            ("a b:2379", "neither"),
            ("[::1:2379", "closing ]"),
            ("[::1]2379", ":port"),
            ("127.0.0.1:+80", "port"),
            (":2379", "neither"),
        ] {
            let err = parse_endpoint(endpoint).unwrap_err().to_string();
            assert!(err.contains(reason), "{endpoint}: {err}");
            assert!(err.contains(endpoint), "{endpoint}: {err}");
        }
    }
}
