//! The `upload_creation` request stage (after `quota`, so the route and the login are known): a `POST`
//! on an `uploads = true` route's path with `Tus-Resumable` (tus) or `Upload-Complete` (the IETF draft)
//! creates an upload. A plain request costs one boolean (the route's `uploads`).
//!
//! A creation moves through named steps, each a wait that holds no worker:
//!
//! ```text
//!  headers checked ─▶ Checking (a spool thread checks the quotas; 413 over one) ─┐
//!        │ no quota applies                                                       │
//!        ▼                                                                        ▼
//!  no bytes to come ──▶ the record alone (endpoints::created) ──▶ 201 + Location
//!  IETF, bytes to come ─▶ Registering (the record at offset 0, acknowledged by a replica)
//!                           ─▶ 104 Upload Resumption Supported + Location ─▶ Body
//!  tus, bytes to come ──▶ Body (the request body, up to max_chunk)
//!  Body ──▶ Handed: the append path (endpoints::append) takes the bytes and answers
//! ```
//!
//! The IETF upload is recorded before its body is read so the `Location` of the `104` names an upload
//! that exists (on two nodes) while the body travels: a client whose connection breaks mid-body asks
//! that `Location` for the offset and resumes. A tus creation-with-upload learns its `Location` only
//! from the final answer, so it is recorded with its first bytes, as before (a refused first chunk then
//! leaves no upload behind that the client could not name).

use super::endpoints::{self, TUS_VERSION, header, refuse};
use super::quota::{self, Claim, Over, Reservation};
use super::state::{self, Proto, Upload, UploadId};
use super::{BusyGuard, Spool};
use crate::config::UploadsConfig;
use crate::error::Termination;
use crate::http::BodyFraming;
use crate::proxy::stages::{Reply, Request, Ticket, Verdict, Wait};
use crate::store::Kind;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// A creation under way, kept in the plan between its waits.
pub(crate) struct Creation {
    id: UploadId,
    upload: Upload,
    checksum: Option<[u8; 32]>,
    /// The IETF client said these bytes are the last (`Upload-Complete: ?1`).
    last: bool,
    /// Body bytes the request declared (`Content-Length`).
    declared: u64,
    step: Step,
    /// The bytes this creation holds against the quotas until its record is in the store; kept to the
    /// end of the request (the plan drops it), which is after the record was written.
    _reservation: Option<Reservation>,
    /// The registered (IETF) upload is this request's while its body arrives: a `PATCH` from a client
    /// that read the `104` gets 409 rather than writing at the same offset.
    busy: Option<BusyGuard>,
}

impl std::fmt::Debug for Creation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creation")
            .field("upload", &state::hex(&self.id))
            .field("step", &self.step)
            .finish()
    }
}

type QuotaSlot = Arc<Mutex<Option<Result<Reservation, Over>>>>;

enum Step {
    /// A spool thread checks the quotas.
    Checking(QuotaSlot),
    /// A replica acknowledges the upload's record at offset 0 (IETF, before the body is read).
    Registering(Arc<Ticket>),
    /// The request body (the first bytes) is being read.
    Body,
    /// The append path took the bytes (`plan.upload`); the creation only holds its reservation.
    Handed,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Checking(_) => "Checking",
            Step::Registering(_) => "Registering",
            Step::Body => "Body",
            Step::Handed => "Handed",
        })
    }
}

