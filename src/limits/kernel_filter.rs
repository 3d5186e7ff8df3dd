//! The deny list compiled into a classic BPF socket filter on the IPv4 listening sockets, so the kernel
//! drops a denied address's SYN: no connection, no accept, no tether CPU at all for it.
//!
//! A refused connection closed at accept still costs the kernel a full handshake, an accept and a
//! teardown in tether's thread — 13–14 µs, a third of a request served on a new connection. Dropped
//! as a SYN it costs neither tether nor the handshake; the client's connect times out, as behind a
//! firewall's `DROP`. The accept-time check stays behind it: for IPv6 listeners, for addresses past
//! the program's size, and for the moment between a ban and the next program.
//!
//! A thread of its own (`deny-filter`) watches the store's deny records and the configured list,
//! turns them into sorted disjoint address ranges (allowed blocks cut out), compiles them into a
//! binary search over ranges, and publishes the program; each worker attaches it to its own listeners
//! at the top of its next turn (one atomic load per turn when nothing changed). Accepted sockets
//! inherit the program the listener held when they were accepted, which only ever lets their packets
//! through (their address was not denied then): a ban never cuts a connection that is already open.

use super::deny::DenyList;
use crate::snapshot::SharedSnapshot;
use crate::store::{Kind, Store};
use arc_swap::ArcSwap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// One classic BPF instruction: `(code, jt, jf, k)`.
pub type Insn = (u16, u8, u8, u32);

/// Address ranges the program holds at most; further ones are refused at accept only. About 6
/// instructions per range: 1,535 instructions fit the 20 KiB a socket may hold in options on kernels
/// before 6.6 (`net.core.optmem_max`, 128 KiB since); 400 ranges would not.
pub const MAX_RANGES: usize = 256;

/// How often the thread looks for a change.
const CHECK_EVERY: Duration = Duration::from_millis(50);

const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
/// `SKF_NET_OFF`: offsets from here address the network header, wherever the socket's data starts.
const SKF_NET_OFF: u32 = (-0x0010_0000i32) as u32;
/// The IPv4 source address: bytes 12..16 of the IP header, loaded in network order.
const IPV4_SOURCE: u32 = SKF_NET_OFF + 12;
const ACCEPT: u32 = u32::MAX;
const DROP: u32 = 0;

/// The program the workers attach, and a generation they compare with the one they attached.
#[derive(Default)]
pub struct KernelFilter {
    generation: AtomicU64,
    /// Empty: no filter (detached).
    program: ArcSwap<Vec<Insn>>,
}

impl std::fmt::Debug for KernelFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelFilter")
            .field("generation", &self.generation())
            .finish()
    }
}

impl KernelFilter {
    /// Bumped on every new program; a worker that attached this generation has nothing to do.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current program (empty: detach).
    pub fn program(&self) -> Arc<Vec<Insn>> {
        self.program.load_full()
    }

