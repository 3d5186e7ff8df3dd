//! Test harness for end-to-end tests: the real `tether` binary, real backends on loopback (threads in the
//! test process), and clients that speak raw bytes over real sockets.
//!
//! Waits are bounded polls for an outcome (a log line, a count), never assertions on durations.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long any wait in a test may take before it fails (generous: CI machines are slow and shared).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Lines a child process printed, shared with the reader thread.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Lines {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.notify_all();
    }

    fn wait_for(&self, pred: &dyn Fn(&str) -> bool, patience: Duration) -> Option<String> {
        let deadline = Instant::now() + patience;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// A running `tether run` process.
pub struct Tether {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
}

impl Tether {
    /// Starts tether with `config` (TOML) and one worker; waits until it listens.
    pub fn start(config: &str) -> Tether {
        Tether::start_with(config, &["--workers", "1"])
    }

    /// Starts tether with extra command-line arguments after `run -c FILE`.
    pub fn start_with(config: &str, args: &[&str]) -> Tether {
        Tether::start_with_env(config, args, &[])
    }

    /// Starts tether with extra arguments and environment variables.
    pub fn start_with_env(config: &str, args: &[&str], env: &[(&str, &str)]) -> Tether {
        Tether::start_under(&[], config, args, env)
    }

    /// Starts tether as the last argument of a wrapper command (`["prlimit", "--nofile=64:64"]`), with
    /// extra arguments and environment variables.
    pub fn start_under(
        wrapper: &[&str],
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Tether {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("tether.toml");
        std::fs::write(&config_path, config).unwrap();
        let tether = env!("CARGO_BIN_EXE_tether");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(tether);
                c
            }
            None => Command::new(tether),
        };
        let mut child = command
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .args(args)
            .env("TETHER_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tether");
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        for (pipe, lines, echo) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                stdout.clone(),
                "stdout",
            ),
            (
                Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
                stderr.clone(),
                "stderr",
            ),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("TETHER_TEST_ECHO").is_some() {
                        eprintln!("[tether {echo}] {line}");
                    }
                    lines.push(line);
                }
            });
        }
        let listening = stderr.wait_for(&|l| l.contains("listening on http"), PATIENCE);
        let Some(line) = listening else {
            let _ = child.kill();
            panic!(
                "tether did not start; stderr:\n{}",
                stderr.snapshot().join("\n")
            );
        };
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .expect("address in the listening line");
        Tether {
            child: Some(child),
            addr,
            config_path,
            _dir: dir,
            stdout,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, `"INT"`, `"USR1"`) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Replaces the config file (for a reload).
    pub fn write_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
    }

    /// Waits for a process-log (stderr) line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        self.stderr
            .wait_for(&|l| l.contains(needle), PATIENCE)
            .unwrap_or_else(|| {
                panic!(
                    "no log line with {needle:?}; stderr:\n{}",
                    self.stderr.snapshot().join("\n")
                )
            })
    }

    /// Process-log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// Waits until at least `n` access-log lines (stdout) arrived; returns them all.
    pub fn access_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let lines = self.stdout.snapshot();
            if lines.len() >= n || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("tether did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A config with one listener on a free port, one cluster `app` of `backends`, one route `*` → app, and
/// `extra` TOML appended (other sections, or keys for `[clusters.app]` when it starts with a key).
pub fn config_for(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[routes]]\ncluster = \"app\"\n\n[access_log]\nformat = \"json\"\n\n\
         {extra}\n\n[clusters.app]\nbackends = [{}]\n",
        list.join(", ")
    )
}

// ----- backends ---------------------------------------------------------------------------------------

/// A request as a test backend received it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The exact bytes of head and body as they came off the socket.
    pub raw: Vec<u8>,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// What a handler answers: raw bytes written back, and whether to close afterwards.
pub struct Reply {
    pub bytes: Vec<u8>,
    pub close: bool,
}

impl Reply {
    /// `200` with a text body and Content-Length.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            bytes: format!(
                "HTTP/1.1 {status} OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            close: false,
        }
    }

    pub fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            close: false,
        }
    }

    pub fn closing(mut self) -> Reply {
        self.close = true;
        self
    }
}

type Handler = dyn Fn(&ReceivedRequest, &mut TcpStream) -> Option<Reply> + Send + Sync;

