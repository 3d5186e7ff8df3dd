//! The admin status page in a real browser: headless Chromium driven by ChromeDriver over the W3C
//! WebDriver protocol (JSON over plain HTTP, spoken here on a std `TcpStream`). A two-node cluster like
//! `configs/cluster/` (two backends, a pool of users, an admin listener with a token) serves some
//! traffic; the page must list every backend of the config in its DOM, and after a backend is disabled
//! through the API it must show it disabled — by itself, without a reload. A screenshot is kept as a test
//! artifact (`target/test-artifacts/status-page.png`).
//!
//! Chromium and ChromeDriver are not Rust: `scripts/test` installs them (Debian's `chromium` and
//! `chromium-driver`). Without them this test fails and says so; it never passes by skipping.

mod common;

use common::admin::*;
use common::cluster::*;
use common::login::*;
use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "status-page-admin-token";

/// A program on `PATH`, or the failure that names the script installing it.
fn program(name: &str, package: &str) -> PathBuf {
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
struct Browser {
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
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One WebDriver call: `method path` with an optional JSON body, over a fresh connection. Returns the
/// answer's JSON, or the WebDriver error as text.
fn webdriver(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
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

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
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
    fn start() -> Browser {
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

    fn driver_log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        format!(
            "chromedriver log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let id = self.session.as_deref().unwrap();
        webdriver(self.port, method, &format!("/session/{id}{path}"), body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )["value"]
            .take()
    }

    fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap())
            .unwrap()
    }
}

/// The backend rows the page shows: `cluster/address` → (health, state), read from the DOM.
fn backend_rows(b: &Browser) -> Vec<(String, String, String)> {
    let v = b.run(
        "return [...document.querySelectorAll('#backends tbody tr[data-backend]')]\
         .map(tr => [tr.dataset.backend, tr.dataset.health, tr.dataset.state, tr.innerText]);",
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let text = r[3].as_str().unwrap_or("");
            // What is shown agrees with the row's data: the state's word is in the row's text.
            let state = r[2].as_str().unwrap_or("").to_string();
            assert!(text.contains(&state), "row {text:?} does not show {state}");
            (
                r[0].as_str().unwrap_or("").to_string(),
                r[1].as_str().unwrap_or("").to_string(),
                state,
            )
        })
        .collect()
}

/// Polls the page until `pred` holds (bounded by the test patience), without reloading it.
fn wait_page(what: &str, b: &Browser, mut pred: impl FnMut(&Browser) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if pred(b) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = b.run("return document.body.innerText;");
    panic!(
        "the page never showed {what}; it shows:\n{}",
        text.as_str().unwrap_or("")
    );
}

/// Where test artifacts go: `$CARGO_TARGET_DIR/test-artifacts`, else `target/test-artifacts`.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_status_page_shows_every_backend_and_a_disabled_one_in_chromium() {
    // Before anything starts: a missing browser fails here, naming scripts/test.
    let browser = Browser::start();

    // Two nodes like configs/cluster/ (here a and b), two backends, the demo pool, an admin listener.
    let dir = tempfile::tempdir().unwrap();
    cluster_certs(dir.path(), "a,b");
    let one = Backend::named("one");
    let two = Backend::named("two");
    let configs: Vec<String> = mesh_configs(&["a", "b"], dir.path(), &[one.addr, two.addr])
        .into_iter()
        .map(|c| {
            format!(
                "{c}\n[pools.demo]\nusers = \"{}\"\n\n[[routes]]\npath_prefix = \"/mail/\"\ncluster = \"app\"\n\
                 auth = \"login\"\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
                users_file()
            )
        })
        .collect();
    let nodes: Vec<Tether> = configs.iter().map(|c| Tether::start(c)).collect();
    let a = admin_addr(&nodes[0]);
    wait_peer(&nodes[0], "b", "up");
    // Some traffic for the page to show: requests on two routes, a login (tenant usage).
    let cookie = login_cookie_at(nodes[0].addr, "test");
    for i in 0..20 {
        assert_eq!(get(nodes[0].addr, &format!("/app/{i}")).status, 200);
        let r = get_with(
            nodes[0].addr,
            "/mail/inbox",
            &format!("Cookie: {cookie}\r\n"),
        );
        assert_eq!(r.status, 200);
    }

    browser.open(&format!("http://ops:{TOKEN}@{a}/"));
    let expected: Vec<String> = [one.addr, two.addr]
        .iter()
        .map(|b| format!("app/{b}"))
        .collect();
    wait_page("both backends", &browser, |b| {
        let rows = backend_rows(b);
        expected.iter().all(|e| {
            rows.iter()
                .any(|(k, h, s)| k == e && h == "up" && s == "enabled")
        })
    });
    let rows = backend_rows(&browser);
    assert_eq!(rows.len(), 2, "{rows:?}");
    // The other sections are filled from the API too: the peer, the tenant, the routes.
    wait_page("peer b up, tenant demo, two routes", &browser, |b| {
        let v = b.run(
            "return [document.querySelector('#peers tr[data-peer=\"b\"]')?.innerText || '', \
             document.querySelector('#tenants tr[data-tenant=\"demo\"]')?.innerText || '', \
             document.querySelectorAll('#routes tr[data-route]').length, \
             document.getElementById('error').textContent];",
        );
        v[0].as_str().unwrap_or("").contains("up")
            && !v[1].as_str().unwrap_or("").is_empty()
            && v[2].as_u64().is_some_and(|n| n >= 2)
            && v[3] == ""
    });

    // Disable one backend through the API; the page shows it without being reloaded (a value left on the
    // window survives only if the document stays the same).
    browser.run("window.tetherProbe = 'same document'; return null;");
    let path = format!("/api/backends/app/{}/disable", two.addr);
    let r = raw_exchange(
        a,
        format!(
            "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let disabled = format!("app/{}", two.addr);
    wait_page("the backend disabled", &browser, |b| {
        backend_rows(b)
            .iter()
            .any(|(k, _, s)| *k == disabled && s == "disabled")
    });
    assert_eq!(
        browser.run("return window.tetherProbe || null;"),
        "same document",
        "the page was reloaded"
    );
    let rows = backend_rows(&browser);
    let enabled = format!("app/{}", one.addr);
    assert!(
        rows.iter().any(|(k, _, s)| *k == enabled && s == "enabled"),
        "{rows:?}"
    );

    // A few more refreshes draw the charts, then the screenshot.
    for i in 0..10 {
        let _ = get(nodes[0].addr, &format!("/app/more/{i}"));
    }
    wait_page("two more refreshes", &browser, |b| {
        b.run("return Number(document.getElementById('updated').dataset.refreshes || 0);")
            .as_u64()
            .is_some_and(|n| n >= 4)
    });
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let path = artifacts_dir().join("status-page.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
}
