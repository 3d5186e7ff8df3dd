//! A connection to a backend: connecting, and its life between sessions in the idle pool.

use super::io::Transport;
use crate::balance::BackendState;
use crate::base::socket::Readiness;
use crate::base::timer::Deadline;
use crate::tls::client::UpstreamTls;
use crate::tls::{TlsStats, TlsStream};
use mio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// One backend connection. It belongs to a session while a request uses it and to the worker's idle pool
/// between requests; its token never changes, so moving between the two costs no epoll call.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub stream: Transport,
    pub io: Readiness,
    pub backend: Arc<BackendState>,
    /// The session using it; `None` while idle in the pool.
    pub session: Option<usize>,
    /// The TCP handshake completed.
    pub connected: bool,
    /// Requests it has carried (more than zero means it was reused).
    pub requests: u32,
    /// Distinguishes this connection from a later one in the same slab slot (timer entries).
    pub id: u64,
    /// Idle timeout while pooled (connect-and-handshake timeout while warming).
    pub deadline: Deadline,
    /// A pre-established connection still connecting or handshaking, owned by no session.
    pub warming: bool,
}

/// Starts a non-blocking connect (completion shows up as writability), with TLS on top when the cluster
/// asks for it: the handshake then runs as the first bytes flow.
pub(crate) fn connect(
    address: SocketAddr,
    tls: Option<&UpstreamTls>,
    stats: &Arc<TlsStats>,
) -> io::Result<Transport> {
    let stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    Ok(match tls {
        None => Transport::plain(stream),
        Some(t) => {
            let conn = rustls::ClientConnection::new(t.config.clone(), t.name_for(address.ip()))
                .map_err(io::Error::other)?;
            Transport::with_tls(
                stream,
                TlsStream::new(rustls::Connection::Client(conn), stats.clone()),
            )
        }
    })
}
