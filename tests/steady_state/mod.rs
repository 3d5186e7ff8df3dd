//! Shared by the steady-state allocation tests (one test per file, each its own process, so libtest's
//! threads stay quiet): a counting global allocator, a backend and a client that allocate nothing
//! themselves, and the measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts allocations and reallocations; each test file installs it as its global allocator.
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarding the caller's contract to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

/// A keep-alive backend that answers every complete head with `RESPONSE`, allocating nothing.
fn backend(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut filled = 0;
            loop {
                let n = match s.read(&mut buf[filled..]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                filled += n;
                // Answer each complete head (GETs only: no bodies).
                let mut start = 0;
                while let Some(end) = buf[start..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                    if s.write_all(RESPONSE).is_err() {
                        return;
                    }
                    start += end + 4;
                }
                buf.copy_within(start..filled, 0);
                filled -= start;
            }
        });
    }
}

/// Sends `request` and reads the proxied response (its head plus the 5-byte body); returns its length.
/// Sends `request` and reads one whole response of any kind (head, then `Content-Length` bytes): the
/// first request, which may be answered by tether itself (a login) rather than the backend.
fn exchange_first(c: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> usize {
    c.write_all(request).unwrap();
    let mut got = 0;
    loop {
        let n = c.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "connection closed");
        got += n;
        let text = String::from_utf8_lossy(&buf[..got]);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got >= end + 4 + length {
                return got;
            }
        }
    }
}

fn exchange(c: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> usize {
    c.write_all(request).unwrap();
    let mut got = 0;
    loop {
        let n = c.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "connection closed");
        got += n;
        if buf[..got].ends_with(b"hello") {
            return got;
        }
    }
}

/// Runs tether in this process with `config` (`{backend}` replaced by the backend's address) and four
/// keep-alive clients. Each client's first response goes to `prepare`, which returns the request that
/// client sends from then on (to carry a session cookie, say). After a warm-up (pools fill, vectors
/// reach their capacity), 20,000 more requests must cause no allocation anywhere in the process.
/// Returns the running server, for the caller's own checks.
pub fn assert_steady_state_allocates_nothing(
    config: &str,
    first_request: &[u8],
    prepare: impl Fn(&[u8]) -> Vec<u8>,
) -> tether::runtime::Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = listener.local_addr().unwrap();
    std::thread::spawn(move || backend(listener));

    let config = config.replace("{backend}", &backend_addr.to_string());
    let config = tether::config::load_str(&config, "steady_state.toml").unwrap();
    let server = tether::runtime::Server::start(
        config,
        tether::runtime::RunOptions {
            config_path: None,
            workers: Some(1),
        },
    )
    .unwrap();
    let addr = server.addresses[0];

    let mut buf = vec![0u8; 4096];
    let mut clients: Vec<(TcpStream, Vec<u8>)> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_nodelay(true).unwrap();
            let n = exchange_first(&mut c, first_request, &mut buf);
            let request = prepare(&buf[..n]);
            (c, request)
        })
        .collect();
    // Warm-up: pools, slabs and vectors reach their working sizes.
    for _ in 0..2_000 {
        for (c, request) in clients.iter_mut() {
            exchange(c, request, &mut buf);
        }
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    assert!(
        before > 100,
        "the counting allocator sees start-up allocations"
    );
    const MEASURED: u64 = 5_000;
    for _ in 0..MEASURED {
        for (c, request) in clients.iter_mut() {
            exchange(c, request, &mut buf);
        }
    }
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    let per_request = (after - before) as f64 / (MEASURED * 4) as f64;
    println!(
        "allocations during {} requests: {} ({per_request:.4} per request)",
        MEASURED * 4,
        after - before
    );
    // A handful of one-off growths is tolerated; anything proportional to the request count is not.
    assert!(
        after - before < 16,
        "{} allocations for {} requests",
        after - before,
        MEASURED * 4
    );
    server
}