/// A backend on 127.0.0.1 that parses requests (Content-Length and chunked bodies, keep-alive) and answers
/// with a handler; it records every request and counts connections.
pub struct Backend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<ReceivedRequest>>>,
    /// Every byte received, on all connections, in arrival order per connection.
    pub raw: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    /// A backend answering `200` with body `"<name>"` to everything.
    pub fn named(name: &str) -> Backend {
        let name = name.to_string();
        Backend::start(move |_req, _s| Some(Reply::text(200, &name)))
    }

    /// A backend with a handler; `None` from the handler closes the connection without answering.
    pub fn start(
        handler: impl Fn(&ReceivedRequest, &mut TcpStream) -> Option<Reply> + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Backend::on(listener, handler)
    }

    /// A backend on a given listener (to restart one on the same port).
    pub fn on(
        listener: TcpListener,
        handler: impl Fn(&ReceivedRequest, &mut TcpStream) -> Option<Reply> + Send + Sync + 'static,
    ) -> Backend {
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (connections, requests, raw, stop) = (
                connections.clone(),
                requests.clone(),
                raw.clone(),
                stop.clone(),
            );
            listener.set_nonblocking(true).unwrap();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            connections.fetch_add(1, Ordering::SeqCst);
                            let (requests, raw, handler, stop) =
                                (requests.clone(), raw.clone(), handler.clone(), stop.clone());
                            std::thread::spawn(move || {
                                serve(stream, &requests, &raw, &*handler, &stop)
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Backend {
            addr,
            connections,
            requests,
            raw,
            stop,
        }
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn raw_bytes(&self) -> Vec<u8> {
        self.raw.lock().unwrap().clone()
    }

    /// Stops accepting (existing connections end at their next read). The port is released.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    mut stream: TcpStream,
    requests: &Mutex<Vec<ReceivedRequest>>,
    raw_log: &Mutex<Vec<u8>>,
    handler: &Handler,
    stop: &AtomicBool,
) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let req = match read_request(&mut stream, &mut buf, raw_log, stop) {
            Some(r) => r,
            None => return,
        };
        requests.lock().unwrap().push(req.clone());
        match handler(&req, &mut stream) {
            Some(reply) => {
                if stream.write_all(&reply.bytes).is_err() || reply.close {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
            None => {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Reads one request (head and body) from `stream`, with leftover bytes kept in `buf`.
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    raw_log: &Mutex<Vec<u8>>,
    stop: &AtomicBool,
) -> Option<ReceivedRequest> {
    let mut fill = |buf: &mut Vec<u8>| -> bool {
        let mut chunk = [0u8; 16384];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    raw_log.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    };
    let (head_len, method, path, version, headers) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut hs);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (
                    n,
                    req.method.unwrap().to_string(),
                    req.path.unwrap().to_string(),
                    req.version.unwrap(),
                    headers,
                );
            }
            Ok(httparse::Status::Partial) => {
                if !fill(buf) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    };
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut pos = head_len;
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let (decoded, end) = decode_chunked(buf, pos, &mut fill)?;
        body = decoded;
        pos = end;
    } else if let Some(len) = find("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        while buf.len() < pos + len {
            if !fill(buf) {
                return None;
            }
        }
        body.extend_from_slice(&buf[pos..pos + len]);
        pos += len;
    }
    let raw = buf[..pos].to_vec();
    buf.drain(..pos);
    Some(ReceivedRequest {
        method,
        path,
        version,
        headers,
        body,
        raw,
    })
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

// ----- clients ----------------------------------------------------------------------------------------

/// A response as the client read it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that reads whole responses however the bytes are segmented.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects from a chosen loopback source address (`127.0.0.2`, …), so a test can play several
    /// clients that tether tells apart by address.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
        socket.connect(&addr.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects from `source`, giving up after `timeout` (a SYN the server's kernel drops times out).
    pub fn try_connect_from(
        addr: SocketAddr,
        source: std::net::IpAddr,
        timeout: Duration,
    ) -> std::io::Result<Client> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        socket.connect_timeout(&addr.into(), timeout)?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a GET for `path` with `Host: test` (keep-alive).
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read_response(false)
    }

    /// Reads one response; `head_request` when it answers a HEAD (no body whatever the headers say).
    pub fn read_response(&mut self, head_request: bool) -> Response {
        self.try_read_response(head_request)
            .expect("a complete response")
    }

    /// Reads one response, `None` if the connection closed before a complete one.
    pub fn try_read_response(&mut self, head_request: bool) -> Option<Response> {
        let (head_len, status, headers) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut hs);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (n, resp.code.unwrap(), headers);
                }
                Ok(httparse::Status::Partial) => {
                    if !self.fill() {
                        return None;
                    }
                }
                Err(e) => panic!(
                    "unparseable response ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        };
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        self.buf.drain(..head_len);
        let mut body = Vec::new();
        let no_body = head_request || status < 200 || status == 204 || status == 304;
        if no_body {
        } else if find("transfer-encoding").is_some() {
            let stream = &mut self.stream;
            let (decoded, end) = decode_chunked(&mut self.buf, 0, &mut |b| fill_from(stream, b))?;
            body = decoded;
            self.buf.drain(..end);
        } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                if !self.fill() {
                    return None;
                }
            }
            body = self.buf.drain(..len).collect();
        } else {
            while self.fill() {}
            body = std::mem::take(&mut self.buf);
        }
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// True once the server closed the connection (reads EOF), after any buffered bytes.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    fn fill(&mut self) -> bool {
        fill_from(&mut self.stream, &mut self.buf)
    }
}

