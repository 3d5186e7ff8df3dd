//! `tether demo --cluster` (issue #19): the three-node example of `configs/cluster/` run by one command —
//! three tether nodes as child processes of this one, in front of two instances of the built-in webmail
//! ([`super::webmail`]) — and `tether demo kill NODE` / `tether demo restart NODE`, which ask the running
//! demo (over a Unix socket in its directory) to kill a node with SIGKILL or start it again.
//!
//! The nodes run the very files of `configs/cluster/` (embedded in the binary, written to the demo's
//! directory with the development certificates), so what the demo shows is what the example does.

use super::webmail::{MailSystem, Publisher, Webmail};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The example's files, as `configs/cluster/` has them.
const FILES: &[(&str, &str)] = &[
    ("a.toml", include_str!("../../configs/cluster/a.toml")),
    ("b.toml", include_str!("../../configs/cluster/b.toml")),
    ("c.toml", include_str!("../../configs/cluster/c.toml")),
    (
        "users.toml",
        include_str!("../../configs/cluster/users.toml"),
    ),
    (
        "certs/ca.crt",
        include_str!("../../configs/cluster/certs/ca.crt"),
    ),
    (
        "certs/a.crt",
        include_str!("../../configs/cluster/certs/a.crt"),
    ),
    (
        "certs/a.key",
        include_str!("../../configs/cluster/certs/a.key"),
    ),
    (
        "certs/b.crt",
        include_str!("../../configs/cluster/certs/b.crt"),
    ),
    (
        "certs/b.key",
        include_str!("../../configs/cluster/certs/b.key"),
    ),
    (
        "certs/c.crt",
        include_str!("../../configs/cluster/certs/c.crt"),
    ),
    (
        "certs/c.key",
        include_str!("../../configs/cluster/certs/c.key"),
    ),
];

/// The nodes: name, client listener, publish listener, admin listener (as the example's files say).
pub const NODES: [(&str, &str, &str, &str); 3] = [
    ("a", "127.0.0.1:8181", "127.0.0.1:7281", "127.0.0.1:9181"),
    ("b", "127.0.0.1:8182", "127.0.0.1:7282", "127.0.0.1:9182"),
    ("c", "127.0.0.1:8183", "127.0.0.1:7283", "127.0.0.1:9183"),
];
/// The example's backends, where the webmail instances listen.
const BACKENDS: [&str; 2] = ["127.0.0.1:9001", "127.0.0.1:9002"];
const PUBLISH_SECRET: &str = "demo-publish-secret";
/// How often the newsletter arrives (a notification for every logged-in user).
const NEWSLETTER_EVERY: Duration = Duration::from_secs(30);

/// The demo's directory: `$TETHER_DEMO_DIR`, else `tether-demo-cluster` in the temporary directory. `kill`
/// and `restart` find the running demo's socket there.
pub fn directory() -> PathBuf {
    std::env::var_os("TETHER_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tether-demo-cluster"))
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// The node processes, by position in [`NODES`].
struct Nodes {
    exe: PathBuf,
    dir: PathBuf,
    children: [Option<Child>; 3],
}

impl Nodes {
    fn index(name: &str) -> Option<usize> {
        NODES.iter().position(|n| n.0 == name)
    }

