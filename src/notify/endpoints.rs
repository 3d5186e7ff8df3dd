//! Where notifications meet the request path: the `notifications` request stage answers the publish
//! listener (`POST /publish`) and, on client listeners, `GET /.tether/notifications` (a poll, a long poll,
//! or the start of an SSE stream) and `POST /.tether/notifications/ack`; the `notifications` response
//! hook piggybacks pending notifications on responses of `notifications = true` routes.
//!
//! Like `auth::endpoints`, this is written against the stages' types, so it belongs with `proxy`.
//! A plain request costs the stage one prefix comparison of its path and the hook one boolean: nothing
//! is locked or allocated unless the route or the path is about notifications.

use super::hub::{Enqueued, Hub, Item, Stats};
use super::parse::{self, ParseError};
use super::queue::{self, QueueId};
use super::settings::Settings;
use crate::config::DeleteOn;
use crate::error::Termination;
use crate::proxy::stages::{Answer, Reply, Request, Response, Ticket, Verdict, Wait};
use std::sync::Arc;
use std::time::Instant;

/// A notification request's progress, kept in the plan across its waits.
#[derive(Debug)]
pub(crate) enum Progress {
    /// A long poll waiting for a notification until `until`, registered with `ticket`.
    Polling { until: Instant, ticket: Arc<Ticket> },
    /// A publish or an acknowledgement waiting for a replica; then `reply`.
    Syncing {
        ticket: Arc<Ticket>,
        reply: Box<Reply>,
    },
}

/// How an SSE stream starts (the session's `Stream` phase takes it from here).
#[derive(Debug)]
pub(crate) struct StreamStart {
    pub queue: QueueId,
    /// The client's `Last-Event-ID` (or `after=`): events after it.
    pub after: u64,
}

/// The request stage.
pub(crate) fn serve(r: &mut Request<'_>) -> Verdict {
    if r.cx.publish {
        return publish(r);
    }
    let path = r.head.path.of(r.bytes);
    if !path.starts_with(b"/.tether/notifications") {
        return Verdict::Continue;
    }
    let Some(settings) = r.cx.snapshot.notifications.clone() else {
        return Verdict::Continue;
    };
    match path {
        b"/.tether/notifications" => poll(r, &settings),
        b"/.tether/notifications/ack" => ack(r, &settings),
        _ => Verdict::Continue,
    }
}

fn answer(reply: Reply) -> Verdict {
    Verdict::Answer(Answer::Reply(Box::new(reply)))
}

fn json_error(status: u16, error: &str, message: &str) -> Verdict {
    answer(Reply::new(
        status,
        "application/json",
        serde_json::json!({ "error": error, "message": message }).to_string(),
    ))
}

fn bad_request(e: ParseError) -> Verdict {
    json_error(400, "invalid_request", &e.to_string())
}

fn method_not_allowed(allow: &'static str) -> Verdict {
    let mut reply = Reply::new(405, "text/plain", "method not allowed\n");
    reply.headers.push(("Allow", allow.into()));
    answer(reply)
}

fn header<'b>(r: &Request<'b>, name: &str) -> Option<&'b [u8]> {
    r.head.header(r.bytes, name)
}

/// The query string of the request target (after `?`).
fn query<'b>(r: &Request<'b>) -> &'b [u8] {
    let target = r.head.target.of(r.bytes);
    match target.iter().position(|&b| b == b'?') {
        Some(i) => &target[i + 1..],
        None => b"",
    }
}

/// The parts every endpoint needs: the hub and the store.
fn parts<'a>(r: &Request<'a>) -> Result<(&'a Hub, &'a crate::store::StoreWriter), Verdict> {
    match (r.cx.notify, r.cx.store) {
        (Some(h), Some(s)) => Ok((h, s)),
        _ => Err(Verdict::Answer(Answer::Refuse(Termination::Internal(
            "notifications not running",
        )))),
    }
}

