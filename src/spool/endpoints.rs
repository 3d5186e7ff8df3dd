//! Where uploads meet the request path: the `upload_resources` request stage (before `route`) answers
//! `/.tether/uploads/ID` — `HEAD`, `PATCH`, `DELETE`, `OPTIONS`; the append, the record of a new upload
//! and the forward of a completed one, which the creation stage (`creation`) also hands its uploads to.
//!
//! An append waits up to four times without holding its worker, each on a ticket: in a cluster, the
//! peers grant the claim (no append to the upload under way on another node); the spool's thread checks
//! the checksum, writes the file and pushes the bytes to the peers, the ticket completing when one
//! peer wrote them all; a replica acknowledges the new offset (a sync write); and, once the upload is
//! complete, the spool's thread forwards it to a backend. Written against
//! the stages' types, so it belongs with `proxy`. A plain request costs one prefix comparison (resources)
//! and one boolean (creation).

use super::disk::SpoolError;
use super::forward::{self, Answer as Backend, ForwardError};
use super::state::{self, Proto, Upload, UploadId};
use super::{BusyGuard, Spool};
use crate::error::Termination;
use crate::proxy::stages::{Answer, Reply, Request, Ticket, Verdict, Wait};
use crate::replication::side::{ClaimAnswer, Command, Pushed};
use crate::store::Kind;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &[u8] = b"/.tether/uploads/";
pub(super) const TUS_VERSION: &str = "1.0.0";
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
    /// The peers answer the claim; then the append or the forward.
    Claiming {
        answer: Slot<ClaimAnswer>,
        then: Then,
    },
    /// The spool's thread checks and writes the bytes, and a peer writes them too; then the append's
    /// tag.
    Writing(Slot<Result<u64, SpoolError>>),
    /// A replica acknowledges the new offset.
    Syncing,
    /// The spool's thread forwards the completed upload.
    Forwarding(Slot<Result<Backend, ForwardError>>),
}

/// What a granted claim goes on to.
enum Then {
    /// Write the body (held in memory meanwhile, at most `max_chunk`).
    Write {
        body: Arc<[u8]>,
        checksum: Option<[u8; 32]>,
    },
    /// Forward the complete upload again.
    Forward,
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

pub(super) fn header<'b>(r: &Request<'b>, name: &str) -> Option<&'b [u8]> {
    r.head.header(r.bytes, name)
}

pub(super) fn spool<'a>(r: &Request<'a>) -> Option<(&'a Spool, Arc<crate::config::UploadsConfig>)> {
    Some((r.cx.spool?, r.cx.snapshot.uploads.clone()?))
}

