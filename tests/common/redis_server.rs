//! A real `redis-server` per test, on a free loopback port with a directory of its own (never the
//! system's service): started, stopped, restarted on the same port and data, killed. A machine without
//! `redis-server` fails the test and names `scripts/test`, which installs it.

use super::*;
use std::path::{Path, PathBuf};

/// One redis-server process.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    appendonly: bool,
    /// `host:port` of the primary this server replicates (`--replicaof`), if it is a replica.
    replica_of: Option<String>,
    /// More arguments (TLS, ACL users), and the URL the test's own connections use.
    extra: Vec<String>,
    url: String,
}

impl RedisServer {
    /// Starts a server with persistence by append-only file (`appendfsync always`) when `appendonly`,
    /// and none at all otherwise (no RDB snapshots either).
    pub fn start(appendonly: bool) -> RedisServer {
        let port = super::cluster::repl_addr().port();
        let mut r = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            appendonly,
            replica_of: None,
            extra: Vec::new(),
            url: format!("redis://127.0.0.1:{port}/"),
        };
        r.spawn();
        r
    }

    /// A server that speaks TLS on a second port (certificate `localhost.crt` and key from `certs`, as
    /// `tether certs cluster --nodes localhost` writes them) and admits only the ACL user `tether` with
    /// password `s3cret` (the `default` user is off). The plain port stays open, for the test's checks
    /// (as that user).
    pub fn start_secured(certs: &Path) -> (RedisServer, u16) {
        let port = super::cluster::repl_addr().port();
        let tls_port = super::cluster::repl_addr().port();
        let c = |f: &str| certs.join(f).display().to_string();
        let extra: Vec<String> = [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &c("localhost.crt"),
            "--tls-key-file",
            &c("localhost.key"),
            "--tls-ca-cert-file",
            &c("ca.crt"),
            "--tls-auth-clients",
            "no",
            "--user",
            "tether",
            "on",
            ">s3cret",
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut r = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            appendonly: false,
            replica_of: None,
            extra,
            url: format!("redis://tether:s3cret@127.0.0.1:{port}/"),
        };
        r.spawn();
        (r, tls_port)
    }

    /// Starts a replica of `primary` (no persistence) and waits until its link to the primary is up.
    pub fn replica_of(primary: &RedisServer) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: super::cluster::repl_addr().port(),
            dir: tempfile::tempdir().unwrap(),
            appendonly: false,
            replica_of: Some(primary.address()),
            extra: Vec::new(),
            url: String::new(),
        };
        r.url = format!("redis://127.0.0.1:{}/", r.port);
        r.spawn();
        wait_until("the replica in sync with its primary", || {
            r.info("replication").contains("master_link_status:up")
        });
        r
    }

    /// Three servers made one Redis Cluster (`cluster-enabled yes`, no replicas; `redis-cli --cluster
    /// create` gives them the slots in thirds, in order), once every one reports `cluster_state:ok`.
    pub fn cluster_of_three() -> Vec<RedisServer> {
        let servers: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = super::cluster::repl_addr().port();
                let mut r = RedisServer {
                    child: None,
                    port,
                    dir: tempfile::tempdir().unwrap(),
                    appendonly: false,
                    replica_of: None,
                    // The cluster bus on a port of its own (by default port + 10000, which may
                    // be taken: the ephemeral range starts at 32768).
                    extra: [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-port",
                        &super::cluster::repl_addr().port().to_string(),
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                    url: format!("redis://127.0.0.1:{port}/"),
                };
                r.spawn();
                r
            })
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(servers.iter().map(|s| s.address()))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli (package redis-tools, with redis-server; scripts/test installs it)");
        assert!(status.success(), "redis-cli --cluster create failed");
        for s in &servers {
            wait_until("cluster_state:ok", || {
                let info: String = s
                    .connection()
                    .and_then(|mut c| ::redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok())
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
            });
        }
        servers
    }

    /// The cluster slot of `key` (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        let mut c = self.connection().expect("reachable");
        ::redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .unwrap()
    }

    /// `INFO section`.
    pub fn info(&self, section: &str) -> String {
        self.connection()
            .and_then(|mut c| ::redis::cmd("INFO").arg(section).query(&mut c).ok())
            .unwrap_or_default()
    }

    /// Makes a replica the primary (`REPLICAOF NO ONE`), as a failover does.
    pub fn promote(&mut self) {
        let mut c = self.connection().expect("replica reachable");
        let _: String = ::redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query(&mut c)
            .unwrap();
        self.replica_of = None;
    }

    /// Kills the server with SIGKILL (no chance to write anything out).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `host:port` for `[store] addresses`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let program =
            std::env::var("TETHER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut command = Command::new(&program);
        if let Some(primary) = &self.replica_of {
            let (host, port) = primary.rsplit_once(':').unwrap();
            command.args(["--replicaof", host, port]);
        }
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {program:?} ({e}): the Redis backend's tests need redis-server \
                     (Debian package redis-server); scripts/test installs it"
                )
            });
        self.child = Some(child);
        wait_until("redis-server answering PING", || self.ping());
    }

    /// Whether the server answers `PING`.
    pub fn ping(&self) -> bool {
        self.connection()
            .and_then(|mut c| ::redis::cmd("PING").query::<String>(&mut c).ok())
            .is_some_and(|p| p == "PONG")
    }

    /// A connection for the test's own look at the server.
    pub fn connection(&self) -> Option<::redis::Connection> {
        ::redis::Client::open(self.url.as_str())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()
    }

    /// Keys whose name matches `pattern`.
    pub fn keys(&self, pattern: &str) -> usize {
        let mut c = self.connection().expect("redis-server reachable");
        ::redis::cmd("KEYS")
            .arg(pattern)
            .query::<Vec<String>>(&mut c)
            .unwrap()
            .len()
    }

    /// Stops the server as an operator would (SIGTERM: it writes out its append-only file) and waits.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let mut child = child;
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A config path helper: a file in the server's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
