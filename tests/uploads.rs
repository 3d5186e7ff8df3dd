//! Resumable uploads end to end (issue #17): real `tether` binaries and a real backend; tus 1.0 and the
//! IETF draft, byte-exact (sha256) at the backend, bad inputs, and `kill -9` of the node taking a
//! `PATCH` with the upload finished at another node. Assertions are on counts, bytes and statuses.

mod common;

use common::cluster::*;
use common::uploads::request;
use common::*;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Instant;

const MIB: usize = 1 << 20;

/// One node, `/up/` accepting uploads into `backend`, `[uploads]` with `extra` keys.
fn single(backend: SocketAddr, extra: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[clusters.app]\nbackends = [{{ address = \"{backend}\" }}]\n\n\
         [[routes]]\npath_prefix = \"/up/\"\ncluster = \"app\"\nuploads = true\n\n[[routes]]\ncluster = \"app\"\n\n\
         [uploads]\nmax_chunk = 4194304\n{extra}\n"
    )
}

/// Deterministic, non-repeating test bytes.
fn data(len: usize) -> Vec<u8> {
    common::uploads::data(len, 0)
}

const TUS: &str = "Tus-Resumable: 1.0.0\r\n";

fn tus_create(addr: SocketAddr, length: usize) -> String {
    let r = request(
        addr,
        "POST",
        "/up/files",
        &format!("{TUS}Upload-Length: {length}\r\nUpload-Metadata: filename cmVwb3J0LnBkZg==\r\n"),
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.header("location").unwrap().to_string()
}

fn tus_patch(addr: SocketAddr, location: &str, offset: usize, chunk: &[u8]) -> Response {
    request(
        addr,
        "PATCH",
        location,
        &format!(
            "{TUS}Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        ),
        chunk,
    )
}

fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn stored_backend() -> Backend {
    Backend::start(|_req, _s| Some(Reply::text(201, "stored")))
}

#[test]
fn a_20_mib_tus_upload_reaches_the_backend_byte_exact() {
    let backend = stored_backend();
    let t = Tether::start(&single(backend.addr, ""));
    let file = data(20 * MIB);
    let location = tus_create(t.addr, file.len());
    assert!(location.starts_with("/.tether/uploads/"), "{location}");
    let mut offset = 0;
    for chunk in file.chunks(3 * MIB) {
        let r = tus_patch(t.addr, &location, offset, chunk);
        offset += chunk.len();
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(r.header("upload-offset"), Some(offset.to_string().as_str()));
        if offset == file.len() {
            assert_eq!(r.header("tether-upload-status"), Some("201"));
        }
    }
    let got = backend.received();
    assert_eq!(got.len(), 1, "the backend gets one request");
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/up/files");
    assert_eq!(got[0].header("content-length"), Some("20971520"));
    assert_eq!(
        got[0].header("x-tether-upload-metadata"),
        Some("filename cmVwb3J0LnBkZg==")
    );
    assert_eq!(sha(&got[0].body), sha(&file));
    // Forwarded with a 2xx: the upload is gone, here and on disk.
    let r = request(t.addr, "HEAD", &location, TUS, b"");
    assert_eq!(r.status, 404);
    let spool = t.config_path.parent().unwrap().join("spool");
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_dir(&spool).unwrap().count() > 0 {
        assert!(Instant::now() < deadline, "the spool file stays");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_20_mib_ietf_upload_reaches_the_backend_byte_exact() {
    let backend = stored_backend();
    let t = Tether::start(&single(backend.addr, ""));
    let file = data(20 * MIB);
    let first = &file[..MIB];
    let r = request(
        t.addr,
        "POST",
        "/up/mail",
        "Upload-Complete: ?0\r\nContent-Type: application/octet-stream\r\n",
        first,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("upload-offset"), Some("1048576"));
    let location = r.header("location").unwrap().to_string();
    let mut offset = first.len();
    // A wrong offset: 409 with the problem type.
    let r = request(
        t.addr,
        "PATCH",
        &location,
        "Upload-Complete: ?0\r\nUpload-Offset: 5\r\nContent-Type: application/partial-upload\r\n",
        b"xx",
    );
    assert_eq!(r.status, 409);
    assert!(
        r.text().contains("mismatching-upload-offset"),
        "{}",
        r.text()
    );
    let chunks: Vec<&[u8]> = file[offset..].chunks(4 * MIB).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let r = request(
            t.addr,
            "PATCH",
            &location,
            &format!(
                "Upload-Complete: {}\r\nUpload-Offset: {offset}\r\nContent-Type: application/partial-upload\r\n",
                if last { "?1" } else { "?0" }
            ),
            chunk,
        );
        offset += chunk.len();
        if last {
            assert_eq!(r.status, 201, "the backend's own answer");
            assert_eq!(r.text(), "stored");
        } else {
            assert_eq!(r.status, 204, "{}", r.text());
            let h = request(t.addr, "HEAD", &location, "", b"");
            assert_eq!(h.status, 204);
            assert_eq!(h.header("upload-offset"), Some(offset.to_string().as_str()));
            assert_eq!(h.header("upload-complete"), Some("?0"));
        }
    }
    let got = backend.received();
    assert_eq!(got.len(), 1);
    assert_eq!(sha(&got[0].body), sha(&file));
}

#[test]
fn bad_input_gets_the_protocols_answers() {
    let backend = stored_backend();
    let t = Tether::start(&single(backend.addr, "max_size = 10000\n"));
    let location = tus_create(t.addr, 100);
    // Offset mismatch.
    assert_eq!(tus_patch(t.addr, &location, 7, b"abc").status, 409);
    // Over the declared length.
    assert_eq!(tus_patch(t.addr, &location, 0, &[0u8; 101]).status, 413);
    // Checksum mismatch: 460, and the offset is unchanged.
    let r = request(
        t.addr,
        "PATCH",
        &location,
        &format!(
            "{TUS}Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\nUpload-Checksum: sha256 {}\r\n",
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        ),
        b"abc",
    );
    assert_eq!(r.status, 460);
    let r = request(t.addr, "HEAD", &location, TUS, b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("upload-offset"), Some("0"));
    assert_eq!(r.header("upload-length"), Some("100"));
    assert!(
        r.header("upload-expires")
            .is_some_and(|v| v.ends_with("GMT"))
    );
    // A right checksum passes.
    use base64::Engine;
    let digest = base64::engine::general_purpose::STANDARD.encode(sha(b"abc"));
    let r = request(
        t.addr,
        "PATCH",
        &location,
        &format!(
            "{TUS}Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\nUpload-Checksum: sha256 {digest}\r\n"
        ),
        b"abc",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    // Wrong content type, missing Tus-Resumable, unknown id, too large, bad metadata.
    let r = request(
        t.addr,
        "PATCH",
        &location,
        &format!("{TUS}Content-Type: text/plain\r\nUpload-Offset: 3\r\n"),
        b"x",
    );
    assert_eq!(r.status, 415);
    let r = request(
        t.addr,
        "PATCH",
        &location,
        "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 3\r\n",
        b"x",
    );
    assert_eq!(r.status, 412);
    let r = request(
        t.addr,
        "HEAD",
        "/.tether/uploads/00000000000000000000000000000000",
        TUS,
        b"",
    );
    assert_eq!(r.status, 404);
    let r = request(t.addr, "HEAD", "/.tether/uploads/nope", TUS, b"");
    assert_eq!(r.status, 404);
    let r = request(
        t.addr,
        "POST",
        "/up/x",
        &format!("{TUS}Upload-Length: 10001\r\n"),
        b"",
    );
    assert_eq!(r.status, 413);
    let r = request(
        t.addr,
        "POST",
        "/up/x",
        &format!("{TUS}Upload-Length: 1\r\nUpload-Metadata: a b c\r\n"),
        b"",
    );
    assert_eq!(r.status, 400);
    // Termination: gone at once.
    assert_eq!(request(t.addr, "DELETE", &location, TUS, b"").status, 204);
    assert_eq!(request(t.addr, "HEAD", &location, TUS, b"").status, 404);
    // OPTIONS announces the extensions.
    let r = request(t.addr, "OPTIONS", "/.tether/uploads/", "", b"");
    assert_eq!(r.status, 204);
    assert!(r.header("tus-extension").unwrap().contains("checksum"));
    assert_eq!(
        backend.request_count(),
        0,
        "nothing half-written is forwarded"
    );
}

#[test]
fn a_node_killed_mid_patch_leaves_an_acknowledged_offset_another_node_resumes() {
    let backend = stored_backend();
    let (_certs, configs) = upload_mesh(&["a", "b", "c"], backend.addr, "");
    let mut a = Tether::start(&configs[0]);
    let b = Tether::start(&configs[1]);
    // A third node: the replica that acknowledges b's appends once a is gone.
    let c3 = Tether::start(&configs[2]);
    wait_peer(&a, "b", "up");
    wait_peer(&a, "c", "up");
    wait_peer(&b, "c", "up");
    wait_peer(&c3, "a", "up");
    let file = data(6 * MIB);
    let location = tus_create(a.addr, file.len());
    let r = tus_patch(a.addr, &location, 0, &file[..2 * MIB]);
    assert_eq!(r.status, 204, "{}", r.text());
    let acknowledged: usize = r.header("upload-offset").unwrap().parse().unwrap();
    assert_eq!(acknowledged, 2 * MIB);
    // A PATCH whose bytes are half sent when the node dies.
    let mut c = Client::connect(a.addr);
    let mut head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: files.test\r\n{TUS}Content-Type: application/offset+octet-stream\r\nUpload-Offset: {acknowledged}\r\nContent-Length: {}\r\n\r\n",
        2 * MIB
    )
    .into_bytes();
    head.extend_from_slice(&file[acknowledged..acknowledged + MIB]);
    c.send(&head);
    a.kill();
    // Another node knows the acknowledged offset, and the client resumes there.
    let r = request(b.addr, "HEAD", &location, TUS, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let offset: usize = r.header("upload-offset").unwrap().parse().unwrap();
    assert!(offset >= acknowledged, "{offset} < {acknowledged}");
    let r = tus_patch(b.addr, &location, offset, &file[offset..]);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("tether-upload-status"), Some("201"));
    let got = backend.received();
    assert_eq!(got.len(), 1, "the backend gets the upload once");
    assert_eq!(sha(&got[0].body), sha(&file));
}

/// Configs of a full mesh of `names` with `/up/` accepting uploads into `backend`; `extra` goes into each
/// `[uploads]`.
fn upload_mesh(
    names: &[&str],
    backend: SocketAddr,
    extra: &str,
) -> (tempfile::TempDir, Vec<String>) {
    let certs = tempfile::tempdir().unwrap();
    cluster_certs(certs.path(), &names.join(","));
    let configs = mesh_configs(names, certs.path(), &[backend])
        .into_iter()
        .map(|c| {
            c.replacen(
                "[[routes]]",
                "[[routes]]\npath_prefix = \"/up/\"\ncluster = \"app\"\nuploads = true\n[[routes]]",
                1,
            ) + &format!("\n[uploads]\nmax_chunk = 4194304\n{extra}\n")
        })
        .collect();
    (certs, configs)
}

/// Two linked nodes of an upload mesh over `backend`.
fn upload_pair(backend: SocketAddr) -> (tempfile::TempDir, Tether, Tether) {
    let (certs, configs) = upload_mesh(&["a", "b"], backend, "");
    let a = Tether::start(&configs[0]);
    let b = Tether::start(&configs[1]);
    wait_peer(&a, "b", "up");
    wait_peer(&b, "a", "up");
    (certs, a, b)
}

/// A process's resident memory in KiB (`VmRSS` in /proc/PID/status).
fn rss_kib(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_64_mib_upload_through_two_nodes_is_held_on_disk_not_in_memory() {
    let backend = stored_backend();
    let (_certs, a, b) = upload_pair(backend.addr);
    // Warm both up (a first upload, so steady-state buffers exist), then measure a second one.
    let warm = data(8 * MIB);
    let location = tus_create(a.addr, warm.len());
    for (i, chunk) in warm.chunks(4 * MIB).enumerate() {
        assert_eq!(tus_patch(a.addr, &location, i * 4 * MIB, chunk).status, 204);
    }
    let before = [rss_kib(a.pid()), rss_kib(b.pid())];
    let file = data(64 * MIB);
    let location = tus_create(a.addr, file.len());
    let chunks: Vec<&[u8]> = file.chunks(4 * MIB).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let r = tus_patch(a.addr, &location, i * 4 * MIB, chunk);
        assert_eq!(r.status, 204, "{}", r.text());
        if i + 2 == chunks.len() {
            // 60 MiB acknowledged: each node's store holds a few records, none of them bytes.
            for t in [&a, &b] {
                let records = fresh_store_line(t).records;
                eprintln!("{records} records in the store");
                assert!(records < 16, "{records} records in the store");
            }
            // And the peer's spool file holds them.
            let name = location.rsplit('/').next().unwrap();
            let copy = b.config_path.parent().unwrap().join("spool").join(name);
            assert_eq!(std::fs::metadata(&copy).unwrap().len(), 60 * MIB as u64);
        }
    }
    let got = backend.received();
    assert_eq!(got.len(), 2);
    assert_eq!(sha(&got[1].body), sha(&file));
    for (t, before) in [&a, &b].into_iter().zip(before) {
        let grew = rss_kib(t.pid()).saturating_sub(before);
        eprintln!("resident memory grew by {grew} KiB (from {before} KiB)");
        assert!(grew < 32 * 1024, "resident memory grew by {grew} KiB");
    }
}

#[test]
fn a_node_that_never_saw_the_bytes_fetches_them_from_a_peer() {
    let backend = stored_backend();
    let (_certs, configs) = upload_mesh(&["a", "b", "c"], backend.addr, "");
    let a = Tether::start(&configs[0]);
    let b = Tether::start(&configs[1]);
    wait_peer(&a, "b", "up");
    let file = data(10 * MIB);
    let location = tus_create(a.addr, file.len());
    for (i, chunk) in file[..8 * MIB].chunks(4 * MIB).enumerate() {
        assert_eq!(tus_patch(a.addr, &location, i * 4 * MIB, chunk).status, 204);
    }
    // c joins after the appends: it gets the upload's record in its snapshot, not its bytes.
    let c = Tether::start(&configs[2]);
    wait_peer(&c, "a", "up");
    wait_peer(&c, "b", "up");
    let r = request(c.addr, "HEAD", &location, TUS, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("upload-offset"), Some("8388608"));
    let r = tus_patch(c.addr, &location, 8 * MIB, &file[8 * MIB..]);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("tether-upload-status"), Some("201"));
    let got = backend.received();
    assert_eq!(got.len(), 1, "the backend gets the upload once");
    assert_eq!(sha(&got[0].body), sha(&file));
    c.wait_log("uploads: fetched bytes 0..8388608");
    drop(b);
}

#[test]
fn a_sync_write_made_while_a_large_upload_streams_is_acknowledged() {
    let backend = stored_backend();
    let (_certs, configs) = upload_mesh(&["a", "b"], backend.addr, "window = 262144\n");
    let a = Tether::start_with_env(&configs[0], &[], &[("TETHER_TEST_ENDPOINTS", "1")]);
    let b = Tether::start(&configs[1]);
    wait_peer(&a, "b", "up");
    let file = data(48 * MIB);
    let location = tus_create(a.addr, file.len());
    let (addr, uploading) = (
        a.addr,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
    );
    let flag = uploading.clone();
    let upload = std::thread::spawn(move || {
        let mut statuses = Vec::new();
        for (i, chunk) in file.chunks(4 * MIB).enumerate() {
            statuses.push(tus_patch(addr, &location, i * 4 * MIB, chunk).status);
        }
        flag.store(false, std::sync::atomic::Ordering::Relaxed);
        (statuses, sha(&file))
    });
    let mut acknowledged = 0;
    let mut during = 0;
    for n in 0..40 {
        let streaming = uploading.load(std::sync::atomic::Ordering::Relaxed);
        let r = request(
            a.addr,
            "GET",
            &format!("/.tether/test/sync?key=k{n}"),
            "",
            b"",
        );
        assert_eq!((r.status, r.text().as_str()), (200, "acknowledged\n"));
        acknowledged += 1;
        during += usize::from(streaming);
    }
    let (statuses, want) = upload.join().unwrap();
    assert!(statuses.iter().all(|&s| s == 204), "{statuses:?}");
    assert_eq!(acknowledged, 40);
    assert!(
        during > 0,
        "no sync write was made while the upload streamed"
    );
    let got = backend.received();
    assert_eq!(got.len(), 1);
    assert_eq!(sha(&got[0].body), want);
    drop(b);
}

#[test]
fn concurrent_appends_on_two_nodes_let_one_win_and_never_interleave() {
    let backend = stored_backend();
    let (_certs, a, b) = upload_pair(backend.addr);
    const ROUNDS: usize = 4;
    const CHUNK: usize = 256 * 1024;
    let location = tus_create(a.addr, ROUNDS * CHUNK);
    let mut winners: Vec<u8> = Vec::new();
    let mut rounds = 0;
    while winners.len() < ROUNDS * CHUNK {
        rounds += 1;
        assert!(rounds < 40, "no append won in {rounds} rounds");
        let offset = winners.len();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = [(a.addr, 0xa0u8), (b.addr, 0xb0u8)]
            .into_iter()
            .map(|(addr, mark)| {
                let (barrier, location) = (barrier.clone(), location.clone());
                std::thread::spawn(move || {
                    let chunk = vec![mark.wrapping_add(rounds as u8); CHUNK];
                    barrier.wait();
                    (tus_patch(addr, &location, offset, &chunk).status, chunk)
                })
            })
            .collect();
        let results: Vec<(u16, Vec<u8>)> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<&(u16, Vec<u8>)> = results.iter().filter(|(s, _)| *s == 204).collect();
        eprintln!(
            "round {rounds} at {offset}: {:?}",
            results.iter().map(|r| r.0).collect::<Vec<_>>()
        );
        assert!(won.len() <= 1, "two appends at offset {offset} both won");
        for (status, _) in &results {
            assert!(
                matches!(status, 204 | 409 | 423),
                "an append answered {status}"
            );
        }
        if let Some((_, chunk)) = won.first() {
            winners.extend_from_slice(chunk);
        }
    }
    let got = backend.received();
    assert_eq!(got.len(), 1, "the backend gets the upload once");
    assert_eq!(
        sha(&got[0].body),
        sha(&winners),
        "exactly the winners' bytes, in order"
    );
}
