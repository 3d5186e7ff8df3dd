//! The relay to an upstream auth endpoint (issue #14, point 8): a pool that authenticates against an
//! operator's auth service instead of local users sends the credentials there, and tether keeps the token
//! it returns in the session record and injects it into requests to the backends (the client never sees
//! it). This module is the blocking network part, run on its own few threads ("auth-relay-N", never a
//! worker thread of the balancer), and the single flight that makes exactly one refresh per session
//! however many requests wait for it.
//!
//! # Wire format (what an operator's auth service must speak)
//!
//! It is the OAuth 2.0 token-endpoint shape (RFC 6749 §5.1), so that stock services fit. One HTTP/1.1
//! exchange per connection, plain TCP:
//!
//! ```text
//! POST {login_path} HTTP/1.1
//! Host: {host}
//! Content-Type: application/json
//! Content-Length: N
//! Connection: close
//!
//! {"username":"…","password":"…"}
//! ```
//!
//! A refresh is the same to `{refresh_path}` with the body
//! `{"grant_type":"refresh_token","refresh_token":"…"}`. With no refresh path configured, a refresh is
//! [`RelayError::Rejected`] without any request (the user logs in again).
//!
//! The answer:
//! - `200` with a JSON object `{"access_token":"…", "token_type":"Bearer", "expires_in":N,
//!   "refresh_token":"…"}`; only `access_token` is required. `token_type`, when given, must be `Bearer`
//!   (any case), since that is how the token is injected. `expires_in` is seconds from now. A refresh
//!   answer without `refresh_token` keeps the old refresh token (RFC 6749 §6).
//! - `400`, `401` or `403`: the credentials or the refresh token are refused ([`RelayError::Rejected`]).
//! - anything else (other statuses, garbage, a closed connection, a timeout): [`RelayError::Unavailable`].
//!
//! The answer is read with Content-Length, chunked transfer coding, or until the connection closes, at most
//! 64 KiB in all; interim `1xx` answers are skipped. The connect and the whole exchange share one deadline,
//! the upstream's `timeout`. The access token must be a valid header value (visible ASCII, 1 to 4096
//! bytes), or the answer is `Unavailable("bad token")`.
//!
//! Neither the password nor any token ever appears in an error, a log line or a `Debug` output.

use crate::base::pool::TaskPool;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest answer read from the upstream, head and body together: a token answer is a few hundred bytes,
/// and anything near this is not a token endpoint.
const MAX_ANSWER: usize = 64 * 1024;
/// Longest access or refresh token kept: it is stored in the session record (replicated to peers) and the
/// access token goes into every request to the backends.
const MAX_TOKEN: usize = 4096;
/// Most headers in an answer.
const MAX_HEADERS: usize = 64;

/// Where and how to reach the upstream auth endpoint. The config builds the same fields
/// (`auth::settings`); they are plain here so this module stands alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub address: SocketAddr,
    /// The `Host` header sent (a name, with `:port` if needed).
    pub host: Box<str>,
    /// Where logins are posted, e.g. `/oauth/token`.
    pub login_path: Box<str>,
    /// Where refreshes are posted; `None`: tokens are not refreshed, the user logs in again.
    pub refresh_path: Option<Box<str>>,
    /// Deadline for the connect and the whole exchange.
    pub timeout: Duration,
}

/// The token the upstream returned, kept in the session record.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamToken {
    /// Injected into requests to the backends (`Authorization: Bearer …`); a valid header value.
    pub access: String,
    /// The refresh token to send next time, if the upstream gave one.
    pub refresh: Option<String>,
    /// Seconds since the Unix epoch; 0: unknown (the upstream gave no `expires_in`).
    pub expires: u32,
}

impl std::fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Lengths only: the tokens are credentials.
        f.debug_struct("UpstreamToken")
            .field("access_len", &self.access.len())
            .field("refresh_len", &self.refresh.as_ref().map(String::len))
            .field("expires", &self.expires)
            .finish()
    }
}

/// Why the upstream gave no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The upstream refused the credentials or the refresh token (400, 401 or 403), or there is no refresh
    /// path: the user's fault or a dead token. The user logs in again.
    #[error("the auth upstream refused the credentials or the refresh token")]
    Rejected,
    /// The upstream could not be reached, timed out, answered 5xx or garbage, or our own settings cannot
    /// make a request: not the user's fault. The message says which (never credentials nor tokens).
    #[error("the auth upstream is unavailable: {0}")]
    Unavailable(String),
}

fn unavailable(why: impl Into<String>) -> RelayError {
    RelayError::Unavailable(why.into())
}

/// What to ask the upstream.
pub enum Job {
    /// Exchange a user's credentials for a token.
    Login {
        upstream: Arc<Upstream>,
        username: String,
        password: String,
    },
    /// Exchange a refresh token for a new token.
    Refresh {
        upstream: Arc<Upstream>,
        refresh_token: String,
    },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The upstream only: never the password nor the token (nor the user, who is no business of a log
        // line about the relay).
        let (kind, upstream) = match self {
            Job::Login { upstream, .. } => ("Job::Login", upstream),
            Job::Refresh { upstream, .. } => ("Job::Refresh", upstream),
        };
        f.debug_struct(kind)
            .field("upstream", &upstream.address)
            .finish_non_exhaustive()
    }
}

/// Called on a relay thread with the upstream's verdict.
pub type Done = Box<dyn FnOnce(Result<UpstreamToken, RelayError>) + Send>;

/// The relay's queue is full: too many logins or refreshes waiting for the upstream. Ours, not the
/// user's: the request is answered "try again later".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the auth relay is busy: too many requests to the auth upstream at once")]
pub struct Busy;

