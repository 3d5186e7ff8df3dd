//! `tether-bench failover`: the mail scenario of issue #19, which counts what users lose when a balancer
//! node dies.
//!
//! N virtual users (threads, one blocking keep-alive connection per node each) run the webmail flow of
//! `tether demo --cluster` against three nodes — log in, read the inbox (the secure class, stuck to a
//! backend), poll and acknowledge notifications, upload attachments in chunks (tus), send mail — and move
//! to the next node when theirs stops answering. A publisher sends notifications at a set rate through the
//! publish listeners. A chaos schedule runs a kill command (SIGKILL of a node) and later a restart command.
//!
//! Counted, as the client sees it: forced re-logins (a 401 after the first login), acknowledged
//! notifications never delivered, notifications delivered twice, acknowledged upload bytes lost (a node's
//! offset below one the client saw acknowledged, or the upload gone), attachments the backend got wrong,
//! requests of a session that reached another backend than its binding, errors by kind, throughput and
//! p99 before, during and after the kill, and the time until the restarted node serves again.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sha2::Digest;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tether-bench failover",
    about = "The mail failover scenario: counts what users lose when a node is killed",
    after_help = "Example (against `tether demo --cluster`):\n  \
        tether-bench failover --users 50 --duration 30s --kill-at 10s --restart-at 20s \\\n    \
        --kill-cmd 'tether demo kill a' --restart-cmd 'tether demo restart a' --json out.json"
)]
pub struct Args {
    /// The nodes' client listeners, in failover order
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:8181,127.0.0.1:8182,127.0.0.1:8183"
    )]
    pub nodes: Vec<SocketAddr>,
    /// The nodes' publish listeners
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7281,127.0.0.1:7282,127.0.0.1:7283"
    )]
    pub publish: Vec<SocketAddr>,
    #[arg(long, default_value = "demo-publish-secret")]
    pub publish_secret: String,
    /// Users to log in as (round robin over the virtual users), all with --password
    #[arg(long, value_delimiter = ',', default_value = "alice,bob")]
    pub accounts: Vec<String>,
    #[arg(long, default_value = "tether-demo")]
    pub password: String,
    /// Virtual users
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// Measured duration
    #[arg(long, default_value = "30s", value_parser = crate::cli::parse_duration)]
    pub duration: Duration,
    /// When the kill command runs (from the start)
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub kill_at: Duration,
    /// When the restart command runs
    #[arg(long, default_value = "20s", value_parser = crate::cli::parse_duration)]
    pub restart_at: Duration,
    /// Shell command that kills a node (e.g. `tether demo kill a`); none: no kill
    #[arg(long)]
    pub kill_cmd: Option<String>,
    /// Shell command that restarts it
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// Which node (index in --nodes) the kill takes down: the restart is timed on it
    #[arg(long, default_value_t = 0)]
    pub killed_node: usize,
    /// Notifications published per second (over all accounts)
    #[arg(long, default_value_t = 20.0)]
    pub publish_rate: f64,
    /// Pause between a virtual user's steps
    #[arg(long, default_value = "100ms", value_parser = crate::cli::parse_duration)]
    pub think: Duration,
    /// Bytes of each attachment
    #[arg(long, default_value_t = 256 * 1024)]
    pub upload_size: usize,
    /// Bytes per PATCH
    #[arg(long, default_value_t = 64 * 1024)]
    pub chunk: usize,
    /// Per-request timeout
    #[arg(long, default_value = "5s", value_parser = crate::cli::parse_duration)]
    pub timeout: Duration,
    /// A name for the run in the report
    #[arg(long, default_value = "failover")]
    pub label: String,
    /// Write the report as JSON here
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Runs the scenario from `tether-bench failover ARGS`.
pub fn main(args: Vec<String>) -> ExitCode {
    let args = Args::parse_from(args);
    match run(&args) {
        Ok(report) => {
            println!("{}", text(&report));
            if let Some(path) = &args.json
                && let Err(e) = std::fs::write(path, format!("{report:#}\n"))
            {
                eprintln!("tether-bench failover: {}: {e}", path.display());
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether-bench failover: {e}");
            ExitCode::from(2)
        }
    }
}

/// What the run's three phases are: before the kill, between kill and restart, after the restart.
#[derive(Clone, Copy)]
enum Phase {
    Before = 0,
    During = 1,
    After = 2,
}

/// A user's tallies, merged at the end.
struct Tally {
    latency: [Histogram<u64>; 3],
    errors: BTreeMap<&'static str, u64>,
    errors_by_phase: [u64; 3],
    /// Notifications a full queue dropped, as the poll answers reported (`"dropped": N` on the next one).
    dropped_reported: u64,
    logins: u64,
    forced_relogins: u64,
    failovers: u64,
    binding_violations: u64,
    duplicates: u64,
    delivered: u64,
    lost_notifications: u64,
    expected_notifications: u64,
    uploads_completed: u64,
    uploads_verified: u64,
    uploads_corrupt: u64,
    uploads_restarted: u64,
    acked_bytes: u64,
    lost_bytes: u64,
    mails_sent: u64,
}

impl Tally {
    fn new() -> Tally {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        Tally {
            latency: [h(), h(), h()],
            errors: BTreeMap::new(),
            errors_by_phase: [0; 3],
            dropped_reported: 0,
            logins: 0,
            forced_relogins: 0,
            failovers: 0,
            binding_violations: 0,
            duplicates: 0,
            delivered: 0,
            lost_notifications: 0,
            expected_notifications: 0,
            uploads_completed: 0,
            uploads_verified: 0,
            uploads_corrupt: 0,
            uploads_restarted: 0,
            acked_bytes: 0,
            lost_bytes: 0,
            mails_sent: 0,
        }
    }

    fn merge(&mut self, o: &Tally) {
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            let _ = a.add(b);
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (a, b) in self.errors_by_phase.iter_mut().zip(&o.errors_by_phase) {
            *a += b;
        }
        self.dropped_reported += o.dropped_reported;
        self.logins += o.logins;
        self.forced_relogins += o.forced_relogins;
        self.failovers += o.failovers;
        self.binding_violations += o.binding_violations;
        self.duplicates += o.duplicates;
        self.delivered += o.delivered;
        self.lost_notifications += o.lost_notifications;
        self.expected_notifications += o.expected_notifications;
        self.uploads_completed += o.uploads_completed;
        self.uploads_verified += o.uploads_verified;
        self.uploads_corrupt += o.uploads_corrupt;
        self.uploads_restarted += o.uploads_restarted;
        self.acked_bytes += o.acked_bytes;
        self.lost_bytes += o.lost_bytes;
        self.mails_sent += o.mails_sent;
    }
}

/// A response, whole.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Why an exchange failed, as counted.
fn io_kind(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connect_refused",
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => "connection_lost",
        WouldBlock | TimedOut => "timeout",
        _ => "io_other",
    }
}

