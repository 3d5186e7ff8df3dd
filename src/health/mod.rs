//! Backend health over time: one prober thread for the whole process runs every cluster's active HTTP
//! checks and ends passive-health cool-downs. Verdicts go into each backend's shared `BackendState`, which
//! every worker reads on every pick, so a change is seen everywhere at the next request.
//!
//! Each round the prober reads the current config snapshot (so reloads take effect), starts the checks that
//! are due, applies the results that came back, and revives backends whose passive cool-down is over.
//! A check runs in a short-lived thread of its own with blocking I/O bounded by the check's `timeout`: a
//! backend that hangs delays only its own check, and at most one check per backend is in flight (validation
//! keeps `timeout` ≤ `interval`). Checks are rare (one per backend per interval), so a thread each costs
//! less than it would save to multiplex them.

mod check;

use crate::balance::{BackendId, BackendState, clock_ms};
use crate::config::parse_status_range;
use crate::snapshot::{ConfigSnapshot, SharedSnapshot};
use crossbeam_channel::{Receiver, Sender, select, unbounded};
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest the prober sleeps: how late a passive cool-down may end, and how soon a reload is noticed.
const TICK: Duration = Duration::from_millis(50);

/// The running prober; [`Prober::stop`] ends it.
pub struct Prober {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Prober {
    /// Starts the prober thread on the published snapshots.
    pub fn start(shared: SharedSnapshot) -> std::io::Result<Prober> {
        let (stop, stopped) = unbounded();
        let thread = std::thread::Builder::new()
            .name("health".into())
            .spawn(move || Rounds::new(shared, stopped).run())?;
        Ok(Prober { stop, thread })
    }

    /// Stops the prober and waits for it (checks still in flight end on their own timeout).
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// What to check on one backend, from the first cluster (in name order) that lists it with a check.
#[derive(Debug)]
struct Target {
    state: Arc<BackendState>,
    cluster: String,
    request: Arc<[u8]>,
    expect: (u16, u16),
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

/// The prober's own counters for one backend (only this thread touches them).
#[derive(Debug)]
struct Probe {
    passes: u32,
    fails: u32,
    in_flight: bool,
    next_at: Instant,
}

/// One check's result: the backend and, on failure, why.
type Outcome = (BackendId, Result<(), String>);

struct Rounds {
    shared: SharedSnapshot,
    stopped: Receiver<()>,
    generation: u64,
    targets: HashMap<BackendId, Target>,
    /// Every backend of the snapshot (once each), for passive cool-downs.
    backends: Vec<Arc<BackendState>>,
    probes: HashMap<BackendId, Probe>,
    results_tx: Sender<Outcome>,
    results: Receiver<Outcome>,
}

impl Rounds {
    fn new(shared: SharedSnapshot, stopped: Receiver<()>) -> Self {
        let (results_tx, results) = unbounded();
        Rounds {
            shared,
            stopped,
            generation: 0,
            targets: HashMap::new(),
            backends: Vec::new(),
            probes: HashMap::new(),
            results_tx,
            results,
        }
    }

    fn run(mut self) {
        loop {
            let snapshot = self.shared.load_full();
            if snapshot.generation != self.generation {
                self.rebuild(&snapshot);
            }
            let now = Instant::now();
            self.start_due_checks(now);
            self.end_cool_downs();
            let wait = self
                .probes
                .values()
                .filter(|p| !p.in_flight)
                .map(|p| p.next_at.saturating_duration_since(now))
                .min()
                .map_or(TICK, |d| d.min(TICK));
            select! {
                recv(self.results) -> r => {
                    if let Ok(r) = r {
                        self.apply(r);
                    }
                }
                recv(self.stopped) -> _ => return,
                default(wait) => {}
            }
            while let Ok(r) = self.results.try_recv() {
                self.apply(r);
            }
        }
    }