/// Refreshes in flight, by login session: the callers waiting for each one's verdict.
///
/// A mutex, not a concurrent map: joining a flight or starting one must be one step, and a refresh happens
/// once per token lifetime per session, not per request, so the lock is off the steady-state hot path. It
/// is held for a map lookup and a non-blocking queue push only; callbacks run outside it.
type Flights = Mutex<HashMap<[u8; 16], Vec<Done>>>;

/// The relay's threads, their bounded queue, and the refreshes in flight.
pub struct Relay {
    pool: TaskPool,
    flights: Arc<Flights>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: queued jobs hold passwords and tokens.
        f.debug_struct("Relay")
            .field("threads", &self.pool.threads())
            .field("queued", &self.pool.queued())
            // Not the sessions: a session id is a credential too.
            .field("refreshing", &self.flights.lock().len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// `threads` relay threads (at least one), named `auth-relay-N`, with room for `queue` jobs waiting.
    /// Each thread holds one upstream exchange at a time, blocking, for at most the upstream's timeout.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<Relay> {
        Ok(Relay {
            pool: TaskPool::start("auth-relay", threads, queue)?,
            flights: Arc::default(),
        })
    }

    /// Queues a job; `done` is called with the verdict on a relay thread (a panicking `done` is caught
    /// and logged by the pool). Never blocks. On `Err(Busy)`, `done` is dropped uncalled.
    pub fn submit(&self, job: Job, done: Done) -> Result<(), Busy> {
        self.pool
            .submit(Box::new(move || done(run(job))))
            .map_err(|_| Busy)
    }

    /// Single flight: refreshes the upstream token of login session `session` unless a refresh for it is
    /// already running, in which case `done` waits behind it and gets (a clone of) the same verdict. So
    /// there is exactly one upstream request per session however many requests wait for the new token;
    /// the `upstream` and `refresh_token` of a caller that joins a flight are not used.
    ///
    /// The flight ends before its callers are called: a refresh asked from then on (by a callback, or by
    /// a request that arrives later) is a new flight. A late request should therefore check whether its
    /// session's token was renewed meanwhile before asking, or it sends an already used refresh token:
    /// [`refresh_once_with`](Self::refresh_once_with) makes that check and the update race-free.
    ///
    /// Never blocks. On `Err(Busy)` (the queue is full) `done` is dropped uncalled and no flight is left
    /// behind: the next call tries again. Otherwise `done` is called exactly once, on a relay thread.
    pub fn refresh_once(
        &self,
        session: [u8; 16],
        upstream: Arc<Upstream>,
        refresh_token: String,
        done: Done,
    ) -> Result<(), Busy> {
        self.refresh_once_with(session, upstream, refresh_token, &|| true, None, done)
            .map(|_| ())
    }

    /// [`refresh_once`](Self::refresh_once) for a caller that keeps the token somewhere requests read it
    /// (the session record):
    /// - `still_due` is asked, under the flights' lock, before a new flight starts: `false` (the token
    ///   was renewed since the caller read it) starts none, drops `done` uncalled and returns
    ///   `Ok(Flight::Renewed)`.
    /// - `apply` runs once per flight with its verdict, on the relay thread, before the flight ends (so
    ///   before any waiter is called, while a request asking meanwhile still joins the flight).
    ///
    /// Together they close the window in which a request that read the old token would start a second
    /// flight with a refresh token already used (which a rotating upstream refuses, ending the session):
    /// until `apply` has stored the new token such a request joins the flight, and after it `still_due`
    /// says no.
    pub fn refresh_once_with(
        &self,
        session: [u8; 16],
        upstream: Arc<Upstream>,
        refresh_token: String,
        still_due: &dyn Fn() -> bool,
        apply: Option<Apply>,
        done: Done,
    ) -> Result<Flight, Busy> {
        let mut flights = self.flights.lock();
        if let Some(waiting) = flights.get_mut(&session) {
            waiting.push(done);
            return Ok(Flight::Waiting);
        }
        if !still_due() {
            return Ok(Flight::Renewed);
        }
        let landing = Arc::clone(&self.flights);
        let job = Job::Refresh {
            upstream,
            refresh_token,
        };
        // Queued while the lock is held (try_send never blocks): nobody can join a flight whose job the
        // queue refused, and the job cannot land before its flight is recorded.
        self.submit(
            job,
            Box::new(move |verdict| {
                if let Some(apply) = apply {
                    // A panic here must still land the flight: its waiters are parked until they hear
                    // back, and a flight never ended would hold every later refresh of the session.
                    if catch_unwind(AssertUnwindSafe(|| apply(&verdict))).is_err() {
                        log::error!("an auth relay refresh's apply callback panicked");
                    }
                }
                land(&landing, session, verdict);
            }),
        )?;
        flights.insert(session, vec![done]);
        Ok(Flight::Waiting)
    }
}

/// Runs once per refresh flight with its verdict, before the flight ends ([`Relay::refresh_once_with`]).
pub type Apply = Box<dyn FnOnce(&Result<UpstreamToken, RelayError>) + Send>;

/// What [`Relay::refresh_once_with`] did with a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flight {
    /// The caller waits for a flight (started or joined): its `done` will be called.
    Waiting,
    /// No flight runs and `still_due` said the token was renewed meanwhile: nothing was asked, `done`
    /// was dropped uncalled. The caller reads the new token.
    Renewed,
}