/// One keep-alive connection; a request on it returns the whole response (Content-Length bodies).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    fn exchange(&mut self, request: &[u8], head: bool) -> std::io::Result<(Resp, bool)> {
        self.stream.write_all(request)?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 48];
            let mut r = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head_len)) = r.parse(&self.buf) {
                let status = r.code.unwrap_or(0);
                let hs: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let find = |n: &str| {
                    hs.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(n))
                        .map(|(_, v)| v.clone())
                };
                let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let length: usize =
                    if head || status == 204 || status == 304 || (100..200).contains(&status) {
                        0
                    } else {
                        find("content-length")
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0)
                    };
                if (100..200).contains(&status) {
                    // An interim answer (104 from the upload spool): the final one follows.
                    self.buf.drain(..head_len);
                    continue;
                }
                while self.buf.len() < head_len + length {
                    let n = self.stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                let body = self.buf[head_len..head_len + length].to_vec();
                self.buf.drain(..head_len + length);
                return Ok((
                    Resp {
                        status,
                        headers: hs,
                        body,
                    },
                    close,
                ));
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The run's clock and schedule, shared by every thread.
struct Clock {
    start: Instant,
    kill_at: Duration,
    restart_at: Duration,
    end: Instant,
    /// The publisher has had the answer to its last publish: the drain may end.
    published: AtomicBool,
}

impl Clock {
    fn phase(&self, at: Instant) -> Phase {
        let t = at.duration_since(self.start);
        if t < self.kill_at {
            Phase::Before
        } else if t < self.restart_at {
            Phase::During
        } else {
            Phase::After
        }
    }
}

/// A notification the publisher saw acknowledged (202 with an id) for an account.
struct Published {
    account: String,
    id: u64,
    sent: Instant,
}

/// An attachment under way.
struct Upload {
    path: String,
    name: String,
    data: Vec<u8>,
    /// The largest offset a node acknowledged to this client.
    acked: usize,
}

struct User<'a> {
    args: &'a Args,
    clock: &'a Clock,
    index: usize,
    account: String,
    node: usize,
    conns: Vec<Option<Conn>>,
    cookies: Vec<(String, String)>,
    first_login: Option<Instant>,
    /// The app session and the backend it lives on, as the inbox last said.
    binding: Option<(String, u64)>,
    after: u64,
    seen: HashSet<u64>,
    upload: Option<Upload>,
    /// Attachments completed, to find in the draft: name and sha256.
    to_verify: Vec<(String, String)>,
    uploads: u64,
    rng: u64,
    tally: Tally,
}

