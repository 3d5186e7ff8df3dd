//! The `tether` command: run, check, demo, certs, users.

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
    /// Start three built-in backends on loopback and a balancer in front of them. Ctrl-C stops all.
    #[command(
        after_help = "Example:\n  tether demo\n  curl -i http://127.0.0.1:8080/\n  \
                            tether demo --tls   # also HTTPS on 127.0.0.1:8443 with a development CA"
    )]
    Demo {
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
            workers,
            listen,
            tls,
            tls_listen,
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