/// Ends `session`'s flight and hands its verdict to every caller that waited for it.
fn land(flights: &Flights, session: [u8; 16], verdict: Result<UpstreamToken, RelayError>) {
    let waiting = flights.lock().remove(&session).unwrap_or_default();
    for done in waiting {
        let verdict = verdict.clone();
        // One caller's panicking callback must not leave the others waiting forever (nor end this
        // thread): their requests are parked until they hear back.
        if catch_unwind(AssertUnwindSafe(move || done(verdict))).is_err() {
            log::error!(
                "an auth relay refresh callback panicked; the other waiters were still answered"
            );
        }
    }
}

/// Runs one job: one exchange with the upstream (none for a refresh without a refresh path).
fn run(job: Job) -> Result<UpstreamToken, RelayError> {
    match job {
        Job::Login {
            upstream,
            username,
            password,
        } => {
            let body =
                serde_json::json!({ "username": username, "password": password }).to_string();
            exchange(&upstream, &upstream.login_path, body.as_bytes(), None)
        }
        Job::Refresh {
            upstream,
            refresh_token,
        } => {
            let Some(path) = &upstream.refresh_path else {
                return Err(RelayError::Rejected);
            };
            let body = serde_json::json!({
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
            })
            .to_string();
            exchange(&upstream, path, body.as_bytes(), Some(refresh_token))
        }
    }
}

/// One POST of `body` to `path` and its answer, within the upstream's timeout. `old_refresh` is kept when
/// a refresh answer carries no new refresh token.
fn exchange(
    upstream: &Upstream,
    path: &str,
    body: &[u8],
    old_refresh: Option<String>,
) -> Result<UpstreamToken, RelayError> {
    // Checked here too (the config should refuse them first): a CR or LF from the settings would let the
    // path or host split the request.
    if !path.starts_with('/') || !path.bytes().all(is_visible) {
        return Err(unavailable(
            "the configured upstream path is not a valid request target",
        ));
    }
    if upstream.host.is_empty() || !upstream.host.bytes().all(is_visible) {
        return Err(unavailable(
            "the configured upstream host is not a valid Host header",
        ));
    }
    let deadline = Instant::now() + upstream.timeout;
    let mut stream =
        TcpStream::connect_timeout(&upstream.address, upstream.timeout).map_err(|e| {
            match e.kind() {
                ErrorKind::TimedOut | ErrorKind::WouldBlock => unavailable(format!(
                    "connecting to {} timed out after {:?}",
                    upstream.address, upstream.timeout
                )),
                _ => unavailable(format!("cannot connect to {}: {e}", upstream.address)),
            }
        })?;
    // One small request, written whole: no need to wait for acks between segments.
    let _ = stream.set_nodelay(true);

    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        upstream.host,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let timeout = upstream.timeout;
    let left = remaining(deadline, timeout)?;
    stream
        .set_write_timeout(Some(left))
        .map_err(|e| unavailable(format!("cannot set the write timeout: {e}")))?;
    stream
        .write_all(&request)
        .map_err(|e| io_failure("sending the request", &e, timeout))?;

    let mut answer = Answer {
        stream,
        deadline,
        timeout,
        buf: Vec::with_capacity(4096),
    };
    let (status, framing, head_len) = answer.read_head()?;
    match status {
        200 => {}
        400 | 401 | 403 => return Err(RelayError::Rejected),
        other => return Err(unavailable(format!("the upstream answered status {other}"))),
    }
    let body = answer.read_body(framing, head_len)?;
    parse_token(&body, old_refresh)
}

/// Visible ASCII: what a request target, a Host value and a bearer token may hold.
fn is_visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// Time left before `deadline`, or the timeout error once it has passed.
fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, RelayError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(timed_out(timeout))
    } else {
        Ok(left)
    }
}

fn timed_out(timeout: Duration) -> RelayError {
    unavailable(format!("the upstream did not answer within {timeout:?}"))
}

fn io_failure(doing: &str, e: &std::io::Error, timeout: Duration) -> RelayError {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => timed_out(timeout),
        _ => unavailable(format!("{doing}: {e}")),
    }
}

/// How the answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// The answer being read: everything received so far, head included, at most [`MAX_ANSWER`] bytes.
struct Answer {
    stream: TcpStream,
    deadline: Instant,
    timeout: Duration,
    buf: Vec<u8>,
}

