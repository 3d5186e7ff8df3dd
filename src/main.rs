//! The `tether` command: run, check, demo, certs, users, ctl.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tether::auth::password::{self, PasswordRules};
use tether::auth::users::{self, UsersFile};
use tether::config;
use tether::runtime::{RunOptions, Server};

const EXAMPLES: &str = "\
Examples:
  tether demo                          three built-in backends behind a balancer on 127.0.0.1:8080
  tether run -c configs/basic.toml     run with a config file
  tether run -c tether.toml --workers 1
  tether check -c tether.toml          validate a config (exit 1 and every error on a bad one)
  tether users add users.toml alice --role user   add a user (prompts for the password)

Signals: SIGHUP reloads the config file, SIGTERM/SIGINT stop gracefully (twice: at once),
SIGUSR1 logs the request, backend, QoS, TLS and session counters. TETHER_LOG=debug for more logging.";

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "A userspace HTTP load balancer that keeps each client tethered to the server holding its state",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer with a config file.
    #[command(after_help = "Example:\n  tether run -c configs/basic.toml --workers 2")]
    Run {
        /// Config file (TOML; see docs/CONFIG.md).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads (overrides `[workers] count`).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
    },
    /// Validate a config file: exit 0 if it is good, else print every error (file:line: key: message) and
    /// exit 1.
    #[command(after_help = "Example:\n  tether check -c configs/full.toml")]
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start three built-in backends on loopback and a balancer in front of them; or, with `--cluster`,
    /// the three-node example of configs/cluster/ in front of a built-in webmail. Ctrl-C stops all.
    #[command(
        after_help = "Examples:\n  tether demo\n  curl -i http://127.0.0.1:8080/\n  \
                            tether demo --tls   # also HTTPS on 127.0.0.1:8443 with a development CA\n  \
                            tether demo --cluster   # three nodes, a webmail, and a tour\n  \
                            tether demo kill a      # (another terminal) SIGKILL node a of the demo cluster\n  \
                            tether demo restart a",
        args_conflicts_with_subcommands = true
    )]
    Demo {
        /// Run the three-node cluster of configs/cluster/ (child processes) in front of a built-in webmail.
        #[arg(long)]
        cluster: bool,
        /// With --cluster: leave out [cluster], so the nodes share nothing (what a balancer without
        /// continuity loses, for comparison).
        #[arg(long, requires = "cluster")]
        no_replication: bool,
        #[command(subcommand)]
        action: Option<DemoAction>,
        /// Worker threads (default: one per core).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
        /// Address the balancer listens on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Also terminate TLS, with development certificates generated for the run.
        #[arg(long)]
        tls: bool,
        /// Address of the TLS listener (with --tls).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
        tls_listen: String,
    },
    /// Generate development certificates: a CA, a `localhost` server certificate, a backend certificate
    /// and a client certificate; or, with `cluster`, a cluster CA and one certificate per node for the
    /// replication links (never for production).
    #[command(
        after_help = "Examples:\n  tether certs --out configs/certs\n  \
                      tether certs cluster --nodes a,b,c --out configs/cluster/certs",
        args_conflicts_with_subcommands = true
    )]
    Certs {
        /// Directory to write the PEM files into (created if missing).
        #[arg(long, value_name = "DIR", required = true)]
        out: Option<PathBuf>,
        #[command(subcommand)]
        kind: Option<CertsKind>,
    },
    /// Manage a users file (a pool of users with argon2id password hashes, roles and groups).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Registered client applications (single sign-on, docs/AUTH.md "Single sign-on").
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Operate a running balancer through its admin API (docs/ADMIN.md): tables for people, `--json` for
    /// scripts.
    #[command(after_help = "Examples:\n  \
        export TETHER_ADMIN=127.0.0.1:9181 TETHER_ADMIN_TOKEN=demo-admin-token\n  \
        tether ctl backends\n  tether ctl drain app/127.0.0.1:9001\n  tether ctl cluster --json\n  \
        tether ctl usage demo\n  tether ctl sessions alice\n  tether ctl revoke 0123…cdef\n  tether ctl reload")]
    Ctl(Ctl),
}

/// What `tether demo kill|restart|status` asks a running `tether demo --cluster`.
#[derive(clap::Subcommand)]
enum DemoAction {
    /// Kill a node of the running demo cluster with SIGKILL.
    Kill {
        /// a, b or c
        node: String,
    },
    /// Start a killed node of the running demo cluster again.
    Restart {
        /// a, b or c
        node: String,
    },
    /// Which nodes of the running demo cluster run.
    Status,
}