/// The request's login session (cookie or bearer access token, verified as the auth stage does).
fn login(r: &mut Request<'_>) -> Result<QueueId, Verdict> {
    let required = || {
        json_error(
            401,
            "login_required",
            "notifications belong to a login session: send its cookie or bearer token",
        )
    };
    crate::proxy::stages::host_login(r)
        .map(|v| v.session_id)
        .ok_or_else(required)
}

/// `GET /.tether/notifications?after=ID[&wait=30s]`, or with `Accept: text/event-stream` an SSE
/// stream from `Last-Event-ID` (or `after`).
fn poll(r: &mut Request<'_>, settings: &Settings) -> Verdict {
    if !matches!(
        r.head.method,
        crate::http::Method::Get | crate::http::Method::Head
    ) {
        return method_not_allowed("GET, HEAD");
    }
    let (mut after, wait) = match parse::poll_query(query(r), settings.max_wait) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let q = match login(r) {
        Ok(q) => q,
        Err(v) => return v,
    };
    let (hub, store) = match parts(r) {
        Ok(p) => p,
        Err(v) => return v,
    };
    let stream = header(r, "accept").is_some_and(|a| {
        memchr::memmem::find(&a.to_ascii_lowercase(), b"text/event-stream").is_some()
    });
    if stream {
        if let Some(v) = header(r, "last-event-id") {
            // An id that is not one of ours is unknown: the stream starts with a reset.
            after = parse::id(v, "Last-Event-ID").unwrap_or(queue::MAX_ID);
        }
        return Verdict::Answer(Answer::Stream(Box::new(StreamStart { queue: q, after })));
    }
    let now = r.cx.unix_now;
    let (mut items, mut reset) = hub.pending_or_reset(store.store(), &q, after, now);
    if items.is_empty() && !reset && !wait.is_zero() {
        let until = match r.plan.notify.as_deref() {
            Some(Progress::Polling { until, .. }) => *until,
            _ => r.cx.now + wait,
        };
        if r.cx.now < until {
            let Some(ticket) = r.cx.ticket() else {
                return Verdict::Answer(Answer::Refuse(Termination::Internal(
                    "no wake-up channel",
                )));
            };
            hub.wait(&q, ticket.clone());
            // Registered before looking again: a notification landing in between wakes the ticket.
            (items, reset) = hub.pending_or_reset(store.store(), &q, after, now);
            if items.is_empty() && !reset {
                r.plan.notify = Some(Box::new(Progress::Polling {
                    until,
                    ticket: ticket.clone(),
                }));
                return Verdict::Wait(Wait::Ticket {
                    ticket,
                    until,
                    on_timeout: None,
                });
            }
        }
    }
    if let Some(p) = r.plan.notify.take() {
        if let Progress::Polling { ticket, .. } = *p {
            // Answered: the hub may forget this request (it would otherwise keep the ticket until the
            // queue's next notification).
            ticket.cancel();
        }
    }
    let mut body = String::from("{\"notifications\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"id\":");
        body.push_str(itoa::Buffer::new().format(item.id));
        if item.dropped > 0 {
            body.push_str(",\"dropped\":");
            body.push_str(itoa::Buffer::new().format(item.dropped));
        }
        body.push_str(",\"data\":");
        body.push_str(&String::from_utf8_lossy(&item.data));
        body.push('}');
    }
    body.push(']');
    if reset {
        body.push_str(",\"reset\":true");
    }
    body.push('}');
    delivered(hub, store, &q, &items, settings, now);
    let mut reply = Reply::new(200, "application/json", body);
    reply.headers.push(("Cache-Control", "no-store".into()));
    answer(reply)
}

