//! The access log: one line per request, formatted and written by a log thread so a slow disk never
//! blocks a worker.
//!
//! Workers fill an `AccessRecord` (raw fields, no formatting) and hand it over a bounded channel; the log
//! thread formats, writes, and sends the record back for reuse. Records keep their byte buffer's capacity,
//! so steady state allocates nothing. If the log thread falls behind and the channel is full, the record is
//! dropped and counted rather than making the worker wait.

use crate::config::{AccessLogConfig, AccessLogFormat};
use crate::error::Termination;
use crate::http::Version;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::SystemTime;

/// Text fields of a record, stored back to back in one buffer.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    Method = 0,
    Target,
    Host,
    UserAgent,
    Cluster,
}
const FIELDS: usize = 5;
/// Longest stored text field; longer ones are cut (and marked with `...`).
const MAX_FIELD: usize = 2048;

/// Everything one access-log line says, unformatted.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    text: Vec<u8>,
    spans: [(u32, u32); FIELDS],
    /// When the first byte of the request arrived.
    pub time: SystemTime,
    pub client: SocketAddr,
    pub listener: u16,
    pub version: Version,
    /// Status sent to the client; 0 when none was.
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub backend: Option<SocketAddr>,
    /// Microseconds from request start to: leaving the queue, backend connected, response head, end.
    /// `None` when the stage was not reached.
    pub queue_us: Option<u64>,
    pub connect_us: Option<u64>,
    pub response_us: Option<u64>,
    pub total_us: u64,
    pub termination: Termination,
    pub retries: u32,
}

impl AccessRecord {
    fn new() -> Self {
        AccessRecord {
            text: Vec::with_capacity(256),
            spans: [(0, 0); FIELDS],
            time: SystemTime::UNIX_EPOCH,
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            listener: 0,
            version: Version::Http11,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            backend: None,
            queue_us: None,
            connect_us: None,
            response_us: None,
            total_us: 0,
            termination: Termination::Completed,
            retries: 0,
        }
    }

    /// Clears every field for a new request, keeping the buffer.
    pub fn reset(&mut self, time: SystemTime, client: SocketAddr, listener: u16) {
        self.text.clear();
        self.spans = [(0, 0); FIELDS];
        self.time = time;
        self.client = client;
        self.listener = listener;
        self.version = Version::Http11;
        self.status = 0;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.backend = None;
        self.queue_us = None;
        self.connect_us = None;
        self.response_us = None;
        self.total_us = 0;
        self.termination = Termination::Completed;
        self.retries = 0;
    }

    /// Stores a text field (cut at `MAX_FIELD` bytes).
    pub fn set(&mut self, field: Field, value: &[u8]) {
        let value = &value[..value.len().min(MAX_FIELD)];
        let start = self.text.len();
        self.text.extend_from_slice(value);
        self.spans[field as usize] = (start as u32, self.text.len() as u32);
    }

    pub fn get(&self, field: Field) -> &[u8] {
        let (s, e) = self.spans[field as usize];
        &self.text[s as usize..e as usize]
    }
}

