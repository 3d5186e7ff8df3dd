//! A connection to a backend: connecting, and its life between sessions in the idle pool.

use super::io::Readiness;
use crate::balance::BackendState;
use crate::runtime::timer::Deadline;
use mio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// One backend connection. It belongs to a session while a request uses it and to the worker's idle pool
/// between requests; its token never changes, so moving between the two costs no epoll call.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
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
    /// Idle timeout while pooled.
    pub deadline: Deadline,
}

/// Starts a non-blocking connect; completion shows up as writability.
pub fn connect(address: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
