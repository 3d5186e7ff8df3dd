//! rustls on a non-blocking socket inside the worker loop: handshakes advance as bytes arrive, never on a
//! thread of their own, and the readiness flags stay truthful.
//!
//! rustls buffers both ways: ciphertext read from the socket is decrypted into its plaintext buffer, and
//! plaintext written is sealed into records waiting for the socket. `read_into` and `write_two` therefore
//! always finish by pushing pending records (`flush`), and the session flushes again when the socket
//! becomes writable.

use super::TlsStats;
use crate::base::buffer::Buffer;
use crate::base::socket::{ReadOutcome, Readiness, WriteOutcome};
use mio::net::TcpStream;
use rustls::{Connection, HandshakeKind};
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

/// Most plaintext rustls may hold sealed but unsent; past it, writes report less accepted (backpressure).
const SEND_BUFFER_LIMIT: usize = 64 * 1024;

/// How a TLS handshake ended, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    InProgress,
    Full,
    Resumed,
    Failed,
}

/// One TLS connection (server or client side) over a socket the caller owns.
pub struct TlsStream {
    conn: Connection,
    handshake: Handshake,
    close_notify_sent: bool,
    stats: Arc<TlsStats>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshake", &self.handshake)
            .finish_non_exhaustive()
    }
}

/// Reads from the socket for rustls, keeping the readiness flag.
struct SocketReader<'a> {
    sock: &'a mut TcpStream,
    io: &'a mut Readiness,
}

impl Read for SocketReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        if n < buf.len() && !self.io.read_closed {
            self.io.readable = false;
        }
        Ok(n)
    }
}

