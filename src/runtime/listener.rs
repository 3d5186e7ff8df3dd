//! Listening sockets: one per worker per address, bound with SO_REUSEPORT so the kernel spreads
//! connections across workers without a shared accept lock.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Binds a non-blocking listening socket with SO_REUSEADDR, SO_REUSEPORT and TCP_NODELAY (inherited by
/// accepted sockets on Linux).
pub fn bind(address: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Fails with `AddrInUse` when any other socket listens on `address`. SO_REUSEPORT would otherwise let
/// tether quietly share a port with another program that also set it, each getting part of the traffic.
fn ensure_unused(address: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // SO_REUSEADDR only: sockets in TIME_WAIT do not count, listening ones do.
    probe.set_reuse_address(true)?;
    if address.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&address.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                "address already in use by another program",
            )
        } else {
            e
        }
    })
}

/// Binds `count` sockets on `address`. Port 0 is resolved by the first bind and reused by the others, so
/// every worker listens on the same port.
pub fn bind_all(
    address: SocketAddr,
    backlog: u32,
    count: usize,
) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    if address.port() != 0 {
        ensure_unused(address)?;
    }
    let first = bind(address, backlog)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind(bound, backlog)?);
    }
    Ok((bound, sockets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_another_program_listens_on_is_refused_even_with_reuseport() {
        // The other program also sets SO_REUSEPORT, as nginx with `reuseport` does.
        let (bound, _other) = bind_all("127.0.0.1:0".parse().unwrap(), 16, 1).unwrap();
        let err = bind_all(bound, 16, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn port_zero_resolves_once_for_every_worker() {
        let (bound, sockets) = bind_all("127.0.0.1:0".parse().unwrap(), 128, 3).unwrap();
        assert_ne!(bound.port(), 0);
        for s in &sockets {
            assert_eq!(s.local_addr().unwrap(), bound);
        }
    }
}
