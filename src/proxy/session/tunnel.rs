//! After `101 Switching Protocols`: raw bytes both ways until both sides close. The tunnel is a state of
//! its own: it owns its half-close flags and byte counts, and no exchange field changes meaning in it.

use super::*;

/// A protocol-switched connection (WebSocket and the like).
#[derive(Debug, Default)]
pub(super) struct Tunnel {
    /// The client closed its sending side (or the connection).
    client_eof: bool,
    /// The backend closed its sending side.
    backend_eof: bool,
    /// The client's half-close was passed on to the backend.
    backend_shut: bool,
    /// The backend's half-close was passed on to the client.
    client_shut: bool,
    /// Bytes carried each way.
    to_backend: u64,
    to_client: u64,
}

impl Session {
    /// The backend switched protocols: bytes already buffered either way are the new protocol's first.
    pub(super) fn enter_tunnel(&mut self, cx: &mut Ctx) {
        if let Some(o) = self.req_out.take() {
            cx.io.put_vec(o);
        }
        self.x.head_sent = 0;
        self.x.req_pending = 0;
        self.x.resp_pending = 0;
        self.tunnel = Some(Tunnel::default());
        self.phase = Phase::Tunnel;
    }

    pub(super) fn step_tunnel(&mut self, cx: &mut Ctx) -> bool {
        let (Some(key), Some(mut t)) = (self.upstream, self.tunnel.take()) else {
            self.phase = Phase::Closed;
            return true;
        };
        let progress = self.pump_tunnel(cx, key, &mut t);
        if self.phase == Phase::Tunnel {
            if t.client_eof && t.backend_shut && t.backend_eof && t.client_shut {
                self.x.termination = Termination::Completed;
                self.phase = Phase::Closed;
            }
            self.tunnel = Some(t);
        }
        progress
    }

    /// Moves what can move both ways; `false` when nothing did.
    fn pump_tunnel(&mut self, cx: &mut Ctx, key: usize, t: &mut Tunnel) -> bool {
        let mut progress = false;
        let u = &mut cx.upstreams.slab[key];

        // Client → backend.
        if let Some(buf) = &mut self.in_buf {
            if !buf.is_empty() && u.io.writable {
                match u.stream.write_two(&mut u.io, buf.data(), &[], false) {
                    WriteOutcome::Wrote(n) => {
                        buf.consume(n);
                        t.to_backend += n as u64;
                        self.x.bytes_in += n as u64;
                        self.last_upstream_io = cx.now;
                        progress = true;
                    }
                    WriteOutcome::Blocked => {}
                    WriteOutcome::Error(_) => {
                        self.abort(cx, Termination::UpstreamClosed);
                        return true;
                    }
                }
            }
        }
        if !t.client_eof && self.io.readable {
            let buf = self.in_buf.get_or_insert_with(|| cx.io.buffers.get());
            if buf.free() > 0 {
                match self.client.read_into(&mut self.io, buf) {
                    ReadOutcome::Data(_) => {
                        self.last_client_io = cx.now;
                        progress = true;
                    }
                    ReadOutcome::Blocked => {}
                    ReadOutcome::Eof | ReadOutcome::Error(_) => {
                        t.client_eof = true;
                        progress = true;
                    }
                }
            }
        }
        if t.client_eof && self.in_buf.as_ref().is_none_or(Buffer::is_empty) && !t.backend_shut {
            // Pass the half-close on once everything before it was delivered.
            u.stream.shutdown_write(&mut u.io);
            t.backend_shut = true;
        }

        // Backend → client: the 101 head first, then raw bytes.
        let pending = self.up_buf.as_ref().map_or(0, Buffer::len);
        let before = self.x.bytes_out;
        match self.write_client(cx, pending, false) {
            Err(()) => return true,
            Ok(Some(_)) => progress = true,
            Ok(None) => {}
        }
        t.to_client += self.x.bytes_out - before;
        let u = &mut cx.upstreams.slab[key];
        if !t.backend_eof && u.io.readable {
            let buf = self.up_buf.get_or_insert_with(|| cx.io.buffers.get());
            if buf.free() > 0 {
                match u.stream.read_into(&mut u.io, buf) {
                    ReadOutcome::Data(_) => {
                        self.last_upstream_io = cx.now;
                        progress = true;
                    }
                    ReadOutcome::Blocked => {}
                    ReadOutcome::Eof | ReadOutcome::Error(_) => {
                        t.backend_eof = true;
                        progress = true;
                    }
                }
            }
        }
        let up_flushed =
            self.resp_out_pending() == 0 && self.up_buf.as_ref().is_none_or(Buffer::is_empty);
        if t.backend_eof && up_flushed && !t.client_shut {
            self.client.shutdown_write(&mut self.io);
            t.client_shut = true;
        }
        progress
    }
}