#[derive(clap::Args)]
struct Ctl {
    /// The admin listener's address (host:port). Default: $TETHER_ADMIN, else 127.0.0.1:9180.
    #[arg(long, value_name = "ADDR", global = true)]
    admin: Option<String>,
    /// The admin token. Default: $TETHER_ADMIN_TOKEN (better: a flag shows in the process list).
    #[arg(long, value_name = "TOKEN", global = true)]
    token: Option<String>,
    /// Print the API's JSON as it comes, for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// HTTPS to the admin listener (`[admin] cert`): the CA bundle its certificate chains to. Default:
    /// $TETHER_ADMIN_CACERT; none: plain HTTP.
    #[arg(long, value_name = "FILE", global = true)]
    cacert: Option<PathBuf>,
    /// The name in the admin listener's certificate. Default: the address's host.
    #[arg(long, value_name = "NAME", global = true)]
    server_name: Option<String>,
    /// Mutual TLS (`[admin] client_ca`): this client's certificate chain and key (PEM). Default:
    /// $TETHER_ADMIN_CERT and $TETHER_ADMIN_KEY.
    #[arg(long, value_name = "FILE", global = true, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", global = true, requires = "cert")]
    key: Option<PathBuf>,
    #[command(subcommand)]
    call: CtlCall,
}