impl Answer {
    /// Reads more into `buf`; `Ok(0)` when the upstream closed the connection.
    fn fill(&mut self) -> Result<usize, RelayError> {
        let room = MAX_ANSWER - self.buf.len();
        if room == 0 {
            return Err(unavailable(format!(
                "the answer is larger than {} KiB",
                MAX_ANSWER / 1024
            )));
        }
        let mut chunk = [0u8; 8192];
        let want = room.min(chunk.len());
        loop {
            let left = remaining(self.deadline, self.timeout)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| unavailable(format!("cannot set the read timeout: {e}")))?;
            match self.stream.read(&mut chunk[..want]) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_failure("reading the answer", &e, self.timeout)),
            }
        }
    }

    /// Like [`fill`](Self::fill), but the connection closing is an error: the answer is not complete.
    fn fill_more(&mut self) -> Result<(), RelayError> {
        match self.fill()? {
            0 => Err(unavailable(
                "the upstream closed the connection before the answer was complete",
            )),
            _ => Ok(()),
        }
    }

    /// Reads up to the end of the final (non-1xx) head: its status, the body's framing, and where the body
    /// starts in `buf`.
    fn read_head(&mut self) -> Result<(u16, Framing, usize), RelayError> {
        let mut start = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf[start..]) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = response.code.unwrap_or(0);
                    // An interim answer (100 Continue, 103 Early Hints): the real one follows. 101 would
                    // switch protocols, which we never asked for.
                    if (100..200).contains(&status) && status != 101 {
                        start += len;
                        continue;
                    }
                    let framing = framing(response.headers)?;
                    return Ok((status, framing, start + len));
                }
                Ok(httparse::Status::Partial) => self.fill_more()?,
                // httparse's messages are fixed words ("invalid token"…), never the bytes themselves.
                Err(e) => {
                    return Err(unavailable(format!("the answer is not HTTP/1.x ({e})")));
                }
            }
        }
    }

    /// Reads the body that starts at `buf[start..]`.
    fn read_body(&mut self, framing: Framing, start: usize) -> Result<Vec<u8>, RelayError> {
        match framing {
            Framing::Length(len) => {
                if len > MAX_ANSWER - start {
                    return Err(unavailable(format!(
                        "the answer is larger than {} KiB",
                        MAX_ANSWER / 1024
                    )));
                }
                while self.buf.len() < start + len {
                    self.fill_more()?;
                }
                Ok(self.buf[start..start + len].to_vec())
            }
            Framing::Close => {
                while self.fill()? > 0 {}
                Ok(self.buf[start..].to_vec())
            }
            Framing::Chunked => self.read_chunked(start),
        }
    }

    /// Decodes a chunked body as it arrives; trailers are ignored (the connection closes after them).
    fn read_chunked(&mut self, start: usize) -> Result<Vec<u8>, RelayError> {
        let bad = || unavailable("the answer's chunked framing is invalid");
        let mut body = Vec::new();
        let mut pos = start;
        loop {
            match httparse::parse_chunk_size(&self.buf[pos..]) {
                Ok(httparse::Status::Complete((_, 0))) => return Ok(body),
                Ok(httparse::Status::Complete((size_len, size))) => {
                    // Bounded before any arithmetic: no chunk can be larger than the whole answer.
                    let size = usize::try_from(size)
                        .ok()
                        .filter(|&s| s <= MAX_ANSWER)
                        .ok_or_else(|| {
                            unavailable(format!(
                                "the answer is larger than {} KiB",
                                MAX_ANSWER / 1024
                            ))
                        })?;
                    let end = pos + size_len + size + 2;
                    while self.buf.len() < end {
                        self.fill_more()?;
                    }
                    if &self.buf[end - 2..end] != b"\r\n" {
                        return Err(bad());
                    }
                    body.extend_from_slice(&self.buf[pos + size_len..end - 2]);
                    pos = end;
                }
                Ok(httparse::Status::Partial) => self.fill_more()?,
                Err(_) => return Err(bad()),
            }
        }
    }
}

/// The body's framing from the answer's headers (RFC 9112 §6.3): chunked wins over a length; no
/// length means until close.
fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, RelayError> {
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // We send no TE header, so only "chunked" is acceptable (and the last coding must be it).
            let value = std::str::from_utf8(h.value).unwrap_or("");
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if coding.eq_ignore_ascii_case("chunked") && !chunked {
                    chunked = true;
                } else {
                    return Err(unavailable(
                        "the answer uses a transfer coding other than chunked",
                    ));
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| unavailable("the answer's Content-Length is invalid"))?;
            if length.is_some_and(|l| l != value) {
                return Err(unavailable("the answer has conflicting Content-Lengths"));
            }
            length = Some(value);
        }
    }
    Ok(match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(len)) => Framing::Length(len),
        (false, None) => Framing::Close,
    })
}

/// The JSON of a 200 answer (RFC 6749 §5.1); other members are ignored.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Number>,
    #[serde(default)]
    refresh_token: Option<String>,
}