impl<'a> User<'a> {
    fn random(&mut self) -> u64 {
        // xorshift64*: a workload mix, not security.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn error(&mut self, kind: &'static str) {
        *self.tally.errors.entry(kind).or_default() += 1;
        self.tally.errors_by_phase[self.clock.phase(Instant::now()) as usize] += 1;
    }

    fn move_on(&mut self) {
        self.conns[self.node] = None;
        self.node = (self.node + 1) % self.args.nodes.len();
        self.tally.failovers += 1;
    }

    fn request_bytes(&self, method: &str, path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
        let cookie = if self.cookies.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            format!("Cookie: {}\r\n", pairs.join("; "))
        };
        let mut out = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{cookie}{extra}Content-Length: {}\r\n\r\n",
            self.args.nodes[self.node],
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn keep_cookies(&mut self, r: &Resp) {
        for (name, value) in &r.headers {
            if name.eq_ignore_ascii_case("set-cookie") {
                let pair = value.split(';').next().unwrap_or("");
                if let Some((n, v)) = pair.split_once('=') {
                    self.cookies.retain(|(old, _)| old != n);
                    if !v.is_empty() {
                        self.cookies.push((n.to_string(), v.to_string()));
                    }
                }
            }
        }
    }

    /// One request at the current node, moving on to the next node while one does not answer (up to two
    /// rounds). 502–504 count as a node that does not answer.
    fn call(&mut self, method: &str, path: &str, extra: &str, body: &[u8]) -> Option<Resp> {
        for _ in 0..2 * self.args.nodes.len() {
            if Instant::now() >= self.clock.end + Duration::from_secs(10) {
                return None;
            }
            let node = self.node;
            let bytes = self.request_bytes(method, path, extra, body);
            let began = Instant::now();
            let result = (|| {
                if self.conns[node].is_none() {
                    self.conns[node] = Some(Conn::open(self.args.nodes[node], self.args.timeout)?);
                }
                let conn = self.conns[node].as_mut().expect("just opened");
                conn.exchange(&bytes, method == "HEAD")
            })();
            match result {
                Ok((r, close)) => {
                    if close {
                        self.conns[node] = None;
                    }
                    if (502..=504).contains(&r.status) {
                        self.error("status_502_504");
                        self.move_on();
                        continue;
                    }
                    let micros = began.elapsed().as_micros().max(1) as u64;
                    let phase = self.clock.phase(began) as usize;
                    let _ = self.tally.latency[phase].record(micros.min(60_000_000));
                    self.keep_cookies(&r);
                    return Some(r);
                }
                Err(e) => {
                    let kind = io_kind(&e);
                    self.error(kind);
                    self.move_on();
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        None
    }

    /// An authenticated request: a 401 is a forced re-login (counted), after which it is tried once more.
    fn authed(&mut self, method: &str, path: &str, extra: &str, body: &[u8]) -> Option<Resp> {
        let r = self.call(method, path, extra, body)?;
        if r.status != 401 {
            return Some(r);
        }
        self.tally.forced_relogins += 1;
        // The login is gone; the application's own cookie (APPSESSION) is not the balancer's to drop.
        self.cookies.retain(|(name, _)| name != "tether_session");
        if !self.login() {
            return None;
        }
        self.call(method, path, extra, body)
    }

    fn login(&mut self) -> bool {
        let body = format!("username={}&password={}", self.account, self.args.password);
        let Some(r) = self.call(
            "POST",
            "/.tether/login",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            body.as_bytes(),
        ) else {
            return false;
        };
        if r.status != 303 || !self.cookies.iter().any(|(n, _)| n == "tether_session") {
            self.error("login_refused");
            return false;
        }
        self.tally.logins += 1;
        if self.first_login.is_none() {
            self.first_login = Some(Instant::now());
        }
        true
    }

    fn inbox(&mut self) {
        let Some(r) = self.authed("GET", "/mail/api/inbox", "", b"") else {
            return;
        };
        if r.status != 200 {
            self.error("inbox_status");
            return;
        }
        let j = r.json();
        let session = j["session"]["id"].as_str().unwrap_or("").to_string();
        let backend = j["backend"].as_u64().unwrap_or(0);
        let lost = j["session"]["lost"].as_bool().unwrap_or(false);
        match &self.binding {
            Some((s, b)) if lost || *s != session || *b != backend => {
                self.tally.binding_violations += 1;
            }
            _ => {}
        }
        self.binding = Some((session, backend));
        let attachments = j["draft"]["attachments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        self.to_verify.retain(|(name, sha)| {
            match attachments.iter().find(|a| a["name"] == name.as_str()) {
                Some(a) if a["sha256"] == sha.as_str() => {
                    self.tally.uploads_verified += 1;
                    false
                }
                Some(_) => {
                    self.tally.uploads_corrupt += 1;
                    false
                }
                None => true,
            }
        });
    }

    fn notifications(&mut self) -> usize {
        let path = format!("/.tether/notifications?after={}", self.after);
        let Some(r) = self.authed("GET", &path, "", b"") else {
            return 0;
        };
        if r.status != 200 {
            self.error("notifications_status");
            return 0;
        }
        let j = r.json();
        let list = j["notifications"].as_array().cloned().unwrap_or_default();
        let mut last = None;
        for n in &list {
            // A full queue dropped this many before this one (and says so on it).
            self.tally.dropped_reported += n["dropped"].as_u64().unwrap_or(0);
            let Some(id) = n["id"].as_u64() else { continue };
            // Delivered again after its acknowledgement was confirmed: a duplicate. (One delivered again
            // because the client's ack never got an answer is at-least-once doing its job.)
            if !self.seen.insert(id) && id <= self.after {
                self.tally.duplicates += 1;
            }
            last = Some(id);
        }
        if let Some(last) = last {
            let body = format!("up_to={last}");
            let acked = self.authed(
                "POST",
                "/.tether/notifications/ack",
                "Content-Type: application/x-www-form-urlencoded\r\n",
                body.as_bytes(),
            );
            if acked.is_some_and(|a| a.status == 200) {
                self.after = last;
            }
        }
        list.len()
    }

    fn upload_step(&mut self) {
        let tus = "Tus-Resumable: 1.0.0\r\n";
        let Some(mut up) = self.upload.take() else {
            // A new attachment: deterministic bytes, named after the user and its count.
            self.uploads += 1;
            let name = format!("u{}-{}.bin", self.index, self.uploads);
            let mut seed = (self.index as u64) << 32 | self.uploads;
            let data: Vec<u8> = (0..self.args.upload_size)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 33) as u8
                })
                .collect();
            use base64::Engine;
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let session = self
                .binding
                .as_ref()
                .map(|b| b.0.clone())
                .unwrap_or_default();
            let extra = format!(
                "{tus}Upload-Length: {}\r\nUpload-Metadata: filename {},session {}\r\n",
                data.len(),
                b64(&name),
                b64(&session)
            );
            let Some(r) = self.authed("POST", "/mail/attach", &extra, b"") else {
                return;
            };
            if r.status != 201 {
                self.error("upload_create_status");
                return;
            }
            let path = r.header("location").unwrap_or("").to_string();
            self.upload = Some(Upload {
                path,
                name,
                data,
                acked: 0,
            });
            return;
        };
        let end = (up.acked + self.args.chunk).min(up.data.len());
        let extra = format!(
            "{tus}Content-Type: application/offset+octet-stream\r\nUpload-Offset: {}\r\n",
            up.acked
        );
        let chunk = up.data[up.acked..end].to_vec();
        let Some(r) = self.authed("PATCH", &up.path.clone(), &extra, &chunk) else {
            self.upload = Some(up);
            return;
        };
        match r.status {
            204 => {
                let offset: usize = r
                    .header("upload-offset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.tally.acked_bytes += offset.saturating_sub(up.acked) as u64;
                up.acked = up.acked.max(offset);
                if up.acked == up.data.len() {
                    if r.header("tether-upload-status")
                        .is_some_and(|s| s.starts_with('2'))
                    {
                        self.tally.uploads_completed += 1;
                        let sha: String = sha2::Sha256::digest(&up.data)
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        self.to_verify.push((up.name.clone(), sha));
                    } else {
                        self.error("upload_forward_status");
                    }
                    return;
                }
                self.upload = Some(up);
            }
            409 => {
                // Another offset than ours: ask (HEAD) where the upload stands.
                let Some(h) = self.authed("HEAD", &up.path.clone(), tus, b"") else {
                    self.upload = Some(up);
                    return;
                };
                match h.status {
                    200 => {
                        let offset: usize = h
                            .header("upload-offset")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if offset < up.acked {
                            self.tally.lost_bytes += (up.acked - offset) as u64;
                        }
                        up.acked = offset;
                        self.upload = Some(up);
                    }
                    status => {
                        self.error(if status == 404 {
                            "upload_head_404"
                        } else {
                            "upload_head_other"
                        });
                        self.tally.lost_bytes += up.acked as u64;
                        self.tally.uploads_restarted += 1;
                    }
                }
            }
            404 => {
                // The upload is gone (its node died with it): everything acknowledged is lost.
                self.error("upload_patch_404");
                self.tally.lost_bytes += up.acked as u64;
                self.tally.uploads_restarted += 1;
            }
            _ => {
                self.error("upload_patch_status");
                self.upload = Some(up);
            }
        }
    }

