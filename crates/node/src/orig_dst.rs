//! The destination a connection had before the capture rules redirected it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// `SO_ORIGINAL_DST` of a redirected IPv4 connection.
pub fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let raw = getsockopt(stream, sockopt::OriginalDst).map_err(std::io::Error::from)?;
    let ip = Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
    let port = u16::from_be(raw.sin_port);
    Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
}
