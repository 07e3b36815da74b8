//! The textual form of an IP address used in HELLO, login replies and the
//! channel binding: dotted quad for IPv4, RFC 5952 for IPv6, an IPv4-mapped
//! IPv6 address written as IPv4. Rust's `Display` for `Ipv6Addr` already
//! produces the RFC 5952 form (lowercase, longest zero run compressed).

use std::net::IpAddr;

/// Normalizes an address: an IPv4-mapped IPv6 address becomes IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The protocol's text form of `ip`.
pub fn to_text(ip: IpAddr) -> String {
    canonical(ip).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_addresses_as_the_protocol_requires() {
        assert_eq!(to_text("127.0.0.1".parse().unwrap()), "127.0.0.1");
        assert_eq!(to_text("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
        assert_eq!(
            to_text("2001:DB8:0:0:0:0:0:1".parse().unwrap()),
            "2001:db8::1"
        );
        assert_eq!(
            to_text("2001:db8:0:0:1:0:0:1".parse().unwrap()),
            "2001:db8::1:0:0:1"
        );
        assert_eq!(to_text("::1".parse().unwrap()), "::1");
    }
}
