//! Where uploads meet the request path: the `upload_resources` request stage (before `route`) answers
//! `/.tether/uploads/ID` — `HEAD`, `PATCH`, `DELETE`, `OPTIONS` — and the `upload_creation` stage (after
//! `quota`, so the route and the login are known) takes a `POST` that creates an upload on an
//! `uploads = true` route's path (tus: `Tus-Resumable`; the IETF draft: `Upload-Complete`).
//!
//! An append waits three times without holding its worker, each on a ticket: the spool's thread checks
//! the checksum and writes the file; a replica acknowledges the chunk records and the new offset (a sync
//! write); and, once the upload is complete, the spool's thread forwards it to a backend. Written against
//! the stages' types, so it belongs with `proxy`. A plain request costs one prefix comparison (resources)
//! and one boolean (creation).

use super::disk::SpoolError;
use super::forward::{self, Answer as Backend, ForwardError};
use super::state::{self, CHUNK, Proto, Upload, UploadId};
use super::{BusyGuard, Spool};
use crate::error::Termination;
use crate::proxy::stages::{Answer, Reply, Request, Ticket, Verdict, Wait};
use crate::store::Kind;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &[u8] = b"/.tether/uploads/";
const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,creation-with-upload,expiration,checksum,termination";

/// An append (or a creation with bytes, or a completed upload's forward) under way, kept in the plan.
pub(crate) struct Progress {
    job: Job,
    ticket: Arc<Ticket>,
    step: Step,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("upload", &state::hex(&self.job.id))
            .finish()
    }
}

type Slot<T> = Arc<Mutex<Option<T>>>;

enum Step {
    /// The spool's thread checks and writes the bytes; then the chunk records to replicate.
    Writing(Slot<Result<state::Chunks, SpoolError>>),
    /// A replica acknowledges the new offset.
    Syncing,
    /// The spool's thread forwards the completed upload.
    Forwarding(Slot<Result<Backend, ForwardError>>),
}

struct Job {
    id: UploadId,
    upload: Upload,
    /// The bytes of this request: how many, and whether the client said they are the last (IETF).
    len: u64,
    last: bool,
    /// The request created the upload (answer 201 with its `Location`).
    created: bool,
    _busy: BusyGuard,
}

fn answer(reply: Reply) -> Verdict {
    Verdict::Answer(Answer::Reply(Box::new(reply)))
}

fn header<'b>(r: &Request<'b>, name: &str) -> Option<&'b [u8]> {
    r.head.header(r.bytes, name)
}

fn spool<'a>(r: &Request<'a>) -> Option<(&'a Spool, Arc<crate::config::UploadsConfig>)> {
    Some((r.cx.spool?, r.cx.snapshot.uploads.clone()?))
}

/// A refusal in the upload's protocol: tus gets text and `Tus-Resumable`, the IETF draft problem JSON.
fn refuse(proto: Proto, status: u16, reason: &str) -> Verdict {
    let mut reply = match proto {
        Proto::Tus => {
            let mut reply = Reply::new(status, "text/plain", format!("{reason}\n"));
            reply.headers.push(("Tus-Resumable", TUS_VERSION.into()));
            reply
        }
        Proto::Ietf => Reply::new(
            status,
            "application/problem+json",
            serde_json::json!({ "title": reason }).to_string(),
        ),
    };
    if status == 412 {
        reply.headers.push(("Tus-Version", TUS_VERSION.into()));
    }
    answer(reply)
}

/// 409 for an offset that is not the acknowledged one.
fn mismatch(proto: Proto, expected: u64, provided: u64) -> Verdict {
    match proto {
        Proto::Tus => {
            let mut reply = Reply::new(
                409,
                "text/plain",
                format!("Upload-Offset {provided} is not the upload's offset {expected}\n"),
            );
            reply.headers.push(("Tus-Resumable", TUS_VERSION.into()));
            reply.headers.push(("Upload-Offset", expected.to_string()));
            answer(reply)
        }
        Proto::Ietf => {
            let mut reply = Reply::new(
                409,
                "application/problem+json",
                serde_json::json!({
                    "type": "https://iana.org/assignments/http-problem-types#mismatching-upload-offset",
                    "title": "offset from request does not match offset of resource",
                    "expected-offset": expected,
                    "provided-offset": provided,
                })
                .to_string(),
            );
            reply.headers.push(("Upload-Offset", expected.to_string()));
            answer(reply)
        }
    }
}