#[derive(Subcommand)]
enum CtlCall {
    /// Every cluster's backends: health, state, in flight, queue, weight, requests.
    Backends,
    /// No new requests to BACKEND (CLUSTER/ADDRESS, or ADDRESS when one cluster lists it); in-flight
    /// ones finish.
    Drain { backend: String },
    /// BACKEND takes requests again.
    Enable { backend: String },
    /// BACKEND takes no requests (maintenance).
    Disable { backend: String },
    /// BACKEND's weight in weighted picks (1–1000), or `config` for the configured one.
    Weight { backend: String, weight: String },
    /// This node's peers: link state, epoch, lag, resyncs.
    Cluster,
    /// Usage of TENANT (every tenant without one) in the current periods.
    Usage { tenant: Option<String> },
    /// The live login sessions of USER.
    Sessions {
        user: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke login session SESSION (32 hex digits, from `ctl sessions`), on every node.
    Revoke { session: String },
    /// No more logins for USER (a users-file user or one added through the API), on every node.
    DisableUser {
        user: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// USER may log in again.
    EnableUser {
        user: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Lift the lockout of an account (`--user`) or a client address (`--address`), on every node.
    LiftLockout {
        #[arg(long, conflicts_with = "address", required_unless_present = "address")]
        user: Option<String>,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Re-read the config file (as SIGHUP); a broken file's errors are printed and the running config
    /// stays.
    Reload,
    /// The uploads in progress (every node's, from the replicated store).
    Uploads,
    /// Cancel upload ID (32 hex digits, from `ctl uploads`) on every node, as a client's DELETE would.
    CancelUpload { id: String },
    /// The TLS certificates the running config names, with their expiry.
    Certs,
    /// Re-read every TLS certificate (a config reload).
    TlsReload,
    /// The running config (secrets masked), as JSON.
    Config,
    /// The Prometheus exposition.
    Metrics,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user to a users file, or set the password, roles and groups of one already there.
    ///
    /// Prompts for the password twice on the terminal (not echoed); refuses a weak one; the file is created if
    /// missing and written atomically with mode 0600.
    #[command(
        after_help = "Examples:\n  tether users add configs/cluster/users.toml alice --role user\n  \
                      echo \"$PASSWORD\" | tether users add users.toml bob --role admin --password-stdin"
    )]
    Add {
        /// Users file (TOML; see docs/CONFIG.md).
        file: PathBuf,
        /// User name (letters, digits, '.', '_', '-', '@').
        name: String,
        /// A role of the user (repeat for more).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// A group of the user (repeat for more).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Read the password from the first line of standard input instead of prompting (for scripts).
        #[arg(long)]
        password_stdin: bool,
        /// Accept a password the rules refuse (shorter than 8 characters, the user name, a common password).
        #[arg(long)]
        allow_weak: bool,
    },
    /// Validate a users file: print the number of users, or every error (file:line: key: message) and exit 1.
    Check {
        /// Users file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Make a client secret and its argon2id hash: the secret goes to the application, the hash into
    /// `[[pools.NAME.clients]] secret_hash`; tether never stores the secret itself.
    #[command(
        after_help = "Examples:\n  tether clients secret\n  echo \"$SECRET\" | tether clients secret --secret-stdin"
    )]
    Secret {
        /// Hash the secret on the first line of standard input instead of making a random one.
        #[arg(long)]
        secret_stdin: bool,
    },
}

#[derive(Subcommand)]
enum CertsKind {
    /// A cluster CA (`ca.crt`, `ca.key`) and a certificate per node (`NODE.crt`, `NODE.key`), each valid
    /// as both ends of a mutually authenticated replication link.
    Cluster {
        /// Node names, comma-separated (letters, digits, '.', '_', '-').
        #[arg(long, value_name = "A,B,C", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Directory to write the PEM files into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    tether::logging::init(log::LevelFilter::Info);
    tether::fault_injection::init_from_env();
    let cli = Cli::parse();
    match cli.command {
        Command::Ctl(c) => ctl(c),
        Command::Check { config } => check(&config),
        Command::Run { config, workers } => {
            let cfg = match config::load_file(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            let options = RunOptions {
                config_path: Some(config),
                workers: workers.map(usize::from),
            };
            serve(cfg, options)
        }
        Command::Certs { out, kind } => match match (kind, out) {
            (Some(CertsKind::Cluster { nodes, out }), _) => {
                tether::tls::generate::write_cluster_certs(&out, &nodes)
            }
            (None, Some(out)) => tether::tls::generate::write_dev_certs(&out),
            (None, None) => Err("--out DIR is required".into()),
        } {
            Ok(written) => {
                for f in written.files {
                    println!("wrote {}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tether certs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Users(UsersCommand::Check { file }) => users_check(&file),
        Command::Clients(ClientsCommand::Secret { secret_stdin }) => {
            match client_secret(secret_stdin) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tether clients secret: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Users(UsersCommand::Add {
            file,
            name,
            roles,
            groups,
            password_stdin,
            allow_weak,
        }) => match users_add(&file, &name, &roles, &groups, password_stdin, allow_weak) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tether users add: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo {
            action: Some(action),
            ..
        } => {
            let command = match action {
                DemoAction::Kill { node } => format!("kill {node}"),
                DemoAction::Restart { node } => format!("restart {node}"),
                DemoAction::Status => "status".into(),
            };
            match tether::demo::cluster::control(&command) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tether demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo {
            cluster: true,
            no_replication,
            ..
        } => match tether::demo::cluster::run(!no_replication) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tether demo --cluster: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo {
            workers,
            listen,
            tls,
            tls_listen,
            ..
        } => {
            let tls_listen = tls.then_some(tls_listen.as_str());
            let (cfg, backends) = match tether::demo::start(&listen, tls_listen) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tether demo: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let options = RunOptions {
                config_path: None,
                workers: workers.map(usize::from),
            };
            let server = match Server::start(cfg, options) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("cannot start: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tether::demo::print_banner(&server.addresses, &backends, &server.snapshot());
            wait(server)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load_file(path) {
        Ok(c) => {
            let backends: usize = c.clusters.values().map(|c| c.backends.len()).sum();
            println!(
                "{}: ok ({} listener(s), {} cluster(s), {} backend(s), {} route(s))",
                path.display(),
                c.listeners.len(),
                c.clusters.len(),
                backends,
                c.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// `tether clients secret`: a random secret (32 bytes, base64url) or one read from standard input, and
/// its argon2id hash as a config line.
fn client_secret(from_stdin: bool) -> Result<String, String> {
    use base64::Engine;
    let (secret, shown) = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the secret from standard input: {e}"))?;
        let secret = line.trim_end_matches(['\r', '\n']).to_string();
        if secret.len() < 16 {
            return Err("a client secret must have at least 16 characters".into());
        }
        (secret, false)
    } else {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no system randomness".to_string())?;
        (
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
            true,
        )
    };
    let hash = tether::auth::password::hash(&secret).map_err(|e| e.to_string())?;
    let mut out = String::new();
    if shown {
        out.push_str(&format!(
            "# the client secret (give it to the application; it is shown once and never stored):\n# {secret}\n"
        ));
    }
    out.push_str(&format!("secret_hash = \"{hash}\"\n"));
    Ok(out)
}

fn users_check(path: &std::path::Path) -> ExitCode {
    match UsersFile::load(path) {
        Ok(f) => {
            println!("{}: ok ({} user(s))", path.display(), f.users.len());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// `tether users add`: the line to print on success, or a one-line reason. Neither holds the password or hash.
fn users_add(
    path: &std::path::Path,
    name: &str,
    roles: &[String],
    groups: &[String],
    password_stdin: bool,
    allow_weak: bool,
) -> Result<String, String> {
    // Everything that can be refused without the password is refused before asking for it.
    users::check_name(name).map_err(|m| format!("invalid user name: {m}"))?;
    let mut file = if path.exists() {
        UsersFile::load(path).map_err(|errors| errors.to_string())?
    } else {
        UsersFile::default()
    };
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        let trimmed = line.strip_suffix('\n').unwrap_or(&line);
        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string()
    } else {
        let no_tty = |e: std::io::Error| {
            format!(
                "cannot prompt for a password ({e}); use --password-stdin to read it from standard input"
            )
        };
        let first = rpassword::prompt_password(format!("Password for {name}: ")).map_err(no_tty)?;
        let second = rpassword::prompt_password("Again: ").map_err(no_tty)?;
        if first != second {
            return Err("the passwords differ".to_string());
        }
        first
    };
    if password.is_empty() {
        return Err("empty password".to_string());
    }
    if !allow_weak {
        PasswordRules::default()
            .check(&password, name)
            .map_err(|e| format!("{e} (--allow-weak accepts it)"))?;
    }
    let hash = password::hash(&password).map_err(|e| e.to_string())?;
    let replaced = file.add_or_replace(name, &hash, roles, groups)?;
    file.save(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let list = |l: &[String]| {
        if l.is_empty() {
            "none".to_string()
        } else {
            l.join(",")
        }
    };
    Ok(format!(
        "{} user {name} in {} (roles: {}; groups: {})",
        if replaced { "updated" } else { "added" },
        path.display(),
        list(roles),
        list(groups)
    ))
}

fn serve(cfg: config::Config, options: RunOptions) -> ExitCode {
    let server = match Server::start(cfg, options) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    wait(server)
}

fn wait(server: Server) -> ExitCode {
    match server.serve() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `tether ctl`: one admin API call, its answer as a table (or JSON with `--json`); exit 1 on an error.
fn ctl(c: Ctl) -> ExitCode {
    use tether::admin::client::{Client, table};
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(token) = c.token.or_else(|| env("TETHER_ADMIN_TOKEN")) else {
        eprintln!("error: no admin token: pass --token or set TETHER_ADMIN_TOKEN");
        return ExitCode::from(2);
    };
    let path_env = |name: &str| env(name).map(PathBuf::from);
    let tls = c
        .cacert
        .or_else(|| path_env("TETHER_ADMIN_CACERT"))
        .map(|cacert| tether::admin::client::TlsOptions {
            cacert,
            server_name: c.server_name.clone(),
            cert: match (
                c.cert.or_else(|| path_env("TETHER_ADMIN_CERT")),
                c.key.or_else(|| path_env("TETHER_ADMIN_KEY")),
            ) {
                (Some(cert), Some(key)) => Some((cert, key)),
                _ => None,
            },
        });
    let client = Client {
        address: c
            .admin
            .or_else(|| env("TETHER_ADMIN"))
            .unwrap_or_else(|| "127.0.0.1:9180".into()),
        token,
        tls,
    };
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let backend_path = |backend: &str, action: &str| -> Result<String, String> {
        if let Some((cluster, address)) = backend.split_once('/') {
            return Ok(format!(
                "/api/backends/{}/{}/{action}",
                enc(cluster),
                enc(address)
            ));
        }
        // An address alone: the cluster that lists it, when only one does.
        let list = client
            .call("GET", "/api/backends", None)
            .map_err(|e| e.to_string())?
            .json();
        let clusters: Vec<String> = list["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|b| b["address"] == backend)
            })
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        match clusters.as_slice() {
            [one] => Ok(format!(
                "/api/backends/{}/{}/{action}",
                enc(one),
                enc(backend)
            )),
            [] => Err(format!("no cluster lists backend {backend}")),
            _ => Err(format!(
                "backend {backend} is in clusters {}: name one as CLUSTER/{backend}",
                clusters.join(", ")
            )),
        }
    };
    let (method, path, body) = match &c.call {
        CtlCall::Backends => ("GET", "/api/backends".to_string(), None),
        CtlCall::Drain { backend } | CtlCall::Enable { backend } | CtlCall::Disable { backend } => {
            let action = match c.call {
                CtlCall::Drain { .. } => "drain",
                CtlCall::Enable { .. } => "enable",
                _ => "disable",
            };
            match backend_path(backend, action) {
                Ok(p) => ("POST", p, None),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        CtlCall::Weight { backend, weight } => {
            let value = if weight == "config" {
                "null".to_string()
            } else {
                match weight.parse::<u32>() {
                    Ok(w) => w.to_string(),
                    Err(_) => {
                        eprintln!("error: a weight is a number (1 to 1000) or `config`");
                        return ExitCode::from(2);
                    }
                }
            };
            match backend_path(backend, "weight") {
                Ok(p) => ("POST", p, Some(format!("{{\"weight\":{value}}}"))),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        CtlCall::Cluster => ("GET", "/api/cluster".into(), None),
        CtlCall::Usage { tenant } => (
            "GET",
            match tenant {
                Some(t) => format!("/api/usage?tenant={}", enc(t)),
                None => "/api/usage".into(),
            },
            None,
        ),
        CtlCall::Sessions { user, tenant } => (
            "GET",
            match tenant {
                Some(t) => format!("/api/logins?user={}&tenant={}", enc(user), enc(t)),
                None => format!("/api/logins?user={}", enc(user)),
            },
            None,
        ),
        CtlCall::Revoke { session } => ("DELETE", format!("/api/logins/{}", enc(session)), None),
        CtlCall::DisableUser { user, tenant } | CtlCall::EnableUser { user, tenant } => {
            let verb = if matches!(c.call, CtlCall::DisableUser { .. }) {
                "disable"
            } else {
                "enable"
            };
            let query = tenant
                .as_ref()
                .map(|t| format!("?tenant={}", enc(t)))
                .unwrap_or_default();
            (
                "POST",
                format!("/api/users/{}/{verb}{query}", enc(user)),
                None,
            )
        }
        CtlCall::LiftLockout {
            user,
            address,
            tenant,
        } => {
            let body = match (user, address) {
                (Some(u), _) => serde_json::json!({ "user": u, "tenant": tenant }),
                (None, a) => serde_json::json!({ "address": a }),
            };
            ("POST", "/api/lockout/lift".into(), Some(body.to_string()))
        }
        CtlCall::Reload => ("POST", "/api/config/reload".into(), None),
        CtlCall::Uploads => ("GET", "/api/uploads".into(), None),
        CtlCall::CancelUpload { id } => ("DELETE", format!("/api/uploads/{}", enc(id)), None),
        CtlCall::Certs => ("GET", "/api/tls/certificates".into(), None),
        CtlCall::TlsReload => ("POST", "/api/tls/reload".into(), None),
        CtlCall::Config => ("GET", "/api/config".into(), None),
        CtlCall::Metrics => ("GET", "/metrics".into(), None),
    };
    let answer = match client.call(method, &path, body.as_deref()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let v = answer.json();
    if !(200..300).contains(&answer.status) {
        if c.json {
            println!("{}", answer.text().trim_end());
        }
        eprintln!(
            "error: {} {}",
            answer.status,
            v["message"].as_str().unwrap_or(answer.text().trim_end())
        );
        for e in v["errors"].as_array().into_iter().flatten() {
            eprintln!(
                "  {}:{}: {}: {}",
                e["file"].as_str().unwrap_or(""),
                e["line"],
                e["key"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            );
        }
        return ExitCode::FAILURE;
    }
    if c.json || matches!(c.call, CtlCall::Metrics | CtlCall::Config) {
        let text = answer.text();
        println!("{}", text.trim_end());
        return ExitCode::SUCCESS;
    }
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        v => v.to_string(),
    };
    let backend_row = |cluster: &str, b: &serde_json::Value| -> Vec<String> {
        let mut row = vec![cluster.to_string()];
        row.extend(
            [
                "address",
                "health",
                "state",
                "in_flight",
                "queue",
                "weight",
                "requests",
            ]
            .iter()
            .map(|k| s(&b[*k])),
        );
        row
    };
    let header = [
        "CLUSTER",
        "BACKEND",
        "HEALTH",
        "STATE",
        "IN FLIGHT",
        "QUEUE",
        "WEIGHT",
        "REQUESTS",
    ];
    let out = match &c.call {
        CtlCall::Backends => {
            let mut rows = Vec::new();
            for cl in v["clusters"].as_array().into_iter().flatten() {
                let name = s(&cl["name"]);
                for b in cl["backends"].as_array().into_iter().flatten() {
                    rows.push(backend_row(&name, b));
                }
            }
            table(&header, &rows)
        }
        CtlCall::Drain { .. }
        | CtlCall::Enable { .. }
        | CtlCall::Disable { .. }
        | CtlCall::Weight { .. } => {
            table(&header, &[backend_row(&s(&v["cluster"]), &v["backend"])])
        }
        CtlCall::Cluster => {
            let rows: Vec<Vec<String>> = v["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    [
                        "name",
                        "address",
                        "state",
                        "epoch",
                        "lag_records",
                        "lag_ms",
                        "resyncs_in",
                        "resyncs_out",
                    ]
                    .iter()
                    .map(|k| s(&p[*k]))
                    .collect()
                })
                .collect();
            format!(
                "node {} ({} records)\n{}",
                s(&v["node"]),
                s(&v["records"]),
                table(
                    &[
                        "PEER",
                        "ADDRESS",
                        "LINK",
                        "EPOCH",
                        "LAG RECORDS",
                        "LAG MS",
                        "RESYNCS IN",
                        "RESYNCS OUT"
                    ],
                    &rows
                )
            )
        }
        CtlCall::Usage { .. } => {
            let mut rows = Vec::new();
            for (tenant, periods) in v["tenants"].as_object().into_iter().flatten() {
                for (period, figures) in periods.as_object().into_iter().flatten() {
                    for (metric, value) in figures.as_object().into_iter().flatten() {
                        if metric != "start" {
                            rows.push(vec![
                                tenant.clone(),
                                format!("{period} {}", s(&figures["start"])),
                                metric.clone(),
                                s(value),
                            ]);
                        }
                    }
                }
            }
            table(&["TENANT", "PERIOD", "METRIC", "VALUE"], &rows)
        }
        CtlCall::Sessions { .. } => {
            let rows: Vec<Vec<String>> = v["sessions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    ["session", "created", "last_seen", "expires"]
                        .iter()
                        .map(|k| s(&x[*k]))
                        .collect()
                })
                .collect();
            table(&["SESSION", "CREATED", "LAST SEEN", "EXPIRES"], &rows)
        }
        CtlCall::Revoke { .. } => format!("revoked {} session(s)\n", s(&v["revoked"])),
        CtlCall::DisableUser { .. } | CtlCall::EnableUser { .. } => {
            let state = if v["disabled"] == true {
                "disabled"
            } else {
                "enabled"
            };
            format!("user {} of {}: {state}\n", s(&v["user"]), s(&v["tenant"]))
        }
        CtlCall::LiftLockout { .. } => format!("lockout lifted: {}\n", v["lifted"]),
        CtlCall::Reload | CtlCall::TlsReload => {
            format!("reloaded: generation {}\n", s(&v["generation"]))
        }
        CtlCall::Uploads => {
            let rows: Vec<Vec<String>> = v["uploads"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| {
                    [
                        "id", "protocol", "user", "route", "offset", "length", "expires",
                    ]
                    .iter()
                    .map(|k| s(&u[*k]))
                    .collect()
                })
                .collect();
            table(
                &[
                    "UPLOAD", "PROTOCOL", "USER", "ROUTE", "OFFSET", "LENGTH", "EXPIRES",
                ],
                &rows,
            )
        }
        CtlCall::CancelUpload { .. } => format!(
            "cancelled upload {} at offset {}\n",
            s(&v["cancelled"]),
            s(&v["offset"])
        ),
        CtlCall::Certs => {
            let rows: Vec<Vec<String>> = v["certificates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let names: Vec<String> =
                        c["names"].as_array().into_iter().flatten().map(s).collect();
                    let expires = match &c["error"] {
                        serde_json::Value::String(e) => format!("error: {e}"),
                        _ => format!("{} days", s(&c["days_left"])),
                    };
                    vec![s(&c["used_by"]), names.join(","), expires, s(&c["file"])]
                })
                .collect();
            table(&["USED BY", "NAMES", "EXPIRES IN", "FILE"], &rows)
        }
        CtlCall::Metrics | CtlCall::Config => String::new(),
    };
    print!("{out}");
    ExitCode::SUCCESS
}
