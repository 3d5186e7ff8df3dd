//! Deliberate faults for tests of tether's own failure handling. Everything here is off unless the
//! process was started with the matching environment variable; nothing a client sends can turn it on.
//!
//! - `TETHER_TEST_PANIC_ON_PATH=/some/path`: a request for exactly that path panics the worker while it
//!   handles the connection, to exercise the panic policy (docs/HARDENING.md). Read once at start-up.
//! - `TETHER_TEST_ENDPOINTS=1`: `/.tether/test/*` endpoints that exercise the request stages' answers
//!   and waits (see [`test_endpoints`]).

use std::sync::OnceLock;

static PANIC_PATH: OnceLock<Option<Box<[u8]>>> = OnceLock::new();

/// Reads the fault-injection variables once; later calls change nothing. Logs a warning when one is set.
pub fn init_from_env() {
    init_test_endpoints_from_env();
    PANIC_PATH.get_or_init(|| {
        let path = std::env::var("TETHER_TEST_PANIC_ON_PATH").ok()?;
        if path.is_empty() {
            return None;
        }
        log::warn!(
            "TETHER_TEST_PANIC_ON_PATH is set: a request for {path} panics its worker (for tests only)"
        );
        Some(path.into_bytes().into_boxed_slice())
    });
}

/// Panics if `path` is the configured panic path. One atomic load when fault injection is off.
#[inline]
pub fn on_request_path(path: &[u8]) {
    if let Some(Some(p)) = PANIC_PATH.get() {
        if **p == *path {
            panic!(
                "deliberate panic for {} (TETHER_TEST_PANIC_ON_PATH)",
                String::from_utf8_lossy(path)
            );
        }
    }
}

static TEST_ENDPOINTS: OnceLock<bool> = OnceLock::new();

/// Reads `TETHER_TEST_ENDPOINTS` once: `1` turns on the test endpoints (see [`test_endpoints`]).
pub fn init_test_endpoints_from_env() {
    TEST_ENDPOINTS.get_or_init(|| {
        let on = std::env::var("TETHER_TEST_ENDPOINTS").is_ok_and(|v| v == "1");
        if on {
            log::warn!(
                "TETHER_TEST_ENDPOINTS is set: /.tether/test/* answers on every listener (for tests only)"
            );
        }
        on
    });
}

/// Longest body `/.tether/test/echo` takes.
pub const TEST_ECHO_LIMIT: usize = 4096;

/// A request stage that exists for tests of the stage machinery itself (answer, wait for a body, wait for
/// another thread), off unless `TETHER_TEST_ENDPOINTS=1` was set at start (one atomic load otherwise):
///
/// - `POST /.tether/test/echo`: reads the body (at most [`TEST_ECHO_LIMIT`] bytes: 413 beyond, 411 when
///   chunked) and answers it back with `200`, keeping the connection open.
/// - `GET /.tether/test/sync?key=K`: a sync write to the replicated store (see [`sync_write`]).
/// - `GET /.tether/test/bind?n=N`: N (at most [`TEST_BIND_MAX`]) async session-binding writes to the
///   replicated store, to the first backend of the first cluster, under fresh keys: a load generator for
///   the replication benchmark (`bench/replication.sh --bulk`) and the resync tests. Answers `200` with
///   the count written; 503 without `[cluster]`.
/// - `GET /.tether/test/wake?ms=N`: parks the request; a thread completes its ticket after N ms (at most
///   5,000), which wakes the worker, and the request is answered `200 woken`. With `ms` above the
///   deadline of 2 s, the wait times out (503).
pub(crate) fn test_endpoints(
    r: &mut crate::proxy::stages::Request<'_>,
) -> crate::proxy::stages::Verdict {
    use crate::proxy::stages::{Answer, Reply, Verdict, Wait};
    if !TEST_ENDPOINTS.get().copied().unwrap_or(false) {
        return Verdict::Continue;
    }
    let path = r.head.path.of(r.bytes);
    let target = r.head.target.of(r.bytes);
    let reply = |status, body: &[u8]| {
        Verdict::Answer(Answer::Reply(Box::new(Reply::new(
            status,
            "text/plain",
            body,
        ))))
    };
    match path {
        b"/.tether/test/echo" => match r.body {
            None => Verdict::Wait(Wait::Body {
                limit: TEST_ECHO_LIMIT,
            }),
            Some(body) => reply(200, body),
        },
        b"/.tether/test/wake" => {
            if let Some(ticket) = &r.plan.ticket {
                return if ticket.is_done() {
                    r.plan.ticket = None;
                    reply(200, b"woken\n")
                } else {
                    // Woken before its time: keep waiting (the deadline stays the first one's).
                    Verdict::Wait(Wait::Ticket {
                        ticket: ticket.clone(),
                        until: r.cx.now + std::time::Duration::from_secs(2),
                        on_timeout: Some(crate::error::Termination::WaitTimeout),
                    })
                };
            }
            let ms: u64 = target
                .split(|&b| b == b'=')
                .nth(1)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(10)
                .min(5_000);
            let Some(ticket) = r.cx.ticket() else {
                return Verdict::Answer(Answer::Refuse(crate::error::Termination::Internal(
                    "no wake-up channel",
                )));
            };
            r.plan.ticket = Some(ticket.clone());
            let other = ticket.clone();
            let spawned = std::thread::Builder::new()
                .name("test-wake".into())
                .spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    other.complete();
                });
            if spawned.is_err() {
                return Verdict::Answer(Answer::Refuse(crate::error::Termination::Internal(
                    "cannot start a thread",
                )));
            }
            Verdict::Wait(Wait::Ticket {
                ticket,
                until: r.cx.now + std::time::Duration::from_secs(2),
                on_timeout: Some(crate::error::Termination::WaitTimeout),
            })
        }
        b"/.tether/test/sync" => sync_write(r),
        b"/.tether/test/bind" => bulk_bind(r),
        _ => Verdict::Continue,
    }
}

