//! The failover scenario at small scale (issue #19), in CI: `tether demo --cluster` (three real tether
//! nodes and the webmail), 50 virtual users of `tether-bench failover`, node a killed with SIGKILL and
//! restarted. With replication: zero forced re-logins, zero lost acknowledged notifications, zero lost
//! acknowledged upload bytes, zero binding violations — and the work really happened (failovers, uploads
//! checked byte-exact, notifications delivered). Without replication (`--no-replication`), the same
//! counters see the losses, so they are not zero by construction.
//!
//! It needs the `tether` binary of this workspace (`cargo test --workspace` builds it); it uses the
//! example cluster's fixed ports, like the root package's `demo_cluster` test (test binaries run one at a
//! time).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn tether() -> PathBuf {
    // target/<profile>/deps/failover-HASH → target/<profile>/tether
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("tether");
    assert!(
        path.exists(),
        "{} is missing: run the workspace's tests (scripts/test, or cargo test --workspace), which build it",
        path.display()
    );
    path
}

struct Demo {
    child: Child,
    dir: tempfile::TempDir,
}

impl Demo {
    fn start(extra: &[&str]) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(tether())
            .args(["demo", "--cluster"])
            .args(extra)
            .env("TETHER_DEMO_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("The tour:"))
        {
            assert!(
                Instant::now() < deadline,
                "the demo cluster did not start: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let printed = lines.lock().unwrap().join("\n");
        assert_eq!(printed.matches("(serving)").count(), 3, "{printed}");
        Demo { child, dir }
    }

    /// `tether-bench failover` against it, node a killed at `kill` and restarted at `restart`.
    fn scenario(&self, label: &str, duration: u64, kill: u64, restart: u64) -> Value {
        let json = self.dir.path().join(format!("{label}.json"));
        let ctl = |verb: &str| {
            format!(
                "TETHER_DEMO_DIR='{}' '{}' demo {verb} a",
                self.dir.path().display(),
                tether().display()
            )
        };
        let out = Command::new(env!("CARGO_BIN_EXE_tether-bench"))
            .args(["failover", "--users", "50", "--label", label])
            .args(["--duration", &format!("{duration}s")])
            .args([
                "--kill-at",
                &format!("{kill}s"),
                "--restart-at",
                &format!("{restart}s"),
            ])
            .args(["--kill-cmd", &ctl("kill"), "--restart-cmd", &ctl("restart")])
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        eprintln!("{text}");
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn fifty_users_lose_nothing_when_a_node_is_killed_and_lose_much_without_replication() {
    let r = {
        let demo = Demo::start(&[]);
        demo.scenario("replicated", 12, 4, 8)
    };
    // The chaos happened, and node a served again.
    assert!(
        r["chaos"]["kill_at_s"].is_number() && r["chaos"]["kill_error"].is_null(),
        "{r}"
    );
    assert!(r["chaos"]["restart_serving_s"].is_number(), "{r}");
    // The work happened: users moved off node a, uploads completed and were checked, notifications flowed.
    assert!(n(&r["failovers"]) > 0, "{r}");
    assert!(
        n(&r["uploads"]["completed"]) > 0 && n(&r["uploads"]["verified"]) > 0,
        "{r}"
    );
    assert!(
        n(&r["notifications"]["expected"]) > 0 && n(&r["notifications"]["delivered"]) > 0,
        "{r}"
    );
    assert!(n(&r["phases"]["during"]["requests"]) > 0, "{r}");
    // Nothing lost.
    assert_eq!(n(&r["forced_relogins"]), 0, "{r}");
    assert_eq!(n(&r["notifications"]["lost"]), 0, "{r}");
    assert_eq!(n(&r["uploads"]["lost_bytes"]), 0, "{r}");
    assert_eq!(n(&r["uploads"]["corrupt"]), 0, "{r}");
    assert_eq!(n(&r["binding_violations"]), 0, "{r}");

    // The same scenario on nodes that share nothing: the counters see what is lost.
    let r = {
        let demo = Demo::start(&["--no-replication"]);
        demo.scenario("no-replication", 8, 3, 6)
    };
    assert!(n(&r["failovers"]) > 0, "{r}");
    assert!(n(&r["forced_relogins"]) > 0, "{r}");
    let lost = n(&r["notifications"]["lost"])
        + n(&r["uploads"]["lost_bytes"])
        + n(&r["binding_violations"]);
    assert!(lost > 0, "{r}");
}