/// A refusal in the upload's protocol: tus gets text and `Tus-Resumable`, the IETF draft problem JSON.
pub(super) fn refuse(proto: Proto, status: u16, reason: &str) -> Verdict {
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

pub(super) fn tus_options(settings: &crate::config::UploadsConfig) -> Verdict {
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

pub(super) fn limit(settings: &crate::config::UploadsConfig) -> String {
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
        b"HEAD" => {
            prefetch(spool, id, &upload);
            head(&upload, &settings)
        }
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

/// A node whose file lacks acknowledged bytes (appends other nodes took while it was away) starts
/// fetching them from a peer when a client asks for the offset: the `PATCH` that follows finds them.
fn prefetch(spool: &Spool, id: UploadId, upload: &Upload) {
    if spool.shared.side.is_none() || spool.shared.covers(&id, upload.offset, upload.tag) {
        return;
    }
    let (shared, offset, tag) = (spool.shared.clone(), upload.offset, upload.tag);
    let _ = spool.pool.submit(Box::new(move || {
        if let Err(e) = shared.fill(&id, offset, tag) {
            log::info!("uploads: prefetch of {} failed: {e}", state::hex(&id));
        }
    }));
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
    // Stamped with the writer's clock: a tombstone must win over every offset record before it.
    let _ = store.write(crate::store::Record {
        version: store.version(),
        ..state::record(Kind::Upload, id, None, upload.expires)
    });
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
        // Another node may be forwarding it right now: asked first, as for an append.
        if spool.shared.side.is_some() {
            return claim(r, spool, job, ticket, Then::Forward);
        }
        return start_forward(r, spool, settings, job, ticket);
    }
    append(r, spool, settings, id, upload, checksum, last, false)
}

pub(super) fn internal() -> Verdict {
    Verdict::Answer(Answer::Refuse(Termination::Internal("no wake-up channel")))
}

/// Takes the request's body (waiting for it first) and hands it to the spool's thread.
#[allow(clippy::too_many_arguments)]
pub(super) fn append(
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
    let body: Arc<[u8]> = Arc::from(body);
    let job = Job {
        id,
        upload,
        len,
        last,
        created,
        _busy: busy,
    };
    // A new upload's id is known to no other node yet: nothing to claim.
    if spool.shared.side.is_some() && !created {
        return claim(r, spool, job, ticket, Then::Write { body, checksum });
    }
    write(r, spool, job, body, checksum, ticket)
}

/// Asks every up peer whether the upload may be appended to (or forwarded) here; the request waits for
/// the answers (docs/UPLOADS.md, "Concurrent appends").
fn claim(r: &mut Request<'_>, spool: &Spool, job: Job, ticket: Arc<Ticket>, then: Then) -> Verdict {
    let Some(side) = &spool.shared.side else {
        return internal();
    };
    let answer: Slot<ClaimAnswer> = Arc::new(Mutex::new(None));
    let (out, done) = (answer.clone(), ticket.clone());
    side.send(Command::Claim {
        id: job.id,
        done: Box::new(move |a| {
            *out.lock() = Some(a);
            done.complete();
        }),
    });
    let step = Step::Claiming { answer, then };
    wait(r, job, ticket, step, r.cx.snapshot.sync_timeout)
}

/// Hands the bytes to the spool's thread: it writes this node's file and pushes them to the peers; the
/// ticket completes once a peer wrote them all (at once without a cluster).
fn write(
    r: &mut Request<'_>,
    spool: &Spool,
    job: Job,
    body: Arc<[u8]>,
    checksum: Option<[u8; 32]>,
    ticket: Arc<Ticket>,
) -> Verdict {
    let slot: Slot<_> = Arc::new(Mutex::new(None));
    let (shared, done, out) = (spool.shared.clone(), ticket.clone(), slot.clone());
    let (id, offset, prev, tag) = (job.id, job.upload.offset, job.upload.tag, state::new_tag());
    let task = Box::new(move || {
        let pieces = match shared.append(&id, offset, prev, tag, &body, checksum) {
            Ok(p) => p,
            Err(e) => {
                *out.lock() = Some(Err(e));
                return done.complete();
            }
        };
        match &shared.side {
            Some(side) if !pieces.is_empty() => side.send(Command::Push {
                id,
                tag,
                pieces,
                done: Box::new(move |how| {
                    *out.lock() = Some(match how {
                        Pushed::Replicated => Ok(tag),
                        Pushed::NoPeer => Err(SpoolError::NoReplica),
                        Pushed::Failed => Err(SpoolError::NotReplicated),
                    });
                    done.complete();
                }),
            }),
            _ => {
                *out.lock() = Some(Ok(tag));
                done.complete();
            }
        }
    });
    if spool.pool.submit(task).is_err() {
        return refuse(job.upload.proto, 503, "the spool is busy: try again");
    }
    // Room for a fetch of missing bytes and the peers' writes.
    let limit = Duration::from_secs(30) + r.cx.snapshot.sync_timeout;
    wait(r, job, ticket, Step::Writing(slot), limit)
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
pub(super) fn resume(
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
        Step::Claiming { answer, then } => {
            let Some(answer) = answer.lock().take() else {
                return refuse(
                    proto,
                    503,
                    "the cluster's nodes did not answer the claim in time",
                );
            };
            if !answer.granted {
                return refuse(proto, 409, "another node is appending to this upload");
            }
            // Another node's append finished since this request read the offset.
            let now = r.cx.unix_now;
            let held = Upload::get(&spool.shared.store, &job.id, now).map_or(0, |u| u.offset);
            let current = answer.offset.max(held);
            if current != job.upload.offset {
                return mismatch(proto, current, job.upload.offset);
            }
            // The claim's ticket is spent: what follows waits on a new one.
            drop(ticket);
            let Some(ticket) = r.cx.ticket() else {
                return internal();
            };
            match then {
                Then::Write { body, checksum } => write(r, spool, job, body, checksum, ticket),
                Then::Forward => start_forward(r, spool, settings, job, ticket),
            }
        }
        Step::Writing(slot) => {
            let Some(result) = slot.lock().take() else {
                return refuse(proto, 503, "the spool did not answer in time");
            };
            let tag = match result {
                Ok(tag) => tag,
                Err(e @ (SpoolError::NoReplica | SpoolError::NotReplicated))
                    if r.cx.snapshot.sync_degrade =>
                {
                    r.cx.metrics.degraded_writes.inc();
                    log::warn!(
                        "uploads: bytes of {} acknowledged without a replica (degraded): {e}",
                        state::hex(&job.id)
                    );
                    state::new_tag()
                }
                Err(e @ (SpoolError::NoReplica | SpoolError::NotReplicated)) => {
                    log::warn!("uploads: append to {} refused: {e}", state::hex(&job.id));
                    return refuse(
                        proto,
                        503,
                        "no replica took the bytes: the offset is unchanged",
                    );
                }
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
            job.upload.offset += job.len;
            job.upload.tag = tag;
            if job.last {
                job.upload.length = Some(job.upload.offset);
            }
            let Some(ticket) = r.cx.ticket() else {
                return internal();
            };
            let done = ticket.clone();
            // A peer wrote the bytes already: the new offset may now count. Stamped with the writer's
            // clock, so the newer offset wins over the older one everywhere (last writer wins).
            let record = crate::store::Record {
                version: store.version(),
                ..state::record(
                    Kind::Upload,
                    &job.id,
                    Some(Arc::from(job.upload.encode())),
                    expires,
                )
            };
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
            spool
                .shared
                .set_good(&job.id, job.upload.offset, job.upload.tag);
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

/// A creation without bytes: the upload's record alone, acknowledged by a replica; then 201 with its
/// `Location` (the `Syncing` step's answer). `creation` calls it.
pub(super) fn created(
    r: &mut Request<'_>,
    id: UploadId,
    upload: Upload,
    busy: BusyGuard,
) -> Verdict {
    let proto = upload.proto;
    let Some(store) = r.cx.store else {
        return refuse(proto, 503, "no store");
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
    wait(r, job, ticket, Step::Syncing, Duration::ZERO)
}