/// Reads once from `stream` onto the end of `buf`; `false` at EOF or reset.
fn fill_from(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut b = [0u8; 16384];
    match stream.read(&mut b) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&b[..n]);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
        Err(e) => panic!("read failed: {e}"),
    }
}

/// Decodes a chunked body starting at `buf[pos..]` (size line, data, CRLF … `0`, trailers, empty line),
/// reading more with `fill` as needed. Returns the payload and the position just past the body.
fn decode_chunked(
    buf: &mut Vec<u8>,
    mut pos: usize,
    fill: &mut dyn FnMut(&mut Vec<u8>) -> bool,
) -> Option<(Vec<u8>, usize)> {
    fn line_end(
        buf: &mut Vec<u8>,
        from: usize,
        fill: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> Option<usize> {
        loop {
            if let Some(i) = find_crlf(&buf[from..]) {
                return Some(from + i);
            }
            if !fill(buf) {
                return None;
            }
        }
    }
    let mut body = Vec::new();
    loop {
        let end = line_end(buf, pos, fill)?;
        let line = String::from_utf8_lossy(&buf[pos..end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos = end + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let end = line_end(buf, pos, fill)?;
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Some((body, pos));
                }
            }
        }
        while buf.len() < pos + size + 2 {
            if !fill(buf) {
                return None;
            }
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// One request on a new connection; returns the response.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).get(path)
}

/// Sends raw bytes on a new connection and reads one response.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.send(bytes);
    c.read_response(false)
}

/// Parses a JSON access-log line into its top-level fields (values as raw text, strings unquoted).
pub fn json_fields(line: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let s = line.trim().trim_start_matches('{').trim_end_matches('}');
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // key
        let k_start = s[i..].find('"').map(|p| i + p + 1);
        let Some(k_start) = k_start else { break };
        let k_end = k_start + s[k_start..].find('"').unwrap();
        let key = s[k_start..k_end].to_string();
        i = k_end + 2; // skip `":`
        let value;
        if bytes[i] == b'"' {
            let mut j = i + 1;
            let mut v = String::new();
            while bytes[j] != b'"' {
                if bytes[j] == b'\\' {
                    v.push(bytes[j + 1] as char);
                    j += 2;
                } else {
                    v.push(bytes[j] as char);
                    j += 1;
                }
            }
            value = v;
            i = j + 1;
        } else {
            let end = s[i..].find(',').map_or(s.len(), |p| i + p);
            value = s[i..end].to_string();
            i = end;
        }
        out.insert(key, value);
        if i < bytes.len() && bytes[i] == b',' {
            i += 1;
        }
    }
    out
}

// ----- helpers for balancing and health tests ------------------------------------------------------------

/// Like [`config_for`], with `cluster` keys written inside `[clusters.app]` (before `backends`) and `after`
/// appended at the end of the file (e.g. a `[clusters.app.health_check]` table).
pub fn config_with(backends: &[SocketAddr], cluster: &str, after: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[routes]]\ncluster = \"app\"\n\n[access_log]\nformat = \"json\"\n\n\
         [clusters.app]\n{cluster}\nbackends = [{}]\n\n{after}\n",
        list.join(", ")
    )
}

