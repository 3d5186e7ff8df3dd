//! The `tether` command: run, check, demo.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tether::config;
use tether::runtime::{RunOptions, Server};

const EXAMPLES: &str = "\
Examples:
  tether demo                          three built-in backends behind a balancer on 127.0.0.1:8080
  tether run -c configs/basic.toml     run with a config file
  tether run -c tether.toml --workers 1
  tether check -c tether.toml          validate a config (exit 1 and every error on a bad one)

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
