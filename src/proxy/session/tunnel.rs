//! After `101 Switching Protocols`: raw bytes both ways until both sides close.

use super::*;

impl Session {
    pub(super) fn enter_tunnel(&mut self, cx: &mut Ctx) {
        if let Some(o) = self.req_out.take() {
            cx.put_vec(o);
        }
        self.x.head_sent = 0;
        self.x.req_pending = self.in_buf.as_ref().map_or(0, Buffer::len);
        self.x.resp_pending = self.up_buf.as_ref().map_or(0, Buffer::len);
        self.phase = Phase::Tunnel;
    }

    pub(super) fn step_tunnel(&mut self, cx: &mut Ctx) -> bool {
        let Some(key) = self.upstream else {
            self.phase = Phase::Closed;
            return true;
        };
        let mut progress = false;
        let u = &mut cx.upstreams[key];

        // Client → backend.
        if let Some(buf) = &mut self.in_buf {
            if !buf.is_empty() && u.io.writable {
                match u.stream.write_two(&mut u.io, buf.data(), &[], false) {
                    WriteOutcome::Wrote(n) => {
                        buf.consume(n);
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
        if !self.client_eof && self.io.readable {
            let buf = self.in_buf.get_or_insert_with(|| cx.buffers.get());
            if buf.free() > 0 {
                match self.client.read_into(&mut self.io, buf) {
                    ReadOutcome::Data(_) => {
                        self.last_client_io = cx.now;
                        progress = true;
                    }
                    ReadOutcome::Blocked => {}
                    ReadOutcome::Eof | ReadOutcome::Error(_) => {
                        self.client_eof = true;
                        progress = true;
                    }
                }
            }
        }
        if self.client_eof
            && self.in_buf.as_ref().is_none_or(Buffer::is_empty)
            && !self.x.request_written
        {
            // Pass the half-close on once everything before it was delivered.
            u.stream.shutdown_write(&mut u.io);
            self.x.request_written = true;
        }

        // Backend → client: the 101 head first, then raw bytes.
        let pending = self.up_buf.as_ref().map_or(0, Buffer::len);
        match self.write_client(cx, pending, false) {
            Err(()) => return true,
            Ok(Some(_)) => progress = true,
            Ok(None) => {}
        }
        let u = &mut cx.upstreams[key];
        if !self.x.upstream_eof && u.io.readable {
            let buf = self.up_buf.get_or_insert_with(|| cx.buffers.get());
            if buf.free() > 0 {
                match u.stream.read_into(&mut u.io, buf) {
                    ReadOutcome::Data(_) => {
                        self.last_upstream_io = cx.now;
                        progress = true;
                    }
                    ReadOutcome::Blocked => {}
                    ReadOutcome::Eof | ReadOutcome::Error(_) => {
                        self.x.upstream_eof = true;
                        progress = true;
                    }
                }
            }
        }
        let up_flushed =
            self.resp_out_pending() == 0 && self.up_buf.as_ref().is_none_or(Buffer::is_empty);
        if self.x.upstream_eof && up_flushed && !self.shutdown_sent {
            self.client.shutdown_write(&mut self.io);
            self.shutdown_sent = true;
        }
        if self.client_eof && self.x.request_written && self.x.upstream_eof && self.shutdown_sent {
            self.x.termination = Termination::Completed;
            self.phase = Phase::Closed;
            return true;
        }
        progress
    }
}
