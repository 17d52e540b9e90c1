//! Where webhooks may go. Destinations on loopback, private (RFC 1918, ULA), link-local
//! (cloud metadata at 169.254.169.254 included), unspecified, CGNAT, multicast or broadcast
//! addresses are refused, so a job cannot make the control plane POST into its own network,
//! unless `SPLAI_WEBHOOK_ALLOW_PRIVATE=true` or the host or address is on
//! `SPLAI_WEBHOOK_ALLOWED_DESTINATIONS` (host names and CIDRs).
//!
//! Checked twice: at submit for what the URL itself says (a literal address, `localhost`),
//! and at delivery on every address DNS gives, by the HTTP client's resolver, so the client
//! connects only to addresses that passed (a name re-pointed after submit is still refused).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The destination rules, read once from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    /// Every address is allowed (`SPLAI_WEBHOOK_ALLOW_PRIVATE=true`).
    pub allow_private: bool,
    /// Host names (lower case, no trailing dot) allowed whatever they resolve to.
    pub hosts: Vec<String>,
    /// Networks allowed although private.
    pub nets: Vec<IpNet>,
}

impl Destinations {
    /// Parses `SPLAI_WEBHOOK_ALLOWED_DESTINATIONS`: comma-separated host names, addresses and
    /// CIDRs.
    ///
    /// # Errors
    /// An entry that is empty or has characters no host name has.
    pub fn parse_allowlist(allow_private: bool, list: Option<&str>) -> Result<Self, String> {
        let mut out = Destinations {
            allow_private,
            ..Destinations::default()
        };
        for raw in list.unwrap_or_default().split(',') {
            let item = raw.trim();
            if item.is_empty() {
                continue;
            }
            if let Ok(net) = item.parse::<IpNet>() {
                out.nets.push(net);
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                out.nets.push(IpNet::from(ip));
            } else if item
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                out.hosts.push(normal_host(item));
            } else {
                return Err(format!("`{item}` is not a host name, address or CIDR"));
            }
        }
        Ok(out)
    }

    /// Whether `ip`, reached through `host`, may receive webhooks.
    pub fn permits(&self, host: &str, ip: IpAddr) -> bool {
        self.allow_private
            || refusal(ip).is_none()
            || self.hosts.iter().any(|h| *h == normal_host(host))
            || self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The submit-time check of what the URL says by itself: http(s), and not a refused
    /// literal address or `localhost`. Names are resolved only at delivery.
    ///
    /// # Errors
    /// A message for the client naming the problem.
    pub fn check_url(&self, raw: &str) -> Result<Url, String> {
        let url = Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{raw}` must be an http(s) URL"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("`{raw}` has no host"))?;
        let why = match literal_ip(&url) {
            Some(ip) if !self.permits(host, ip) => refusal(ip),
            Some(_) => None,
            None => {
                let h = normal_host(host);
                (!self.permits(&h, Ipv4Addr::LOCALHOST.into())
                    && (h == "localhost" || h.ends_with(".localhost")))
                .then_some("loopback")
            }
        };
        match why {
            Some(kind) => Err(format!(
                "`{raw}` points at a {kind} address; webhooks may not target the control \
                 plane's network (set SPLAI_WEBHOOK_ALLOW_PRIVATE=true or list the host in \
                 SPLAI_WEBHOOK_ALLOWED_DESTINATIONS to allow it)"
            )),
            None => Ok(url),
        }
    }
}

/// The URL's host as an address, when it is one.
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    // The URL parser has already normalised addresses (`0x7f000001` is `127.0.0.1`) and
    // bracketed IPv6 ones.
    url.host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Why `ip` is refused by default (what kind of address it is), or `None` for a public one.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address in IPv6 clothing (mapped `::ffff:a.b.c.d`, or NAT64
            // `64:ff9b::a.b.c.d`) reaches the IPv4 address: judge that.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refusal_v4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return refusal_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            refusal_v6(v6)
        }
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("shared (CGNAT)")
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (ULA)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast or reserved")
    } else {
        None
    }
}

/// The HTTP client's resolver: resolves with the system resolver and keeps only addresses
/// [`Destinations::permits`], failing when none is left, so the connection goes only to a
/// vetted address.
#[derive(Debug, Clone)]
pub struct VettingResolver(pub std::sync::Arc<Destinations>);

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rules = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found
                .into_iter()
                .partition(|a| rules.permits(&host, a.ip()));
            if ok.is_empty() {
                let list: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
                let msg = format!(
                    "destination refused: {host} resolves only to non-public addresses ({})",
                    list.join(", ")
                );
                return Err(msg.into());
            }
            let addrs: Addrs = Box::new(ok.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_ranges_are_refused_and_public_ones_pass() {
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.254", "shared (CGNAT)"),
            ("255.255.255.255", "multicast or reserved"),
            ("224.0.0.1", "multicast or reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "private (ULA)"),
            ("fc12::1", "private (ULA)"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            assert_eq!(refusal(ip(addr)), Some(kind), "{addr}");
        }
        for addr in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
            "2606:4700::1111",
        ] {
            assert_eq!(refusal(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn submit_check_refuses_literal_private_addresses_and_localhost() {
        let d = Destinations::default();
        for url in [
            "http://127.0.0.1:9000/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.5/",
            "https://localhost/hook",
            "http://LOCALHOST./hook",
            "http://api.localhost/hook",
            "http://0x7f000001/hook",
            "http://2130706433/hook",
        ] {
            let err = d.check_url(url).unwrap_err();
            assert!(err.contains("SPLAI_WEBHOOK_ALLOW_PRIVATE"), "{url}: {err}");
        }
        assert!(d.check_url("ftp://example.com/").is_err());
        assert!(d.check_url("https://hooks.example.com/splai").is_ok());
        assert!(d.check_url("http://8.8.8.8/").is_ok());
    }

    #[test]
    fn allow_flag_and_allowlist_open_what_they_name() {
        let all = Destinations::parse_allowlist(true, None).unwrap();
        assert!(all.check_url("http://127.0.0.1:9000/hook").is_ok());
        let some =
            Destinations::parse_allowlist(false, Some("10.0.0.0/8, hooks.internal ,192.168.1.7"))
                .unwrap();
        assert!(some.check_url("http://10.9.8.7/").is_ok());
        assert!(some.check_url("http://192.168.1.7/").is_ok());
        assert!(some.check_url("http://192.168.1.8/").is_err());
        assert!(some.check_url("http://127.0.0.1/").is_err());
        assert!(some.permits("Hooks.Internal.", ip("172.16.0.9")));
        assert!(!some.permits("other.internal", ip("172.16.0.9")));
        assert!(Destinations::parse_allowlist(false, Some("bad host!")).is_err());
    }

    /// At delivery the resolved addresses are vetted: a name (not caught at submit) that
    /// resolves to loopback is refused, and allowed with the flag on.
    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_to_loopback() {
        let name: Name = "localhost".parse().unwrap();
        let refused = VettingResolver(Default::default()).resolve(name).await;
        let err = refused.err().expect("refused").to_string();
        assert!(err.contains("destination refused"), "{err}");
        let open = Destinations::parse_allowlist(true, None).unwrap();
        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<SocketAddr> = VettingResolver(open.into())
            .resolve(name)
            .await
            .expect("allowed")
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