fn parse_token(body: &[u8], old_refresh: Option<String>) -> Result<UpstreamToken, RelayError> {
    // serde_json's messages can quote the offending value, which may be a token: only its position.
    let answer: TokenAnswer = serde_json::from_slice(body).map_err(|e| {
        unavailable(format!(
            "the answer is not the expected token JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let access = answer.access_token;
    if access.is_empty() || access.len() > MAX_TOKEN || !access.bytes().all(is_visible) {
        return Err(unavailable("bad token"));
    }
    if answer
        .token_type
        .as_deref()
        .is_some_and(|kind| !kind.eq_ignore_ascii_case("bearer"))
    {
        // Injected as `Authorization: Bearer`: a MAC or DPoP token would be sent wrong.
        return Err(unavailable("the token_type is not Bearer"));
    }
    let refresh = match answer.refresh_token.filter(|r| !r.is_empty()) {
        Some(r) if r.len() > MAX_TOKEN => return Err(unavailable("bad refresh token")),
        Some(r) => Some(r),
        // RFC 6749 §6: no new refresh token means the old one still holds.
        None => old_refresh,
    };
    let expires = match answer.expires_in {
        None => 0,
        Some(n) => {
            let secs = n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .ok_or_else(|| unavailable("the answer's expires_in is not a number of seconds"))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            // Capped at u32::MAX (year 2106) rather than wrapping; never 0, which means unknown.
            u32::try_from(now.saturating_add(secs))
                .unwrap_or(u32::MAX)
                .max(1)
        }
    };
    Ok(UpstreamToken {
        access,
        refresh,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    const PASSWORD: &str = "correct horse battery staple";

    /// Reads one request (head and Content-Length body) the way an auth service would.
    fn read_request(stream: &mut TcpStream) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).unwrap();
            if n == 0 {
                return buf;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = request.parse(&buf) {
                let len = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                if buf.len() >= head + len {
                    return buf;
                }
            }
        }
    }

    /// An auth service for one request: reads it, writes `pieces` one after another (each its own write,
    /// so the answer arrives in fragments), then closes. Joins to the request it saw.
    fn one_shot(pieces: Vec<Vec<u8>>) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_nodelay(true).unwrap();
            let request = read_request(&mut stream);
            for piece in pieces {
                // The relay may have given up already (a refused answer is not read to its end).
                if stream.write_all(&piece).is_err() {
                    break;
                }
            }
            request
        });
        (address, server)
    }

    fn answer(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn upstream(address: SocketAddr) -> Arc<Upstream> {
        Arc::new(Upstream {
            address,
            host: "auth.test".into(),
            login_path: "/oauth/token".into(),
            refresh_path: Some("/oauth/refresh".into()),
            timeout: Duration::from_secs(10),
        })
    }

    fn login(upstream: Arc<Upstream>) -> Job {
        Job::Login {
            upstream,
            username: "alice".into(),
            password: PASSWORD.into(),
        }
    }

    /// Runs one job on a real relay; the verdict and the name of the thread that delivered it.
    fn ask(job: Job) -> (Result<UpstreamToken, RelayError>, String) {
        let relay = Relay::start(1, 4).unwrap();
        let (tx, rx) = mpsc::channel();
        relay
            .submit(
                job,
                Box::new(move |verdict| {
                    let name = std::thread::current().name().unwrap_or("").to_owned();
                    tx.send((verdict, name)).unwrap();
                }),
            )
            .unwrap();
        rx.recv().unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn split(request: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(request).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn a_login_posts_the_credentials_as_json_and_keeps_the_token() {
        let (address, server) = one_shot(vec![answer(
            "200 OK",
            r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-1"}"#,
        )]);
        let before = now();
        let (verdict, thread) = ask(login(upstream(address)));
        let after = now();
        let token = verdict.unwrap();
        assert_eq!(token.access, "at-1");
        assert_eq!(token.refresh.as_deref(), Some("rt-1"));
        let expires = u64::from(token.expires);
        assert!(
            (before + 3600..=after + 3600).contains(&expires),
            "{expires}"
        );
        assert!(thread.starts_with("auth-relay-"), "{thread}");

        let (head, body) = split(&server.join().unwrap());
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("POST /oauth/token HTTP/1.1"));
        let headers: Vec<&str> = lines.collect();
        for expected in [
            "Host: auth.test",
            "Content-Type: application/json",
            "Connection: close",
        ] {
            assert!(headers.contains(&expected), "{expected} in {headers:?}");
        }
        assert!(headers.iter().any(|h| h.starts_with("Content-Length: ")));
        assert_eq!(
            body,
            serde_json::json!({"username": "alice", "password": PASSWORD})
        );
    }

    #[test]
    fn a_login_without_expires_in_has_an_unknown_expiry_and_no_refresh_token() {
        let (address, _server) = one_shot(vec![answer("200 OK", r#"{"access_token":"at-2"}"#)]);
        let token = ask(login(upstream(address))).0.unwrap();
        assert_eq!(token.access, "at-2");
        assert_eq!(token.refresh, None);
        assert_eq!(token.expires, 0, "0 means unknown");
    }

    #[test]
    fn refused_credentials_are_rejected() {
        for status in ["400 Bad Request", "401 Unauthorized", "403 Forbidden"] {
            let (address, _server) = one_shot(vec![answer(status, r#"{"error":"invalid_grant"}"#)]);
            assert_eq!(
                ask(login(upstream(address))).0,
                Err(RelayError::Rejected),
                "{status}"
            );
        }
    }

    #[test]
    fn a_server_error_is_unavailable_not_the_users_fault() {
        let (address, _server) = one_shot(vec![answer("500 Internal Server Error", "oops")]);
        match ask(login(upstream(address))).0 {
            Err(RelayError::Unavailable(why)) => assert!(why.contains("500"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Another 4xx is ours or theirs (a wrong path, a wrong method), not a refused password.
        let (address, _server) = one_shot(vec![answer("404 Not Found", "")]);
        assert!(matches!(
            ask(login(upstream(address))).0,
            Err(RelayError::Unavailable(_))
        ));
    }

    #[test]
    fn garbage_is_unavailable_and_the_error_never_holds_the_password() {
        let answers = [
            format!("SSH-2.0-OpenSSH_9.6 {PASSWORD}\r\n\r\n").into_bytes(),
            answer("200 OK", "<html>not json</html>"),
            answer(
                "200 OK",
                &format!(r#"{{"access_token":42,"note":"{PASSWORD}"}}"#),
            ),
            answer("200 OK", r#"{"access_token":"at","expires_in":"soon"}"#),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{}".to_vec(),
            // Closed before the promised length.
            b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"access_token\":".to_vec(),
            // Closed mid-head.
            b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(),
        ];
        for garbage in answers {
            let (address, _server) = one_shot(vec![garbage.clone()]);
            match ask(login(upstream(address))).0 {
                Err(RelayError::Unavailable(why)) => {
                    assert!(!why.contains(PASSWORD), "{why}");
                }
                other => panic!("{other:?} for {:?}", String::from_utf8_lossy(&garbage)),
            }
        }
    }

    #[test]
    fn a_silent_upstream_times_out_as_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_request(&mut stream);
            // Never answers; holds the connection open until the test is done.
            let _ = hold_rx.recv();
        });
        let mut slow = (*upstream(address)).clone();
        slow.timeout = Duration::from_millis(300);
        match ask(login(Arc::new(slow))).0 {
            Err(RelayError::Unavailable(why)) => assert!(why.contains("did not answer"), "{why}"),
            other => panic!("{other:?}"),
        }
        drop(hold_tx);
        server.join().unwrap();
    }

    #[test]
    fn an_unreachable_upstream_is_unavailable() {
        let address = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(); // closed again at once: the port refuses connections
        match ask(login(upstream(address))).0 {
            Err(RelayError::Unavailable(why)) => {
                assert!(why.contains(&address.to_string()), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_chunked_answer_arriving_byte_by_byte_is_decoded() {
        let body = r#"{"access_token":"at-chunked","expires_in":60}"#;
        let (a, b) = body.split_at(10);
        let wire = format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: t\r\n\r\n",
            a.len(),
            b.len()
        );
        let pieces = wire.bytes().map(|byte| vec![byte]).collect();
        let (address, _server) = one_shot(pieces);
        let token = ask(login(upstream(address))).0.unwrap();
        assert_eq!(token.access, "at-chunked");
        assert_ne!(token.expires, 0);
    }

    #[test]
    fn an_answer_read_until_close_is_accepted() {
        let (address, _server) = one_shot(vec![
            b"HTTP/1.0 200 OK\r\n\r\n".to_vec(),
            br#"{"access_token":"at-close"}"#.to_vec(),
        ]);
        assert_eq!(ask(login(upstream(address))).0.unwrap().access, "at-close");
    }

    #[test]
    fn an_answer_over_64_kib_is_unavailable() {
        let padding = "x".repeat(70 * 1024);
        let huge = format!(r#"{{"access_token":"at","pad":"{padding}"}}"#);
        let until_close = [
            b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            huge.clone().into_bytes(),
        ];
        for pieces in [vec![answer("200 OK", &huge)], until_close.to_vec()] {
            let (address, _server) = one_shot(pieces);
            match ask(login(upstream(address))).0 {
                Err(RelayError::Unavailable(why)) => assert!(why.contains("64 KiB"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_token_that_is_not_a_header_value_is_refused() {
        let long = "a".repeat(MAX_TOKEN + 1);
        for bad in [
            r#"{"access_token":""}"#.to_owned(),
            r#"{"access_token":"two words"}"#.to_owned(),
            r#"{"access_token":"at\r\nX-Admin: yes"}"#.to_owned(),
            r#"{"access_token":"caf\u00e9"}"#.to_owned(),
            format!(r#"{{"access_token":"{long}"}}"#),
        ] {
            let (address, _server) = one_shot(vec![answer("200 OK", &bad)]);
            assert_eq!(
                ask(login(upstream(address))).0,
                Err(RelayError::Unavailable("bad token".into())),
                "{bad:.60}"
            );
        }
        // The longest allowed token passes.
        let longest = "a".repeat(MAX_TOKEN);
        let (address, _server) = one_shot(vec![answer(
            "200 OK",
            &format!(r#"{{"access_token":"{longest}"}}"#),
        )]);
        assert_eq!(ask(login(upstream(address))).0.unwrap().access, longest);
    }

    #[test]
    fn a_token_type_other_than_bearer_is_refused() {
        let (address, _server) = one_shot(vec![answer(
            "200 OK",
            r#"{"access_token":"at","token_type":"mac"}"#,
        )]);
        assert!(matches!(
            ask(login(upstream(address))).0,
            Err(RelayError::Unavailable(_))
        ));
        let (address, _server) = one_shot(vec![answer(
            "200 OK",
            r#"{"access_token":"at","token_type":"bearer"}"#,
        )]);
        assert!(ask(login(upstream(address))).0.is_ok(), "case-insensitive");
    }

    #[test]
    fn a_refresh_posts_the_grant_and_keeps_the_old_refresh_token_when_none_comes_back() {
        let (address, server) = one_shot(vec![answer(
            "200 OK",
            r#"{"access_token":"at-new","expires_in":60}"#,
        )]);
        let token = ask(Job::Refresh {
            upstream: upstream(address),
            refresh_token: "rt-old".into(),
        })
        .0
        .unwrap();
        assert_eq!(token.access, "at-new");
        assert_eq!(token.refresh.as_deref(), Some("rt-old"));
        let (head, body) = split(&server.join().unwrap());
        assert!(
            head.starts_with("POST /oauth/refresh HTTP/1.1\r\n"),
            "{head}"
        );
        assert_eq!(
            body,
            serde_json::json!({"grant_type": "refresh_token", "refresh_token": "rt-old"})
        );
    }

    #[test]
    fn a_refresh_without_a_refresh_path_is_rejected_without_a_request() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut no_refresh = (*upstream(listener.local_addr().unwrap())).clone();
        no_refresh.refresh_path = None;
        let verdict = ask(Job::Refresh {
            upstream: Arc::new(no_refresh),
            refresh_token: "rt".into(),
        })
        .0;
        assert_eq!(verdict, Err(RelayError::Rejected));
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "no connection was made"
        );
    }

    #[test]
    fn a_path_or_host_that_would_split_the_request_is_refused_before_connecting() {
        let mut bad = (*upstream("127.0.0.1:9".parse().unwrap())).clone();
        bad.login_path = "/token HTTP/1.1\r\nX-Evil: 1\r\n".into();
        assert!(matches!(
            ask(login(Arc::new(bad.clone()))).0,
            Err(RelayError::Unavailable(why)) if why.contains("path")
        ));
        bad.login_path = "/token".into();
        bad.host = "auth\r\nX-Evil: 1".into();
        assert!(matches!(
            ask(login(Arc::new(bad))).0,
            Err(RelayError::Unavailable(why)) if why.contains("host")
        ));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let up = upstream("127.0.0.1:9".parse().unwrap());
        let shown = [
            format!("{:?}", login(up.clone())),
            format!(
                "{:?}",
                Job::Refresh {
                    upstream: up,
                    refresh_token: "rt-secret".into()
                }
            ),
            format!(
                "{:?}",
                UpstreamToken {
                    access: "at-secret".into(),
                    refresh: Some("rt-secret".into()),
                    expires: 1,
                }
            ),
            format!("{:?}", Relay::start(1, 1).unwrap()),
        ];
        for s in shown {
            for secret in [PASSWORD, "alice", "at-secret", "rt-secret"] {
                assert!(!s.contains(secret), "{s}");
            }
        }
    }

    /// An auth service that counts the requests it accepts and answers each with `at-N`/`rt-N` (N its
    /// count) once `gate` opens, so that every caller is known to have asked before any answer: a slow
    /// upstream, without a race against a sleep.
    fn counting_server() -> (SocketAddr, Arc<AtomicUsize>, Gate) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let gate = Gate::default();
        let (counted, gated) = (count.clone(), gate.clone());
        // Serves until the test process ends.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                let gate = gated.clone();
                std::thread::spawn(move || {
                    read_request(&mut stream);
                    gate.wait();
                    let body = format!(
                        r#"{{"access_token":"at-{n}","expires_in":60,"refresh_token":"rt-{n}"}}"#
                    );
                    let _ = stream.write_all(&answer("200 OK", &body));
                });
            }
        });
        (address, count, gate)
    }

    /// Shut until opened, then open for good.
    #[derive(Clone, Default)]
    struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

    impl Gate {
        fn open(&self) {
            *self.0.0.lock().unwrap() = true;
            self.0.1.notify_all();
        }
        fn wait(&self) {
            let mut open = self.0.0.lock().unwrap();
            while !*open {
                open = self.0.1.wait(open).unwrap();
            }
        }
    }

    /// Long enough that only a lost callback reaches it; never an assertion about speed.
    const LOST: Duration = Duration::from_secs(60);

    #[test]
    fn fifty_waiting_requests_make_one_refresh_and_share_its_token() {
        let (address, count, gate) = counting_server();
        let up = upstream(address);
        let relay = Arc::new(Relay::start(2, 8).unwrap());
        let session = [7u8; 16];
        let (tx, rx) = mpsc::channel();
        let start = Arc::new(std::sync::Barrier::new(50));
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let (relay, up, tx, start) = (relay.clone(), up.clone(), tx.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let done: Done = Box::new(move |verdict| tx.send(verdict).unwrap());
                    relay.refresh_once(session, up, "rt-0".into(), done)
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.join().unwrap(), Ok(()), "nobody is turned away busy");
        }
        // Every caller has asked; only now may the upstream answer.
        gate.open();
        let verdicts: Vec<_> = (0..50).map(|_| rx.recv_timeout(LOST).unwrap()).collect();
        assert_eq!(count.load(Ordering::SeqCst), 1, "one upstream request");
        let expected = UpstreamToken {
            access: "at-1".into(),
            refresh: Some("rt-1".into()),
            expires: verdicts[0].as_ref().unwrap().expires,
        };
        assert!(verdicts.iter().all(|v| v.as_ref() == Ok(&expected)));

        // That flight has landed: the next refresh of the session is a new request.
        relay
            .refresh_once(
                session,
                up,
                "rt-1".into(),
                Box::new(move |verdict| tx.send(verdict).unwrap()),
            )
            .unwrap();
        assert_eq!(rx.recv_timeout(LOST).unwrap().unwrap().access, "at-2");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn apply_runs_before_the_flight_ends_and_a_renewed_token_starts_no_flight() {
        let (address, count, gate) = counting_server();
        let up = upstream(address);
        let relay = Arc::new(Relay::start(2, 8).unwrap());
        let session = [9u8; 16];
        let stored: Arc<Mutex<Option<String>>> = Arc::default();
        // (who, what): a waiter's token, or how the late caller was received.
        let (tx, rx) = mpsc::channel::<(&str, String)>();
        let access =
            |v: Result<UpstreamToken, RelayError>| v.map_or_else(|e| e.to_string(), |t| t.access);
        // `apply` stores the new token; then a request that read the old one before asks: the flight has
        // not ended, so it joins it instead of sending rt-0 again.
        let apply: Apply = {
            let (relay, up, tx, stored) = (relay.clone(), up.clone(), tx.clone(), stored.clone());
            Box::new(move |verdict| {
                *stored.lock() = verdict.as_ref().ok().map(|t| t.access.clone());
                let late = tx.clone();
                let joined = relay.refresh_once_with(
                    session,
                    up,
                    "rt-0".into(),
                    &|| true,
                    None,
                    Box::new(move |v| late.send(("late", access(v))).unwrap()),
                );
                tx.send(("joined", format!("{joined:?}"))).unwrap();
            })
        };
        let first = tx.clone();
        let started = relay.refresh_once_with(
            session,
            up.clone(),
            "rt-0".into(),
            &|| true,
            Some(apply),
            Box::new(move |v| first.send(("first", access(v))).unwrap()),
        );
        assert_eq!(started, Ok(Flight::Waiting));
        gate.open();
        let mut got: Vec<_> = (0..3).map(|_| rx.recv_timeout(LOST).unwrap()).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("first", "at-1".to_string()),
                ("joined", "Ok(Waiting)".to_string()),
                ("late", "at-1".to_string())
            ]
        );
        assert_eq!(count.load(Ordering::SeqCst), 1, "one upstream request");

        // The flight has ended: a request that read the old token asks again, and the check sees the
        // stored token is no longer the one it read.
        let renewed = relay.refresh_once_with(
            session,
            up,
            "rt-0".into(),
            &|| stored.lock().is_none(),
            None,
            Box::new(|_| panic!("not called")),
        );
        assert_eq!(renewed, Ok(Flight::Renewed));
        assert_eq!(count.load(Ordering::SeqCst), 1, "nothing asked");
    }

    #[test]
    fn different_sessions_refresh_separately() {
        let (address, count, gate) = counting_server();
        let up = upstream(address);
        let relay = Relay::start(2, 8).unwrap();
        let (tx, rx) = mpsc::channel();
        for session in [[1u8; 16], [2u8; 16], [1u8; 16]] {
            let tx = tx.clone();
            relay
                .refresh_once(
                    session,
                    up.clone(),
                    "rt-0".into(),
                    Box::new(move |v| tx.send((session, v)).unwrap()),
                )
                .unwrap();
        }
        gate.open();
        let mut got: Vec<_> = (0..3)
            .map(|_| {
                let (session, v) = rx.recv_timeout(LOST).unwrap();
                (session[0], v.unwrap().access)
            })
            .collect();
        got.sort();
        assert_eq!(count.load(Ordering::SeqCst), 2, "one request per session");
        assert_eq!(got[0].1, got[1].1, "session 1's callers share a token");
        assert_ne!(got[0].1, got[2].1, "session 2 has its own");
    }

    /// A relay with one thread held inside a callback until the returned sender is used (or dropped), so
    /// that jobs stay queued; and an upstream without a refresh path, whose refreshes need no network.
    fn held_relay(queue: usize) -> (Relay, mpsc::Sender<()>, Arc<Upstream>) {
        let relay = Relay::start(1, queue).unwrap();
        let mut no_refresh = (*upstream("127.0.0.1:9".parse().unwrap())).clone();
        no_refresh.refresh_path = None;
        let no_refresh = Arc::new(no_refresh);
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let job = Job::Refresh {
            upstream: no_refresh.clone(),
            refresh_token: "rt".into(),
        };
        relay
            .submit(
                job,
                Box::new(move |_| {
                    started_tx.send(()).unwrap();
                    let _ = gate_rx.recv();
                }),
            )
            .unwrap();
        started_rx.recv().unwrap(); // the thread is busy in the callback
        (relay, gate_tx, no_refresh)
    }

    #[test]
    fn a_refresh_refused_busy_leaves_no_flight_behind() {
        let (relay, gate, no_refresh) = held_relay(1);
        let fill = Job::Refresh {
            upstream: no_refresh.clone(),
            refresh_token: "rt".into(),
        };
        let (drained_tx, drained_rx) = mpsc::channel();
        let drained: Done = Box::new(move |_| drained_tx.send(()).unwrap());
        relay.submit(fill, drained).unwrap(); // the one queue slot
        let session = [3u8; 16];
        assert_eq!(
            relay.refresh_once(session, no_refresh.clone(), "rt".into(), Box::new(|_| {})),
            Err(Busy)
        );
        gate.send(()).unwrap();
        drained_rx.recv_timeout(LOST).unwrap(); // the queue is empty again
        // Had the refused refresh left its flight, this caller would wait behind it forever.
        let (tx, rx) = mpsc::channel();
        relay
            .refresh_once(
                session,
                no_refresh,
                "rt".into(),
                Box::new(move |v| tx.send(v).unwrap()),
            )
            .unwrap();
        assert_eq!(rx.recv_timeout(LOST).unwrap(), Err(RelayError::Rejected));
    }

    #[test]
    fn a_panicking_waiter_does_not_starve_the_others() {
        let (relay, gate, no_refresh) = held_relay(4);
        let session = [4u8; 16];
        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            let done: Done = Box::new(move |v| {
                assert!(i != 1, "a buggy callback");
                tx.send(v).unwrap();
            });
            relay
                .refresh_once(session, no_refresh.clone(), "rt".into(), done)
                .unwrap();
        }
        gate.send(()).unwrap();
        for _ in 0..2 {
            assert_eq!(rx.recv_timeout(LOST).unwrap(), Err(RelayError::Rejected));
        }
        // The thread survived: the relay still works.
        let tx2 = tx.clone();
        relay
            .refresh_once(
                session,
                no_refresh,
                "rt".into(),
                Box::new(move |v| tx2.send(v).unwrap()),
            )
            .unwrap();
        assert_eq!(rx.recv_timeout(LOST).unwrap(), Err(RelayError::Rejected));
    }

    #[test]
    fn a_full_queue_answers_busy_at_once() {
        // One thread, held by a callback that waits on a gate; one queue slot. Refreshes without a refresh
        // path need no upstream.
        let relay = Relay::start(1, 1).unwrap();
        let mut no_refresh = (*upstream("127.0.0.1:9".parse().unwrap())).clone();
        no_refresh.refresh_path = None;
        let no_refresh = Arc::new(no_refresh);
        let job = || Job::Refresh {
            upstream: no_refresh.clone(),
            refresh_token: "rt".into(),
        };
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        relay
            .submit(
                job(),
                Box::new(move |_| {
                    started_tx.send(()).unwrap();
                    gate_rx.recv().unwrap();
                }),
            )
            .unwrap();
        started_rx.recv().unwrap(); // the thread is busy in the callback
        assert_eq!(
            relay.submit(job(), Box::new(move |v| done_tx.send(v).unwrap())),
            Ok(()),
            "one waits in the queue"
        );
        assert_eq!(relay.submit(job(), Box::new(|_| {})), Err(Busy));
        gate_tx.send(()).unwrap();
        assert_eq!(done_rx.recv().unwrap(), Err(RelayError::Rejected));
    }
}
