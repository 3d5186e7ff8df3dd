//! `tether demo --cluster` end to end (issue #19): the one command starts three real nodes (the files of
//! configs/cluster/) and the built-in webmail; a user logs in at node a, writes a draft and starts an
//! attachment; `tether demo kill a` kills node a with SIGKILL; through node b the user is still logged in,
//! on the same backend with the same draft, the upload resumes at an offset node a acknowledged and the
//! backend gets exactly the file; a mail to bob reaches him as a notification at node c; `tether demo
//! restart a` brings node a back, serving the same session.
//!
//! The same run drives the demo's page in headless Chromium: alice logs in through node a's login page,
//! and when node a dies the open page moves to another node by itself — same backend, same inbox, no
//! re-login — and a fresh load through node b shows the same inbox without a login.
//!
//! It uses the example's fixed ports (8181-8183, 7181-7183, 7281-7283, 9181-9183, 9001-9002): no other
//! test starts the example cluster.

mod common;

use common::browser::*;
use common::*;
use sha2::Digest;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

const NODE_A: &str = "127.0.0.1:8181";
const NODE_B: &str = "127.0.0.1:8182";
const NODE_C: &str = "127.0.0.1:8183";

/// The running demo: stopped with SIGTERM (which stops its nodes) when dropped.
struct Demo {
    child: Child,
    dir: tempfile::TempDir,
    out: Arc<Mutex<Vec<String>>>,
}