/// After `items` went out: counted, and those to delete on delivery deleted — and the queue's
/// acknowledgement raised past them when nothing at or below them still waits for one (so a client
/// resuming from one of their ids is not told its id is unknown).
pub(crate) fn delivered(
    hub: &Hub,
    store: &crate::store::StoreWriter,
    q: &QueueId,
    items: &[Item],
    settings: &Settings,
    now: u32,
) {
    if items.is_empty() {
        return;
    }
    Stats::add(&hub.stats.delivered, items.len() as u64);
    let expires = now.saturating_add(settings.ttl);
    let mut highest = None;
    for item in items {
        if item.flags & queue::FLAG_DELETE_ON_DELIVERY == 0 {
            break;
        }
        highest = Some(item.id);
    }
    for item in items
        .iter()
        .filter(|i| i.flags & queue::FLAG_DELETE_ON_DELIVERY != 0)
    {
        let _ = queue::delete(store, q, item.id, expires);
    }
    if let Some(h) = highest {
        // Only a prefix of delete-on-delivery notifications moves the acknowledgement, and only when the
        // node holds nothing older that waits for an acknowledgement.
        let acked = queue::acked(store.store(), q, now);
        let older_waiting = hub.entries(q).is_some_and(|l| {
            l.iter().any(|e| {
                e.id > acked && e.id < items[0].id && e.flags & queue::FLAG_DELETE_ON_DELIVERY == 0
            })
        });
        if !older_waiting {
            let _ = queue::write_ack(store, q, h, expires, now, None);
        }
    }
}

/// `POST /.tether/notifications/ack` with `up_to=ID` (form, JSON, or the query): deletes every
/// notification of the session up to that id, on every node (a `sync` write: answered once a replica
/// holds the acknowledgement).
fn ack(r: &mut Request<'_>, settings: &Settings) -> Verdict {
    if let Some(p) = r.plan.notify.take() {
        if let Progress::Syncing { ticket, reply } = *p {
            return synced(r, &ticket, reply);
        }
    }
    if r.head.method != crate::http::Method::Post {
        return method_not_allowed("POST");
    }
    let Some(body) = r.body else {
        return Verdict::Wait(Wait::Body { limit: 8 * 1024 });
    };
    let content_type = header(r, "content-type")
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("");
    let up_to = match parse::ack_body(content_type, body, query(r)) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let q = match login(r) {
        Ok(q) => q,
        Err(v) => return v,
    };
    let (hub, store) = match parts(r) {
        Ok(p) => p,
        Err(v) => return v,
    };
    let now = r.cx.unix_now;
    let expires = now.saturating_add(settings.ttl);
    // The records go (tombstones, so the memory is freed everywhere); the acknowledgement record also
    // covers notifications this node has not received yet. It is written last, as a sync write.
    if let Some(list) = hub.entries(&q) {
        for e in list.iter().filter(|e| e.id <= up_to) {
            let _ = queue::delete(store, &q, e.id, expires);
        }
    }
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")));
    };
    let done = ticket.clone();
    let _ = queue::write_ack(
        store,
        &q,
        up_to,
        expires,
        now,
        Some(Arc::new(move || done.complete())),
    );
    Stats::add(&hub.stats.acks, 1);
    let reply = Reply::new(
        200,
        "application/json",
        format!("{{\"acknowledged\":{up_to}}}"),
    );
    wait_sync(r, ticket, reply)
}

/// Parks the request until `ticket` (a sync write's acknowledgement), then answers `reply`.
fn wait_sync(r: &mut Request<'_>, ticket: Arc<Ticket>, reply: Reply) -> Verdict {
    if ticket.is_done() {
        return answer(reply);
    }
    r.plan.notify = Some(Box::new(Progress::Syncing {
        ticket: ticket.clone(),
        reply: Box::new(reply),
    }));
    Verdict::Wait(Wait::replica(ticket, &r.cx))
}

