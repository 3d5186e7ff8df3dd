//! Micro-benchmarks of the per-request CPU work, so a regression shows: head scanning and parsing,
//! the pipeline's route lookup and head rewrite, session-table lookups with a million sessions, and the
//! replicated store's apply, lookup and digest with a million records.
//!
//! Run: `cargo bench --bench hot_path` (add `-- session` to run one group).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::net::IpAddr;
use tether::config::RouteConfig;
use tether::http::{
    ForwardContext, HeadLimits, HeadScanner, RequestHead, end_head, parse_request,
    write_request_head,
};
use tether::route::RouteTable;
use tether::sticky::table::{KeyHasher, SessionKey, SessionTable};
use tether::store::{DigestSum, Kind, Record, Store, Version};

const REQUEST: &[u8] = b"GET /api/v1/products/12345?expand=reviews&lang=en HTTP/1.1\r\n\
Host: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://shop.example.com/catalog\r\n\
Cookie: TETHER_SID=abc; theme=dark; consent=1\r\n\
Connection: keep-alive\r\n\
X-Forwarded-For: 203.0.113.9\r\n\
Upgrade-Insecure-Requests: 1\r\n\r\n";

fn route(host: &str, prefix: &str, cluster: &str) -> RouteConfig {
    RouteConfig::new(host, prefix, cluster)
}