/// Most writes one `/.tether/test/bind` request makes.
pub const TEST_BIND_MAX: u64 = 10_000;

/// `/.tether/test/bind?n=N`: N async binding writes under fresh keys (see [`test_endpoints`]).
fn bulk_bind(r: &mut crate::proxy::stages::Request<'_>) -> crate::proxy::stages::Verdict {
    use crate::proxy::stages::{Answer, Reply, Verdict};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    // Keys: SplitMix64 over a per-process seed and a counter, so nodes and restarts never collide.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SEED: OnceLock<u64> = OnceLock::new();
    let Some(store) = r.cx.store else {
        return Verdict::Answer(Answer::Refuse(crate::error::Termination::Internal(
            "no replicated store: [cluster] is not configured",
        )));
    };
    let Some(backend) =
        r.cx.snapshot
            .clusters
            .first()
            .and_then(|c| c.backends.first())
    else {
        return Verdict::Answer(Answer::Refuse(crate::error::Termination::Internal(
            "no backend to bind to",
        )));
    };
    let value = backend.state.address.to_string();
    let target = r.head.target.of(r.bytes);
    let n: u64 = target
        .split(|&b| b == b'=')
        .nth(1)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(1)
        .min(TEST_BIND_MAX);
    let seed = *SEED.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (u64::from(std::process::id()) << 32)
    });
    let first = NEXT.fetch_add(n, Relaxed);
    let expires = r.cx.unix_now.saturating_add(3600);
    let mut written = 0u64;
    for i in first..first + n {
        let mut rng = crate::balance::SplitMix64(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let key = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        if store
            .put(
                crate::store::Kind::SessionBinding,
                &key.to_be_bytes(),
                value.as_bytes(),
                expires,
            )
            .is_ok()
        {
            written += 1;
        }
    }
    let body = format!("{written}\n");
    Verdict::Answer(Answer::Reply(Box::new(Reply::new(
        200,
        "text/plain",
        body.as_bytes(),
    ))))
}

/// `/.tether/test/sync?key=K`: a `sync` write to the replicated store (a session-binding record for a key
/// derived from `K`, naming no configured backend), answered `200 acknowledged` once a peer applied it.
/// With no acknowledgement within `[cluster] sync_timeout`: 503 (`wait_timeout`), or with
/// `on_sync_timeout = "degrade"` `200 degraded` and a counted degraded write. Without `[cluster]`: 503.
fn sync_write(r: &mut crate::proxy::stages::Request<'_>) -> crate::proxy::stages::Verdict {
    use crate::proxy::stages::{Answer, Reply, Verdict, Wait};
    let reply =
        |body: &[u8]| Verdict::Answer(Answer::Reply(Box::new(Reply::new(200, "text/plain", body))));
    if let Some(ticket) = &r.plan.ticket {
        if ticket.is_done() {
            r.plan.ticket = None;
            return reply(b"acknowledged\n");
        }
        // Timed out and the policy is to degrade.
        r.plan.ticket = None;
        r.cx.metrics.degraded_writes.inc();
        log::warn!("sync write served without a peer's acknowledgement (degraded)");
        return reply(b"degraded\n");
    }
    let Some(store) = r.cx.store else {
        return Verdict::Answer(Answer::Refuse(crate::error::Termination::Internal(
            "no replicated store: [cluster] is not configured",
        )));
    };
    let Some(ticket) = r.cx.ticket() else {
        return Verdict::Answer(Answer::Refuse(crate::error::Termination::Internal(
            "no wake-up channel",
        )));
    };
    let target = r.head.target.of(r.bytes);
    let name = target.split(|&b| b == b'=').nth(1).unwrap_or(b"");
    let mut key = [0u8; 16];
    for (i, b) in name.iter().enumerate() {
        key[i % 16] ^= b.rotate_left((i / 16) as u32);
    }
    key[0] ^= 0xa5; // never the key of a real session id by accident (those are random or digests)
    let record = crate::store::Record {
        kind: crate::store::Kind::SessionBinding,
        key: key.as_slice().into(),
        version: store.version(),
        expires: r.cx.unix_now.saturating_add(60),
        value: Some(b"0.0.0.0:1".as_slice().into()),
    };
    let done = ticket.clone();
    let _ = store.write_sync(record, std::sync::Arc::new(move || done.complete()));
    r.plan.ticket = Some(ticket.clone());
    Verdict::Wait(Wait::replica(ticket, &r.cx))
}