/// A sync write's wait is over: acknowledged, or timed out under the `degrade` policy.
fn synced(r: &mut Request<'_>, ticket: &Ticket, reply: Box<Reply>) -> Verdict {
    if !ticket.is_done() {
        r.cx.metrics.degraded_writes.inc();
        log::warn!("notifications: answered without a replica's acknowledgement (degraded)");
    }
    Verdict::Answer(Answer::Reply(reply))
}

/// The publish listener: `POST /publish` with the bearer secret; anything else 404 or 405.
fn publish(r: &mut Request<'_>) -> Verdict {
    if let Some(p) = r.plan.notify.take() {
        if let Progress::Syncing { ticket, reply } = *p {
            return synced(r, &ticket, reply);
        }
    }
    if r.head.path.of(r.bytes) != b"/publish" {
        return json_error(
            404,
            "not_found",
            "the publish listener serves POST /publish only",
        );
    }
    if r.head.method != crate::http::Method::Post {
        return method_not_allowed("POST");
    }
    let Some(settings) = r.cx.snapshot.notifications.clone() else {
        return json_error(503, "unavailable", "notifications are not configured");
    };
    let (hub, store) = match parts(r) {
        Ok(p) => p,
        Err(v) => return v,
    };
    let presented = header(r, "authorization").and_then(crate::auth::session::bearer);
    if !presented.is_some_and(|p| settings.secret_matches(p)) {
        Stats::add(&hub.stats.unauthorized, 1);
        let mut reply = Reply::new(
            401,
            "application/json",
            r#"{"error":"unauthorized","message":"wrong or missing bearer secret"}"#,
        );
        reply
            .headers
            .push(("WWW-Authenticate", "Bearer realm=\"tether-publish\"".into()));
        return answer(reply);
    }
    let Some(body) = r.body else {
        return Verdict::Wait(Wait::Body {
            limit: parse::MAX_PUBLISH_BODY,
        });
    };
    let p = match parse::publish_body(body) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let tenant =
        r.cx.snapshot
            .auth
            .as_deref()
            .and_then(|a| a.pools.first())
            .map_or("", |p| &*p.tenant);
    let flags = match settings.delete_on {
        DeleteOn::Delivery => queue::FLAG_DELETE_ON_DELIVERY,
        DeleteOn::Ack => 0,
    };
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")));
    };
    let done = ticket.clone();
    let outcome = hub.enqueue(
        store,
        &settings,
        tenant,
        &p.target,
        &p.data,
        flags,
        r.cx.unix_now,
        Some(Arc::new(move || done.complete())),
    );
    match outcome {
        Enqueued::Queued { id, queues, full } => {
            let reply = Reply::new(
                202,
                "application/json",
                format!("{{\"id\":{id},\"queued\":{queues},\"full\":{full}}}"),
            );
            wait_sync(r, ticket, reply)
        }
        Enqueued::NoSession => answer(Reply::new(
            202,
            "application/json",
            r#"{"id":null,"queued":0,"dropped":"no live login session"}"#,
        )),
        Enqueued::Full => json_error(
            507,
            "queue_full",
            "every queue this notification is for is full (when_full = \"refuse\")",
        ),
    }
}

/// Response hook: on a `notifications = true` route, the session's pending notifications go out in
/// `Tether-Notifications` (a JSON array, ASCII only) within `piggyback_bytes`; what does not fit is
/// announced by `Tether-Notifications-Pending: count=N, next=ID` for the client to poll.
pub(crate) fn piggyback(r: &mut Response<'_>) {
    let Some(q) = r.plan.login_id else {
        return;
    };
    let Some(snapshot) = r.plan.snapshot.as_deref() else {
        return;
    };
    if !snapshot
        .routes
        .get(r.plan.route)
        .is_some_and(|x| x.notifications)
    {
        return;
    }
    let (Some(hub), Some(store), Some(settings)) =
        (r.notify, r.store, snapshot.notifications.as_deref())
    else {
        return;
    };
    if !hub.has_entries(&q) {
        return;
    }
    let (items, _) = hub.pending(store.store(), &q, 0, r.unix_now);
    let sent = write_piggyback(r.out, &items, settings.piggyback_bytes);
    delivered(hub, store, &q, &items[..sent], settings, r.unix_now);
}