fn head_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("head");
    g.throughput(Throughput::Elements(1));
    let limits = HeadLimits::default();
    let mut head = RequestHead::with_capacity(limits.max_headers);
    g.bench_function("scan_and_parse_request", |b| {
        b.iter(|| {
            let mut scanner = HeadScanner::default();
            let len = scanner.scan(black_box(REQUEST), &limits).unwrap().unwrap();
            parse_request(&REQUEST[..len], &limits, &mut head).unwrap();
            black_box(head.framing);
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    let routes = vec![
        route("shop.example.com", "/static/", "static"),
        route("shop.example.com", "/api/", "api"),
        route("*.example.com", "/", "web"),
        route("*", "/", "web"),
    ];
    let names = ["static", "api", "web"];
    let table =
        RouteTable::build(&routes, |n| names.iter().position(|x| *x == n), &[], &[]).unwrap();
    let limits = HeadLimits::default();
    let mut head = RequestHead::with_capacity(limits.max_headers);
    let mut out = Vec::with_capacity(2048);
    let ctx = ForwardContext {
        client_ip: tether::http::rewrite::IpText::new(IpAddr::from([10, 1, 2, 3])),
        proto: "http",
        trust_forwarded: false,
        drop_cookie: None,
    };
    // Parse, route and rewrite: the CPU work of one request head before it is written to a backend.
    g.bench_function("parse_route_rewrite", |b| {
        b.iter(|| {
            let mut scanner = HeadScanner::default();
            let len = scanner.scan(black_box(REQUEST), &limits).unwrap().unwrap();
            parse_request(&REQUEST[..len], &limits, &mut head).unwrap();
            let authority = head.authority.map(|a| a.of(REQUEST));
            let r = table
                .lookup(authority, head.path.of(REQUEST), |_| true)
                .unwrap();
            out.clear();
            write_request_head(&mut out, REQUEST, &head, &ctx);
            end_head(&mut out);
            black_box((r, out.len()));
        })
    });
    g.finish();
}

fn session_table(c: &mut Criterion) {
    const SESSIONS: u64 = 1_000_000;
    const ACTIVE: u64 = 10_000;
    let table = SessionTable::new(1, 2_000_000, 3600);
    // Keys as the table sees them: uniformly spread 128-bit values.
    let key = |i: u64| (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    for i in 0..SESSIONS {
        table.bind(0, key(i), (i % 8) as usize, 1_000);
    }
    // The index steps with a compare instead of `%`: a 128-bit (or even 64-bit) division per
    // iteration would cost as much as the lookup being measured.
    let step = |i: &mut u64, n: u64| {
        *i += 7_919;
        if *i >= n {
            *i -= n;
        }
    };
    let mut g = c.benchmark_group("session_table");
    g.throughput(Throughput::Elements(1));
    // As a worker does them: under one reclamation guard held for an event-loop turn.
    let reader = table.reader();
    let mut i = 0u64;
    // Worst case: every lookup a different session, uniformly over a million (DRAM-latency bound).
    g.bench_function("lookup_hit_1m_entries_uniform", |b| {
        b.iter(|| {
            step(&mut i, SESSIONS);
            black_box(reader.lookup(0, key(i), 1_000))
        })
    });
    // A million sessions of which 10,000 are active at a time (the rest idle until they expire).
    let mut j = 0u64;
    g.bench_function("lookup_hit_1m_entries_10k_active", |b| {
        b.iter(|| {
            step(&mut j, ACTIVE);
            black_box(reader.lookup(0, key(j * 100), 1_000))
        })
    });
    let mut m = SESSIONS;
    g.bench_function("lookup_miss_1m_entries", |b| {
        b.iter(|| {
            m += 1;
            black_box(reader.lookup(0, key(m), 1_000))
        })
    });
    drop(reader);
    // For comparison: entering and leaving the epoch on every lookup (`SessionTable::lookup`). Leaving
    // is a locked instruction, which also stops the CPU from overlapping one lookup's cache misses
    // with the next one's.
    g.bench_function("lookup_hit_1m_entries_uniform_pin_each", |b| {
        b.iter(|| {
            step(&mut i, SESSIONS);
            black_box(table.lookup(0, key(i), 1_000))
        })
    });
    drop(table);
    // Yardstick for this machine: the standard library's single-threaded map (a SwissTable storing
    // entries inline, no reclamation) doing the same uniform lookups. When it is no faster than the
    // session table, the uniform case is bound by memory, not by the map.
    let mut std_map: std::collections::HashMap<SessionKey, (usize, u64, u32), _> =
        std::collections::HashMap::with_capacity_and_hasher(
            2_000_000,
            BuildHasherDefault::<KeyHasher>::default(),
        );
    for i in 0..SESSIONS {
        std_map.insert(key(i), ((i % 8) as usize, 0, 1_000));
    }
    g.bench_function("reference_std_hashmap_1m_entries_uniform", |b| {
        b.iter(|| {
            step(&mut i, SESSIONS);
            black_box(std_map.get(&key(i)).map(|e| (e.0, e.1)))
        })
    });
    g.finish();
}

/// A session binding as the store holds it: a 16-byte key, an 8-byte value.
fn binding(i: u64, hlc: u64) -> Record {
    Record {
        kind: Kind::SessionBinding,
        key: (i as u128)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            .to_be_bytes()
            .as_slice()
            .into(),
        version: Version {
            hlc,
            node_id: 0x1234,
        },
        expires: 1_900_000_000,
        value: Some(i.to_be_bytes().as_slice().into()),
    }
}

fn store(c: &mut Criterion) {
    const RECORDS: u64 = 1_000_000;
    let store = Store::new();
    for i in 0..RECORDS {
        store.apply(binding(i, 1 << 16));
    }
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(std::time::Duration::from_secs(3));
    let one = binding(0, 1);
    g.bench_function("record_hash", |b| {
        b.iter(|| black_box(DigestSum::of(black_box(&one))))
    });
    // The running digest: what a resync compares.
    g.bench_function("digest_1m_records", |b| {
        b.iter(|| black_box(store.digest()))
    });
    // A newer version of a held key: the old record's hash is subtracted from the digest. Making the
    // record (two small allocations) is not timed.
    let (mut i, mut hlc) = (0u64, 2u64 << 16);
    g.bench_function("apply_newer_version_1m_records", |b| {
        b.iter_batched(
            || {
                i = (i + 7_919) % RECORDS;
                hlc += 1;
                binding(i, hlc)
            },
            |r| store.apply(r),
            BatchSize::SmallInput,
        )
    });
    // A replay of a held record (a resumed stream's overlap, a snapshot of what is known).
    let reader = store.reader();
    let mut j = 0u64;
    g.bench_function("apply_replay_1m_records", |b| {
        b.iter_batched(
            || {
                j = (j + 7_919) % RECORDS;
                reader
                    .get_raw(Kind::SessionBinding, &binding(j, 0).key)
                    .unwrap()
                    .clone()
            },
            |r| store.apply(r),
            BatchSize::SmallInput,
        )
    });
    // Lookups spread uniformly over the million, under one pinned reader.
    let keys: Vec<_> = (0..1 << 16).map(|i| binding(i * 15, 0).key).collect();
    let mut k = 0usize;
    g.bench_function("get_hit_1m_records_pinned", |b| {
        b.iter(|| {
            k = (k + 1) & ((1 << 16) - 1);
            black_box(reader.get(Kind::SessionBinding, &keys[k], 1_800_000_000))
        })
    });
    drop(reader);
    g.sample_size(10);
    g.throughput(Throughput::Elements(store.len() as u64));
    g.bench_function("digest_by_scan_1m_records", |b| {
        b.iter(|| black_box(store.digest_by_scan()))
    });
    // Last, as it grows the store: every apply a key the store does not hold, from a million records
    // on (to several million by the end of the run).
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    let mut fresh = RECORDS;
    g.bench_function("apply_new_key_from_1m_records", |b| {
        b.iter_batched(
            || {
                fresh += 1;
                binding(fresh, 1 << 16)
            },
            |r| store.apply(r),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, head_parsing, pipeline, session_table, store);
criterion_main!(benches);
