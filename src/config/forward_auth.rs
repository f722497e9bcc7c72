//! `[forward_auth]`: tollgate as the authentication service of an ingress that already runs
//! (nginx `auth_request`, Traefik `ForwardAuth`, Envoy's external authorization), which asks
//! it about each request and copies the `Authorization` it answers with into the request it
//! proxies.
//!
//! Off unless configured. `trusted_proxies` lists the addresses allowed to describe a request
//! in `X-Original-*` / `X-Forwarded-*` headers: from anywhere else those headers are ignored,
//! since whoever can set them chooses which route's rules are applied (the bypass class of
//! oauth2-proxy's GHSA-7x63).

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::Deserialize;

use super::de::Addr;
use super::error::ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForwardAuthSection {
    pub listen: Addr,
    pub path: Option<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// `[forward_auth]`, validated.
#[derive(Debug, Clone)]
pub struct ForwardAuthConfig {
    /// Its own listener, and the only one that serves it: an answer carries an access token,
    /// so the port the browser's requests reach (through the ingress too) must never give one.
    pub listen: SocketAddr,
    /// The endpoint the ingress calls (default `/auth`).
    pub path: String,
    /// Who may describe the original request (CIDRs; a bare address is one host).
    pub trusted_proxies: Vec<IpNet>,
}

impl ForwardAuthConfig {
    /// Whether a connection accepted at `local` came in on [`Self::listen`] (an unspecified
    /// listen address matches its port on any address).
    pub fn listens_on(&self, local: SocketAddr) -> bool {
        local.port() == self.listen.port()
            && (self.listen.ip().is_unspecified() || local.ip() == self.listen.ip())
    }

    /// Whether a connection from `ip` may describe the original request.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            // An IPv4 client on a dual-stack socket.
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

pub(super) fn forward_auth(s: ForwardAuthSection) -> Result<ForwardAuthConfig, ConfigError> {
    let path = s.path.unwrap_or_else(|| "/auth".to_string());
    if !path.starts_with('/')
        || path.len() < 2
        || path.ends_with('/')
        || !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        || path.split('/').any(|seg| seg == "." || seg == "..")
    {
        return Err(ConfigError::invalid(
            "forward_auth.path",
            "must be a path like \"/auth\" (letters, digits, /, -, _ and .; no trailing /)",
        ));
    }
    if s.trusted_proxies.is_empty() {
        return Err(ConfigError::invalid(
            "forward_auth.trusted_proxies",
            "list the ingress's addresses (CIDRs): from any other address the original request's headers are ignored",
        ));
    }
    let trusted_proxies = s
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let text = text.trim();
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    ConfigError::invalid(
                        format!("forward_auth.trusted_proxies[{i}]"),
                        format!("{text:?} is not an address or CIDR (like \"10.0.0.0/8\")"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ForwardAuthConfig {
        listen: s.listen.0,
        path,
        trusted_proxies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(path: Option<&str>, nets: &[&str]) -> Result<ForwardAuthConfig, ConfigError> {
        forward_auth(ForwardAuthSection {
            listen: Addr("127.0.0.1:9093".parse().unwrap()),
            path: path.map(str::to_string),
            trusted_proxies: nets.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn cidrs_and_addresses_are_trusted_others_not() {
        let c = load(None, &["10.0.0.0/8", "192.168.1.7", "fd00::/8"]).unwrap();
        assert_eq!(c.path, "/auth");
        assert!(c.listens_on("127.0.0.1:9093".parse().unwrap()));
        assert!(!c.listens_on("127.0.0.1:8080".parse().unwrap()));
        assert!(!c.listens_on("10.0.0.1:9093".parse().unwrap()));
        for ip in ["10.1.2.3", "192.168.1.7", "fd00::1", "::ffff:10.9.9.9"] {
            assert!(c.trusts(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.168.1.8", "127.0.0.1", "fe80::1"] {
            assert!(!c.trusts(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn bad_paths_and_lists_are_refused_with_their_key() {
        for (path, nets, key) in [
            (Some("auth"), &["10.0.0.0/8"][..], "forward_auth.path"),
            (Some("/auth/"), &["10.0.0.0/8"][..], "forward_auth.path"),
            (Some("/a/../b"), &["10.0.0.0/8"][..], "forward_auth.path"),
            (Some("/auth"), &[][..], "forward_auth.trusted_proxies"),
            (
                None,
                &["10.0.0.0/33"][..],
                "forward_auth.trusted_proxies[0]",
            ),
            (None, &["ingress"][..], "forward_auth.trusted_proxies[0]"),
        ] {
            let e = load(path, nets).unwrap_err().to_string();
            assert!(e.contains(key), "{path:?} {nets:?}: {e}");
        }
    }
}
