//! The `Stream` phase: tether's own long-lived response, a Server-Sent Events stream of a login
//! session's notifications. The head goes out once (close-delimited: no length, `Connection: close`);
//! then the stream's state (`notify::stream::Stream`) is asked for events whenever the session is woken
//! (a notification landed: its ticket was completed by whichever thread applied the record) or its
//! keep-alive is due. An idle stream holds no buffer: its output vector goes back to the worker's pool
//! once written, and the read side only looks for the client's close.

use super::*;
use crate::notify::endpoints::StreamStart;
use crate::notify::stream::{Fill, Stream};

impl Session {
    /// Answers with the stream's head and enters the `Stream` phase.
    pub(super) fn start_stream(&mut self, cx: &mut Ctx, start: &StreamStart) {
        cx.metrics.answered.inc();
        let consumed = self.x.head_len + self.x.body_len;
        if let Some(buf) = &mut self.in_buf {
            buf.consume(consumed.min(buf.len()));
        }
        self.x.head_len = 0;
        self.x.body_len = 0;
        let out = self.resp_out.get_or_insert_with(|| cx.io.take_vec());
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
              X-Accel-Buffering: no\r\nConnection: close\r\n\r\n",
        );
        self.close_after = true;
        self.x.status = 200;
        self.x.termination = Termination::Answered;
        self.x.response_started = true;
        self.x.response_us = Some(self.x.micros_since_start(cx.now));
        self.stream = Some(Box::new(Stream::new(start, cx.now)));
        self.phase = Phase::Stream;
    }

    /// Writes what is queued, watches for the client's close, and asks the stream for more when due.
    pub(super) fn step_stream(&mut self, cx: &mut Ctx) -> bool {
        if self.resp_out_pending() > 0 {
            if !self.io.writable {
                return false;
            }
            let out =
                &self.resp_out.as_ref().expect("pending implies present")[self.resp_out_sent..];
            return match self.client.write_two(&mut self.io, out, &[], false) {
                WriteOutcome::Wrote(n) => {
                    self.resp_out_sent += n;
                    self.x.bytes_out += n as u64;
                    self.last_client_io = cx.now;
                    true
                }
                WriteOutcome::Blocked => false,
                WriteOutcome::Error(_) => {
                    self.abort(cx, Termination::ClientClosed);
                    true
                }
            };
        }
        if self.client.has_pending_output() {
            return false;
        }
        // Written: the vector goes back to the pool (an idle stream holds none).
        self.recycle_resp_out(cx);
        if self.io.readable {
            // A client of an event stream sends nothing more; whatever it sends is dropped, and its
            // close ends the stream.
            match self.client.read_discard(&mut self.io) {
                ReadOutcome::Data(_) => return true,
                ReadOutcome::Blocked => {}
                ReadOutcome::Eof | ReadOutcome::Error(_) => {
                    self.phase = Phase::Closed;
                    return true;
                }
            }
        }
        if self.io.read_closed || self.io.error {
            self.phase = Phase::Closed;
            return true;
        }
        if cx.draining {
            self.begin_closing(cx);
            return true;
        }
        let (Some(stream), Some(hub), Some(store)) = (
            self.stream.as_mut(),
            cx.notify.as_deref(),
            cx.store.as_ref(),
        ) else {
            self.begin_closing(cx);
            return true;
        };
        let Some(settings) = cx.snapshot.notifications.clone() else {
            self.begin_closing(cx);
            return true;
        };
        let mut out = cx.io.take_vec();
        let wake = cx.wakers.target(self.key, self.id);
        let peer = cx.wakers.own_peer();
        let fill = stream.fill(
            hub,
            store,
            &settings,
            cx.now,
            cx.unix_now,
            || Some(crate::proxy::stages::Ticket::new(wake, peer?)),
            &mut out,
        );
        match fill {
            Fill::Idle => {
                cx.io.put_vec(out);
                false
            }
            Fill::Wrote => {
                self.resp_out = Some(out);
                self.resp_out_sent = 0;
                true
            }
            Fill::Ended => {
                self.resp_out = Some(out);
                self.resp_out_sent = 0;
                self.begin_closing(cx);
                true
            }
        }
    }
}
