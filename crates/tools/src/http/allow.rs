//! The host allowlist, checked against the URL's host before any DNS lookup: exact names,
//! IP literals, and `*.example.com` wildcards that match names strictly below the suffix.
//!
//! Entries and hosts are compared in the `url` crate's canonical form (IDNA to ASCII,
//! lower case, IPv4 numbers normalised), with a trailing dot dropped, so `Example.COM.`,
//! `example.com` and a URL spelling of either are the same name.

use super::HttpError;
use std::net::IpAddr;
use url::Host;

/// One allowlist entry, canonicalised.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    /// A name or IP literal that must match exactly.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: any name ending with it, not the bare suffix.
    Below(String),
}

/// The parsed `allow_hosts` with its `default_deny` switch.
#[derive(Debug, Clone)]
pub(crate) struct HostList {
    rules: Vec<HostRule>,
    default_deny: bool,
}

impl HostList {
    /// Parses the operator's entries; a malformed one is an error naming it.
    pub(crate) fn new(entries: &[String], default_deny: bool) -> Result<Self, HttpError> {
        let rules = entries.iter().map(|e| parse_rule(e)).collect::<Result<_, _>>()?;
        Ok(Self { rules, default_deny })
    }

    /// Whether a request to `host` may go ahead (the address checks still follow).
    pub(crate) fn permits(&self, host: &Host<&str>) -> bool {
        if !self.default_deny {
            return true;
        }
        let name = canonical(host);
        self.rules.iter().any(|rule| match rule {
            HostRule::Exact(exact) => *exact == name,
            HostRule::Below(suffix) => {
                matches!(host, Host::Domain(_)) && name.len() > suffix.len() && name.ends_with(suffix.as_str())
            }
        })
    }
}

/// The comparable spelling of a URL host: IPv6 without brackets, names without a trailing dot.
pub(crate) fn canonical<S: AsRef<str>>(host: &Host<S>) -> String {
    match host {
        Host::Domain(name) => name.as_ref().trim_end_matches('.').to_ascii_lowercase(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    }
}

fn parse_rule(entry: &str) -> Result<HostRule, HttpError> {
    let bad = |why: &str| HttpError::Invalid(format!("allow_hosts entry {entry:?} {why}"));
    let trimmed = entry.trim();
    let (wildcard, rest) = match trimmed.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    if rest.contains('*') {
        return Err(bad("has a `*` other than a leading `*.` (write `*.example.com`)"));
    }
    // `Host::parse` wants IPv6 in brackets; operators write it bare as often as not.
    let host = match rest.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => Host::Ipv4(v4),
        Ok(IpAddr::V6(v6)) => Host::Ipv6(v6),
        Err(_) => Host::parse(rest).map_err(|e| bad(&format!("is not a host name or IP address: {e}")))?,
    };
    let name = canonical(&host);
    match (wildcard, &host) {
        (true, Host::Domain(_)) if !name.is_empty() => Ok(HostRule::Below(format!(".{name}"))),
        (true, _) => Err(bad("puts a wildcard on an IP address or an empty name")),
        (false, _) if name.is_empty() => Err(bad("is empty")),
        (false, _) => Ok(HostRule::Exact(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> HostList {
        HostList::new(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>(), true).unwrap()
    }

    fn permits(list: &HostList, url: &str) -> bool {
        let url = url::Url::parse(url).unwrap();
        list.permits(&url.host().unwrap())
    }

    #[test]
    fn wildcards_match_strictly_below_the_suffix() {
        let l = list(&["*.example.com"]);
        assert!(permits(&l, "http://sub.example.com/"));
        assert!(permits(&l, "http://a.b.example.com/"));
        assert!(permits(&l, "https://API.Example.COM./x"));
        assert!(!permits(&l, "http://example.com/"), "the bare suffix is not below itself");
        assert!(!permits(&l, "http://evil-example.com/"));
        assert!(!permits(&l, "http://notexample.com/"));
        assert!(!permits(&l, "http://example.com.evil.test/"));
        assert!(!permits(&l, "http://sub.example.co/"));
    }

    #[test]
    fn exact_names_are_case_and_trailing_dot_insensitive() {
        let l = list(&["API.example.com.", "127.0.0.2", "[::1]", "fd00::5"]);
        assert!(permits(&l, "http://api.example.com/"));
        assert!(permits(&l, "http://api.example.com./"));
        assert!(!permits(&l, "http://sub.api.example.com/"), "an exact name has no subdomains");
        assert!(!permits(&l, "http://example.com/"));
        assert!(permits(&l, "http://127.0.0.2:8080/"));
        assert!(permits(&l, "http://0x7f.0.0.2/"), "IPv4 spellings are compared normalised");
        assert!(!permits(&l, "http://127.0.0.1/"));
        assert!(permits(&l, "http://[::1]/"));
        assert!(permits(&l, "http://[fd00:0::5]/"));
    }

    #[test]
    fn international_names_compare_in_ascii() {
        let l = list(&["*.bücher.example"]);
        assert!(permits(&l, "http://www.xn--bcher-kva.example/"));
        assert!(permits(&l, "http://www.BÜCHER.example/"));
    }

    #[test]
    fn default_allow_permits_any_host_and_empty_default_deny_permits_none() {
        let open = HostList::new(&[], false).unwrap();
        assert!(permits(&open, "http://anything.test/"));
        let closed = HostList::new(&[], true).unwrap();
        assert!(!permits(&closed, "http://anything.test/"));
    }

    #[test]
    fn malformed_entries_are_refused_by_name() {
        for bad in ["*", "*.", "a.*.com", "**.example.com", "*.10.0.0.1", "", "exa mple.com", "http://x/"] {
            let err = HostList::new(&[bad.to_string()], true).unwrap_err();
            assert!(matches!(err, HttpError::Invalid(_)), "{bad:?}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