fn tus_options(settings: &crate::config::UploadsConfig) -> Verdict {
    let mut reply = Reply::new(204, "text/plain", Vec::new());
    reply.headers.push(("Tus-Resumable", TUS_VERSION.into()));
    reply.headers.push(("Tus-Version", TUS_VERSION.into()));
    reply.headers.push(("Tus-Extension", TUS_EXTENSIONS.into()));
    reply
        .headers
        .push(("Tus-Max-Size", settings.max_size.to_string()));
    reply
        .headers
        .push(("Tus-Checksum-Algorithm", "sha256".into()));
    reply.headers.push(("Upload-Limit", limit(settings)));
    answer(reply)
}

fn limit(settings: &crate::config::UploadsConfig) -> String {
    format!(
        "max-size={}, max-append-size={}, expires={}",
        settings.max_size,
        settings.max_chunk,
        settings.expiry.as_secs()
    )
}

/// The request stage for `/.tether/uploads/ID`.
pub(crate) fn upload_resources(r: &mut Request<'_>) -> Verdict {
    let path = r.head.path.of(r.bytes);
    if !path.starts_with(PREFIX) {
        return Verdict::Continue;
    }
    let Some((spool, settings)) = spool(r) else {
        return Verdict::Continue;
    };
    if let Some(p) = r.plan.upload.take() {
        return resume(r, spool, &settings, *p);
    }
    let method = r.head.method_span.of(r.bytes);
    if method == b"OPTIONS" {
        return tus_options(&settings);
    }
    let Some(id) = state::parse_id(&path[PREFIX.len()..]) else {
        return refuse(Proto::Tus, 404, "no such upload");
    };
    let now = r.cx.unix_now;
    let Some(upload) = Upload::get(&spool.shared.store, &id, now) else {
        return refuse(proto_of(r), 404, "no such upload, or it expired");
    };
    let proto = upload.proto;
    if proto == Proto::Tus && header(r, "tus-resumable") != Some(TUS_VERSION.as_bytes()) {
        return refuse(proto, 412, "Tus-Resumable: 1.0.0 is required");
    }
    // Another user's or another session's upload is not there, as far as this client can tell.
    if !upload.user.is_empty() && !owner(r, &upload) {
        return refuse(proto, 404, "no such upload");
    }
    match method {
        b"HEAD" => head(&upload, &settings),
        b"PATCH" => patch(r, spool, &settings, id, upload),
        b"DELETE" => delete(r, spool, id, &upload),
        _ => {
            let mut reply = Reply::new(405, "text/plain", "method not allowed\n");
            reply
                .headers
                .push(("Allow", "HEAD, PATCH, DELETE, OPTIONS".into()));
            answer(reply)
        }
    }
}

/// The protocol a request speaks, by its headers (for answers before the upload is known).
fn proto_of(r: &Request<'_>) -> Proto {
    if header(r, "tus-resumable").is_some() {
        Proto::Tus
    } else {
        Proto::Ietf
    }
}

/// Whether the request's login (cookie or bearer token, verified as the auth stage does) is the
/// upload's owner: the same user and the same login session.
fn owner(r: &mut Request<'_>, upload: &Upload) -> bool {
    crate::proxy::stages::host_login(r).is_some_and(|v| {
        v.session.user == upload.user && state::hex(&v.session_id) == upload.session
    })
}

fn head(upload: &Upload, settings: &crate::config::UploadsConfig) -> Verdict {
    let status = match upload.proto {
        Proto::Tus => 200,
        Proto::Ietf => 204,
    };
    let mut reply = Reply::new(status, "text/plain", Vec::new());
    reply.headers.push(("Cache-Control", "no-store".into()));
    reply
        .headers
        .push(("Upload-Offset", upload.offset.to_string()));
    if let Some(length) = upload.length {
        reply.headers.push(("Upload-Length", length.to_string()));
    }
    match upload.proto {
        Proto::Tus => {
            reply.headers.push(("Tus-Resumable", TUS_VERSION.into()));
            if !upload.metadata.is_empty() {
                reply
                    .headers
                    .push(("Upload-Metadata", upload.metadata.clone()));
            }
            reply
                .headers
                .push(("Upload-Expires", state::http_date(upload.expires)));
        }
        Proto::Ietf => {
            let done = if upload.complete() { "?1" } else { "?0" };
            reply.headers.push(("Upload-Complete", done.into()));
            reply.headers.push(("Upload-Limit", limit(settings)));
        }
    }
    answer(reply)
}