/// Writes the header lines for `items` within `budget` bytes; returns how many items went in.
fn write_piggyback(out: &mut Vec<u8>, items: &[Item], budget: usize) -> usize {
    const NAME: &[u8] = b"Tether-Notifications: [";
    // Room kept for the pending line, should it be needed.
    const PENDING_ROOM: usize = 80;
    let mut line = Vec::new();
    let mut sent = 0;
    for item in items {
        let mut one = Vec::new();
        one.extend_from_slice(b"{\"id\":");
        one.extend_from_slice(itoa::Buffer::new().format(item.id).as_bytes());
        if item.dropped > 0 {
            one.extend_from_slice(b",\"dropped\":");
            one.extend_from_slice(itoa::Buffer::new().format(item.dropped).as_bytes());
        }
        one.extend_from_slice(b",\"data\":");
        ascii_json(&item.data, &mut one);
        one.push(b'}');
        let total = NAME.len() + line.len() + usize::from(!line.is_empty()) + one.len() + 3;
        let room = if sent + 1 < items.len() {
            budget.saturating_sub(PENDING_ROOM)
        } else {
            budget
        };
        if total > room {
            break;
        }
        if !line.is_empty() {
            line.push(b',');
        }
        line.extend_from_slice(&one);
        sent += 1;
    }
    if sent > 0 {
        out.extend_from_slice(NAME);
        out.extend_from_slice(&line);
        out.extend_from_slice(b"]\r\n");
    }
    if let Some(next) = items.get(sent) {
        out.extend_from_slice(b"Tether-Notifications-Pending: count=");
        out.extend_from_slice(itoa::Buffer::new().format(items.len() - sent).as_bytes());
        out.extend_from_slice(b", next=");
        out.extend_from_slice(itoa::Buffer::new().format(next.id).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    sent
}

/// Copies JSON text with every non-ASCII character written as `\uXXXX` escapes (valid JSON, and a
/// header value of visible ASCII only). Control characters cannot occur: the text is serde_json's.
fn ascii_json(text: &[u8], out: &mut Vec<u8>) {
    let s = String::from_utf8_lossy(text);
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c as u8);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.extend_from_slice(format!("\\u{u:04x}").as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, data: &str) -> Item {
        Item {
            id,
            flags: 0,
            dropped: 0,
            data: data.as_bytes().into(),
        }
    }

    #[test]
    fn piggyback_stays_within_the_budget_and_announces_the_rest() {
        let items: Vec<Item> = (1..=20)
            .map(|i| item(i, &format!("{{\"n\":\"{}\"}}", "x".repeat(40))))
            .collect();
        for budget in [0, 100, 300, 1000, 100_000] {
            let mut out = Vec::new();
            let sent = write_piggyback(&mut out, &items, budget);
            let text = String::from_utf8(out).unwrap();
            let main = text
                .lines()
                .find(|l| l.starts_with("Tether-Notifications:"))
                .map_or(0, |l| l.len() + 2);
            assert!(
                main + 80 <= budget.max(80) || sent == items.len(),
                "{budget}: {text}"
            );
            assert!(
                text.len() <= budget.max(80),
                "{budget}: {} > budget",
                text.len()
            );
            if sent < items.len() {
                assert!(text.contains(&format!("count={}, next={}", 20 - sent, sent + 1)));
            }
            if budget == 100_000 {
                assert_eq!(sent, 20);
            }
        }
    }

    #[test]
    fn header_json_is_ascii() {
        let mut out = Vec::new();
        ascii_json("{\"s\":\"héllo 😀\"}".as_bytes(), &mut out);
        assert!(out.is_ascii());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["s"], "héllo 😀");
    }
}
