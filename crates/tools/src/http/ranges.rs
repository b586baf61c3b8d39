//! Which addresses a task may never reach: private, loopback, link-local, documentation,
//! multicast, reserved and every other block of the IANA special-purpose registries.
//!
//! The membership data comes from `iprfc` (its predicates and its RFC 6890 aggregate, built
//! from checked-in snapshots of the IANA IPv4 and IPv6 special-purpose registries), so the
//! only thing written here is the order in which blocks are *named*: the first entry that
//! contains an address names it in the error. The last entry of each family is the whole
//! registry, so anything special-purpose that no earlier entry names is still refused.

use iprfc::{RFC1122, RFC3056, RFC4291, RFC4380, RFC6052, RFC6890};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The instance-metadata endpoint of AWS, GCP, Azure and others. It lies in link-local
/// 169.254.0.0/16 and is refused as such; it is named on its own because it is the prize of
/// most SSRF attacks and an operator reading the log should see that at once.
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The IPv6 instance-metadata endpoint of AWS (inside unique-local fc00::/7).
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254);

type V4Check = (&'static str, fn(Ipv4Addr) -> bool);
type V6Check = (&'static str, fn(Ipv6Addr) -> bool);

/// IPv4 blocks, most specific name first.
const V4_RANGES: &[V4Check] = &[
    ("loopback 127.0.0.0/8 (RFC 1122)", iprfc::is_loopback_ipv4_addr),
    ("\"this network\" 0.0.0.0/8 (RFC 1122)", |ip| RFC1122.contains(&ip)),
    ("private-use (RFC 1918)", iprfc::is_private_ipv4_addr),
    ("shared address space 100.64.0.0/10 (RFC 6598)", iprfc::is_shared_ipv4_addr),
    ("cloud metadata endpoint 169.254.169.254", |ip| ip == METADATA_V4),
    ("link-local 169.254.0.0/16 (RFC 3927)", iprfc::is_link_local_ipv4_addr),
    ("documentation (RFC 5737)", iprfc::is_documentation_ipv4_addr),
    ("benchmarking 198.18.0.0/15 (RFC 2544)", iprfc::is_benchmark_ipv4_addr),
    ("multicast 224.0.0.0/4 (RFC 5771)", iprfc::is_multicast_ipv4_addr),
    ("limited broadcast 255.255.255.255 (RFC 919)", iprfc::is_broadcast_ipv4_addr),
    ("special-purpose or reserved, e.g. 192.0.0.0/24 or 240.0.0.0/4 (IANA registry, RFC 6890)", |ip| {
        RFC6890.contains(&ip)
    }),
];

/// IPv6 blocks, most specific name first.
const V6_RANGES: &[V6Check] = &[
    ("IPv4-mapped IPv6 ::ffff:0:0/96 (RFC 4291)", |ip| ip.to_ipv4_mapped().is_some()),
    ("unspecified :: (RFC 4291)", iprfc::is_unspecified_ipv6_addr),
    ("loopback ::1 (RFC 4291)", iprfc::is_loopback_ipv6_addr),
    ("cloud metadata endpoint fd00:ec2::254", |ip| ip == METADATA_V6),
    ("unique-local fc00::/7 (RFC 4193)", iprfc::is_unique_local_ipv6_addr),
    ("link-local fe80::/10 (RFC 4291)", iprfc::is_link_local_ipv6_addr),
    ("multicast ff00::/8 (RFC 4291)", iprfc::is_multicast_ipv6_addr),
    ("documentation 2001:db8::/32 or 3fff::/20 (RFC 3849, RFC 9637)", iprfc::is_documentation_ipv6_addr),
    ("benchmarking 2001:2::/48 (RFC 5180)", iprfc::is_benchmark_ipv6_addr),
    ("NAT64 64:ff9b::/96 (RFC 6052)", |ip| RFC6052.contains(&ip)),
    ("Teredo 2001::/32 (RFC 4380)", |ip| RFC4380.contains(&ip)),
    ("6to4 2002::/16 (RFC 3056)", |ip| RFC3056.contains(&ip)),
    ("IPv4-compatible ::/96 or site-local fec0::/10 (RFC 4291)", |ip| RFC4291.contains(&ip)),
    ("special-purpose or reserved (IANA registry, RFC 6890)", |ip| RFC6890.contains(&ip)),
];

/// Names the private or reserved block `ip` is in, or `None` when it may be reached.
///
/// IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are refused
/// whatever they carry: a translator on the path could deliver them to the embedded address,
/// and a mapped literal reaches it directly on a dual-stack socket.
pub fn is_forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => V4_RANGES.iter().find(|(_, hit)| hit(v4)).map(|(name, _)| *name),
        IpAddr::V6(v6) => V6_RANGES.iter().find(|(_, hit)| hit(v6)).map(|(name, _)| *name),
    }
}

/// The IPv4 address an IPv6 transition form carries, for the error message: the operator
/// should see that `[::ffff:7f00:1]` was an attempt on 127.0.0.1.
pub(crate) fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low32 = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    let compatible = s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified();
    if ip.to_ipv4_mapped().is_some() || RFC6052.contains(&ip) || compatible {
        Some(low32)
    } else if RFC3056.contains(&ip) {
        Some(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])))
    } else {
        None
    }
}