/// The admin API's cancel (`DELETE /api/uploads/ID`): what a client's `DELETE` does — the records become
/// tombstones everywhere, every node's sweep removes its file — on the admin call's request. `false` while
/// an append or a forward holds the upload.
pub(crate) fn cancel(r: &Request<'_>, spool: &Spool, id: UploadId, upload: &Upload) -> bool {
    let Some(_busy) = spool.claim(id) else {
        return false;
    };
    remove_records(r, &id, upload);
    let shared = spool.shared.clone();
    let _ = spool.pool.submit(Box::new(move || shared.remove(&id)));
    true
}

/// `DELETE`: the upload's records become tombstones everywhere; every node's sweep removes its file.
fn delete(r: &mut Request<'_>, spool: &Spool, id: UploadId, upload: &Upload) -> Verdict {
    let Some(_busy) = spool.claim(id) else {
        return refuse(upload.proto, 409, "the upload is being appended to");
    };
    remove_records(r, &id, upload);
    let shared = spool.shared.clone();
    let _ = spool.pool.submit(Box::new(move || shared.remove(&id)));
    let mut reply = Reply::new(204, "text/plain", Vec::new());
    if upload.proto == Proto::Tus {
        reply.headers.push(("Tus-Resumable", TUS_VERSION.into()));
    }
    answer(reply)
}

fn remove_records(r: &Request<'_>, id: &UploadId, upload: &Upload) {
    let Some(store) = r.cx.store else {
        return;
    };
    let expires = upload.expires;
    let bytes = upload.length.unwrap_or(upload.offset).max(upload.offset);
    for index in 0..bytes.div_ceil(CHUNK) {
        let _ = store.write(state::record(
            Kind::UploadChunk,
            &state::chunk_key(id, index),
            None,
            expires,
        ));
    }
    let _ = store.write(state::record(Kind::Upload, id, None, expires));
}

/// `PATCH /.tether/uploads/ID`: an append at the acknowledged offset.
fn patch(
    r: &mut Request<'_>,
    spool: &Spool,
    settings: &crate::config::UploadsConfig,
    id: UploadId,
    upload: Upload,
) -> Verdict {
    let proto = upload.proto;
    let content_type = header(r, "content-type").map(<[u8]>::trim_ascii);
    let wanted: &[u8] = match proto {
        Proto::Tus => b"application/offset+octet-stream",
        Proto::Ietf => b"application/partial-upload",
    };
    if content_type != Some(wanted) {
        return refuse(proto, 415, "PATCH needs the protocol's Content-Type");
    }
    let Some(offset) = header(r, "upload-offset").and_then(state::parse_u64) else {
        return refuse(proto, 400, "Upload-Offset is missing or not a number");
    };
    if offset != upload.offset {
        return mismatch(proto, upload.offset, offset);
    }
    let last = match proto {
        Proto::Tus => false,
        Proto::Ietf => match header(r, "upload-complete").and_then(state::parse_sf_bool) {
            Some(v) => v,
            None => return refuse(proto, 400, "Upload-Complete (?0 or ?1) is required"),
        },
    };
    let checksum = match header(r, "upload-checksum") {
        None => None,
        Some(v) => match state::parse_checksum(v) {
            Ok(c) => Some(c),
            Err(reason) => return refuse(proto, 400, reason),
        },
    };
    if upload.complete() && r.body.is_none() {
        // Everything is here already: a forward that failed is tried again.
        let Some(busy) = spool.claim(id) else {
            return refuse(proto, 409, "the upload is being appended to");
        };
        let Some(ticket) = r.cx.ticket() else {
            return internal();
        };
        let job = Job {
            id,
            upload,
            len: 0,
            last: true,
            created: false,
            _busy: busy,
        };
        return start_forward(r, spool, settings, job, ticket);
    }
    append(r, spool, settings, id, upload, checksum, last, false)
}