    /// Targets and backends of a new snapshot; counters of backends it keeps are kept.
    fn rebuild(&mut self, snapshot: &ConfigSnapshot) {
        self.generation = snapshot.generation;
        self.targets.clear();
        self.backends.clear();
        for cluster in &snapshot.clusters {
            for b in &cluster.backends {
                if !self.backends.iter().any(|s| s.id == b.state.id) {
                    self.backends.push(Arc::clone(&b.state));
                }
                let Some(check) = &cluster.health_check else {
                    continue;
                };
                if self.targets.contains_key(&b.state.id) {
                    continue;
                }
                let Ok(expect) = parse_status_range(&check.expect_status) else {
                    continue; // validated: cannot happen
                };
                let host = if check.host.is_empty() {
                    b.state.address.to_string()
                } else {
                    check.host.clone()
                };
                let request = format!(
                    "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tether-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
                    check.method, check.path
                );
                self.targets.insert(
                    b.state.id,
                    Target {
                        state: Arc::clone(&b.state),
                        cluster: cluster.name.clone(),
                        request: request.into_bytes().into(),
                        expect,
                        interval: check.interval,
                        timeout: check.timeout,
                        rise: check.rise,
                        fall: check.fall,
                    },
                );
            }
        }
        let targets = &self.targets;
        self.probes.retain(|id, _| targets.contains_key(id));
        for b in &self.backends {
            if !self.targets.contains_key(&b.id) && b.active_down() && b.clear_active_down() {
                log::info!(
                    "backend {} is UP: no longer health-checked after the reload",
                    b.address
                );
            }
        }
        let now = Instant::now();
        for id in self.targets.keys() {
            self.probes.entry(*id).or_insert(Probe {
                passes: 0,
                fails: 0,
                in_flight: false,
                next_at: now,
            });
        }
        log::debug!(
            "health: generation {}: {} backend(s), {} with active checks",
            self.generation,
            self.backends.len(),
            self.targets.len()
        );
    }

    fn start_due_checks(&mut self, now: Instant) {
        for (id, target) in &self.targets {
            let Some(probe) = self.probes.get_mut(id) else {
                continue;
            };
            if probe.in_flight || probe.next_at > now {
                continue;
            }
            probe.next_at = now + target.interval;
            let (id, address, request, expect, timeout) = (
                *id,
                target.state.address,
                Arc::clone(&target.request),
                target.expect,
                target.timeout,
            );
            let tx = self.results_tx.clone();
            let spawned = std::thread::Builder::new()
                .name("health-check".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    let _ = tx.send((id, check::run(address, &request, expect, timeout)));
                });
            match spawned {
                Ok(_) => probe.in_flight = true,
                Err(e) => log::warn!("health: cannot start a check of {address}: {e}"),
            }
        }
    }

    /// Backends without active checks come back (half-open) once their passive cool-down is over.
    fn end_cool_downs(&self) {
        let now = clock_ms();
        for b in &self.backends {
            if self.targets.contains_key(&b.id) || !b.passive_down() || !b.cool_down_over(now) {
                continue;
            }
            if b.revive_half_open() {
                log::info!(
                    "backend {} is UP: cool-down over, half-open (one more failed request takes it down again)",
                    b.address
                );
            }
        }
    }

    fn apply(&mut self, (id, result): Outcome) {
        let (Some(target), Some(probe)) = (self.targets.get(&id), self.probes.get_mut(&id)) else {
            return; // no longer checked (reload)
        };
        probe.in_flight = false;
        let state = &target.state;
        match result {
            Ok(()) => {
                probe.fails = 0;
                if state.passive_down() && !state.cool_down_over(clock_ms()) {
                    // Failed requests took it out: passes count only once the cool-down is over.
                    probe.passes = 0;
                    return;
                }
                probe.passes = probe.passes.saturating_add(1);
                if !state.is_up() && probe.passes >= target.rise && state.mark_up() {
                    log::info!(
                        "backend {} of cluster {} is UP: {} passed check{}",
                        state.address,
                        target.cluster,
                        probe.passes,
                        plural(probe.passes)
                    );
                }
            }
            Err(reason) => {
                probe.passes = 0;
                probe.fails = probe.fails.saturating_add(1);
                log::debug!("health: check of {} failed: {reason}", state.address);
                if !state.active_down() && probe.fails >= target.fall {
                    state.mark_active_down();
                    log::warn!(
                        "backend {} of cluster {} is DOWN: {} failed check{} ({reason})",
                        state.address,
                        target.cluster,
                        probe.fails,
                        plural(probe.fails)
                    );
                }
            }
        }
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}
