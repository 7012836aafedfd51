//! CIDR parsing, strict enough that what iptables installs is exactly what was written.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address block. A bare address means the single host (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `a.b.c.d`, or their IPv6 forms. Host bits below the prefix are an
    /// error rather than silently cleared (as iptables would): `10.1.2.3/8` is more likely a typo
    /// than a wish to exclude all of `10.0.0.0/8`. The error is a reason, without the input.
    pub(crate) fn parse(text: &str) -> Result<Cidr, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{addr_text:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            match prefix_text {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    format!("prefix length {p:?} is not a number from 0 to {max}")
                })?,
            };
        let network = mask(addr, prefix);
        if network != addr {
            return Err(format!(
                "host bits set below the /{prefix} prefix (the network is {network}/{prefix})"
            ));
        }
        Ok(Cidr { addr, prefix })
    }

    /// Whether this is an IPv4 block (the only family the capture rules handle).
    pub(crate) fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

impl fmt::Display for Cidr {
    /// Always with the prefix length, as iptables-save prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocks_and_hosts() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            Cidr::parse("198.18.0.1").unwrap().to_string(),
            "198.18.0.1/32"
        );
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(Cidr::parse("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert!(!Cidr::parse("fd00::1").unwrap().is_ipv4());
        assert!(Cidr::parse("10.0.0.0/8").unwrap().is_ipv4());
    }

    #[test]
    fn rejects_malformed_input_with_a_reason() {
        for (text, needle) in [
            ("10.0.0/8", "not an IP address"),
            ("10.0.0.0/33", "0 to 32"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/-1", "prefix length"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("fd00::1/8", "fd00::/8"),
            ("", "not an IP address"),
            ("example.com", "not an IP address"),
        ] {
            let err = Cidr::parse(text).unwrap_err();
            assert!(
                err.contains(needle),
                "{text:?}: {err:?} should mention {needle:?}"
            );
        }
    }
}