fn internal() -> Verdict {
    Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")))
}

/// Takes the request's body (waiting for it first) and hands it to the spool's thread.
#[allow(clippy::too_many_arguments)]
fn append(
    r: &mut Request<'_>,
    spool: &Spool,
    settings: &crate::config::UploadsConfig,
    id: UploadId,
    upload: Upload,
    checksum: Option<[u8; 32]>,
    last: bool,
    created: bool,
) -> Verdict {
    let proto = upload.proto;
    let declared = header(r, "content-length").and_then(state::parse_u64);
    let room = upload
        .length
        .unwrap_or(settings.max_size)
        .saturating_sub(upload.offset);
    if declared.is_some_and(|n| n > room) {
        return refuse(proto, 413, "the body goes beyond the upload's length");
    }
    if declared.is_some_and(|n| n > settings.max_chunk as u64) {
        return refuse(proto, 413, "the body is larger than uploads.max_chunk");
    }
    let Some(body) = r.body else {
        return Verdict::Wait(Wait::Body {
            limit: settings.max_chunk,
        });
    };
    let len = body.len() as u64;
    if upload
        .length
        .is_some_and(|l| last && upload.offset + len != l)
    {
        return refuse(proto, 400, "Upload-Complete: ?1 before the declared length");
    }
    let Some(busy) = spool.claim(id) else {
        return refuse(proto, 409, "another request is appending to this upload");
    };
    let Some(ticket) = r.cx.ticket() else {
        return internal();
    };
    let slot: Slot<_> = Arc::new(Mutex::new(None));
    let (shared, done, out, offset) = (
        spool.shared.clone(),
        ticket.clone(),
        slot.clone(),
        upload.offset,
    );
    let bytes = body.to_vec();
    let now = r.cx.unix_now;
    let task = Box::new(move || {
        let result = shared.append(&id, offset, &bytes, checksum, now);
        *out.lock() = Some(result);
        done.complete();
    });
    if spool.pool.submit(task).is_err() {
        return refuse(proto, 503, "the spool is busy: try again");
    }
    let job = Job {
        id,
        upload,
        len,
        last,
        created,
        _busy: busy,
    };
    wait(r, job, ticket, Step::Writing(slot), Duration::from_secs(30))
}

fn wait(r: &mut Request<'_>, job: Job, ticket: Arc<Ticket>, step: Step, for_: Duration) -> Verdict {
    let sync = matches!(step, Step::Syncing);
    r.plan.upload = Some(Box::new(Progress {
        job,
        ticket: ticket.clone(),
        step,
    }));
    let snapshot = r.cx.snapshot;
    let (until, on_timeout) = if sync {
        (
            r.cx.now + snapshot.sync_timeout,
            (!snapshot.sync_degrade).then_some(Termination::WaitTimeout),
        )
    } else {
        (r.cx.now + for_, Some(Termination::WaitTimeout))
    };
    Verdict::Wait(Wait::Ticket {
        ticket,
        until,
        on_timeout,
    })
}

