//! Transport addresses: where the enclave and the parent proxy meet.
//!
//! Production uses `vsock://CID:PORT` (the parent instance is CID 3 as seen
//! from an enclave); local runs and tests use `tcp://HOST:PORT` or
//! `unix:///absolute/path`, because ordinary machines have no vsock loopback.
//! This module only parses and prints; connecting and listening are the
//! binaries' job.

use core::fmt;
use core::str::FromStr;
use std::path::PathBuf;

/// The vsock CID of the parent instance, as seen from inside an enclave.
pub const PARENT_CID: u32 = 3;

/// Longest address string accepted (a Unix socket path is at most 108 bytes
/// on Linux; this leaves room for a host name).
pub const MAX_ADDRESS_LEN: usize = 512;

/// A transport address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// `vsock://CID:PORT`: AF_VSOCK (production; parent CID is [`PARENT_CID`]).
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// `tcp://HOST:PORT`: loopback development and tests.
    Tcp(String),
    /// `unix:///path`: a Unix domain socket.
    Unix(PathBuf),
}

impl FromStr for Address {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| crate::Error::InvalidArgument(format!("address {s:?}: {why}"));
        if s.len() > MAX_ADDRESS_LEN {
            return Err(bad("too long"));
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad("expected vsock://CID:PORT, tcp://HOST:PORT or unix:///PATH"))?;
        match scheme {
            "vsock" => {
                let (cid, port) = rest
                    .split_once(':')
                    .ok_or_else(|| bad("expected CID:PORT"))?;
                let cid = cid.parse().map_err(|_| bad("CID is not a number"))?;
                let port = port.parse().map_err(|_| bad("port is not a number"))?;
                Ok(Address::Vsock { cid, port })
            }
            "tcp" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad("expected HOST:PORT"))?;
                if host.is_empty() {
                    return Err(bad("empty host"));
                }
                port.parse::<u16>()
                    .map_err(|_| bad("port is not a number 0..=65535"))?;
                Ok(Address::Tcp(rest.to_string()))
            }
            "unix" => {
                if !rest.starts_with('/') {
                    return Err(bad("unix socket path must be absolute (unix:///path)"));
                }
                Ok(Address::Unix(PathBuf::from(rest)))
            }
            _ => Err(bad("unknown scheme")),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Address::Tcp(hp) => write!(f, "tcp://{hp}"),
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_each_scheme() {
        for s in [
            "vsock://3:5000",
            "tcp://127.0.0.1:0",
            "tcp://[::1]:8000",
            "unix:///tmp/kb.sock",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "vsock://3:5000".parse::<Address>().unwrap(),
            Address::Vsock {
                cid: PARENT_CID,
                port: 5000
            }
        );
    }

    #[test]
    fn rejects_bad_addresses() {
        for s in [
            "",
            "3:5000",
            "vsock://x:1",
            "vsock://3",
            "tcp://:80",
            "tcp://host:99999",
            "unix://relative",
            "http://x:1",
        ] {
            assert!(
                matches!(s.parse::<Address>(), Err(crate::Error::InvalidArgument(_))),
                "{s}"
            );
        }
        assert!(
            "unix:///"
                .to_string()
                .repeat(200)
                .parse::<Address>()
                .is_err()
        );
    }
}