/// A worker's handle on the access log. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: Sender<Box<AccessRecord>>,
    free: Receiver<Box<AccessRecord>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the log thread writing to `config.target`. Returns the handle and the thread, which ends
    /// once every handle is dropped and the queue is written out.
    pub fn start(config: &AccessLogConfig) -> io::Result<(AccessLog, JoinHandle<()>)> {
        let out: Box<dyn Write + Send> = match config.target.as_str() {
            "stdout" => Box::new(io::stdout()),
            "stderr" => Box::new(io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("access log {path}: {e}")))?,
            ),
        };
        let (tx, rx) = bounded::<Box<AccessRecord>>(16 * 1024);
        let (free_tx, free) = bounded::<Box<AccessRecord>>(16 * 1024);
        let format = config.format;
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, free_tx, out, format))?;
        Ok((
            AccessLog {
                tx,
                free,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            thread,
        ))
    }

    /// A blank record to fill (recycled when possible).
    pub fn record(&self) -> Box<AccessRecord> {
        self.free
            .try_recv()
            .unwrap_or_else(|_| Box::new(AccessRecord::new()))
    }

    /// Queues a filled record; never blocks.
    pub fn submit(&self, record: Box<AccessRecord>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(record)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped because the log thread could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_loop(
    rx: Receiver<Box<AccessRecord>>,
    free: Sender<Box<AccessRecord>>,
    out: Box<dyn Write + Send>,
    format: AccessLogFormat,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(1024);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write everything queued, then flush once.
        while let Some(record) = next {
            line.clear();
            match format {
                AccessLogFormat::Combined => format_combined(&record, &mut line),
                AccessLogFormat::Json => format_json(&record, &mut line),
            }
            if let Err(e) = out.write_all(&line) {
                log::warn!("access log write failed: {e}");
            }
            let _ = free.try_send(record);
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

fn opt_us(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Apache combined style followed by tether's fields as `key=value`:
/// `ip - - [time] "METHOD target VERSION" status bytes "-" "user-agent" host="…" cluster=… backend=…
/// bytes_in=… tq=… tc=… tr=… tt=… term=… reason="…" retries=…` (times in microseconds, `-` when the stage
/// was not reached).
pub fn format_combined(r: &AccessRecord, out: &mut Vec<u8>) {
    let time = humantime::format_rfc3339_millis(r.time);
    let _ = write!(out, "{} - - [{time}] \"", r.client.ip());
    if r.get(Field::Method).is_empty() {
        // A refused head: the target field holds the raw first line as received.
        escape_quoted(r.get(Field::Target), out);
    } else {
        escape_quoted(r.get(Field::Method), out);
        out.push(b' ');
        escape_quoted(r.get(Field::Target), out);
        out.push(b' ');
        out.extend_from_slice(r.version.as_bytes());
    }
    out.extend_from_slice(b"\" ");
    if r.status == 0 {
        out.push(b'-');
    } else {
        let _ = write!(out, "{}", r.status);
    }
    let _ = write!(out, " {} \"-\" \"", r.bytes_out);
    escape_quoted(r.get(Field::UserAgent), out);
    out.extend_from_slice(b"\" host=\"");
    escape_quoted(r.get(Field::Host), out);
    out.extend_from_slice(b"\" cluster=");
    dash_if_empty(r.get(Field::Cluster), out);
    match r.backend {
        Some(b) => {
            let _ = write!(out, " backend={b}");
        }
        None => out.extend_from_slice(b" backend=-"),
    }
    let _ = write!(
        out,
        " bytes_in={} tq={} tc={} tr={} tt={} term={} reason=\"",
        r.bytes_in,
        opt_us(r.queue_us),
        opt_us(r.connect_us),
        opt_us(r.response_us),
        r.total_us,
        r.termination.label(),
    );
    escape_quoted(r.termination.reason().as_bytes(), out);
    let _ = writeln!(out, "\" retries={}", r.retries);
}

/// One JSON object per line with the same fields as the combined format.
pub fn format_json(r: &AccessRecord, out: &mut Vec<u8>) {
    let time = humantime::format_rfc3339_millis(r.time);
    let _ = write!(
        out,
        "{{\"time\":\"{time}\",\"client\":\"{}\",\"method\":",
        r.client
    );
    json_string(r.get(Field::Method), out);
    out.extend_from_slice(b",\"target\":");
    json_string(r.get(Field::Target), out);
    out.extend_from_slice(b",\"version\":");
    json_string(r.version.as_bytes(), out);
    out.extend_from_slice(b",\"host\":");
    json_string(r.get(Field::Host), out);
    let _ = write!(
        out,
        ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"cluster\":",
        r.status, r.bytes_in, r.bytes_out
    );
    json_string(r.get(Field::Cluster), out);
    match r.backend {
        Some(b) => {
            let _ = write!(out, ",\"backend\":\"{b}\"");
        }
        None => out.extend_from_slice(b",\"backend\":null"),
    }
    let json_us = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
    let _ = write!(
        out,
        ",\"queue_us\":{},\"connect_us\":{},\"response_us\":{},\"total_us\":{},\"termination\":\"{}\",\"reason\":",
        json_us(r.queue_us),
        json_us(r.connect_us),
        json_us(r.response_us),
        r.total_us,
        r.termination.label(),
    );
    json_string(r.termination.reason().as_bytes(), out);
    let _ = write!(out, ",\"retries\":{},\"user_agent\":", r.retries);
    json_string(r.get(Field::UserAgent), out);
    out.extend_from_slice(b"}\n");
}

fn dash_if_empty(v: &[u8], out: &mut Vec<u8>) {
    if v.is_empty() {
        out.push(b'-');
    } else {
        escape_quoted(v, out);
    }
}

/// Escapes `"`, `\` and non-printable bytes as `\xHH`, as Apache does, so a line can't be forged.
fn escape_quoted(v: &[u8], out: &mut Vec<u8>) {
    for &b in v {
        match b {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            0x20..=0x7e => out.push(b),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

/// A JSON string; bytes outside printable ASCII become `\u00XX` so the line stays valid JSON whatever the
/// client sent.
fn json_string(v: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(b),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpError;

    fn sample() -> AccessRecord {
        let mut r = AccessRecord::new();
        r.reset(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            "10.0.0.7:4242".parse().unwrap(),
            0,
        );
        r.set(Field::Method, b"GET");
        r.set(Field::Target, b"/a\"b?x=\x01");
        r.set(Field::Host, b"example.com");
        r.set(Field::UserAgent, b"curl/8");
        r.set(Field::Cluster, b"app");
        r.status = 200;
        r.bytes_in = 80;
        r.bytes_out = 512;
        r.backend = Some("127.0.0.1:9001".parse().unwrap());
        r.queue_us = Some(0);
        r.connect_us = Some(120);
        r.response_us = Some(900);
        r.total_us = 1000;
        r
    }

    #[test]
    fn combined_line_escapes_and_carries_every_field() {
        let mut out = Vec::new();
        format_combined(&sample(), &mut out);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "10.0.0.7 - - [2023-11-14T22:13:20.123Z] \"GET /a\\\"b?x=\\x01 HTTP/1.1\" 200 512 \"-\" \"curl/8\" \
             host=\"example.com\" cluster=app backend=127.0.0.1:9001 bytes_in=80 tq=0 tc=120 tr=900 tt=1000 \
             term=completed reason=\"\" retries=0\n"
        );
    }

    #[test]
    fn json_line_is_valid_and_names_the_reason() {
        let mut r = sample();
        r.status = 400;
        r.backend = None;
        r.connect_us = None;
        r.termination = Termination::BadRequest(HttpError::bad_request("obs-fold in header"));
        let mut out = Vec::new();
        format_json(&r, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with("}\n"));
        assert!(line.contains("\"target\":\"/a\\\"b?x=\\u0001\""), "{line}");
        assert!(line.contains("\"backend\":null"));
        assert!(line.contains("\"connect_us\":null"));
        assert!(line.contains("\"termination\":\"bad_request\",\"reason\":\"obs-fold in header\""));
    }

    #[test]
    fn a_refused_head_logs_its_raw_first_line_once() {
        let mut r = AccessRecord::new();
        r.reset(SystemTime::UNIX_EPOCH, "10.0.0.7:1".parse().unwrap(), 0);
        r.set(Field::Target, b"GET / HTTP/1.1");
        r.status = 400;
        let mut out = Vec::new();
        format_combined(&r, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains("] \"GET / HTTP/1.1\" 400 "), "{line}");
    }

    #[test]
    fn long_fields_are_cut() {
        let mut r = AccessRecord::new();
        r.set(Field::Target, &vec![b'a'; 10_000]);
        assert_eq!(r.get(Field::Target).len(), MAX_FIELD);
    }
}