/// A waiting append or forward woke.
fn resume(
    r: &mut Request<'_>,
    spool: &Spool,
    settings: &crate::config::UploadsConfig,
    p: Progress,
) -> Verdict {
    let Progress {
        mut job,
        ticket,
        step,
    } = p;
    let proto = job.upload.proto;
    match step {
        Step::Writing(slot) => {
            let Some(result) = slot.lock().take() else {
                return refuse(proto, 503, "the spool did not answer in time");
            };
            let chunks = match result {
                Ok(c) => c,
                Err(SpoolError::ChecksumMismatch) => {
                    return refuse(proto, 460, "Upload-Checksum does not match the body");
                }
                Err(SpoolError::DiskFull) => {
                    return refuse(
                        proto,
                        507,
                        "the spool's disk is full: the offset is unchanged",
                    );
                }
                Err(e) => {
                    log::warn!("uploads: append to {} failed: {e}", state::hex(&job.id));
                    return refuse(proto, 503, "the spool could not take the bytes");
                }
            };
            let Some(store) = r.cx.store else {
                return refuse(proto, 503, "no store");
            };
            let expires = job.upload.expires;
            for (index, bytes) in chunks {
                let _ = store.write(state::record(
                    Kind::UploadChunk,
                    &state::chunk_key(&job.id, index),
                    Some(bytes),
                    expires,
                ));
            }
            job.upload.offset += job.len;
            if job.last {
                job.upload.length = Some(job.upload.offset);
            }
            let Some(ticket) = r.cx.ticket() else {
                return internal();
            };
            let done = ticket.clone();
            // Written after the chunks on the same stream: a replica's acknowledgement of this record
            // means it holds them too.
            let record = state::record(
                Kind::Upload,
                &job.id,
                Some(Arc::from(job.upload.encode())),
                expires,
            );
            if store
                .write_sync(record, Arc::new(move || done.complete()))
                .is_err()
            {
                return refuse(proto, 503, "the replication queue is full: try again");
            }
            wait(r, job, ticket, Step::Syncing, Duration::ZERO)
        }
        Step::Syncing => {
            if !ticket.is_done() {
                r.cx.metrics.degraded_writes.inc();
                log::warn!("uploads: an offset acknowledged without a replica (degraded)");
            }
            spool.shared.set_good(&job.id, job.upload.offset);
            if job.upload.complete() {
                let Some(ticket) = r.cx.ticket() else {
                    return internal();
                };
                return start_forward(r, spool, settings, job, ticket);
            }
            acknowledged(&job)
        }
        Step::Forwarding(slot) => {
            let Some(result) = slot.lock().take() else {
                return refuse(proto, 504, "the backend did not answer in time");
            };
            match result {
                Ok(backend) if (200..300).contains(&backend.status) => {
                    remove_records(r, &job.id, &job.upload);
                    let shared = spool.shared.clone();
                    let id = job.id;
                    let _ = spool.pool.submit(Box::new(move || shared.remove(&id)));
                    finished(&job, backend)
                }
                Ok(backend) => {
                    log::warn!(
                        "uploads: the backend answered {} to {}; the upload is kept",
                        backend.status,
                        state::hex(&job.id)
                    );
                    finished(&job, backend)
                }
                Err(e) => {
                    log::warn!("uploads: {} not forwarded: {e}", state::hex(&job.id));
                    let mut v = refuse(proto, 502, "no backend took the upload: send it again");
                    if let Verdict::Answer(Answer::Reply(reply)) = &mut v {
                        reply
                            .headers
                            .push(("Upload-Offset", job.upload.offset.to_string()));
                    }
                    v
                }
            }
        }
    }
}

fn start_forward(
    r: &mut Request<'_>,
    spool: &Spool,
    settings: &crate::config::UploadsConfig,
    job: Job,
    ticket: Arc<Ticket>,
) -> Verdict {
    let snapshot = r.cx.snapshot;
    let cluster = snapshot
        .routes
        .iter()
        .find(|route| *route.name == *job.upload.route)
        .and_then(|route| snapshot.clusters.get(route.cluster));
    let Some(cluster) = cluster else {
        return refuse(job.upload.proto, 502, "the upload's route is gone");
    };
    let mut backends: Vec<_> = cluster
        .backends
        .iter()
        .filter(|b| b.eligible())
        .map(|b| b.state.address)
        .collect();
    if backends.is_empty() {
        backends = cluster.backends.iter().map(|b| b.state.address).collect();
    }
    let fj = forward::Job {
        id: job.id,
        upload: job.upload.clone(),
        backends,
        attempts: settings.forward_attempts,
        timeout: settings.forward_timeout,
    };
    let slot: Slot<_> = Arc::new(Mutex::new(None));
    let (shared, done, out) = (spool.shared.clone(), ticket.clone(), slot.clone());
    let task = Box::new(move || {
        let result = forward::forward(&shared, &fj, crate::sticky::unix_now());
        *out.lock() = Some(result);
        done.complete();
    });
    if spool.pool.submit(task).is_err() {
        return refuse(job.upload.proto, 503, "the spool is busy: try again");
    }
    let limit = settings.forward_timeout * (settings.forward_attempts + 1) + Duration::from_secs(5);
    wait(r, job, ticket, Step::Forwarding(slot), limit)
}

