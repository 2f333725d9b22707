//! Where a webhook may point (SSRF, OWASP API7): the address classifier, the policy that
//! config sets ([`UrlPolicy`]: http allowed or not, networks allowed although not public), and
//! the check of an endpoint URL at registration ([`check_url`]).
//!
//! An address is public when it is global unicast: not loopback, private (RFC 1918), shared
//! (CGNAT, RFC 6598), link-local, unique-local, multicast, unspecified, documentation or any
//! other special-purpose range. IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4)
//! are judged by that address. The same policy is applied again to the addresses a name
//! resolves to when a delivery connects (`crate::client`), so a name that pointed at a public
//! address at registration and at 127.0.0.1 since (DNS rebinding) is still refused.

use clap::Args;
use ipnet::IpNet;
use reqwest::Url;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Unspecified,
    Loopback,
    Private,
    SharedCgnat,
    LinkLocal,
    UniqueLocal,
    Multicast,
    Documentation,
    Reserved,
}

impl AddressClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "unspecified",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::SharedCgnat => "shared (CGNAT)",
            AddressClass::LinkLocal => "link-local",
            AddressClass::UniqueLocal => "unique-local",
            AddressClass::Multicast => "multicast",
            AddressClass::Documentation => "documentation",
            AddressClass::Reserved => "reserved",
        }
    }
}

fn v4_in(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    let ranges: [([u8; 4], u32, AddressClass); 16] = [
        ([0, 0, 0, 0], 8, Unspecified),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, SharedCgnat),
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, Reserved),
        ([192, 0, 2, 0], 24, Documentation),
        ([192, 31, 196, 0], 24, Reserved),
        ([192, 52, 193, 0], 24, Reserved),
        ([192, 88, 99, 0], 24, Reserved),
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Reserved),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([224, 0, 0, 0], 4, Multicast),
    ];
    if v4_in(ip, [240, 0, 0, 0], 4) {
        // Reserved for future use, and the broadcast address.
        return Some(Reserved);
    }
    ranges
        .iter()
        .find(|(net, prefix, _)| v4_in(ip, *net, *prefix))
        .map(|(_, _, class)| *class)
}

/// The IPv4 address an IPv6 address stands for, where it embeds one that routing will use.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated but still routed by some).
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(last32),
        [0, 0, 0, 0, 0, 0, _, _] if !(s[6] == 0 && s[7] <= 1) => Some(last32),
        // 64:ff9b::/96 (NAT64) and 64:ff9b:1::/48 (local-use NAT64).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last32),
        // 2002::/16 (6to4): the IPv4 address in bits 16..48.
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    use AddressClass::*;
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    let s = ip.segments();
    match s[0] {
        x if x & 0xff00 == 0xff00 => Some(Multicast),
        x if x & 0xfe00 == 0xfc00 => Some(UniqueLocal),
        x if x & 0xffc0 == 0xfe80 => Some(LinkLocal),
        // Site-local (deprecated, fec0::/10): as private as unique-local.
        x if x & 0xffc0 == 0xfec0 => Some(UniqueLocal),
        0x2001 if s[1] == 0x0db8 => Some(Documentation),
        // 2001::/23: IETF protocol assignments (Teredo, ORCHIDs, benchmarking, ...).
        0x2001 if s[1] < 0x0200 => Some(Reserved),
        0x3fff if s[1] < 0x1000 => Some(Documentation),
        // Outside 2000::/3 nothing is global unicast (64:ff9b:1::/48, 100::/64, ...).
        x if x & 0xe000 != 0x2000 => Some(Reserved),
        _ => None,
    }
}

/// `None` for a public address, else what it is.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Where endpoints may point: https only unless `allow_http`, public addresses only unless a
/// network of `allow_nets` holds the address. The command API checks registrations with it,
/// `surge webhooks` every connection.
#[derive(Debug, Clone, Default, Args)]
pub struct UrlPolicy {
    /// Accept `http://` endpoint URLs (default: `https://` only).
    #[arg(
        long = "webhook-allow-http",
        env = "SURGE_WEBHOOK_ALLOW_HTTP",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub allow_http: bool,
    /// Networks (CIDR, comma-separated, e.g. `127.0.0.0/8,10.1.0.0/16`) endpoints may be in
    /// although they are not public (loopback, private, link-local, ...). Empty: none.
    #[arg(long = "webhook-allow-nets", env = "SURGE_WEBHOOK_ALLOW_NETS", value_delimiter = ',')]
    pub allow_nets: Vec<IpNet>,
}

/// An address the policy does not let a delivery connect to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is {} and not in SURGE_WEBHOOK_ALLOW_NETS", class.as_str())]
pub struct AddressRefused {
    pub ip: IpAddr,
    pub class: AddressClass,
}

impl UrlPolicy {
    /// The policy of the tests and of a local setup: http allowed, loopback allowed.
    pub fn loopback_allowed() -> Self {
        UrlPolicy {
            allow_http: true,
            allow_nets: vec![
                "127.0.0.0/8".parse().expect("a CIDR"),
                "::1/128".parse().expect("a CIDR"),
            ],
        }
    }

    /// Whether a delivery may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> Result<(), AddressRefused> {
        let Some(class) = classify(ip) else { return Ok(()) };
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let allowed = self
            .allow_nets
            .iter()
            .any(|net| net.contains(&ip) || embedded.is_some_and(|v4| net.contains(&v4)));
        if allowed {
            Ok(())
        } else {
            Err(AddressRefused { ip, class })
        }
    }
}

