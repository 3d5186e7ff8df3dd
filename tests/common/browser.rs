//! A real browser for end-to-end tests: headless Chromium driven by ChromeDriver over the W3C WebDriver
//! protocol (JSON over plain HTTP, spoken on a std `TcpStream`). Chromium and ChromeDriver are not Rust:
//! `scripts/test` installs them (Debian's `chromium` and `chromium-driver`); without them a test that
//! starts a [`Browser`] fails and names the script — it never passes by skipping.

use super::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A program on `PATH`, or the failure that names the script installing it.
pub fn program(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: run the tests with scripts/test, which installs Debian's \
                 {package} (this test drives a real browser and does not skip)"
            )
        })
}

/// ChromeDriver and the browser it started, stopped on drop whatever the test's outcome: the session is
/// deleted (ChromeDriver closes Chromium), then the whole process group is killed (ChromeDriver was
/// started as its leader, and Chromium's processes are in it).
pub struct Browser {
    driver: Child,
    port: u16,
    session: Option<String>,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            let _ = webdriver(self.port, "DELETE", &format!("/session/{id}"), None);
        }
        let group = self.driver.id() as i32;
        // SAFETY: kill(2) with a negative pid signals the process group we created; no memory involved.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// A free loopback port (bound, then released for ChromeDriver to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One WebDriver call: `method path` with an optional JSON body, over a fresh connection. Returns the
/// answer's JSON, or the WebDriver error as text.
pub fn webdriver(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    // Starting a browser takes a while on a loaded machine.
    s.set_read_timeout(Some(Duration::from_secs(90)))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    // ChromeDriver may keep the connection open: read the head, then exactly its body.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let (end, head) = loop {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the head ended".into());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break (
                end,
                String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase(),
            );
        }
    };
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &raw[end + 4..];
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let mut payload = raw[end + 4..].to_vec();
    if chunked {
        payload = dechunk(&payload).ok_or("bad chunked body")?;
    } else if let Some(n) = length {
        payload.truncate(n);
    }
    let v: Value = serde_json::from_slice(&payload).map_err(|e| format!("{e}: {head}"))?;
    match v["value"]["error"].as_str() {
        Some(e) => Err(format!("{e}: {}", v["value"]["message"])),
        None => Ok(v),
    }
}

pub fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line]).ok()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(line + 2..line + 2 + size)?);
        b = b.get(line + 4 + size..)?;
    }
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium session with a fresh profile.
    pub fn start() -> Browser {
        use std::os::unix::process::CommandExt;
        let chromium = program("chromium", "chromium");
        let chromedriver = program("chromedriver", "chromium-driver");
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromedriver.log");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            driver,
            port,
            session: None,
            log,
            _profile: profile,
        };
        let ready = eventually(|| {
            webdriver(port, "GET", "/status", None).is_ok_and(|v| v["value"]["ready"] == true)
        });
        assert!(ready, "chromedriver is not ready; {}", browser.driver_log());
        let data_dir = browser._profile.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1440,900",
                         // No crash handler: it starts its own session, out of the group killed on drop.
                         "--disable-crash-reporter", "--disable-breakpad",
                         format!("--user-data-dir={}", data_dir.display())],
            },
        }}});
        let v = webdriver(port, "POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("no browser session: {e}; {}", browser.driver_log()));
        browser.session = Some(v["value"]["sessionId"].as_str().unwrap().to_string());
        browser
    }

    pub fn driver_log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        format!(
            "chromedriver log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let id = self.session.as_deref().unwrap();
        webdriver(self.port, method, &format!("/session/{id}{path}"), body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn open(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )["value"]
            .take()
    }

    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap())
            .unwrap()
    }
}

/// Polls the page until `pred` holds (bounded by the test patience), without reloading it.
pub fn wait_page(what: &str, b: &Browser, mut pred: impl FnMut(&Browser) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if pred(b) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = b.run("return location.href + '\\n' + document.body.innerText;");
    panic!(
        "the page never showed {what}; it shows:\n{}",
        text.as_str().unwrap_or("")
    );
}

/// Where test artifacts go: `$CARGO_TARGET_DIR/test-artifacts`, else `target/test-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