/// The answer to an acknowledged append of an unfinished upload.
fn acknowledged(job: &Job) -> Verdict {
    let u = &job.upload;
    let status = if job.created { 201 } else { 204 };
    let mut reply = Reply::new(status, "text/plain", Vec::new());
    if job.created {
        reply.headers.push((
            "Location",
            format!("/.tether/uploads/{}", state::hex(&job.id)),
        ));
    }
    reply.headers.push(("Upload-Offset", u.offset.to_string()));
    match u.proto {
        Proto::Tus => {
            reply.headers.push(("Tus-Resumable", TUS_VERSION.into()));
            reply
                .headers
                .push(("Upload-Expires", state::http_date(u.expires)));
        }
        Proto::Ietf => reply.headers.push(("Upload-Complete", "?0".into())),
    }
    answer(reply)
}

/// The answer once the backend answered the completed upload: for the IETF draft the backend's own
/// answer; for tus (whose `PATCH` answers 204) 204, or 201 for a creation, with the backend's status in
/// `Tether-Upload-Status` and its `Location` in `Tether-Upload-Location` — 502 when it was not a 2xx.
fn finished(job: &Job, backend: Backend) -> Verdict {
    let u = &job.upload;
    let mut reply = match u.proto {
        Proto::Ietf => {
            let mut reply = Reply::new(backend.status, "application/octet-stream", backend.body);
            if let Some(ct) = backend.content_type {
                reply.headers.push(("Content-Type", ct));
            }
            if let Some(l) = backend.location {
                reply.headers.push(("Location", l));
            }
            reply.headers.push(("Upload-Complete", "?1".into()));
            reply
        }
        Proto::Tus => {
            let ok = (200..300).contains(&backend.status);
            let status = match (ok, job.created) {
                (false, _) => 502,
                (true, true) => 201,
                (true, false) => 204,
            };
            let mut reply = Reply::new(status, "text/plain", Vec::new());
            reply.headers.push(("Tus-Resumable", TUS_VERSION.into()));
            reply
                .headers
                .push(("Tether-Upload-Status", backend.status.to_string()));
            if let Some(l) = backend.location {
                reply.headers.push(("Tether-Upload-Location", l));
            }
            if job.created {
                reply.headers.push((
                    "Location",
                    format!("/.tether/uploads/{}", state::hex(&job.id)),
                ));
            }
            reply
        }
    };
    reply.headers.push(("Upload-Offset", u.offset.to_string()));
    answer(reply)
}

