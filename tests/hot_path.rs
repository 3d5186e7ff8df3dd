//! The hot path allocates nothing per request in steady state.
//!
//! The balancer runs in this process under a counting global allocator; the backend and the client are
//! hand-written loops over fixed buffers that allocate nothing themselves, and the access log is off. After a
//! warm-up (pools fill, vectors reach their capacity), thousands more keep-alive requests must cause no
//! allocation anywhere in the process. One test per file: libtest's own threads must stay quiet.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

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

#[global_allocator]
static GLOBAL: Counting = Counting;

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

fn request(c: &mut TcpStream, buf: &mut [u8]) {
    c.write_all(b"GET /hot HTTP/1.1\r\nHost: test\r\nUser-Agent: hot-path\r\n\r\n")
        .unwrap();
    // The proxied response: our head plus the 5-byte body; read until the body's last byte.
    let mut got = 0;
    loop {
        let n = c.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "connection closed");
        got += n;
        if buf[..got].ends_with(b"hello") {
            return;
        }
    }
}

#[test]
fn steady_state_keep_alive_requests_allocate_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = listener.local_addr().unwrap();
    std::thread::spawn(move || backend(listener));

    let config = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\ncluster = \"app\"\n\
         [access_log]\nenabled = false\n\
         [clusters.app]\nbackends = [{{ address = \"{backend_addr}\" }}]\n"
    );
    let config = tether::config::load_str(&config, "hot_path.toml").unwrap();
    let server = tether::runtime::Server::start(
        config,
        tether::runtime::RunOptions {
            config_path: None,
            workers: Some(1),
        },
    )
    .unwrap();
    let addr = server.addresses[0];

    let mut clients: Vec<TcpStream> = (0..4)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            c.set_nodelay(true).unwrap();
            c
        })
        .collect();
    let mut buf = vec![0u8; 4096];
    // Warm-up: pools, slabs and vectors reach their working sizes.
    for _ in 0..2_000 {
        for c in clients.iter_mut() {
            request(c, &mut buf);
        }
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    assert!(
        before > 100,
        "the counting allocator sees start-up allocations"
    );
    const MEASURED: u64 = 5_000;
    for _ in 0..MEASURED {
        for c in clients.iter_mut() {
            request(c, &mut buf);
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
    server.shutdown(std::time::Duration::ZERO);
}