/// Writes records to the socket for rustls, keeping the readiness flag.
struct SocketWriter<'a> {
    sock: &'a mut TcpStream,
    io: &'a mut Readiness,
    /// Pass `MSG_MORE`: more of the same message follows at once.
    more: bool,
}

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = if self.more {
            socket2::SockRef::from(&*self.sock).send_with_flags(buf, libc::MSG_MORE)?
        } else {
            self.sock.write(buf)?
        };
        if n < buf.len() {
            self.io.writable = false;
        }
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let n = if self.more {
            socket2::SockRef::from(&*self.sock).send_vectored_with_flags(bufs, libc::MSG_MORE)?
        } else {
            self.sock.write_vectored(bufs)?
        };
        if n < want {
            self.io.writable = false;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsStream {
    /// Wraps a rustls connection; handshakes are counted in `stats` (listener side: full and resumed;
    /// backend side: upstream handshakes).
    pub fn new(mut conn: Connection, stats: Arc<TlsStats>) -> Self {
        conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        TlsStream {
            conn,
            handshake: Handshake::InProgress,
            close_notify_sent: false,
            stats,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.handshake == Handshake::InProgress
    }

    /// The handshake completed (full or resumed).
    pub fn is_established(&self) -> bool {
        matches!(self.handshake, Handshake::Full | Handshake::Resumed)
    }

    /// Counts the handshake the first time it is seen complete.
    fn note_handshake(&mut self) {
        if self.handshake != Handshake::InProgress || self.conn.is_handshaking() {
            return;
        }
        self.handshake = match self.conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        };
        let counter = match (&self.conn, self.handshake) {
            (Connection::Client(_), _) => &self.stats.upstream_handshakes,
            (Connection::Server(_), Handshake::Resumed) => &self.stats.resumed,
            (Connection::Server(_), _) => &self.stats.full,
        };
        TlsStats::count(counter);
    }

    /// The handshake was abandoned (timeout, peer gone): counted as failed once.
    pub fn abandon(&mut self) {
        if self.is_handshaking() {
            self.handshake = Handshake::Failed;
            TlsStats::count(&self.stats.failed);
        }
    }

    /// The peer's certificate chain, once the handshake verified it.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// SNI name the client sent (server side).
    pub fn server_name(&self) -> Option<&str> {
        match &self.conn {
            Connection::Server(s) => s.server_name(),
            Connection::Client(_) => None,
        }
    }

    /// Sealed records are waiting for the socket.
    pub fn has_pending_output(&self) -> bool {
        self.conn.wants_write()
    }

    /// Decrypts into `buf`, reading records from the socket as needed (and advancing the handshake).
    pub fn read_into(
        &mut self,
        sock: &mut TcpStream,
        io: &mut Readiness,
        buf: &mut Buffer,
    ) -> ReadOutcome {
        loop {
            let space = buf.space();
            if space.is_empty() {
                return ReadOutcome::Blocked;
            }
            match self.conn.reader().read(space) {
                Ok(0) => return ReadOutcome::Eof,
                Ok(n) => {
                    buf.fill(n);
                    return ReadOutcome::Data(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: a truncation, reported as EOF to the session,
                // which decides whether the message was complete.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return ReadOutcome::Eof;
                }
                Err(e) => return ReadOutcome::Error(e),
            }
            if !io.readable {
                return ReadOutcome::Blocked;
            }
            let mut reader = SocketReader { sock, io };
            match self.conn.read_tls(&mut reader) {
                Ok(0) => return ReadOutcome::Eof,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    io.readable = false;
                    return ReadOutcome::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return ReadOutcome::Error(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // The alert rustls queued goes out before the connection closes.
                let _ = self.flush(sock, io);
                self.abandon();
                return ReadOutcome::Error(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.note_handshake();
            // Handshake messages, tickets and key updates go out as soon as they are made.
            if self.conn.wants_write() {
                if let Err(e) = self.flush(sock, io) {
                    return ReadOutcome::Error(e);
                }
            }
        }
    }

    /// Seals `a` then `b` (as much as the send buffer takes) and pushes records to the socket (with
    /// `MSG_MORE` when `more`).
    pub fn write_two(
        &mut self,
        sock: &mut TcpStream,
        io: &mut Readiness,
        a: &[u8],
        b: &[u8],
        more: bool,
    ) -> WriteOutcome {
        let mut accepted = 0;
        for part in [a, b] {
            if part.is_empty() {
                continue;
            }
            match self.conn.writer().write(part) {
                Ok(n) => {
                    accepted += n;
                    if n < part.len() {
                        break;
                    }
                }
                Err(e) => return WriteOutcome::Error(e),
            }
        }
        if let Err(e) = self.push(sock, io, more) {
            return WriteOutcome::Error(e);
        }
        if accepted == 0 {
            io.writable = false;
            return WriteOutcome::Blocked;
        }
        WriteOutcome::Wrote(accepted)
    }

    /// Pushes sealed records to the socket until none are left or the socket is full.
    pub fn flush(&mut self, sock: &mut TcpStream, io: &mut Readiness) -> io::Result<()> {
        self.push(sock, io, false)
    }

    fn push(&mut self, sock: &mut TcpStream, io: &mut Readiness, more: bool) -> io::Result<()> {
        while self.conn.wants_write() {
            if !io.writable {
                return Ok(());
            }
            let mut writer = SocketWriter { sock, io, more };
            match self.conn.write_tls(&mut writer) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    io.writable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queues close_notify (once) and pushes it.
    pub fn close_notify(&mut self, sock: &mut TcpStream, io: &mut Readiness) {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            self.conn.send_close_notify();
        }
        let _ = self.flush(sock, io);
    }
}

/// A short, fixed description of a TLS failure for logs and answers (no peer-controlled text).
pub fn describe(e: &io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "TLS connection failed";
    };
    use rustls::Error as E;
    match tls {
        E::InvalidMessage(_) => "invalid TLS message",
        E::PeerIncompatible(_) => "peer does not support our TLS parameters",
        E::PeerMisbehaved(_) => "peer broke the TLS protocol",
        E::AlertReceived(_) => "peer sent a TLS alert",
        E::InvalidCertificate(_) => "certificate rejected",
        E::NoCertificatesPresented => "no certificate presented",
        E::DecryptError => "TLS decryption failed",
        E::General(_) => "no certificate for the requested server name",
        _ => "TLS handshake failed",
    }
}
