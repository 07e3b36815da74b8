//! The observed IP of a request (protocol.md §2).
//!
//! The observed IP is the TCP peer — unless the peer is a configured trusted
//! proxy, in which case the client address is taken from the one header the
//! configuration names (`[proxy] client_ip_header`): `X-Forwarded-For` or
//! `Forwarded` (RFC 7239), never the other. The list (all header lines, in
//! order, as one list) is walked from the right, skipping trusted proxies,
//! and the first untrusted hop is the client.
//!
//! Choices worth knowing:
//!
//! * **An element that names no address** — `for=unknown`, an obfuscated
//!   identifier (`for=_hidden`), garbage, a `Forwarded` element without
//!   `for=`, an unterminated quoted string, a header that is not UTF-8 — stops
//!   the walk, and the result is the **last trusted address seen** (the peer,
//!   or the trusted proxy that reported the unknown hop). That address is
//!   one this gateway can vouch for, and nothing a client wrote is ever
//!   believed. The cost is that every client behind such a hop shares that
//!   proxy's address for login binding and rate limits.
//! * If every hop is trusted, the result is the leftmost one (again the last
//!   trusted address seen).
//! * **One header, named by the operator, no fallback.** A proxy appends to
//!   the header it writes and passes any other through untouched, so the
//!   header it does not write is entirely the client's. Reading whichever
//!   is present (as earlier versions did, preferring `Forwarded`) let a
//!   client behind an `X-Forwarded-For` proxy choose its own IP with one
//!   `Forwarded: for=…` line. A missing header yields the proxy's address.
//! * Parsing is lenient where it costs nothing: parameter names are
//!   case-insensitive, whitespace around elements, `;` and `=` is ignored,
//!   ports (`1.2.3.4:80`, `"[2001:db8::1]:4711"`) and IPv6 zone identifiers
//!   are dropped, unbracketed IPv6 is accepted, and empty list elements are
//!   skipped.
//! * Every address returned is canonical: an IPv4-mapped IPv6 address
//!   becomes IPv4 ([`wsgate_proto::ip::canonical`]), and a trusted network
//!   written in either form matches both.

use std::net::{IpAddr, Ipv4Addr};

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;
use wsgate_proto::ip::canonical;

/// `X-Forwarded-For`.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The header a trusted proxy writes the client's address into
/// (`[proxy] client_ip_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For` (nginx `$proxy_add_x_forwarded_for`, HAProxy
    /// `option forwardfor`, most load balancers).
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

impl ClientIpHeader {
    /// The configuration value: `"x-forwarded-for"` or `"forwarded"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::XForwardedFor => X_FORWARDED_FOR,
            Self::Forwarded => "forwarded",
        }
    }
}

/// Which peers are proxies, and which header they write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    /// Peers whose header is believed. Empty: nobody's.
    pub nets: Vec<IpNet>,
    /// The one header read from them.
    pub header: ClientIpHeader,
}

impl Default for TrustedProxies {
    /// No trusted proxy: the observed IP is always the TCP peer.
    fn default() -> Self {
        Self {
            nets: Vec::new(),
            header: ClientIpHeader::XForwardedFor,
        }
    }
}

/// The observed IP (protocol.md §2): the TCP peer, or — only when the peer is a
/// trusted proxy — the client from the configured header, walking right to
/// left, skipping trusted proxies; the first untrusted hop is the client.
///
/// An element that names no usable address (`unknown`, an obfuscated
/// identifier, garbage) stops the walk and yields the last trusted address
/// seen: the proxy that reported it. IPv4-mapped addresses come back as IPv4.
pub fn observed_ip(peer: IpAddr, headers: &HeaderMap, proxies: &TrustedProxies) -> IpAddr {
    let trusted = proxies.nets.as_slice();
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let hops = match proxies.header {
        ClientIpHeader::Forwarded => forwarded_hops(headers),
        ClientIpHeader::XForwardedFor => x_forwarded_for_hops(headers),
    };
    let mut last_trusted = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip, trusted) => last_trusted = ip,
            Some(ip) => return ip,
            None => return last_trusted,
        }
    }
    last_trusted
}

