//! The runtime: worker threads, listening sockets, timers, buffers, and the main thread that handles
//! signals (reload, stop) and publishes config snapshots.

pub mod buffer;
pub mod listener;
pub mod snapshot;
pub mod timer;
pub mod worker;

use crate::access_log::AccessLog;
use crate::balance::BackendRegistry;
use crate::config::{self, Config};
use crate::proxy::context::{Ctx, ListenerInfo};
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, select, unbounded};
use mio::{Poll, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use snapshot::{ConfigSnapshot, SharedSnapshot};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;
use worker::{Command, Worker, WorkerSettings};

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {name}: cannot listen on {address}: {source}")]
    Listen {
        name: String,
        address: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How the balancer was started, for reloads and logs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Config file to re-read on SIGHUP (`None`: embedded config, nothing to reload).
    pub config_path: Option<PathBuf>,
    /// Overrides `[workers] count`.
    pub workers: Option<usize>,
}

struct WorkerHandle {
    commands: Sender<Command>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
}

/// A running balancer: its workers, the published snapshot and the state reloads need.
pub struct Server {
    workers: Vec<WorkerHandle>,
    shared: SharedSnapshot,
    registry: BackendRegistry,
    config: Config,
    options: RunOptions,
    generation: u64,
    /// Where each listener ended up (port 0 resolved), in config order.
    pub addresses: Vec<SocketAddr>,
    exits: Receiver<usize>,
    access_log: Option<(AccessLog, JoinHandle<()>)>,
    /// Signal handling, set up before the workers accept anything: it needs descriptors, and a flood of
    /// clients must not be able to take the last ones first.
    signals: Option<signal_hook::iterator::Signals>,
}

/// The signals the main thread handles: stop (twice: at once), reload, report.
const STOP_RELOAD_REPORT: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGUSR1];

/// Sends the worker's index when its thread ends, however it ends (a panic included).
struct ExitNotice(usize, Sender<usize>);

impl Drop for ExitNotice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            log::error!("worker {} panicked; stopping the balancer", self.0);
        }
        let _ = self.1.send(self.0);
    }
}