/// The request stage that creates uploads on `uploads = true` routes (after auth, limits and quotas).
pub(crate) fn upload_creation(r: &mut Request<'_>) -> Verdict {
    let Some(snapshot) = r.plan.snapshot.clone() else {
        return Verdict::Continue;
    };
    if !snapshot.routes.get(r.plan.route).is_some_and(|x| x.uploads) {
        return Verdict::Continue;
    }
    let Some((spool, settings)) = endpoints::spool(r) else {
        return Verdict::Continue;
    };
    // An append or a forward this creation handed its bytes to woke.
    if let Some(p) = r.plan.upload.take() {
        return endpoints::resume(r, spool, &settings, *p);
    }
    if let Some(c) = r.plan.creation.take() {
        return resume(r, spool, &settings, c);
    }
    let method = r.head.method_span.of(r.bytes);
    if method == b"OPTIONS" && header(r, "tus-resumable").is_some() {
        return endpoints::tus_options(&settings);
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
    let route = snapshot.routes.get(r.plan.route).map_or("", |x| &*x.name);
    let creation = match checked(r, &settings, proto, route) {
        Ok(c) => c,
        Err(refusal) => return refusal,
    };
    let claim = Claim {
        id: creation.id,
        user: creation.upload.user.clone(),
        tenant: creation.upload.tenant.clone(),
        // An upload of unknown length (IETF) holds what it brings now; its later appends are bounded
        // by max_size, not re-checked.
        bytes: creation.upload.length.unwrap_or(creation.declared),
        user_quota: settings.user_quota,
        tenant_quota: settings
            .tenant_quotas
            .get(&creation.upload.tenant)
            .copied()
            .unwrap_or(settings.tenant_quota),
    };
    if !claim.limited() {
        return proceed(r, spool, &settings, creation);
    }
    check_quota(r, spool, creation, claim)
}

/// The creation's headers, checked; the upload it makes (offset 0).
fn checked(
    r: &Request<'_>,
    settings: &UploadsConfig,
    proto: Proto,
    route: &str,
) -> Result<Box<Creation>, Verdict> {
    if proto == Proto::Tus && header(r, "tus-resumable") != Some(TUS_VERSION.as_bytes()) {
        return Err(refuse(proto, 412, "Tus-Resumable: 1.0.0 is required"));
    }
    let length = match header(r, "upload-length") {
        Some(v) => match state::parse_u64(v) {
            Some(n) => Some(n),
            None => return Err(refuse(proto, 400, "Upload-Length is not a number")),
        },
        None if proto == Proto::Tus => {
            if header(r, "upload-defer-length").is_some() {
                return Err(refuse(proto, 400, "Upload-Defer-Length is not supported"));
            }
            return Err(refuse(proto, 400, "Upload-Length is required"));
        }
        None => None,
    };
    if length.is_some_and(|l| l > settings.max_size) {
        return Err(refuse(proto, 413, "Upload-Length is over uploads.max_size"));
    }
    let last = match proto {
        Proto::Tus => false,
        Proto::Ietf => match header(r, "upload-complete").and_then(state::parse_sf_bool) {
            Some(v) => v,
            None => return Err(refuse(proto, 400, "Upload-Complete must be ?0 or ?1")),
        },
    };
    let metadata = match header(r, "upload-metadata") {
        Some(v) if proto == Proto::Tus => match state::parse_metadata(v) {
            Ok(m) => m,
            Err(e) => return Err(refuse(proto, 400, &e.to_string())),
        },
        _ => String::new(),
    };
    let checksum = match header(r, "upload-checksum") {
        None => None,
        Some(v) => match state::parse_checksum(v) {
            Ok(c) => Some(c),
            Err(reason) => return Err(refuse(proto, 400, reason)),
        },
    };
    let declared = match r.head.framing {
        BodyFraming::None => 0,
        BodyFraming::Length(n) => n,
        // The spool takes bounded bodies (held while checked): a chunked one's size is known too late.
        BodyFraming::Chunked => {
            return Err(refuse(
                proto,
                411,
                "a chunked body is not taken: send Content-Length",
            ));
        }
    };
    if declared > 0 && proto == Proto::Tus {
        let ct = header(r, "content-type").map(<[u8]>::trim_ascii);
        if ct != Some(&b"application/offset+octet-stream"[..]) {
            return Err(refuse(
                proto,
                415,
                "creation-with-upload needs application/offset+octet-stream",
            ));
        }
    }
    // Refused before the body is read (and before 100 Continue, for a client that waits for it).
    if declared > settings.max_chunk as u64 {
        return Err(refuse(
            proto,
            413,
            "the body is larger than uploads.max_chunk",
        ));
    }
    if length.is_some_and(|l| declared > l) {
        return Err(refuse(proto, 413, "the body goes beyond Upload-Length"));
    }
    let (user, tenant, session) = match (&r.plan.login, r.plan.login_id) {
        (Some(l), Some(id)) => (l.user.clone(), l.tenant.clone(), state::hex(&id)),
        _ => (String::new(), String::new(), String::new()),
    };
    let identity = r
        .plan
        .identity
        .as_deref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let now = r.cx.unix_now;
    let upload = Upload {
        proto,
        user,
        session,
        route: route.to_string(),
        host: header(r, "host")
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_else(|| "localhost".into()),
        path: String::from_utf8_lossy(r.head.path.of(r.bytes)).into_owned(),
        metadata,
        length,
        offset: 0,
        tag: 0,
        created: now,
        expires: now.saturating_add(settings.expiry.as_secs().min(u64::from(u32::MAX)) as u32),
        identity,
        tenant,
    };
    Ok(Box::new(Creation {
        id: state::new_id(),
        upload,
        checksum,
        last,
        declared,
        step: Step::Body,
        _reservation: None,
        busy: None,
    }))
}

/// Hands the quota check to a spool thread; the creation waits for its verdict.
fn check_quota(r: &mut Request<'_>, spool: &Spool, mut c: Box<Creation>, claim: Claim) -> Verdict {
    let proto = c.upload.proto;
    let Some(ticket) = r.cx.ticket() else {
        return endpoints::internal();
    };
    let slot: QuotaSlot = Arc::new(Mutex::new(None));
    let (store, ledger, done, out) = (
        spool.shared.store.clone(),
        spool.quota.clone(),
        ticket.clone(),
        slot.clone(),
    );
    let now = r.cx.unix_now;
    let task = Box::new(move || {
        *out.lock() = Some(quota::check(&store, &ledger, &claim, now));
        done.complete();
    });
    if spool.pool.submit(task).is_err() {
        return refuse(proto, 503, "the spool is busy: try again");
    }
    c.step = Step::Checking(slot);
    r.plan.creation = Some(c);
    Verdict::Wait(Wait::Ticket {
        ticket,
        until: r.cx.now + Duration::from_secs(30),
        on_timeout: Some(Termination::WaitTimeout),
    })
}

/// A waiting creation woke.
fn resume(
    r: &mut Request<'_>,
    spool: &Spool,
    settings: &UploadsConfig,
    mut c: Box<Creation>,
) -> Verdict {
    let proto = c.upload.proto;
    match std::mem::replace(&mut c.step, Step::Handed) {
        Step::Checking(slot) => match slot.lock().take() {
            None => refuse(proto, 503, "the spool did not answer in time"),
            Some(Err(over)) => {
                log::info!(
                    "uploads: creation by {:?} (tenant {:?}) refused: {over}",
                    c.upload.user,
                    c.upload.tenant
                );
                refuse(proto, 413, &over.to_string())
            }
            Some(Ok(reservation)) => {
                c._reservation = Some(reservation);
                proceed(r, spool, settings, c)
            }
        },
        Step::Registering(ticket) => {
            if !ticket.is_done() {
                r.cx.metrics.degraded_writes.inc();
                log::warn!("uploads: an upload recorded without a replica (degraded)");
            }
            r.plan.interim = Some(Box::new(resumption_supported(r, settings, &c)));
            body_then_append(r, spool, settings, c)
        }
        Step::Body => body_then_append(r, spool, settings, c),
        // The append path holds the request (`plan.upload`) whenever the stage runs again.
        Step::Handed => endpoints::internal(),
    }
}

/// The quotas passed (or none applies): record the upload, or read its first bytes.
fn proceed(
    r: &mut Request<'_>,
    spool: &Spool,
    settings: &UploadsConfig,
    mut c: Box<Creation>,
) -> Verdict {
    let proto = c.upload.proto;
    if proto == Proto::Tus && c.declared > 0 {
        return body_then_append(r, spool, settings, c);
    }
    // A fresh random id: nobody else can hold it.
    let Some(busy) = spool.claim(c.id) else {
        return endpoints::internal();
    };
    if c.declared == 0 && !c.last {
        // No bytes: the record alone, and 201 once a replica has it.
        if proto == Proto::Ietf {
            r.plan.interim = Some(Box::new(resumption_supported(r, settings, &c)));
        }
        let verdict = endpoints::created(r, c.id, c.upload.clone(), busy);
        c.step = Step::Handed;
        r.plan.creation = Some(c);
        return verdict;
    }
    // IETF: the record at offset 0 first (the `104` names it), acknowledged by a replica.
    let Some(store) = r.cx.store else {
        return refuse(proto, 503, "no store");
    };
    let Some(ticket) = r.cx.ticket() else {
        return endpoints::internal();
    };
    let done = ticket.clone();
    let record = state::record(
        Kind::Upload,
        &c.id,
        Some(Arc::from(c.upload.encode())),
        c.upload.expires,
    );
    if store
        .write_sync(record, Arc::new(move || done.complete()))
        .is_err()
    {
        return refuse(proto, 503, "the replication queue is full: try again");
    }
    c.busy = Some(busy);
    c.step = Step::Registering(ticket.clone());
    r.plan.creation = Some(c);
    Verdict::Wait(Wait::replica(ticket, &r.cx))
}

/// Waits for the request body (the upload's first bytes), then hands them to the append path.
fn body_then_append(
    r: &mut Request<'_>,
    spool: &Spool,
    settings: &UploadsConfig,
    mut c: Box<Creation>,
) -> Verdict {
    let Some(body) = r.body else {
        c.step = Step::Body;
        r.plan.creation = Some(c);
        return Verdict::Wait(Wait::Body {
            limit: settings.max_chunk,
        });
    };
    if c.upload.length.is_some_and(|l| body.len() as u64 > l) {
        return refuse(c.upload.proto, 413, "the body goes beyond Upload-Length");
    }
    // The append claims the upload itself; released here on the same thread just before.
    c.busy = None;
    let verdict = endpoints::append(
        r,
        spool,
        settings,
        c.id,
        c.upload.clone(),
        c.checksum,
        c.last,
        true,
    );
    c.step = Step::Handed;
    r.plan.creation = Some(c);
    verdict
}

/// The IETF draft's interim answer to a creation: the upload's `Location` before the final answer, so
/// a client that loses the connection mid-body knows where to resume; the client's
/// `Upload-Draft-Interop-Version` is echoed (clients of the drafts check it), with `Upload-Limit`.
fn resumption_supported(r: &Request<'_>, settings: &UploadsConfig, c: &Creation) -> Reply {
    let mut reply = Reply::new(104, "", Vec::new());
    reply.headers.push((
        "Location",
        format!("/.tether/uploads/{}", state::hex(&c.id)),
    ));
    if let Some(v) = header(r, "upload-draft-interop-version") {
        reply.headers.push((
            "Upload-Draft-Interop-Version",
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    reply
        .headers
        .push(("Upload-Limit", endpoints::limit(settings)));
    reply
}
