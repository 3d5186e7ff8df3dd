//! tether-bench: the HTTP/1.1 load generator shipped with tether.
//!
//! See README.md for usage, modes, the JSON fields and the scenario format.

mod cli;
mod cookie;
mod failover;
mod parser;
mod request;
mod sched;
mod stats;
mod tls;
mod worker;

use std::io::{IsTerminal, Write};
use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser as _;

use crate::cli::Args;
use crate::request::{RequestSpec, Template};
use crate::stats::{Progress, RunInfo, Stats};

fn main() -> ExitCode {
    // `tether-bench failover …`: the mail failover scenario (issue #19), its own flags.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("failover") {
        return failover::main(argv[1..].to_vec());
    }
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if args.connections < args.threads {
        return Err(format!(
            "--connections ({}) must be at least --threads ({})",
            args.connections, args.threads
        ));
    }
    if args.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    if args.timeout.is_zero() {
        return Err("--timeout must be positive".into());
    }
    let url = cli::parse_url(&args.url)?;
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{} resolved to no address", url.host))?;

    let extra = args
        .headers
        .iter()
        .map(|h| request::parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let specs = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
            request::parse_scenario(&text).map_err(|e| format!("{path}: {e}"))?
        }
        None => vec![RequestSpec {
            method: args.method.clone(),
            path: url.path.clone(),
            headers: Vec::new(),
            body_size: args.body.as_ref().map_or(args.body_size, String::len),
            weight: 1,
        }],
    };
    if !specs[0].method.bytes().all(|b| b.is_ascii_graphic()) || specs[0].method.is_empty() {
        return Err(format!("invalid method {:?}", specs[0].method));
    }
    let host = url.host_header();
    let mut templates: Vec<Template> = specs
        .iter()
        .map(|s| Template::build(s, &host, &extra, args.new_conn))
        .collect();
    if let Some(body) = &args.body {
        // The generated body of the same length, replaced by the text given (after the blank line).
        for t in &mut templates {
            t.tail.truncate(2);
            t.tail.extend_from_slice(body.as_bytes());
        }
    }
    let weights: Vec<u32> = specs.iter().map(|s| s.weight).collect();
    let sequence = request::weighted_sequence(&weights);

    let tls = if url.tls {
        let cfg = tls::client_config(&tls::TlsOptions {
            cacert: args.cacert.as_deref(),
            insecure: args.insecure,
            resume: !args.no_resume,
            connections: args.connections,
            version: args.tls_version.as_deref(),
            groups: &args.tls_groups,
            ciphers: &args.tls_ciphers,
        })?;
        let name = tls::server_name(args.sni.as_deref().unwrap_or(&url.host))?;
        Some((cfg, name))
    } else {
        None
    };

    let warmup_ns = args.warmup.as_nanos() as u64;
    let duration_ns = args.duration.as_nanos() as u64;
    let cfg = Arc::new(worker::Config {
        addr,
        templates,
        sequence,
        tls,
        tls_resume: !args.no_resume,
        pipeline: if args.new_conn {
            1
        } else {
            args.pipeline as usize
        },
        new_conn: args.new_conn,
        bind: args.bind,
        sessions: args.sessions,
        timeout_ns: args.timeout.as_nanos() as u64,
        warmup_end_ns: warmup_ns,
        end_ns: warmup_ns + duration_ns,
        rate: args.rate,
        threads: args.threads,
    });

    let info = RunInfo {
        url: args.url.clone(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        threads: args.threads,
        connections: args.connections,
        pipeline: cfg.pipeline,
        new_conn: args.new_conn,
        sessions: args.sessions,
        rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        timeout_s: args.timeout.as_secs_f64(),
    };

    let t0 = Instant::now();
    let mut handles = Vec::new();
    let mut progress = Vec::new();
    for i in 0..args.threads {
        let n = args.connections / args.threads + usize::from(i < args.connections % args.threads);
        let p = Arc::new(Progress::default());
        progress.push(p.clone());
        let cfg = cfg.clone();
        let h = std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || worker::run(cfg, i, n, t0, p))
            .map_err(|e| format!("spawning thread: {e}"))?;
        handles.push(h);
    }

    let live = !args.quiet && std::io::stderr().is_terminal();
    watch(&handles, &progress, t0, args.warmup, live);

    let mut total = Stats::default();
    for h in handles {
        let s = h
            .join()
            .map_err(|_| "a worker thread panicked".to_string())?
            .map_err(|e| format!("event loop: {e}"))?;
        total.merge(&s);
    }

    let report = stats::build_report(info, &total, url.tls);
    if let Some(path) = &args.hgrm {
        std::fs::write(path, stats::hgrm(&total.hist))
            .map_err(|e| format!("writing {path}: {e}"))?;
    }
    let mut out = std::io::stdout().lock();
    let text = if args.json {
        serde_json::to_string_pretty(&report).expect("report serializes") + "\n"
    } else {
        stats::text_report(&report)
    };
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| format!("writing report: {e}"))?;
    Ok(())
}

/// Wait for the workers; once per second print a progress line if `live`.
fn watch(
    handles: &[std::thread::JoinHandle<std::io::Result<Stats>>],
    progress: &[Arc<Progress>],
    t0: Instant,
    warmup: Duration,
    live: bool,
) {
    let sum = |f: fn(&Progress) -> u64| progress.iter().map(|p| f(p)).sum::<u64>();
    let mut last = (0u64, 0u64);
    let mut next = Duration::from_secs(1);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        let el = t0.elapsed();
        if !live || el < next {
            continue;
        }
        next += Duration::from_secs(1);
        let req = sum(|p| p.requests.load(Ordering::Relaxed));
        let bytes = sum(|p| p.bytes.load(Ordering::Relaxed));
        let errs = sum(|p| p.errors.load(Ordering::Relaxed));
        let phase = if el < warmup { " (warm-up)" } else { "" };
        eprint!(
            "\r\x1b[K[{:>5.1}s] {:>9} req/s  {:>12}/s  errors {}{}",
            el.as_secs_f64(),
            req - last.0,
            stats::human_bytes((bytes - last.1) as f64),
            errs,
            phase
        );
        last = (req, bytes);
    }
    if live {
        eprint!("\r\x1b[K");
    }
}