impl Server {
    /// Binds every listener and starts the workers.
    pub fn start(config: Config, options: RunOptions) -> Result<Server, StartError> {
        raise_open_file_limit();
        let signals = Some(signal_hook::iterator::Signals::new(STOP_RELOAD_REPORT)?);
        let count = options
            .workers
            .unwrap_or_else(|| config.workers.count.resolve())
            .max(1);
        let mut registry = BackendRegistry::default();
        let snapshot = Arc::new(ConfigSnapshot::build(&config, 1, &mut registry));
        let shared: SharedSnapshot = Arc::new(ArcSwap::new(Arc::clone(&snapshot)));

        // Bind everything before starting anything, so a busy port fails the start cleanly.
        let mut per_worker: Vec<Vec<std::net::TcpListener>> =
            (0..count).map(|_| Vec::new()).collect();
        let mut addresses = Vec::new();
        let mut infos = Vec::new();
        for l in &config.listeners {
            let name = l.name.clone().unwrap_or_else(|| l.address.clone());
            let address: SocketAddr = l.address.parse().map_err(|_| StartError::Listen {
                name: name.clone(),
                address: l.address.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an ip:port"),
            })?;
            let (bound, sockets) =
                listener::bind_all(address, l.backlog, count).map_err(|e| StartError::Listen {
                    name: name.clone(),
                    address: l.address.clone(),
                    source: e,
                })?;
            for (w, s) in sockets.into_iter().enumerate() {
                per_worker[w].push(s);
            }
            addresses.push(bound);
            infos.push(ListenerInfo {
                name,
                trust_forwarded: l.trust_forwarded,
                proto: "http",
            });
        }

        let access_log = if config.access_log.enabled {
            Some(AccessLog::start(&config.access_log)?)
        } else {
            None
        };

        let (exit_tx, exits) = unbounded();
        let mut workers = Vec::with_capacity(count);
        let settings = WorkerSettings {
            max_connections: config.workers.max_connections,
            accept_batch: config.workers.accept_batch,
        };
        for (index, listeners) in per_worker.into_iter().enumerate() {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), worker::WAKER)?;
            let (tx, rx) = unbounded();
            let cx = Ctx::new(
                index,
                poll.registry().try_clone()?,
                Arc::clone(&snapshot),
                config.workers.buffer_size,
                config.workers.max_connections,
                config.workers.upstream_idle_pool,
                access_log.as_ref().map(|(log, _)| log.clone()),
                infos.clone(),
            );
            let w = Worker::new(
                poll,
                listeners,
                cx,
                settings.clone(),
                rx,
                Arc::clone(&shared),
            )?;
            let pin = (!config.workers.pin_cpus.is_empty())
                .then(|| config.workers.pin_cpus[index % config.workers.pin_cpus.len()]);
            let notice_tx = exit_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    let _notice = ExitNotice(index, notice_tx);
                    if let Some(cpu) = pin {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                            log::warn!("worker {index}: could not pin to CPU {cpu}");
                        }
                    }
                    w.run();
                })?;
            workers.push(WorkerHandle {
                commands: tx,
                waker,
                thread: Some(thread),
            });
        }
        for (addr, info) in addresses.iter().zip(&infos) {
            log::info!(
                "listening on http://{addr} (listener {}, {count} worker{})",
                info.name,
                if count == 1 { "" } else { "s" }
            );
        }
        Ok(Server {
            workers,
            shared,
            registry,
            config,
            options,
            generation: 1,
            addresses,
            exits,
            access_log,
            signals,
        })
    }

    /// Re-reads the config file and publishes it; a file with errors is refused and the running config
    /// stays.
    pub fn reload(&mut self) {
        let Some(path) = self.options.config_path.clone() else {
            log::warn!("reload: running on an embedded config, nothing to re-read");
            return;
        };
        let new = match config::load_file(&path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("reload: {e}");
                }
                log::error!(
                    "reload refused ({} error{}); the running configuration stays",
                    errors.0.len(),
                    if errors.0.len() == 1 { "" } else { "s" }
                );
                return;
            }
        };
        for (section, changed) in [
            ("[workers]", new.workers != self.config.workers),
            ("[[listeners]]", new.listeners != self.config.listeners),
            ("[access_log]", new.access_log != self.config.access_log),
        ] {
            if changed {
                log::warn!("reload: changes to {section} need a restart and are ignored");
            }
        }
        self.generation += 1;
        let snapshot = ConfigSnapshot::build(&new, self.generation, &mut self.registry);
        let backends: usize = snapshot.clusters.iter().map(|c| c.backends.len()).sum();
        log::info!(
            "reloaded {} (generation {}): {} cluster(s), {} backend(s), {} route(s)",
            path.display(),
            self.generation,
            snapshot.clusters.len(),
            backends,
            new.routes.len()
        );
        self.shared.store(Arc::new(snapshot));
        self.config = Config {
            workers: self.config.workers.clone(),
            listeners: self.config.listeners.clone(),
            access_log: self.config.access_log.clone(),
            ..new
        };
    }

    /// Asks every worker to stop accepting and finish within `grace`.
    pub fn shutdown(&self, grace: Duration) {
        for w in &self.workers {
            let _ = w.commands.send(Command::Shutdown { grace });
            let _ = w.waker.wake();
        }
    }

    /// Logs per-backend request counts (SIGUSR1).
    pub fn report(&self) {
        let snapshot = self.shared.load();
        for c in &snapshot.clusters {
            for b in &c.backends {
                log::info!(
                    "stats: cluster {} backend {} {} requests={}",
                    c.name,
                    b.state.address,
                    if b.state.is_up() { "up" } else { "down" },
                    b.state.requests.load(Ordering::Relaxed)
                );
            }
        }
        if let Some((log, _)) = &self.access_log {
            log::info!("stats: access log lines dropped={}", log.dropped());
        }
    }

    /// Handles signals until every worker has stopped. Returns `false` if a worker died unexpectedly.
    pub fn serve(mut self) -> Result<bool, StartError> {
        let (sig_tx, signals) = unbounded();
        let mut source = match self.signals.take() {
            Some(s) => s,
            None => signal_hook::iterator::Signals::new(STOP_RELOAD_REPORT)?,
        };
        let handle = source.handle();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in source.forever() {
                    if sig_tx.send(sig).is_err() {
                        break;
                    }
                }
            })?;
        let grace = self.config.timeouts.shutdown_grace;
        let mut stopping = false;
        let mut healthy = true;
        let mut running = self.workers.len();
        while running > 0 {
            select! {
                recv(signals) -> sig => match sig {
                    Ok(SIGHUP) => self.reload(),
                    Ok(SIGUSR1) => self.report(),
                    Ok(SIGINT | SIGTERM) => {
                        if stopping {
                            log::warn!("second stop signal: cutting in-flight requests now");
                            self.shutdown(Duration::ZERO);
                        } else {
                            log::info!(
                                "stopping: no new connections, in-flight requests get {}",
                                humantime::format_duration(grace)
                            );
                            stopping = true;
                            self.shutdown(grace);
                        }
                    }
                    _ => {}
                },
                recv(self.exits) -> index => {
                    running -= 1;
                    if !stopping {
                        log::error!("worker {} exited unexpectedly; stopping", index.unwrap_or(usize::MAX));
                        healthy = false;
                        stopping = true;
                        self.shutdown(Duration::ZERO);
                    }
                }
            }
        }
        handle.close();
        self.join();
        log::info!("stopped");
        Ok(healthy)
    }

    /// Waits for the workers and then the access-log thread (which writes out what is queued).
    pub fn join(&mut self) {
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        if let Some((log, thread)) = self.access_log.take() {
            drop(log);
            let _ = thread.join();
        }
    }

    pub fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.shared.load_full()
    }
}

/// Lifts the soft open-file limit to the hard limit: every connection is a descriptor, two when proxied.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => log::info!("open file limit: {n}"),
        Err(e) => log::warn!("could not raise the open file limit: {e}"),
    }
}