/// Why an endpoint URL was refused at registration (a 422 `webhook-url-refused`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("not an absolute URL: {0}")]
    Invalid(String),
    #[error("the URL is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("scheme {0} is not allowed: use https")]
    Scheme(String),
    #[error("credentials in the URL are not allowed: authenticate the request with its signature")]
    Credentials,
    #[error("the URL has no host")]
    NoHost,
    #[error("{0} does not resolve")]
    Unresolved(String),
    #[error(transparent)]
    Address(#[from] AddressRefused),
}

pub const MAX_URL_LEN: usize = 2048;
/// How long registration waits for a name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The URL, parsed, if it is one the policy lets a storefront register: http(s) per policy,
/// no credentials, a host whose every address the policy permits (resolved now; checked again
/// on every delivery). The fragment is dropped (it is never sent).
pub async fn check_url(raw: &str, policy: &UrlPolicy) -> Result<Url, UrlRefused> {
    let url = check_shape(raw, policy)?;
    let port = url.port_or_known_default().unwrap_or(443);
    let host = url.host_str().ok_or(UrlRefused::NoHost)?;
    match literal_ip(host) {
        Some(ip) => policy.permits(ip)?,
        None => {
            let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
                .unwrap_or_default();
            if found.is_empty() {
                return Err(UrlRefused::Unresolved(host.to_string()));
            }
            for ip in found {
                policy.permits(ip)?;
            }
        }
    }
    Ok(url)
}

/// The address a URL's host names literally (`10.0.0.1`, `[::1]`), if it is one. The URL
/// parser has already normalised the odd IPv4 spellings (`0x7f.1`, `2130706433`).
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// The checks that need no resolver.
pub fn check_shape(raw: &str, policy: &UrlPolicy) -> Result<Url, UrlRefused> {
    if raw.len() > MAX_URL_LEN {
        return Err(UrlRefused::TooLong);
    }
    // The document's pattern, `^https?://[!-~]+$`: the parser would forgive more (spaces,
    // upper case schemes), and what it forgives is refused the same way everywhere.
    let visible = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_graphic());
    if !visible || !(raw.starts_with("https://") || raw.starts_with("http://")) {
        return Err(UrlRefused::Invalid(
            "an absolute http(s) URL in visible ASCII characters is expected".into(),
        ));
    }
    let mut url = Url::parse(raw).map_err(|e| UrlRefused::Invalid(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        other => return Err(UrlRefused::Scheme(other.to_string())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    if url.host().is_none() {
        return Err(UrlRefused::NoHost);
    }
    url.set_fragment(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<AddressClass> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_are_public() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn special_purpose_addresses_are_classified() {
        use AddressClass::*;
        for (ip, want) in [
            ("0.0.0.0", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("169.254.169.254", LinkLocal),
            ("224.0.0.1", Multicast),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("198.18.0.1", Reserved),
            ("255.255.255.255", Reserved),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("100::1", Reserved),
            // IPv4 inside IPv6 is judged by the IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("2002:c0a8:0101::1", Private),
        ] {
            assert_eq!(class(ip), Some(want), "{ip}");
        }
    }

    #[test]
    fn the_allow_list_lets_chosen_networks_through() {
        let none = UrlPolicy::default();
        let loopback = UrlPolicy::loopback_allowed();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            none.permits(lo),
            Err(AddressRefused {
                ip: lo,
                class: AddressClass::Loopback
            })
        );
        assert_eq!(loopback.permits(lo), Ok(()));
        assert_eq!(loopback.permits("::ffff:127.0.0.1".parse().unwrap()), Ok(()));
        assert!(loopback.permits("10.0.0.1".parse().unwrap()).is_err());
        assert_eq!(none.permits("8.8.8.8".parse().unwrap()), Ok(()));
    }

    #[test]
    fn shapes_are_checked_before_any_lookup() {
        let strict = UrlPolicy::default();
        assert_eq!(
            check_shape("http://example.com/x", &strict),
            Err(UrlRefused::Scheme("http".into()))
        );
        assert!(check_shape("http://example.com/x", &UrlPolicy::loopback_allowed()).is_ok());
        for invalid in [
            "ftp://example.com/x",
            "HTTPS://example.com/",
            "https://exa mple.com/",
            "not a url",
            "https://",
        ] {
            assert!(
                matches!(
                    check_shape(invalid, &UrlPolicy::loopback_allowed()),
                    Err(UrlRefused::Invalid(_))
                ),
                "{invalid}"
            );
        }
        assert_eq!(
            check_shape("https://u:p@example.com/", &strict),
            Err(UrlRefused::Credentials)
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(check_shape(&long, &strict), Err(UrlRefused::TooLong));
        assert_eq!(
            check_shape("https://example.com/hook#frag", &strict).unwrap().as_str(),
            "https://example.com/hook"
        );
    }

    #[tokio::test]
    async fn literal_and_resolved_private_addresses_are_refused() {
        let strict = UrlPolicy {
            allow_http: true,
            allow_nets: Vec::new(),
        };
        for url in [
            "https://10.0.0.1/hook",
            "https://192.168.1.1/hook",
            "https://[::1]/hook",
            "https://169.254.169.254/latest/meta-data",
            "http://localhost:8080/hook",
            // Odd spellings of 127.0.0.1 are normalised by the parser, then refused.
            "http://0x7f.1/hook",
            "http://2130706433/hook",
            "http://[::ffff:7f00:1]/hook",
        ] {
            assert!(
                matches!(check_url(url, &strict).await, Err(UrlRefused::Address(_))),
                "{url}"
            );
        }
        assert!(check_url("http://localhost:8080/hook", &UrlPolicy::loopback_allowed())
            .await
            .is_ok());
    }
}