/// Polls `pred` until it holds; panics after [`PATIENCE`] with `what`.
pub fn wait_until(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An address nothing listens on: a privileged port (900–1023) that refuses connections now. Not a port
/// bound and released: the kernel hands such a port to the next `bind(0)` — another test's backend, which
/// then answered for the "dead" one (a test saw 200 where 502 was due). Ports below 1024 are never handed
/// out by `bind(0)`, and no test listens on one. Each call gives another port.
pub fn dead_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(900);
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            port < 1024,
            "no refusing privileged port left for dead_addr"
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
        if refused {
            return addr;
        }
    }
}

/// A gate that backend handlers wait on until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// Blocks until the gate is open (at most [`PATIENCE`]).
    pub fn wait(&self) {
        let (lock, cv) = &*self.0;
        let open = lock.lock().unwrap();
        let _ = cv
            .wait_timeout_while(open, PATIENCE, |open| !*open)
            .unwrap();
    }

    pub fn open(&self) {
        let (lock, cv) = &*self.0;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

impl Tether {
    /// Process-log lines containing `needle`, so far.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Kills the process with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until SIGUSR1 reports `n` requests waiting in the QoS queues, over every class.
    pub fn wait_queued(&self, n: u32) {
        wait_until(&format!("{n} queued request(s)"), || {
            self.signal("USR1");
            std::thread::sleep(Duration::from_millis(50));
            self.log_lines().iter().rev().take(30).any(|l| {
                l.contains("stats: qos")
                    && l.split("waiting_by_class=[")
                        .nth(1)
                        .and_then(|r| r.split(']').next())
                        .map(|v| {
                            v.split(", ")
                                .filter_map(|x| x.parse::<u32>().ok())
                                .sum::<u32>()
                        })
                        == Some(n)
            })
        });
    }
}

// ----- process accounting (appended for the hardening tests) -------------------------------------------

impl Tether {
    /// The tether process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("tether running").id()
    }

    /// Resident memory of the tether process in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Open file descriptors of the tether process (entries of `/proc/PID/fd`).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// The scheduler state letter of the first worker thread (`S`: sleeping, `R`: running), from
    /// `/proc/PID/task/*/stat`.
    pub fn worker_state(&self) -> Option<char> {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .ok()?
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "worker-0")
            })
            .and_then(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .and_then(|s| s.rsplit(") ").next().and_then(|r| r.chars().next()))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

/// Raises this process's soft open-file limit to the hard limit (tests that hold thousands of sockets) and
/// checks it allows `needed` descriptors.
pub fn raise_fd_limit(needed: u64) -> u64 {
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise the open file limit");
    assert!(
        limit >= needed,
        "this test needs {needed} open files, the hard limit allows {limit} (raise it, e.g. ulimit -Hn)"
    );
    limit
}

/// Polls `cond` until it holds or `PATIENCE` runs out; returns whether it held.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Client {
    /// A client over an already connected stream (bound to a chosen source address, say).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }
}

// ----- cluster helpers (nodes with [cluster], SIGUSR1 store and peer reports, a cutting relay) ----------

// ----- pacing and exchanges shared by several test files --------------------------------------------

/// Waits until the wall clock is early enough in its minute that `span` seconds of test fit before the
/// next one (cluster-wide windows are minutes numbered from the Unix epoch). Pacing, not an assertion.
pub fn early_in_minute(span: u64) {
    loop {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if s % 60 + span < 60 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Sends `request` on a new connection (it asks for `Connection: close`) and reads to the end: the bytes
/// sent, the bytes received, and the status.
pub fn close_exchange(addr: SocketAddr, request: &[u8]) -> (u64, u64, u16) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let status = std::str::from_utf8(&got[9..12]).unwrap().parse().unwrap();
    (request.len() as u64, got.len() as u64, status)
}

/// The publish listener's address, from the start-up log.
pub fn publish_addr(t: &Tether) -> SocketAddr {
    let line = t.wait_log("notifications: publish listener on ");
    line.split("publish listener on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

pub mod admin;
pub mod browser;
pub mod cluster;
pub mod login;
pub mod redis_server;
pub mod uploads;