/// Whether a (canonical) address is in a trusted network, in either its
/// IPv4 or its IPv4-mapped IPv6 form.
fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let mapped = match ip {
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        IpAddr::V6(_) => None,
    };
    trusted
        .iter()
        .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
}

/// One hop per list element, left to right; `None` for an element that
/// names no usable address.
type Hops = Vec<Option<IpAddr>>;

fn forwarded_hops(headers: &HeaderMap) -> Hops {
    let mut hops = Vec::new();
    for line in headers.get_all(FORWARDED) {
        let Ok(line) = std::str::from_utf8(line.as_bytes()) else {
            hops.push(None);
            continue;
        };
        for element in split_unquoted(line, ',') {
            if element.trim().is_empty() {
                continue;
            }
            hops.push(forwarded_element_for(element));
        }
    }
    hops
}

/// The address in the `for` parameter of one `Forwarded` element.
fn forwarded_element_for(element: &str) -> Option<IpAddr> {
    let mut found = None;
    for pair in split_unquoted(element, ';') {
        if pair.trim().is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("for") {
            if found.is_some() {
                // Two `for` in one element: which one is meant is unclear.
                return None;
            }
            found = Some(unquote(value.trim())?);
        }
    }
    parse_node(&found?)
}

fn x_forwarded_for_hops(headers: &HeaderMap) -> Hops {
    let mut hops = Vec::new();
    for line in headers.get_all(X_FORWARDED_FOR) {
        let Ok(line) = std::str::from_utf8(line.as_bytes()) else {
            hops.push(None);
            continue;
        };
        for element in line.split(',') {
            let element = element.trim();
            if element.is_empty() {
                continue;
            }
            hops.push(unquote(element).as_deref().and_then(parse_node));
        }
    }
    hops
}

/// Splits `text` at `sep` outside quoted strings (with `\` escapes).
fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A token as is, or the content of a quoted string (RFC 9110 §5.6.4);
/// `None` for a malformed quoted string.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return (!value.contains('"')).then(|| value.to_owned());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(out),
            c => out.push(c),
        }
    }
    None // unterminated
}

/// An RFC 7239 node (`1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`, also a bare IPv6 address) → its address; `None`
/// for `unknown`, obfuscated identifiers and anything else.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Some(rest) = node.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        if !after.is_empty() && !is_port(after.strip_prefix(':')?) {
            return None;
        }
        return parse_ip(host);
    }
    if let Some(ip) = parse_ip(node) {
        return Some(ip);
    }
    // IPv4 with a port; an IPv6 address with a port must be bracketed.
    let (host, port) = node.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// An address, dropping an IPv6 zone identifier (`%eth0`, `%25eth0`).
fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip: IpAddr = match text.split_once('%') {
        Some((addr, _zone)) => IpAddr::V6(addr.parse().ok()?),
        None => text.parse().ok()?,
    };
    Some(canonical(ip))
}

