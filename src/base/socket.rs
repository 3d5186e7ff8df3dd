//! Edge-triggered readiness bookkeeping and the read/write calls that keep it true.
//!
//! Sockets are registered once for both directions and never re-registered. A side is marked ready when
//! epoll says so and not ready once a call would block — or, as tokio does, once a read returns less than
//! it asked for or a write takes less than it was given (the kernel buffer was drained or filled, and the
//! next change will raise a new edge). That saves the extra call that would only return `WouldBlock`.

use super::buffer::Buffer;
use mio::event::Event;
use mio::net::TcpStream;
use std::io::{self, IoSlice, Read, Write};

/// What epoll has told us about one socket and we have not yet used up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer shut down its sending side (or the socket hung up): a read will return EOF.
    pub read_closed: bool,
    /// An error is pending on the socket.
    pub error: bool,
}

impl Readiness {
    /// Folds one event in.
    pub fn update(&mut self, event: &Event) {
        if event.is_readable() {
            self.readable = true;
        }
        if event.is_writable() {
            self.writable = true;
        }
        if event.is_read_closed() {
            self.read_closed = true;
            self.readable = true;
        }
        if event.is_error() {
            self.error = true;
            self.readable = true;
            self.writable = true;
        }
    }
}

/// Result of one read attempt.
#[derive(Debug)]
pub enum ReadOutcome {
    Data(usize),
    Eof,
    /// Nothing to read now (or no room in the buffer).
    Blocked,
    Error(io::Error),
}

/// Reads once into the free space of `buf`.
pub fn read_into(stream: &mut TcpStream, io: &mut Readiness, buf: &mut Buffer) -> ReadOutcome {
    let space = buf.space();
    let want = space.len();
    if want == 0 {
        return ReadOutcome::Blocked;
    }
    loop {
        match stream.read(space) {
            Ok(0) => return ReadOutcome::Eof,
            Ok(n) => {
                buf.fill(n);
                if n < want && !io.read_closed {
                    io.readable = false;
                }
                return ReadOutcome::Data(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.readable = false;
                return ReadOutcome::Blocked;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return ReadOutcome::Error(e),
        }
    }
}

/// Reads and discards, for lingering after a final answer.
pub fn read_discard(stream: &mut TcpStream, io: &mut Readiness) -> ReadOutcome {
    let mut scratch = [0u8; 4096];
    loop {
        match stream.read(&mut scratch) {
            Ok(0) => return ReadOutcome::Eof,
            Ok(n) => return ReadOutcome::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.readable = false;
                return ReadOutcome::Blocked;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return ReadOutcome::Error(e),
        }
    }
}

/// Result of one write attempt.
#[derive(Debug)]
pub enum WriteOutcome {
    Wrote(usize),
    Blocked,
    Error(io::Error),
}

/// Combined size up to which two slices are copied into one buffer and sent with a plain `send`.
const SMALL_WRITE: usize = 2048;

/// Writes two slices with one call (a head and the body bytes behind it). `more`: the same message
/// continues with bytes already waiting to be read, so the kernel may hold these until they come
/// (`MSG_MORE`): the peer then gets one segment and one wake-up instead of two.
pub fn write_two(
    stream: &mut TcpStream,
    io: &mut Readiness,
    a: &[u8],
    b: &[u8],
    more: bool,
) -> WriteOutcome {
    let total = a.len() + b.len();
    debug_assert!(total > 0);
    // Small enough to copy: one contiguous send is cheaper than writev's iovec handling.
    if !a.is_empty() && !b.is_empty() && total <= SMALL_WRITE {
        let mut joined = [0u8; SMALL_WRITE];
        joined[..a.len()].copy_from_slice(a);
        joined[a.len()..total].copy_from_slice(b);
        return write_two(stream, io, &joined[..total], &[], more);
    }
    let result = if more {
        let sock = socket2::SockRef::from(&*stream);
        if b.is_empty() {
            sock.send_with_flags(a, libc::MSG_MORE)
        } else {
            sock.send_vectored_with_flags(&[IoSlice::new(a), IoSlice::new(b)], libc::MSG_MORE)
        }
    } else if b.is_empty() {
        stream.write(a)
    } else if a.is_empty() {
        stream.write(b)
    } else {
        stream.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
    };
    match result {
        Ok(0) => WriteOutcome::Error(io::ErrorKind::WriteZero.into()),
        Ok(n) => {
            if n < total {
                io.writable = false;
            }
            WriteOutcome::Wrote(n)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            io.writable = false;
            WriteOutcome::Blocked
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => WriteOutcome::Blocked,
        Err(e) => WriteOutcome::Error(e),
    }
}