    fn start(&mut self, i: usize) -> Result<String, String> {
        if let Some(child) = self.children[i].as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                return Err(format!(
                    "node {} is running (pid {})",
                    NODES[i].0,
                    child.id()
                ));
            }
        }
        let name = NODES[i].0;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(|e| format!("log file of node {name}: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.exe)
            .arg("run")
            .arg("-c")
            .arg(self.dir.join(format!("{name}.toml")))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start node {name}: {e}"))?;
        let pid = child.id();
        self.children[i] = Some(child);
        Ok(format!(
            "node {name} started (pid {pid}), serving on http://{}",
            NODES[i].1
        ))
    }

    fn kill(&mut self, i: usize) -> Result<String, String> {
        let name = NODES[i].0;
        let Some(mut child) = self.children[i].take() else {
            return Err(format!("node {name} is not running"));
        };
        if child.try_wait().ok().flatten().is_some() {
            return Err(format!("node {name} is not running"));
        }
        let pid = child.id();
        // Child::kill is SIGKILL: the node gets no chance to hand anything over.
        child.kill().map_err(|e| format!("kill node {name}: {e}"))?;
        let _ = child.wait();
        Ok(format!("node {name} (pid {pid}) killed with SIGKILL"))
    }

    fn status(&mut self) -> String {
        let mut out = Vec::new();
        for (i, child) in self.children.iter_mut().enumerate() {
            let state = match child.as_mut().map(|c| (c.id(), c.try_wait())) {
                Some((pid, Ok(None))) => format!("running (pid {pid})"),
                Some((_, Ok(Some(status)))) => format!("exited ({status})"),
                _ => "stopped".to_string(),
            };
            out.push(format!("{}: {state}", NODES[i].0));
        }
        out.join(", ")
    }

    /// Stops every node: SIGTERM, up to three seconds, then SIGKILL.
    fn stop_all(&mut self) {
        for child in self.children.iter().flatten() {
            // SAFETY: kill(2) takes no pointers; the pid is a child this process spawned and has not reaped
            // (so it cannot have been reused). std offers only SIGKILL, and a demo stopped by Ctrl-C should
            // let its nodes stop gracefully.
            #[allow(unsafe_code)]
            let _ = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for child in self.children.iter_mut().flatten() {
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One control command (`kill a`, `restart a`, `status`): `ok …` or `error …`.
    fn command(&mut self, line: &str) -> String {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or("");
        let node = words.next().unwrap_or("");
        let result = match (verb, Self::index(node)) {
            ("status", _) => Ok(self.status()),
            ("kill", Some(i)) => self.kill(i),
            ("restart" | "start", Some(i)) => self.start(i),
            ("kill" | "restart" | "start", None) => Err(format!("no node {node:?}: a, b or c")),
            _ => Err(format!(
                "unknown command {verb:?}: kill NODE, restart NODE, status"
            )),
        };
        match result {
            Ok(text) => format!("ok {text}"),
            Err(text) => format!("error {text}"),
        }
    }
}

/// The example's file `name` as the demo writes it: as is, or without `[cluster]` (every node alone, its
/// store its own: what a balancer without continuity is, for the failover benchmark to compare).
fn file_text(name: &str, text: &str, replicated: bool) -> Result<String, String> {
    if replicated || !name.ends_with(".toml") || name == "users.toml" {
        return Ok(text.to_string());
    }
    let mut doc: toml_edit::DocumentMut =
        text.parse().map_err(|e| format!("embedded {name}: {e}"))?;
    doc.remove("cluster");
    Ok(format!(
        "# Written by `tether demo --cluster --no-replication`: the example without [cluster].\n{doc}"
    ))
}

/// Runs the demo cluster until SIGINT or SIGTERM; with `replicated` false, the nodes share nothing.
pub fn run(replicated: bool) -> Result<(), String> {
    let dir = directory();
    std::fs::create_dir_all(dir.join("certs"))
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    if UnixStream::connect(socket_path(&dir)).is_ok() {
        return Err(format!(
            "a demo cluster already runs with directory {} (set TETHER_DEMO_DIR for another)",
            dir.display()
        ));
    }
    for (name, text) in FILES {
        std::fs::write(dir.join(name), file_text(name, text, replicated)?)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))?;
    }

    let nodes_http: Vec<String> = NODES.iter().map(|n| format!("http://{}", n.1)).collect();
    let publisher = Publisher::start(
        NODES.iter().map(|n| n.2.to_string()).collect(),
        PUBLISH_SECRET.into(),
    )
    .map_err(|e| format!("cannot start the webmail's publisher: {e}"))?;
    let mail = MailSystem::new();
    let mut backends = Vec::new();
    for (i, address) in BACKENDS.iter().enumerate() {
        let listener = std::net::TcpListener::bind(address).map_err(|e| {
            format!("webmail backend on {address}: {e} (is another demo or the example's backend running?)")
        })?;
        let service = Arc::new(Webmail::new(
            i + 1,
            mail.clone(),
            publisher.clone(),
            nodes_http.clone(),
        ));
        backends.push(super::Backend::new(listener, i + 1, service)?);
    }
    super::serve(backends, "webmail")?;
    for user in ["alice", "bob"] {
        mail.deliver(
            "tether",
            user,
            "Welcome to the tether demo",
            "Attach a large file, kill the node you are on (tether demo kill a), and watch the page carry on.",
            Vec::new(),
        );
    }
    let newsletter_mail = mail.clone();
    let newsletter_publisher = publisher.clone();
    std::thread::Builder::new()
        .name("webmail-news".into())
        .spawn(move || {
            for n in 1u64.. {
                std::thread::sleep(NEWSLETTER_EVERY);
                for user in ["alice", "bob"] {
                    let subject = format!("tether news #{n}");
                    let id = newsletter_mail.deliver("news", user, &subject, "Nothing lost so far.", Vec::new());
                    newsletter_publisher.notify(
                        user,
                        serde_json::json!({"kind": "mail", "id": id, "from": "news", "subject": subject}),
                    );
                }
            }
        })
        .map_err(|e| e.to_string())?;

    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let nodes = Arc::new(parking_lot::Mutex::new(Nodes {
        exe,
        dir: dir.clone(),
        children: [None, None, None],
    }));
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_file(socket_path(&dir));
    let control = UnixListener::bind(socket_path(&dir))
        .map_err(|e| format!("cannot listen on {}: {e}", socket_path(&dir).display()))?;
    {
        let nodes = nodes.clone();
        std::thread::Builder::new()
            .name("demo-control".into())
            .spawn(move || {
                for stream in control.incoming().flatten() {
                    let mut line = String::new();
                    let mut reader = BufReader::new(&stream);
                    if reader.read_line(&mut line).is_ok() {
                        let answer = nodes.lock().command(line.trim());
                        let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
    for i in 0..NODES.len() {
        let started = nodes.lock().start(i);
        if let Err(e) = started {
            nodes.lock().stop_all();
            return Err(e);
        }
    }
    let ready = wait_serving(Duration::from_secs(20));
    print_tour(&dir, &ready, replicated);
    {
        // Lines typed in the demo's terminal work like `tether demo …` (stdin may be closed: then nothing).
        let nodes = nodes.clone();
        let _ = std::thread::Builder::new()
            .name("demo-stdin".into())
            .spawn(move || {
                for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                    if !line.trim().is_empty() {
                        println!("{}", nodes.lock().command(line.trim()));
                    }
                }
            });
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("stopping the demo cluster");
    nodes.lock().stop_all();
    let _ = std::fs::remove_file(socket_path(&dir));
    Ok(())
}

/// Waits until each node's client listener accepts (or `limit` passes); returns which do.
fn wait_serving(limit: Duration) -> Vec<bool> {
    let deadline = Instant::now() + limit;
    let mut up = vec![false; NODES.len()];
    while Instant::now() < deadline && up.iter().any(|u| !u) {
        for (i, node) in NODES.iter().enumerate() {
            if !up[i] {
                let addr: std::net::SocketAddr = node.1.parse().expect("fixed address");
                up[i] =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    up
}

fn print_tour(dir: &Path, ready: &[bool], replicated: bool) {
    let state = |i: usize| {
        if ready[i] {
            "serving"
        } else {
            "not answering yet: see its log"
        }
    };
    println!(
        "tether demo --cluster: three nodes in front of a webmail (two backend instances on {} and {})\n",
        BACKENDS[0], BACKENDS[1]
    );
    if !replicated {
        println!(
            "  --no-replication: the nodes share nothing (no [cluster]): a killed node's logins, bindings,\n  \
             notifications and uploads are gone with it. Compare with the demo without this flag.\n"
        );
    }
    for (i, node) in NODES.iter().enumerate() {
        println!(
            "  node {}  http://{}  admin http://{}  ({})",
            node.0,
            node.1,
            node.3,
            state(i)
        );
    }
    println!(
        "\nThe tour:\n  \
         1. Open http://127.0.0.1:8181/mail/ and log in as alice (password tether-demo).\n  \
         2. Write a draft, and attach a large file (it goes at about 1 MiB/s, so there is time).\n  \
         3. While it uploads:   tether demo kill a      (or type `kill a` here)\n     \
            The page carries on through node b: no login, the same backend and draft, the upload\n     \
            resuming at its offset, notifications still arriving (a newsletter every 30 s; send bob a mail).\n  \
         4. tether demo restart a   brings node a back; it resyncs from b and c and serves again.\n\n\
         Status page: http://127.0.0.1:9181/ (token demo-admin-token).  Logs: {}/{{a,b,c}}.log\n\
         Ctrl-C stops everything.",
        dir.display()
    );
}

/// `tether demo kill|restart|status …`: one command to the running demo; its answer line.
pub fn control(command: &str) -> Result<String, String> {
    let dir = directory();
    let path = socket_path(&dir);
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "no running demo cluster at {} ({e}): start one with `tether demo --cluster`",
            path.display()
        )
    })?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let line = line.trim();
    match line.strip_prefix("ok ") {
        Some(text) => Ok(text.to_string()),
        None => Err(line.strip_prefix("error ").unwrap_or(line).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_files_are_the_example_and_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        for (name, text) in FILES {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        for (name, client, publish, admin) in NODES {
            let cfg = crate::config::load_file(&dir.path().join(format!("{name}.toml")))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cfg.listeners[0].address, client);
            let text = std::fs::read_to_string(dir.path().join(format!("{name}.toml"))).unwrap();
            assert!(text.contains(publish) && text.contains(admin), "{name}");
            for backend in BACKENDS {
                assert!(text.contains(backend), "{name} lists {backend}");
            }
        }
    }

    #[test]
    fn without_replication_the_nodes_have_no_cluster_and_still_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        for (name, text) in FILES {
            std::fs::write(dir.path().join(name), file_text(name, text, false).unwrap()).unwrap();
        }
        for (name, client, ..) in NODES {
            let cfg = crate::config::load_file(&dir.path().join(format!("{name}.toml")))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(cfg.cluster.is_none(), "{name}");
            assert_eq!(cfg.listeners[0].address, client);
            assert!(
                cfg.uploads.is_some() && cfg.admin.is_some(),
                "{name} keeps the rest"
            );
        }
    }

    #[test]
    fn control_commands_name_what_is_wrong() {
        let mut nodes = Nodes {
            exe: PathBuf::from("/nonexistent"),
            dir: std::env::temp_dir(),
            children: [None, None, None],
        };
        assert!(nodes.command("kill x").starts_with("error no node \"x\""));
        assert!(
            nodes
                .command("kill a")
                .starts_with("error node a is not running")
        );
        assert!(nodes.command("dance").starts_with("error unknown command"));
        assert_eq!(
            nodes.command("status"),
            "ok a: stopped, b: stopped, c: stopped"
        );
    }
}