/// The request stage that creates uploads on `uploads = true` routes (after auth, limits and quotas).
pub(crate) fn upload_creation(r: &mut Request<'_>) -> Verdict {
    let Some(snapshot) = r.plan.snapshot.clone() else {
        return Verdict::Continue;
    };
    if !snapshot.routes.get(r.plan.route).is_some_and(|x| x.uploads) {
        return Verdict::Continue;
    }
    let Some((spool, settings)) = spool(r) else {
        return Verdict::Continue;
    };
    if let Some(p) = r.plan.upload.take() {
        return resume(r, spool, &settings, *p);
    }
    let method = r.head.method_span.of(r.bytes);
    if method == b"OPTIONS" && header(r, "tus-resumable").is_some() {
        return tus_options(&settings);
    }
    if method != b"POST" {
        return Verdict::Continue;
    }
    let proto = if header(r, "tus-resumable").is_some() {
        Proto::Tus
    } else if header(r, "upload-complete").is_some() {
        Proto::Ietf
    } else {
        // An ordinary POST: proxied as usual.
        return Verdict::Continue;
    };
    if proto == Proto::Tus && header(r, "tus-resumable") != Some(TUS_VERSION.as_bytes()) {
        return refuse(proto, 412, "Tus-Resumable: 1.0.0 is required");
    }
    let length = match header(r, "upload-length") {
        Some(v) => match state::parse_u64(v) {
            Some(n) => Some(n),
            None => return refuse(proto, 400, "Upload-Length is not a number"),
        },
        None if proto == Proto::Tus => {
            if header(r, "upload-defer-length").is_some() {
                return refuse(proto, 400, "Upload-Defer-Length is not supported");
            }
            return refuse(proto, 400, "Upload-Length is required");
        }
        None => None,
    };
    if length.is_some_and(|l| l > settings.max_size) {
        return refuse(proto, 413, "Upload-Length is over uploads.max_size");
    }
    let last = match proto {
        Proto::Tus => false,
        Proto::Ietf => match header(r, "upload-complete").and_then(state::parse_sf_bool) {
            Some(v) => v,
            None => return refuse(proto, 400, "Upload-Complete must be ?0 or ?1"),
        },
    };
    let metadata = match header(r, "upload-metadata") {
        Some(v) if proto == Proto::Tus => match state::parse_metadata(v) {
            Ok(m) => m,
            Err(e) => return refuse(proto, 400, &e.to_string()),
        },
        _ => String::new(),
    };
    let checksum = match header(r, "upload-checksum") {
        None => None,
        Some(v) => match state::parse_checksum(v) {
            Ok(c) => Some(c),
            Err(reason) => return refuse(proto, 400, reason),
        },
    };
    let declared = header(r, "content-length")
        .and_then(state::parse_u64)
        .unwrap_or(0);
    if declared > 0 && proto == Proto::Tus {
        let ct = header(r, "content-type").map(<[u8]>::trim_ascii);
        if ct != Some(&b"application/offset+octet-stream"[..]) {
            return refuse(
                proto,
                415,
                "creation-with-upload needs application/offset+octet-stream",
            );
        }
    }
    let (user, session) = match (&r.plan.login, r.plan.login_id) {
        (Some(l), Some(id)) => (l.user.clone(), state::hex(&id)),
        _ => (String::new(), String::new()),
    };
    let now = r.cx.unix_now;
    if settings.user_quota > 0 && !user.is_empty() {
        let want = length.unwrap_or(declared);
        let held: u64 = spool
            .shared
            .store
            .reader()
            .iter(Some(Kind::Upload))
            .filter(|rec| crate::store::table::live(rec, now))
            .filter_map(|rec| Upload::decode(rec.value.as_deref()?))
            .filter(|u| u.user == user)
            .map(|u| u.length.unwrap_or(u.offset))
            .sum();
        if held.saturating_add(want) > settings.user_quota {
            return refuse(
                proto,
                413,
                "over the user's upload quota (uploads.user_quota)",
            );
        }
    }
    let Some(body) = r.body else {
        // The body (the first bytes, possibly none) first; the checks above run again with it.
        if declared > settings.max_chunk as u64 {
            return refuse(proto, 413, "the body is larger than uploads.max_chunk");
        }
        return Verdict::Wait(Wait::Body {
            limit: settings.max_chunk,
        });
    };
    if length.is_some_and(|l| body.len() as u64 > l) {
        return refuse(proto, 413, "the body goes beyond Upload-Length");
    }
    let route = snapshot
        .routes
        .get(r.plan.route)
        .map(|x| x.name.to_string())
        .unwrap_or_default();
    let identity = r
        .plan
        .identity
        .as_deref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let upload = Upload {
        proto,
        user,
        session,
        route,
        host: header(r, "host")
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_else(|| "localhost".into()),
        path: String::from_utf8_lossy(r.head.path.of(r.bytes)).into_owned(),
        metadata,
        length,
        offset: 0,
        created: now,
        expires: now.saturating_add(settings.expiry.as_secs().min(u64::from(u32::MAX)) as u32),
        identity,
    };
    let id = state::new_id();
    let Some(store) = r.cx.store else {
        return refuse(proto, 503, "no store");
    };
    if body.is_empty() && !last {
        // A creation without bytes: the record alone, acknowledged by a replica.
        let Some(busy) = spool.claim(id) else {
            return internal();
        };
        let Some(ticket) = r.cx.ticket() else {
            return internal();
        };
        let done = ticket.clone();
        let record = state::record(
            Kind::Upload,
            &id,
            Some(Arc::from(upload.encode())),
            upload.expires,
        );
        if store
            .write_sync(record, Arc::new(move || done.complete()))
            .is_err()
        {
            return refuse(proto, 503, "the replication queue is full: try again");
        }
        let job = Job {
            id,
            upload,
            len: 0,
            last: false,
            created: true,
            _busy: busy,
        };
        return wait(r, job, ticket, Step::Syncing, Duration::ZERO);
    }
    append(r, spool, &settings, id, upload, checksum, last, true)
}
