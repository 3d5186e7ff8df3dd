//! A live SSE stream's state: which queue, how far it delivered, the ticket that wakes it when a
//! notification lands, and when the next keep-alive comment is due. The session's `Stream` phase
//! (`proxy::session::stream`) owns one and asks it for bytes whenever the stream is woken or its
//! keep-alive is due; between those it holds no buffer — only this small struct and one ticket.

use super::endpoints::{StreamStart, delivered};
use super::hub::Hub;
use super::queue::QueueId;
use super::settings::Settings;
use super::sse;
use crate::proxy::stages::Ticket;
use crate::store::{Kind, StoreWriter};
use std::sync::Arc;
use std::time::Instant;

/// One client's event stream.
#[derive(Debug)]
pub(crate) struct Stream {
    queue: QueueId,
    /// The last id delivered on this stream (or the client's `Last-Event-ID`).
    cursor: u64,
    /// Nothing written yet: the first fill checks the client's id (a reset when unknown).
    first: bool,
    ticket: Option<Arc<Ticket>>,
    pub keepalive_at: Instant,
}

/// What [`Stream::fill`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Nothing due (not woken, keep-alive not due).
    Idle,
    /// Bytes were written to `out`.
    Wrote,
    /// The login session ended: after what was written, the stream ends.
    Ended,
}

impl Drop for Stream {
    /// The stream ended: its registration in the hub is dropped with the queue's next wake or
    /// registration (the ticket reads as done).
    fn drop(&mut self) {
        if let Some(t) = &self.ticket {
            t.cancel();
        }
    }
}

impl Stream {
    pub(crate) fn new(start: &StreamStart, now: Instant) -> Stream {
        Stream {
            queue: start.queue,
            cursor: start.after,
            first: true,
            ticket: None,
            keepalive_at: now,
        }
    }

    /// Writes what is due to `out`: on the first call, the reset event when the client's id is
    /// unknown, then every notification after the cursor; later, what landed since (when woken), or a
    /// keep-alive comment (when due). Re-arms its ticket before reading the queue, so a notification
    /// landing meanwhile wakes it again rather than being missed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fill(
        &mut self,
        hub: &Hub,
        store: &StoreWriter,
        settings: &Settings,
        now: Instant,
        unix_now: u32,
        ticket: impl FnOnce() -> Option<Arc<Ticket>>,
        out: &mut Vec<u8>,
    ) -> Fill {
        let woken = self.ticket.as_ref().is_none_or(|t| t.is_done());
        let keepalive = now >= self.keepalive_at;
        if !self.first && !woken && !keepalive {
            return Fill::Idle;
        }
        if store
            .get(Kind::LoginSession, &self.queue, unix_now)
            .is_none()
        {
            out.extend_from_slice(b"event: end\ndata: {\"reason\":\"session ended\"}\n\n");
            return Fill::Ended;
        }
        if woken {
            self.ticket = ticket();
            if let Some(t) = &self.ticket {
                hub.wait(&self.queue, t.clone());
            }
        }
        let (items, reset) = if self.first {
            hub.pending_or_reset(store.store(), &self.queue, self.cursor, unix_now)
        } else {
            // Live: whatever came after the last one sent (the cursor is an id this stream delivered,
            // so a later drop or acknowledgement of it is no reason for a reset).
            (
                hub.pending(store.store(), &self.queue, self.cursor, unix_now)
                    .0,
                false,
            )
        };
        let before = out.len();
        if reset {
            sse::write_reset(out, self.cursor);
        }
        for item in &items {
            sse::write_item(out, item);
            self.cursor = item.id;
        }
        delivered(hub, store, &self.queue, &items, settings, unix_now);
        if self.first {
            // Tells EventSource how soon to reconnect after a lost connection.
            out.extend_from_slice(b"retry: 1000\n\n");
        }
        if out.len() == before && keepalive {
            sse::write_keepalive(out);
        }
        self.first = false;
        if out.len() > before {
            self.keepalive_at = now + settings.keepalive;
            Fill::Wrote
        } else {
            Fill::Idle
        }
    }
}
