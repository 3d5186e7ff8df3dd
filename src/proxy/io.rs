//! A connection's byte stream: the socket, with TLS on top when the listener or cluster asks for it.

use crate::base::buffer::Buffer;
use crate::base::socket::{
    ReadOutcome, Readiness, WriteOutcome, read_discard, read_into, write_two,
};
use crate::tls::TlsStream;
use mio::net::TcpStream;
use std::io;
use std::net::Shutdown;

/// A connection's byte stream: the socket, with TLS on top when the listener or cluster asks for it.
/// Sessions and upstreams read and write through this and never see the difference.
#[derive(Debug)]
pub(crate) struct Transport {
    pub sock: TcpStream,
    pub tls: Option<Box<TlsStream>>,
}

impl Transport {
    pub(crate) fn plain(sock: TcpStream) -> Self {
        Transport { sock, tls: None }
    }

    pub(crate) fn with_tls(sock: TcpStream, tls: TlsStream) -> Self {
        Transport {
            sock,
            tls: Some(Box::new(tls)),
        }
    }

    /// Reads (decrypting when TLS) into the free space of `buf`.
    pub(crate) fn read_into(&mut self, io: &mut Readiness, buf: &mut Buffer) -> ReadOutcome {
        match &mut self.tls {
            None => read_into(&mut self.sock, io, buf),
            Some(tls) => tls.read_into(&mut self.sock, io, buf),
        }
    }

    /// Writes `a` then `b` (sealing them when TLS); `more` as in [`write_two`].
    pub(crate) fn write_two(
        &mut self,
        io: &mut Readiness,
        a: &[u8],
        b: &[u8],
        more: bool,
    ) -> WriteOutcome {
        match &mut self.tls {
            None => write_two(&mut self.sock, io, a, b, more),
            Some(tls) => tls.write_two(&mut self.sock, io, a, b, more),
        }
    }

    /// Pushes sealed TLS records still waiting for the socket (nothing to do for plain sockets).
    pub(crate) fn flush(&mut self, io: &mut Readiness) -> io::Result<()> {
        match &mut self.tls {
            None => Ok(()),
            Some(tls) => tls.flush(&mut self.sock, io),
        }
    }

    /// Bytes accepted by `write_two` are not all on the wire yet.
    pub(crate) fn has_pending_output(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.has_pending_output())
    }

    /// A TLS handshake is still under way.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Sends TLS close_notify (nothing for plain TCP), before a plain close.
    pub(crate) fn close_notify(&mut self, io: &mut Readiness) {
        if let Some(tls) = &mut self.tls {
            tls.close_notify(&mut self.sock, io);
        }
    }

    /// Ends our sending side: close_notify first when TLS, then a TCP half-close.
    pub(crate) fn shutdown_write(&mut self, io: &mut Readiness) {
        if let Some(tls) = &mut self.tls {
            tls.close_notify(&mut self.sock, io);
        }
        let _ = self.sock.shutdown(Shutdown::Write);
    }

    /// Reads and discards (lingering after a final answer).
    pub(crate) fn read_discard(&mut self, io: &mut Readiness) -> ReadOutcome {
        read_discard(&mut self.sock, io)
    }
}