    fn send_mail(&mut self) {
        if !self.to_verify.is_empty() {
            return; // the draft's attachment is checked first
        }
        let to = &self.args.accounts[(self.index + 1) % self.args.accounts.len()];
        let body =
            json!({"to": to, "subject": format!("from user {}", self.index), "body": "hello"})
                .to_string();
        if let Some(r) = self.authed(
            "POST",
            "/mail/api/send",
            "Content-Type: application/json\r\n",
            body.as_bytes(),
        ) {
            if r.status == 200 {
                self.tally.mails_sent += 1;
            } else {
                self.error("send_status");
            }
        }
    }

    fn run(&mut self) {
        // Stagger the logins (each is a password hash on the node): 10 ms per user, within the first half
        // of the time before the kill.
        let spread = (self.args.users as u64 * 10)
            .clamp(1000, (self.args.kill_at.as_millis() as u64 / 2).max(1000));
        std::thread::sleep(Duration::from_millis(self.random() % spread));
        while !self.login() {
            if Instant::now() >= self.clock.end {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.inbox();
        while Instant::now() < self.clock.end {
            match self.random() % 20 {
                0..=7 => self.inbox(),
                8..=13 => {
                    self.notifications();
                }
                14..=18 => self.upload_step(),
                _ => self.send_mail(),
            }
            let jitter = self.random() % (self.args.think.as_millis() as u64 + 1);
            std::thread::sleep(self.args.think / 2 + Duration::from_millis(jitter / 2));
        }
        // Drain: what was acknowledged to the publisher must arrive, and the attachments must be checked.
        // It ends with an empty poll made after the publisher had its last answer (a publish answered
        // late, under load, must not be counted lost because the user stopped polling first).
        let drain_until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < drain_until {
            let published = self.clock.published.load(Ordering::Acquire);
            if self.notifications() == 0 && self.to_verify.is_empty() && published {
                break;
            }
            self.inbox();
            std::thread::sleep(Duration::from_millis(50));
        }
        self.tally.delivered = self.seen.len() as u64;
    }
}

fn publish(args: &Args, stop: &AtomicBool, log: &Mutex<Vec<Published>>) -> (u64, u64, u64) {
    let (mut failed, mut dropped, mut attempts) = (0, 0, 0);
    let every = Duration::from_secs_f64(1.0 / args.publish_rate.max(0.1));
    let mut next = Instant::now();
    let mut node = 0;
    let mut conns: Vec<Option<Conn>> = args.publish.iter().map(|_| None).collect();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += every;
        let account = args.accounts[n as usize % args.accounts.len()].clone();
        n += 1;
        attempts += 1;
        let body = json!({"user": account, "data": {"kind": "bench", "n": n}}).to_string();
        let mut done = false;
        for _ in 0..args.publish.len() {
            let sent = Instant::now();
            let bytes = format!(
                "POST /publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                args.publish[node],
                args.publish_secret,
                body.len()
            );
            let result = (|| {
                if conns[node].is_none() {
                    conns[node] = Some(Conn::open(args.publish[node], args.timeout)?);
                }
                conns[node]
                    .as_mut()
                    .expect("opened")
                    .exchange(bytes.as_bytes(), false)
            })();
            match result {
                Ok((r, _)) if r.status == 202 => {
                    match r.json()["id"].as_u64() {
                        Some(id) => log.lock().expect("log").push(Published {
                            account: account.clone(),
                            id,
                            sent,
                        }),
                        None => dropped += 1,
                    }
                    done = true;
                    break;
                }
                _ => {
                    conns[node] = None;
                    node = (node + 1) % args.publish.len();
                }
            }
        }
        if !done {
            failed += 1;
        }
    }
    (attempts, failed, dropped)
}

fn shell(cmd: &str) -> Result<(), String> {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd}: {status}"))
    }
}