impl Demo {
    fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["demo", "--cluster"])
            .env("TETHER_DEMO_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tether demo --cluster");
        let out = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    out.lock().unwrap().push(line);
                }
            });
        }
        let demo = Demo { child, dir, out };
        wait_until("the demo's tour", || {
            demo.out
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("The tour:"))
        });
        let printed = demo.out.lock().unwrap().join("\n");
        assert_eq!(printed.matches("(serving)").count(), 3, "{printed}");
        demo
    }

    /// `tether demo ARGS` as another terminal would run it: its exit status and output.
    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("demo")
            .args(args)
            .env("TETHER_DEMO_DIR", self.dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

fn addr(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

/// One request on a new connection with the cookies in `jar`; keeps the cookies the answer sets.
fn request(
    node: &str,
    jar: &mut Vec<(String, String)>,
    method: &str,
    path: &str,
    extra: &str,
    body: &[u8],
) -> Response {
    let cookies: Vec<String> = jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let cookie = if cookies.is_empty() {
        String::new()
    } else {
        format!("Cookie: {}\r\n", cookies.join("; "))
    };
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: {node}\r\n{cookie}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    let mut c = Client::connect(addr(node));
    c.send(&bytes);
    let r = c.read_response(method == "HEAD");
    for (name, value) in &r.headers {
        if name.eq_ignore_ascii_case("set-cookie") {
            let pair = value.split(';').next().unwrap();
            let (n, v) = pair.split_once('=').unwrap();
            jar.retain(|(old, _)| old != n);
            if !v.is_empty() {
                jar.push((n.to_string(), v.to_string()));
            }
        }
    }
    r
}

/// The webmail's inbox (JSON) of the user whose cookies `jar` holds, through `node`.
fn inbox_at(node: &str, jar: &mut Vec<(String, String)>) -> serde_json::Value {
    json(&request(node, jar, "GET", "/mail/api/inbox", "", b""))
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {} {}", r.status, r.text()))
}

fn login(node: &str, user: &str) -> Vec<(String, String)> {
    let mut jar = Vec::new();
    let body = format!("username={user}&password=tether-demo");
    let r = request(
        node,
        &mut jar,
        "POST",
        "/.tether/login",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        body.as_bytes(),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(jar.iter().any(|(n, _)| n == "tether_session"), "{jar:?}");
    jar
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

const TUS: &str = "Tus-Resumable: 1.0.0\r\n";

fn patch(
    node: &str,
    jar: &mut Vec<(String, String)>,
    path: &str,
    offset: usize,
    bytes: &[u8],
) -> Response {
    let extra = format!(
        "{TUS}Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
    );
    request(node, jar, "PATCH", path, &extra, bytes)
}

/// What the page shows: node, backend, re-logins, and the inbox's subjects.
fn page_state(b: &Browser) -> (String, String, String, Vec<String>) {
    // Any page: the login form, a blank document mid-navigation, the webmail.
    let v = b.run(
        "const t = id => (document.getElementById(id) || {}).textContent || '';\
         return [t('node'), t('backend'), t('relogins'),\
         [...document.querySelectorAll('#inbox li .subj')].map(e => e.textContent)];",
    );
    let text = |i: usize| v[i].as_str().unwrap_or("").to_string();
    let subjects = v[3]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    (text(0), text(1), text(2), subjects)
}

#[test]
fn a_user_of_the_demo_cluster_loses_nothing_when_their_node_is_killed() {
    // Before anything starts: a missing browser fails here, naming scripts/test.
    let browser = Browser::start();
    let demo = Demo::start();

    // In the browser: the page at node a sends alice to tether's login page; she logs in and the page
    // shows her inbox.
    browser.open(&format!("http://{NODE_A}/mail/"));
    wait_page("the login form", &browser, |b| {
        b.run("return !!document.querySelector('input[name=password]');") == true
    });
    browser.run(
        "document.querySelector('input[name=username]').value = 'alice';\
         document.querySelector('input[name=password]').value = 'tether-demo';\
         document.querySelector('form').submit(); return true;",
    );
    // Once logged in, the page shows the inbox. A navigation the browser leaves half done (seen now and
    // then on a loaded machine: a blank document) is loaded again — the login cookie is set either way.
    let mut polls = 0;
    wait_page("the inbox through node a", &browser, |b| {
        polls += 1;
        if polls % 40 == 0 {
            b.open(&format!("http://{NODE_A}/mail/"));
        }
        let (node, backend, _, inbox) = page_state(b);
        node.starts_with('a') && backend.parse::<u32>().is_ok() && !inbox.is_empty()
    });
    let (_, page_backend, _, page_inbox) = page_state(&browser);

    // Alice at node a: her inbox (the welcome mail), her backend, a draft.
    let mut alice = login(NODE_A, "alice");
    let inbox = inbox_at(NODE_A, &mut alice);
    let backend = inbox["backend"].as_u64().unwrap();
    let session = inbox["session"]["id"].as_str().unwrap().to_string();
    assert!(alice.iter().any(|(n, _)| n == "APPSESSION"), "{alice:?}");
    assert_eq!(
        inbox["messages"][0]["subject"],
        "Welcome to the tether demo"
    );
    let draft = br#"{"to":"bob","subject":"the report","body":"see attached"}"#;
    let saved = request(
        NODE_A,
        &mut alice,
        "PUT",
        "/mail/api/draft",
        "Content-Type: application/json\r\n",
        draft,
    );
    assert_eq!(saved.status, 200, "{}", saved.text());

    // The page of the demo, with the three nodes it fails over between.
    let page = request(
        NODE_A,
        &mut alice,
        "GET",
        "/mail/",
        "Accept: text/html\r\n",
        b"",
    );
    assert_eq!(page.status, 200);
    for node in [NODE_A, NODE_B, NODE_C] {
        assert!(
            page.text().contains(&format!("http://{node}")),
            "page lists {node}"
        );
    }

    // An attachment of 3 MiB, half of it acknowledged through node a.
    let file: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let meta = format!("filename {},session {}", b64("report.bin"), b64(&session));
    let created = request(
        NODE_A,
        &mut alice,
        "POST",
        "/mail/attach",
        &format!(
            "{TUS}Upload-Length: {}\r\nUpload-Metadata: {meta}\r\n",
            file.len()
        ),
        b"",
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let upload = created.header("location").unwrap().to_string();
    let half = file.len() / 2;
    let mut acknowledged = 0;
    for chunk in file[..half].chunks(512 * 1024) {
        let r = patch(NODE_A, &mut alice, &upload, acknowledged, chunk);
        assert_eq!(r.status, 204, "{}", r.text());
        acknowledged = r.header("upload-offset").unwrap().parse().unwrap();
    }
    assert_eq!(acknowledged, half);

    // Node a dies.
    let (ok, said) = demo.ctl(&["kill", "a"]);
    assert!(ok && said.contains("killed with SIGKILL"), "{said}");
    let (_, status) = demo.ctl(&["status"]);
    assert!(
        status.contains("a: stopped") && status.contains("b: running"),
        "{status}"
    );
    assert!(
        std::net::TcpStream::connect(addr(NODE_A)).is_err(),
        "node a still answers"
    );

    // The open page moved on by itself: another node, the same backend and inbox, no re-login.
    wait_page("the page on another node", &browser, |b| {
        let (node, ..) = page_state(b);
        node.starts_with('b') || node.starts_with('c')
    });
    let (_, backend_now, relogins, inbox_now) = page_state(&browser);
    assert_eq!(
        (backend_now.as_str(), relogins.as_str()),
        (page_backend.as_str(), "0")
    );
    assert!(
        page_inbox.iter().all(|s| inbox_now.contains(s)),
        "{page_inbox:?} → {inbox_now:?}"
    );
    std::fs::write(
        artifacts_dir().join("demo-failover.png"),
        browser.screenshot(),
    )
    .unwrap();
    // A fresh load through node b: the inbox at once, no login page.
    browser.open(&format!("http://{NODE_B}/mail/"));
    wait_page("the inbox through node b", &browser, |b| {
        let (node, backend, _, inbox) = page_state(b);
        node.starts_with('b') && backend == page_backend && !inbox.is_empty()
    });
    let url = browser.run("return location.pathname;");
    assert_eq!(url, "/mail/");

    // Through node b: still logged in, the same backend, the same app session and draft.
    let inbox = inbox_at(NODE_B, &mut alice);
    assert_eq!(inbox["backend"].as_u64(), Some(backend));
    assert_eq!(inbox["session"]["id"], session.as_str());
    assert_eq!(inbox["session"]["lost"], false);
    assert_eq!(inbox["draft"]["subject"], "the report");

    // The upload resumes at node b from an offset node a acknowledged (or larger), and completes.
    let head = request(NODE_B, &mut alice, "HEAD", &upload, TUS, b"");
    assert_eq!(head.status, 200, "{:?}", head.headers);
    let mut offset: usize = head.header("upload-offset").unwrap().parse().unwrap();
    assert!(
        offset >= acknowledged,
        "node b says {offset}, node a acknowledged {acknowledged}"
    );
    let mut last = None;
    while offset < file.len() {
        let end = (offset + 512 * 1024).min(file.len());
        let r = patch(NODE_B, &mut alice, &upload, offset, &file[offset..end]);
        assert_eq!(r.status, 204, "{}", r.text());
        offset = r.header("upload-offset").unwrap().parse().unwrap();
        last = Some(r);
    }
    let last = last.unwrap();
    assert_eq!(
        last.header("tether-upload-status"),
        Some("201"),
        "{:?}",
        last.headers
    );

    // The backend got exactly the file, attached to the draft.
    let inbox = inbox_at(NODE_B, &mut alice);
    let attachment = &inbox["draft"]["attachments"][0];
    assert_eq!(attachment["name"], "report.bin");
    assert_eq!(attachment["size"].as_u64(), Some(file.len() as u64));
    let digest: String = sha2::Sha256::digest(&file)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(attachment["sha256"], digest.as_str());

    // Bob, logged in at node c, gets alice's mail (sent through node b) as a notification and in his inbox.
    let mut bob = login(NODE_C, "bob");
    let sent = request(
        NODE_B,
        &mut alice,
        "POST",
        "/mail/api/send",
        "Content-Type: application/json\r\n",
        draft,
    );
    assert_eq!(json(&sent)["attachments"], 1, "{}", sent.text());
    let mut got = serde_json::Value::Null;
    assert!(
        eventually(|| {
            let r = request(
                NODE_C,
                &mut bob,
                "GET",
                "/.tether/notifications?after=0&wait=2s",
                "",
                b"",
            );
            got = json(&r);
            got["notifications"]
                .as_array()
                .is_some_and(|n| !n.is_empty())
        }),
        "no notification for bob: {got}"
    );
    assert_eq!(got["notifications"][0]["data"]["subject"], "the report");
    let bobs = inbox_at(NODE_C, &mut bob);
    assert_eq!(bobs["messages"][0]["subject"], "the report");
    assert_eq!(
        bobs["messages"][0]["attachments"][0]["sha256"],
        digest.as_str()
    );

    // Node a comes back and serves alice's session, on her backend.
    let (ok, said) = demo.ctl(&["restart", "a"]);
    assert!(ok && said.contains("node a started"), "{said}");
    let mut inbox = serde_json::Value::Null;
    assert!(
        eventually(|| {
            if std::net::TcpStream::connect(addr(NODE_A)).is_err() {
                return false;
            }
            let r = request(NODE_A, &mut alice, "GET", "/mail/api/inbox", "", b"");
            r.status == 200 && {
                inbox = json(&r);
                true
            }
        }),
        "node a does not serve again"
    );
    assert_eq!(inbox["backend"].as_u64(), Some(backend));
    assert_eq!(inbox["session"]["id"], session.as_str());

    // Commands for what is not there say so.
    let (ok, said) = demo.ctl(&["kill", "x"]);
    assert!(!ok && said.contains("no node \"x\""), "{said}");
}

#[test]
fn demo_commands_without_a_running_demo_say_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["demo", "kill", "a"])
        .env("TETHER_DEMO_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tether demo --cluster"), "{err}");
}