/// `node-port = port / obfport` (RFC 7239 §6).
fn is_port(port: &str) -> bool {
    let digits = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = port.len() > 1
        && port.starts_with('_')
        && port
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    digits || obfuscated
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    /// `super::observed_ip` with the header the test's request carries;
    /// a request with both names none (only an untrusted peer may send
    /// both here: the header rule has its own test).
    fn observed_ip(peer: IpAddr, headers: &HeaderMap, nets: &[IpNet]) -> IpAddr {
        let header = if headers.contains_key(FORWARDED) && !headers.contains_key(X_FORWARDED_FOR) {
            ClientIpHeader::Forwarded
        } else {
            ClientIpHeader::XForwardedFor
        };
        let proxies = TrustedProxies {
            nets: nets.to_vec(),
            header,
        };
        let seen = super::observed_ip(peer, headers, &proxies);
        if headers.contains_key(FORWARDED) && headers.contains_key(X_FORWARDED_FOR) {
            let other = TrustedProxies {
                header: ClientIpHeader::Forwarded,
                ..proxies
            };
            assert_eq!(seen, super::observed_ip(peer, headers, &other), "ambiguous");
        }
        seen
    }

    /// The usual deployment: a proxy at 10.0.0.1, more proxies in 10/8.
    fn through_proxy(pairs: &[(&str, &str)]) -> IpAddr {
        observed_ip(ip("10.0.0.1"), &headers(pairs), &nets(&["10.0.0.0/8"]))
    }

    #[test]
    fn an_untrusted_peer_is_the_observed_ip_whatever_the_headers_say() {
        let spoof = headers(&[
            ("forwarded", "for=192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
        ]);
        for trusted in [nets(&[]), nets(&["10.0.0.0/8", "::1/128"])] {
            assert_eq!(
                observed_ip(ip("198.51.100.7"), &spoof, &trusted),
                ip("198.51.100.7")
            );
            assert_eq!(
                observed_ip(ip("2001:db8::7"), &spoof, &trusted),
                ip("2001:db8::7")
            );
        }
        // A spoofed header claiming to come through a trusted proxy is
        // ignored too.
        let spoof = headers(&[("x-forwarded-for", "192.0.2.2, 10.0.0.1")]);
        assert_eq!(
            observed_ip(ip("198.51.100.7"), &spoof, &nets(&["10.0.0.0/8"])),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn ipv4_mapped_peers_are_canonical_and_match_ipv4_networks() {
        let none = HeaderMap::new();
        assert_eq!(
            observed_ip(ip("::ffff:198.51.100.7"), &none, &[]),
            ip("198.51.100.7")
        );
        let xff = headers(&[("x-forwarded-for", "198.51.100.9")]);
        assert_eq!(
            observed_ip(ip("::ffff:10.0.0.1"), &xff, &nets(&["10.0.0.0/8"])),
            ip("198.51.100.9")
        );
        // A trusted network written as IPv4-mapped matches an IPv4 peer.
        assert_eq!(
            observed_ip(ip("10.0.0.1"), &xff, &nets(&["::ffff:10.0.0.0/104"])),
            ip("198.51.100.9")
        );
        // Addresses in headers are canonical too.
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "::ffff:198.51.100.9")]),
            ip("198.51.100.9")
        );
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "198.51.100.9, ::ffff:10.0.0.2")]),
            ip("198.51.100.9"),
            "a mapped trusted proxy is still trusted"
        );
    }

    #[test]
    fn a_trusted_peer_without_headers_is_the_observed_ip() {
        assert_eq!(through_proxy(&[]), ip("10.0.0.1"));
        assert_eq!(
            through_proxy(&[("x-real-ip", "198.51.100.9")]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_skipping_trusted_proxies() {
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "198.51.100.9")]),
            ip("198.51.100.9")
        );
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "198.51.100.9, 10.0.0.2, 10.0.0.3")]),
            ip("198.51.100.9")
        );
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "2001:db8::9,10.0.0.2")]),
            ip("2001:db8::9")
        );
    }

    #[test]
    fn client_written_entries_left_of_the_real_client_are_ignored() {
        // The client sent `X-Forwarded-For: 192.0.2.66`; the trusted proxy
        // appended the address it saw.
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "192.0.2.66, 198.51.100.9")]),
            ip("198.51.100.9")
        );
        // Even when the forged entries pretend to be trusted proxies.
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "192.0.2.66, 10.0.0.7, 198.51.100.9")]),
            ip("198.51.100.9")
        );
        // Or garbage.
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "unknown, nonsense, 198.51.100.9")]),
            ip("198.51.100.9")
        );
        // The same with Forwarded.
        assert_eq!(
            through_proxy(&[(
                "forwarded",
                "for=192.0.2.66, for=10.0.0.7, for=198.51.100.9"
            )]),
            ip("198.51.100.9")
        );
        // A client that is itself in a trusted network is found by skipping
        // only as far as the header goes.
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "10.9.9.9")]),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn when_every_hop_is_trusted_the_leftmost_is_the_client() {
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "10.0.0.5, 10.0.0.4")]),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn multiple_header_lines_form_one_list() {
        assert_eq!(
            through_proxy(&[
                ("x-forwarded-for", "192.0.2.66"),
                ("x-forwarded-for", "198.51.100.9, 10.0.0.2"),
                ("x-forwarded-for", "10.0.0.3"),
            ]),
            ip("198.51.100.9")
        );
        assert_eq!(
            through_proxy(&[
                ("forwarded", "for=198.51.100.1"),
                ("forwarded", "for=10.0.0.3;proto=http"),
            ]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn only_the_configured_header_is_read_never_the_other() {
        let both = headers(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("forwarded", "for=198.51.100.2"),
        ]);
        let via = |header| {
            let proxies = TrustedProxies {
                nets: nets(&["10.0.0.0/8"]),
                header,
            };
            move |map: &HeaderMap| super::observed_ip(ip("10.0.0.1"), map, &proxies)
        };
        let xff = via(ClientIpHeader::XForwardedFor);
        let fwd = via(ClientIpHeader::Forwarded);
        assert_eq!(xff(&both), ip("192.0.2.1"));
        assert_eq!(fwd(&both), ip("198.51.100.2"));
        // A client behind a proxy that appends only X-Forwarded-For sends
        // its own `Forwarded`: it is not read.
        let spoof = headers(&[
            ("forwarded", "for=203.0.113.66"),
            ("x-forwarded-for", "192.0.2.1"),
        ]);
        assert_eq!(xff(&spoof), ip("192.0.2.1"));
        // The configured header missing: the proxy's own address, never the
        // other header's.
        let only_fwd = headers(&[("forwarded", "for=203.0.113.66")]);
        assert_eq!(xff(&only_fwd), ip("10.0.0.1"));
        let only_xff = headers(&[("x-forwarded-for", "203.0.113.66")]);
        assert_eq!(fwd(&only_xff), ip("10.0.0.1"));
    }

    #[test]
    fn the_rfc_7239_forms() {
        let value = r#"for=192.0.2.60;proto=http, for="[2001:db8::1]:4711""#;
        assert_eq!(through_proxy(&[("forwarded", value)]), ip("2001:db8::1"));
        assert_eq!(
            observed_ip(
                ip("10.0.0.1"),
                &headers(&[("forwarded", value)]),
                &nets(&["10.0.0.0/8", "2001:db8::/32"])
            ),
            ip("192.0.2.60")
        );
        for (value, expected) in [
            (r#"for="_gazonk""#, "10.0.0.1"),
            (r#"For="[2001:db8:cafe::17]:4711""#, "2001:db8:cafe::17"),
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            ("for=192.0.2.43, for=198.51.100.17", "198.51.100.17"),
            (r#"for="192.0.2.43:47011""#, "192.0.2.43"),
            (r#"for="192.0.2.43:_port""#, "192.0.2.43"),
            (r#"for="[2001:db8::2]""#, "2001:db8::2"),
            (r#"FOR="[2001:DB8::3]""#, "2001:db8::3"),
            (r#"for="2001:db8::4""#, "2001:db8::4"),
            (r#"for="[fe80::1%25eth0]:80""#, "fe80::1"),
            (r#"for="[fe80::1%eth0]""#, "fe80::1"),
            (r#"for="\1\9\2.0.2.5""#, "192.0.2.5"),
            ("  for=192.0.2.6 ;  proto=https  ,  ", "192.0.2.6"),
            (r#"by="a,b;c";for=192.0.2.7"#, "192.0.2.7"),
            ("for = 192.0.2.8", "192.0.2.8"),
        ] {
            assert_eq!(
                through_proxy(&[("forwarded", value)]),
                ip(expected),
                "{value}"
            );
        }
    }

    #[test]
    fn unusable_elements_yield_the_last_trusted_address() {
        for value in [
            "for=unknown",
            "for=UNKNOWN",
            "for=_hidden",
            r#"for="_hidden:_port""#,
            "proto=https",
            "by=10.0.0.9",
            "for=192.0.2.1;for=192.0.2.2",
            "for=not-an-ip",
            r#"for="192.0.2.1"#,
            r#"for=192.0.2.1""#,
            "for=[2001:db8::1",
            "for=\"[2001:db8::1]x\"",
            "for=\"[2001:db8::1]:\"",
            "for=192.0.2.1:123456",
            "for=192.0.2.1:",
            "for",
            "",
        ] {
            assert_eq!(
                through_proxy(&[("forwarded", value)]),
                ip("10.0.0.1"),
                "{value:?}"
            );
        }
        // The trusted proxy that reported the unknown hop, not the peer.
        assert_eq!(
            through_proxy(&[("forwarded", "for=192.0.2.1, for=unknown, for=10.0.0.2")]),
            ip("10.0.0.2")
        );
        assert_eq!(
            through_proxy(&[("x-forwarded-for", "192.0.2.1, garbage, 10.0.0.2, 10.0.0.3")]),
            ip("10.0.0.2")
        );
        // An untrusted hop to the right of the unknown one is still found.
        assert_eq!(
            through_proxy(&[("forwarded", "for=unknown, for=198.51.100.3")]),
            ip("198.51.100.3")
        );
    }

    #[test]
    fn x_forwarded_for_variants() {
        for (value, expected) in [
            ("198.51.100.1:4321", "198.51.100.1"),
            ("[2001:db8::5]:80", "2001:db8::5"),
            ("[2001:db8::6]", "2001:db8::6"),
            ("\"198.51.100.2\"", "198.51.100.2"),
            ("198.51.100.3,, ,10.0.0.2, ", "198.51.100.3"),
            ("\t198.51.100.4\t", "198.51.100.4"),
            ("garbage", "10.0.0.1"),
            ("unknown", "10.0.0.1"),
            ("198.51.100.5 10.0.0.2", "10.0.0.1"),
            ("", "10.0.0.1"),
        ] {
            assert_eq!(
                through_proxy(&[("x-forwarded-for", value)]),
                ip(expected),
                "{value:?}"
            );
        }
    }

    #[test]
    fn headers_that_are_not_utf8_name_nobody() {
        let mut map = HeaderMap::new();
        map.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"198.51.100.1").unwrap(),
        );
        map.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(
            observed_ip(ip("10.0.0.1"), &map, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.1")
        );
        let mut map = HeaderMap::new();
        map.append(
            "forwarded",
            HeaderValue::from_bytes(b"for=\"\xff\"").unwrap(),
        );
        assert_eq!(
            observed_ip(ip("10.0.0.1"), &map, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn ipv6_proxies_and_clients() {
        let trusted = nets(&["::1/128", "fd00::/8"]);
        let map = headers(&[("forwarded", r#"for="[2001:db8::9]:1234", for="[fd00::2]""#)]);
        assert_eq!(observed_ip(ip("::1"), &map, &trusted), ip("2001:db8::9"));
        let map = headers(&[("x-forwarded-for", "192.0.2.9, fd00::3")]);
        assert_eq!(observed_ip(ip("::1"), &map, &trusted), ip("192.0.2.9"));
    }

    #[test]
    fn quoted_strings_and_nodes() {
        assert_eq!(unquote("abc").as_deref(), Some("abc"));
        assert_eq!(unquote(r#""a\"b""#).as_deref(), Some("a\"b"));
        assert_eq!(unquote(r#""abc"#), None);
        assert_eq!(unquote(r#""a"b"#), None);
        assert_eq!(unquote(r#"a"b"#), None);
        assert_eq!(split_unquoted(r#"a;"b;c";d"#, ';'), ["a", r#""b;c""#, "d"]);
        assert_eq!(
            split_unquoted(r#"a,"b\",c",d"#, ','),
            ["a", r#""b\",c""#, "d"]
        );
        assert_eq!(parse_node("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node("1.2.3.4:_x"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node("1.2.3.4:_"), None);
        assert_eq!(parse_node("1.2.3.4:8a"), None);
        assert_eq!(parse_node("::1"), Some(ip("::1")));
        assert_eq!(parse_node("[::ffff:1.2.3.4]"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node("_obf"), None);
    }
}