/// Runs the scenario; the report as JSON.
pub fn run(args: &Args) -> Result<Value, String> {
    if args.nodes.is_empty() || args.accounts.is_empty() || args.users == 0 || args.chunk == 0 {
        return Err("--nodes, --accounts, --users and --chunk must not be empty or zero".into());
    }
    if args.kill_at > args.restart_at || args.restart_at > args.duration {
        return Err("want --kill-at <= --restart-at <= --duration".into());
    }
    let start = Instant::now();
    let clock = Clock {
        start,
        kill_at: args.kill_at,
        restart_at: args.restart_at,
        end: start + args.duration,
        published: AtomicBool::new(false),
    };
    let stop_publishing = AtomicBool::new(false);
    let published = Mutex::new(Vec::new());
    let chaos = Mutex::new(json!({}));
    let (tallies, (attempts, publish_failed, dropped)) = std::thread::scope(|s| {
        let publisher = s.spawn(|| publish(args, &stop_publishing, &published));
        s.spawn(|| {
            let mut c = serde_json::Map::new();
            if let Some(cmd) = &args.kill_cmd {
                std::thread::sleep(args.kill_at.saturating_sub(start.elapsed()));
                c.insert("kill_at_s".into(), json!(start.elapsed().as_secs_f64()));
                if let Err(e) = shell(cmd) {
                    c.insert("kill_error".into(), json!(e));
                }
            }
            if let Some(cmd) = &args.restart_cmd {
                std::thread::sleep(args.restart_at.saturating_sub(start.elapsed()));
                let at = Instant::now();
                c.insert("restart_at_s".into(), json!(start.elapsed().as_secs_f64()));
                if let Err(e) = shell(cmd) {
                    c.insert("restart_error".into(), json!(e));
                }
                // Serving again: its client listener answers a request (the demo's `/`).
                let node = args.nodes[args.killed_node.min(args.nodes.len() - 1)];
                while at.elapsed() < Duration::from_secs(60) {
                    let ok = Conn::open(node, Duration::from_millis(500))
                        .and_then(|mut conn| {
                            conn.exchange(
                                format!("GET / HTTP/1.1\r\nHost: {node}\r\n\r\n").as_bytes(),
                                false,
                            )
                        })
                        .is_ok_and(|(r, _)| r.status == 200);
                    if ok {
                        c.insert(
                            "restart_serving_s".into(),
                            json!(at.elapsed().as_secs_f64()),
                        );
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            *chaos.lock().expect("chaos") = Value::Object(c);
        });
        let users: Vec<_> = (0..args.users)
            .map(|i| {
                let clock = &clock;
                s.spawn(move || {
                    let mut u = User {
                        args,
                        clock,
                        index: i,
                        account: args.accounts[i % args.accounts.len()].clone(),
                        node: i % args.nodes.len(),
                        conns: args.nodes.iter().map(|_| None).collect(),
                        cookies: Vec::new(),
                        first_login: None,
                        binding: None,
                        after: 0,
                        seen: HashSet::new(),
                        upload: None,
                        to_verify: Vec::new(),
                        uploads: 0,
                        rng: 0x9E37_79B9_7F4A_7C15
                            ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
                        tally: Tally::new(),
                    };
                    u.run();
                    (u.account.clone(), u.first_login, u.seen, u.tally)
                })
            })
            .collect();
        // The publisher stops with the load; the users' drain then collects what it acknowledged.
        std::thread::sleep(args.duration.saturating_sub(start.elapsed()));
        stop_publishing.store(true, Ordering::Relaxed);
        let publisher = publisher.join().expect("publisher");
        clock.published.store(true, Ordering::Release);
        let tallies: Vec<_> = users.into_iter().map(|u| u.join().expect("user")).collect();
        (tallies, publisher)
    });

    let published = published.into_inner().expect("published");
    let mut total = Tally::new();
    // The first lost notifications, for whoever investigates: when each was published, and when its user
    // logged in (seconds from the start).
    let mut lost_sample = Vec::new();
    for (account, first_login, seen, tally) in &tallies {
        let mut t = Tally::new();
        t.merge(tally);
        // Every notification acknowledged to the publisher for this account, sent a second after this user
        // logged in (its session was on every node by then), must have reached it.
        let mut missing = 0u64;
        if let Some(login) = first_login {
            for p in published
                .iter()
                .filter(|p| &p.account == account && p.sent > *login + Duration::from_secs(1))
            {
                t.expected_notifications += 1;
                if !seen.contains(&p.id) {
                    missing += 1;
                    if lost_sample.len() < 20 {
                        lost_sample.push(json!({
                            "id": p.id,
                            "account": account,
                            "published_s": p.sent.duration_since(start).as_secs_f64(),
                            "login_s": login.duration_since(start).as_secs_f64(),
                        }));
                    }
                }
            }
        }
        // What a full queue dropped was reported to the client, and is counted apart.
        t.lost_notifications = missing.saturating_sub(tally.dropped_reported);
        total.merge(&t);
    }
    let phase = |p: Phase, secs: f64| {
        let h = &total.latency[p as usize];
        json!({
            "requests": h.len(),
            "rps": if secs > 0.0 { h.len() as f64 / secs } else { 0.0 },
            "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
            "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max_ms": h.max() as f64 / 1000.0,
        })
    };
    let before = args.kill_at.as_secs_f64();
    let during = (args.restart_at - args.kill_at).as_secs_f64();
    let after = (args.duration - args.restart_at).as_secs_f64();
    Ok(json!({
        "label": args.label,
        "users": args.users,
        "duration_s": args.duration.as_secs_f64(),
        "publish_rate": args.publish_rate,
        "chaos": chaos.into_inner().expect("chaos"),
        "logins": total.logins,
        "forced_relogins": total.forced_relogins,
        "binding_violations": total.binding_violations,
        "failovers": total.failovers,
        "notifications": {
            "publish_attempts": attempts,
            "published_acknowledged": published.len(),
            "publish_failed": publish_failed,
            "dropped_no_session": dropped,
            "expected": total.expected_notifications,
            "delivered": total.delivered,
            "lost": total.lost_notifications,
            "duplicates": total.duplicates,
            "dropped_full_reported": total.dropped_reported,
            "lost_sample": lost_sample,
        },
        "uploads": {
            "completed": total.uploads_completed,
            "verified": total.uploads_verified,
            "corrupt": total.uploads_corrupt,
            "restarted": total.uploads_restarted,
            "acknowledged_bytes": total.acked_bytes,
            "lost_bytes": total.lost_bytes,
        },
        "mails_sent": total.mails_sent,
        "errors": total.errors,
        "errors_by_phase": {
            "before": total.errors_by_phase[0],
            "during": total.errors_by_phase[1],
            "after": total.errors_by_phase[2],
        },
        "phases": {
            "before": phase(Phase::Before, before),
            "during": phase(Phase::During, during),
            "after": phase(Phase::After, after),
        },
    }))
}

/// The report for people.
fn text(r: &Value) -> String {
    let p = |name: &str| {
        let ph = &r["phases"][name];
        format!(
            "{:>7}: {:>6} requests  {:>8.1}/s  p50 {:>7.2} ms  p99 {:>8.2} ms",
            name,
            ph["requests"],
            ph["rps"].as_f64().unwrap_or(0.0),
            ph["p50_ms"].as_f64().unwrap_or(0.0),
            ph["p99_ms"].as_f64().unwrap_or(0.0)
        )
    };
    format!(
        "{label}: {users} users, {dur} s, chaos {chaos}\n\
         losses (target: all zero)\n  \
           forced re-logins            {relogin}\n  \
           notifications lost          {nlost} of {nexp} expected ({dups} delivered twice; {full} dropped by full queues, reported; {ndrop} publishes found no session)\n  \
           upload bytes lost           {blost} of {backed} acknowledged ({corrupt} attachments wrong, {restarted} uploads gone)\n  \
           binding violations          {bind}\n\
         work: {logins} logins, {done} attachments completed ({verified} checked byte-exact), {mails} mails, {fo} failovers\n\
         errors: {errors} (before/during/after: {eph})\n{} \n{}\n{}",
        p("before"),
        p("during"),
        p("after"),
        label = r["label"].as_str().unwrap_or(""),
        users = r["users"],
        dur = r["duration_s"],
        chaos = r["chaos"],
        relogin = r["forced_relogins"],
        nlost = r["notifications"]["lost"],
        nexp = r["notifications"]["expected"],
        dups = r["notifications"]["duplicates"],
        full = r["notifications"]["dropped_full_reported"],
        ndrop = r["notifications"]["dropped_no_session"],
        blost = r["uploads"]["lost_bytes"],
        backed = r["uploads"]["acknowledged_bytes"],
        corrupt = r["uploads"]["corrupt"],
        restarted = r["uploads"]["restarted"],
        bind = r["binding_violations"],
        logins = r["logins"],
        done = r["uploads"]["completed"],
        verified = r["uploads"]["verified"],
        mails = r["mails_sent"],
        fo = r["failovers"],
        errors = r["errors"],
        eph = r["errors_by_phase"],
    )
}