    fn publish(&self, program: Vec<Insn>) {
        self.program.store(Arc::new(program));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Attaches `program` to a listening socket (an empty program detaches any filter).
pub fn attach(socket: socket2::SockRef<'_>, program: &[Insn]) -> std::io::Result<()> {
    if program.is_empty() {
        return match socket.detach_filter() {
            // Nothing was attached.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        };
    }
    let code: Vec<socket2::SockFilter> = program
        .iter()
        .map(|&(c, jt, jf, k)| socket2::SockFilter::new(c, jt, jf, k))
        .collect();
    socket.attach_filter(&code)
}

/// The IPv4 ranges `list` and the live bans in `bans` deny, less the allowed blocks: sorted, disjoint,
/// adjacent ones merged.
pub fn denied_ranges(list: &DenyList, bans: impl IntoIterator<Item = Ipv4Addr>) -> Vec<(u32, u32)> {
    let mut denied: Vec<(u32, u32)> = list.deny.iter().filter_map(|c| c.v4_range()).collect();
    denied.extend(bans.into_iter().map(|ip| (u32::from(ip), u32::from(ip))));
    let mut allowed: Vec<(u32, u32)> = list.allow.iter().filter_map(|c| c.v4_range()).collect();
    let denied = merge(denied);
    let allowed = merge(std::mem::take(&mut allowed));
    subtract(&denied, &allowed)
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if u64::from(lo) <= u64::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `denied` less `allowed` (both sorted and disjoint).
fn subtract(denied: &[(u32, u32)], allowed: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::with_capacity(denied.len());
    for &(lo, hi) in denied {
        let mut start = u64::from(lo);
        let end = u64::from(hi);
        for &(alo, ahi) in allowed {
            let (alo, ahi) = (u64::from(alo), u64::from(ahi));
            if ahi < start || alo > end {
                continue;
            }
            if alo > start {
                out.push((start as u32, (alo - 1) as u32));
            }
            start = ahi + 1;
            if start > end {
                break;
            }
        }
        if start <= end {
            out.push((start as u32, end as u32));
        }
    }
    out
}

/// Compiles sorted disjoint ranges into a program that drops packets whose IPv4 source is in one of
/// them: a binary search, `2 log2 n + 5` instructions run per packet. At most [`MAX_RANGES`] ranges are
/// compiled (the first ones by address); none gives an empty program.
pub fn compile(ranges: &[(u32, u32)]) -> Vec<Insn> {
    if ranges.is_empty() {
        return Vec::new();
    }
    let ranges = &ranges[..ranges.len().min(MAX_RANGES)];
    let mut program = vec![(LD_W_ABS, 0, 0, IPV4_SOURCE)];
    search(ranges, &mut program);
    program
}

/// Emits the search over `ranges` (non-empty): each half behind a comparison with the first address
/// of the upper half. Jumps only go forward, as classic BPF requires; the far one is a `ja`.
fn search(ranges: &[(u32, u32)], out: &mut Vec<Insn>) {
    if let [(lo, hi)] = ranges {
        out.extend_from_slice(&[
            (JMP_JGE_K, 0, 2, *lo),
            (JMP_JGT_K, 1, 0, *hi),
            (RET_K, 0, 0, DROP),
            (RET_K, 0, 0, ACCEPT),
        ]);
        return;
    }
    let mid = ranges.len() / 2;
    // A >= the upper half's first address: take the `ja` over the lower half's code.
    out.push((JMP_JGE_K, 0, 1, ranges[mid].0));
    let ja = out.len();
    out.push((JMP_JA, 0, 0, 0));
    search(&ranges[..mid], out);
    out[ja].3 = (out.len() - ja - 1) as u32;
    search(&ranges[mid..], out);
}

/// Starts the thread that keeps `filter` in step with the deny list of the current config and the bans
/// in `store`, until `stop`.
pub fn start(
    filter: Arc<KernelFilter>,
    shared: SharedSnapshot,
    store: Option<Arc<Store>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // The first program is ready before the workers accept anything.
    let mut keeper = Keeper::default();
    keeper.check(&filter, &shared, store.as_deref());
    std::thread::Builder::new()
        .name("deny-filter".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(CHECK_EVERY);
                keeper.check(&filter, &shared, store.as_deref());
            }
        })
}

/// What the last program was built from, to rebuild only on a change.
#[derive(Default)]
struct Keeper {
    /// The config snapshot's address, the store's deny-record changes.
    seen: Option<(usize, u64)>,
    /// The earliest expiry among the bans compiled in (seconds since the Unix epoch).
    next_expiry: Option<u32>,
    current: Vec<Insn>,
    truncated: bool,
}

impl Keeper {
    fn check(&mut self, filter: &KernelFilter, shared: &SharedSnapshot, store: Option<&Store>) {
        let snapshot = shared.load();
        let now = crate::sticky::unix_now();
        let seen = (
            Arc::as_ptr(&*snapshot) as usize,
            store.map_or(0, |s| s.changes_of(Kind::Deny)),
        );
        if self.seen == Some(seen) && self.next_expiry.is_none_or(|t| now < t) {
            return;
        }
        self.seen = Some(seen);
        self.next_expiry = None;
        let program = if snapshot.deny.kernel_filter {
            let mut bans = Vec::new();
            if let Some(store) = store.filter(|s| s.len_of(Kind::Deny) > 0) {
                let reader = store.reader();
                for r in reader.iter(Some(Kind::Deny)) {
                    let Ok(octets) = <[u8; 4]>::try_from(&r.key[..]) else {
                        continue;
                    };
                    if !crate::store::table::live(r, now) {
                        continue;
                    }
                    bans.push(Ipv4Addr::from(octets));
                    if r.expires != 0 {
                        self.next_expiry =
                            Some(self.next_expiry.map_or(r.expires, |t| t.min(r.expires)));
                    }
                }
            }
            let ranges = denied_ranges(&snapshot.deny, bans);
            let truncated = ranges.len() > MAX_RANGES;
            if truncated && !self.truncated {
                log::warn!(
                    "deny list: {} address ranges, the kernel filter holds the first {MAX_RANGES}; the others are refused at accept",
                    ranges.len()
                );
            }
            self.truncated = truncated;
            compile(&ranges)
        } else {
            Vec::new()
        };
        if program != self.current {
            log::debug!(
                "deny list: kernel filter of {} instruction(s) published",
                program.len()
            );
            self.current = program.clone();
            filter.publish(program);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DenyConfig;

    /// Runs a program over a packet whose IPv4 source is `source` (only what [`compile`] emits).
    fn run(program: &[Insn], source: Ipv4Addr) -> u32 {
        let mut a = 0u32;
        let mut pc = 0usize;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps <= program.len(), "the program loops");
            let (code, jt, jf, k) = program[pc];
            pc += 1;
            match code {
                LD_W_ABS => {
                    assert_eq!(k, IPV4_SOURCE);
                    a = u32::from(source);
                }
                JMP_JA => pc += k as usize,
                JMP_JGE_K => pc += usize::from(if a >= k { jt } else { jf }),
                JMP_JGT_K => pc += usize::from(if a > k { jt } else { jf }),
                RET_K => return k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    fn list(allow: &[&str], deny: &[&str]) -> DenyList {
        DenyList::build(&DenyConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            ..DenyConfig::default()
        })
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_program_drops_exactly_the_denied_addresses() {
        let l = list(
            &["10.1.2.0/24", "192.0.2.9"],
            &[
                "10.0.0.0/8",
                "192.0.2.0/28",
                "::ffff:198.51.100.0/120",
                "2001:db8::/32",
            ],
        );
        let bans = [
            "203.0.113.5",
            "203.0.113.6",
            "10.1.2.3",
            "0.0.0.0",
            "255.255.255.255",
        ];
        let ranges = denied_ranges(&l, bans.iter().map(|s| ip(s)));
        let program = compile(&ranges);
        assert!(program.len() < 4096);
        let dropped = |s: &str| run(&program, ip(s)) == DROP;
        for s in [
            "10.0.0.0",
            "10.1.1.255",
            "10.1.3.0",
            "10.255.255.255",
            "192.0.2.0",
            "192.0.2.8",
            "192.0.2.15",
            "198.51.100.7",
            "203.0.113.5",
            "203.0.113.6",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            assert!(dropped(s), "{s} should be dropped");
        }
        for s in [
            "9.255.255.255",
            "11.0.0.0",
            "10.1.2.0",
            "10.1.2.3",
            "10.1.2.255",
            "192.0.2.9",
            "192.0.2.16",
            "203.0.113.4",
            "203.0.113.7",
            "127.0.0.1",
            "0.0.0.1",
            "255.255.255.254",
        ] {
            assert!(!dropped(s), "{s} should pass");
        }
    }

    #[test]
    fn thousands_of_bans_stay_within_the_kernel_limit_and_search_correctly() {
        let bans: Vec<Ipv4Addr> = (0..2000u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i * 2))
            .collect();
        let ranges = denied_ranges(&list(&[], &[]), bans.iter().copied());
        assert_eq!(ranges.len(), 2000);
        let program = compile(&ranges);
        assert!(program.len() <= 4096, "{} instructions", program.len());
        for i in 0..(MAX_RANGES as u32) {
            assert_eq!(run(&program, Ipv4Addr::from(0x0a00_0000 + i * 2)), DROP);
            assert_eq!(run(&program, Ipv4Addr::from(0x0a00_0001 + i * 2)), ACCEPT);
        }
        // Past the program's size: refused at accept instead.
        assert_eq!(run(&program, *bans.last().unwrap()), ACCEPT);
    }

    #[test]
    fn nothing_denied_is_no_program() {
        assert!(compile(&denied_ranges(&list(&[], &["2001:db8::/32"]), [])).is_empty());
        // Everything denied is allowed back.
        assert!(
            compile(&denied_ranges(
                &list(&["0.0.0.0/0"], &["10.0.0.0/8"]),
                [ip("1.2.3.4")]
            ))
            .is_empty()
        );
    }

    #[test]
    fn ranges_merge_and_allowed_blocks_are_cut_out() {
        assert_eq!(
            merge(vec![(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]),
            vec![(1, 9), (20, 30)]
        );
        assert_eq!(
            subtract(&[(0, 100), (200, 300)], &[(0, 10), (50, 60), (250, 400)]),
            vec![(11, 49), (61, 100), (200, 249)]
        );
        assert_eq!(subtract(&[(0, u32::MAX)], &[(0, u32::MAX)]), vec![]);
    }

    /// The real kernel: a loopback listener with the program drops the SYN of a denied source (its
    /// connect times out) and accepts the others.
    #[test]
    fn the_kernel_drops_a_denied_sources_syn() {
        let listener = crate::runtime::listener::bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let program = compile(&denied_ranges(&list(&[], &[]), [ip("127.0.0.2")]));
        attach(socket2::SockRef::from(&listener), &program).unwrap();
        let connect = |source: &str| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&std::net::SocketAddr::new(source.parse().unwrap(), 0).into())
                .unwrap();
            s.connect_timeout(&addr.into(), Duration::from_millis(500))
        };
        let refused = connect("127.0.0.2").expect_err("the denied source connected");
        assert_eq!(refused.kind(), std::io::ErrorKind::TimedOut);
        connect("127.0.0.3").expect("another source is served");
        // The largest program the thread compiles fits a socket on any kernel.
        let bans = (0..MAX_RANGES as u32).map(|i| Ipv4Addr::from(0x0a00_0000 + i * 2));
        let largest = compile(&denied_ranges(&list(&[], &[]), bans));
        attach(socket2::SockRef::from(&listener), &largest).unwrap();
        // Detached: the denied source connects again.
        attach(socket2::SockRef::from(&listener), &[]).unwrap();
        connect("127.0.0.2").expect("served once the filter is gone");
    }
}