/// A sentence naming `ip`, its block and, for a transition form, what it carries.
pub(crate) fn describe(ip: IpAddr, range: &str) -> String {
    let carried = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(|v4| match is_forbidden(IpAddr::V4(v4)) {
            Some(inner) => format!(", carrying {v4} which is {inner}"),
            None => format!(", carrying {v4}"),
        }),
        IpAddr::V4(_) => None,
    };
    format!("address {ip} is {range}{}", carried.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> Option<&'static str> {
        is_forbidden(s.parse().unwrap())
    }

    #[track_caller]
    fn denied(s: &str, named: &str) {
        let got = forbidden(s);
        assert!(got.is_some_and(|n| n.contains(named)), "{s}: expected a range naming {named:?}, got {got:?}");
    }

    #[track_caller]
    fn allowed(s: &str) {
        assert_eq!(forbidden(s), None, "{s} should be reachable");
    }

    #[test]
    fn every_ipv4_block_is_refused_and_named() {
        denied("127.0.0.1", "loopback");
        denied("127.255.255.254", "loopback");
        denied("0.0.0.0", "this network");
        denied("0.1.2.3", "this network");
        denied("10.0.0.1", "RFC 1918");
        denied("172.16.0.0", "RFC 1918");
        denied("172.31.255.255", "RFC 1918");
        denied("192.168.1.1", "RFC 1918");
        denied("100.64.0.1", "RFC 6598");
        denied("100.127.255.255", "RFC 6598");
        denied("169.254.169.254", "metadata");
        denied("169.254.0.1", "link-local");
        denied("192.0.2.1", "RFC 5737");
        denied("198.51.100.7", "RFC 5737");
        denied("203.0.113.9", "RFC 5737");
        denied("198.18.0.1", "RFC 2544");
        denied("198.19.255.255", "RFC 2544");
        denied("224.0.0.1", "multicast");
        denied("239.255.255.250", "multicast");
        denied("255.255.255.255", "broadcast");
        denied("240.0.0.1", "RFC 6890");
        denied("192.0.0.1", "RFC 6890");
        denied("192.0.0.170", "RFC 6890");
    }

    #[test]
    fn block_boundaries_are_exact() {
        allowed("172.15.255.255");
        denied("172.16.0.0", "RFC 1918");
        denied("172.31.255.255", "RFC 1918");
        allowed("172.32.0.0");
        allowed("100.63.255.255");
        denied("100.64.0.0", "RFC 6598");
        allowed("100.128.0.0");
        allowed("9.255.255.255");
        allowed("11.0.0.0");
        allowed("192.167.255.255");
        allowed("192.169.0.0");
        allowed("198.17.255.255");
        allowed("198.20.0.0");
        allowed("223.255.255.255");
        allowed("1.0.0.0");
        allowed("126.255.255.255");
        allowed("128.0.0.1");
        allowed("169.253.255.255");
        allowed("169.255.0.0");
    }

    #[test]
    fn public_addresses_pass() {
        allowed("8.8.8.8");
        allowed("93.184.215.14");
        allowed("1.1.1.1");
        allowed("2606:4700:4700::1111");
        allowed("2a00:1450:4001:82a::200e");
        allowed("2001:4860:4860::8888");
    }

    #[test]
    fn every_ipv6_block_is_refused_and_named() {
        denied("::", "unspecified");
        denied("::1", "loopback");
        denied("fe80::1", "link-local");
        denied("febf:ffff::1", "link-local");
        denied("fc00::1", "unique-local");
        denied("fdff:ffff::1", "unique-local");
        denied("fd00:ec2::254", "metadata");
        denied("ff02::1", "multicast");
        denied("ff0e::1", "multicast");
        denied("2001:db8::1", "documentation");
        denied("3fff::1", "documentation");
        denied("2001:2::1", "RFC 5180");
        denied("fec0::1", "site-local");
        denied("100::1", "RFC 6890");
        denied("2001:10::1", "RFC 6890");
        allowed("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        allowed("fe00::1");
        allowed("2001:db7:ffff::1");
        allowed("2001:db9::1");
    }

    #[test]
    fn ipv4_carried_in_ipv6_is_refused_in_every_form() {
        denied("::ffff:127.0.0.1", "IPv4-mapped");
        denied("::ffff:10.0.0.1", "IPv4-mapped");
        // The mapped form is refused even when the address it carries is public.
        denied("::ffff:8.8.8.8", "IPv4-mapped");
        denied("::127.0.0.1", "IPv4-compatible");
        denied("::8.8.8.8", "IPv4-compatible");
        denied("64:ff9b::7f00:1", "NAT64");
        denied("64:ff9b::808:808", "NAT64");
        denied("2002:7f00:1::1", "6to4");
        denied("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo");
    }

    #[test]
    fn descriptions_name_the_carried_address() {
        let ip: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let text = describe(ip, is_forbidden(ip).unwrap());
        assert!(text.contains("::ffff:127.0.0.1") && text.contains("carrying 127.0.0.1 which is loopback"), "{text}");
        let ip: IpAddr = "2002:a00:1::".parse().unwrap();
        assert!(describe(ip, "6to4").contains("carrying 10.0.0.1 which is private-use"));
        let ip: IpAddr = "64:ff9b::808:808".parse().unwrap();
        assert_eq!(describe(ip, "NAT64"), "address 64:ff9b::808:808 is NAT64, carrying 8.8.8.8");
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(describe(ip, "private-use (RFC 1918)"), "address 10.1.2.3 is private-use (RFC 1918)");
        assert_eq!(embedded_v4("::1".parse().unwrap()), None);
        assert_eq!(embedded_v4("2001:db8::1".parse().unwrap()), None);
    }
}
