//! The upload spool's limits and bad input end to end (issue #17, point 5), beside tests/uploads.rs:
//! the `104` of an IETF creation, bodies over `max_chunk` or the declared length, racing appends, a full
//! disk, user and tenant quotas, another user's upload, expiry swept on both nodes, forward retries, and
//! a slow uploader that holds no QoS slot. Real `tether` binaries and real backends on loopback; the
//! assertions are on statuses, counts and bytes.

mod common;

use common::cluster::*;
use common::login::*;
use common::uploads::*;
use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// One node: cluster `app` over `backends` (`cluster`: extra keys), a `/up/` route accepting uploads
/// (`route`: extra keys), a catch-all route, and `[uploads]` (`uploads`: extra keys; max_chunk 1 MiB
/// unless they set it).
fn config(
    backends: &[SocketAddr],
    cluster: &str,
    route: &str,
    uploads: &str,
    extra: &str,
) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[clusters.app]\n{cluster}\nbackends = [{}]\n\n\
         [[routes]]\npath_prefix = \"/up/\"\ncluster = \"app\"\nuploads = true\n{route}\n\n\
         [[routes]]\ncluster = \"app\"\n\n[uploads]\n{}{uploads}\n\n{extra}\n",
        list.join(", "),
        if uploads.contains("max_chunk") {
            ""
        } else {
            "max_chunk = 1048576\n"
        }
    )
}

fn plain(backend: SocketAddr) -> String {
    config(&[backend], "", "", "", "")
}

/// Sends a request's head with `Expect: 100-continue` and reads the answer without sending the body:
/// what tether refuses before reading a body.
fn refused_before_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    len: usize,
) -> (Vec<Response>, Response) {
    let mut c = Client::connect(addr);
    c.send(&head(
        method,
        path,
        &format!("{headers}Expect: 100-continue\r\n"),
        len,
    ));
    read_final(&mut c, false)
}

#[test]
fn an_ietf_creation_gets_104_with_its_location_before_the_body_and_a_cut_client_resumes_there() {
    let backend = stored_backend();
    let t = Tether::start(&plain(backend.addr));
    let file = data(600_000, 1);
    // The creation sends a third of its body, reads the 104, and its connection breaks.
    let mut c = Client::connect(t.addr);
    let mut bytes = head(
        "POST",
        "/up/mail",
        "Upload-Complete: ?1\r\nUpload-Draft-Interop-Version: 6\r\nContent-Type: application/octet-stream\r\n",
        file.len(),
    );
    bytes.extend_from_slice(&file[..200_000]);
    c.send(&bytes);
    let interim = c.read_response(false);
    assert_eq!(interim.status, 104, "{interim:?}");
    let location = interim.header("location").unwrap().to_string();
    assert!(location.starts_with("/.tether/uploads/"), "{location}");
    assert_eq!(interim.header("upload-draft-interop-version"), Some("6"));
    assert!(
        interim
            .header("upload-limit")
            .is_some_and(|v| v.contains("max-append-size=1048576")),
        "{interim:?}"
    );
    drop(c);
    // The upload the 104 named exists, at offset 0: nothing of the cut body counts.
    let r = request(t.addr, "HEAD", &location, "", b"");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("upload-offset"), Some("0"));
    assert_eq!(r.header("upload-complete"), Some("?0"));
    // The client resumes there with everything.
    let r = ietf_patch(t.addr, &location, 0, &file, true);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.text(), "stored");
    let got = backend.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/up/mail");
    assert_eq!(sha(&got[0].body), sha(&file));
    // A creation that is not cut: one 104, then the final answer naming the same upload.
    let (interim, r) = exchange(
        t.addr,
        "POST",
        "/up/mail",
        "Upload-Complete: ?0\r\nContent-Type: application/octet-stream\r\n",
        &file[..1000],
    );
    assert_eq!(interim.len(), 1, "{interim:?}");
    assert_eq!(interim[0].status, 104);
    assert_eq!(interim[0].header("upload-draft-interop-version"), None);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("location"), interim[0].header("location"));
    assert_eq!(r.header("upload-offset"), Some("1000"));
    // An HTTP/1.0 client gets no interim answer (it could take it for the final one).
    let r = raw_exchange(
        t.addr,
        b"POST /up/mail HTTP/1.0\r\nHost: files.test\r\nUpload-Complete: ?0\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // tus has no interim answer.
    let (interim, r) = exchange(
        t.addr,
        "POST",
        "/up/files",
        &format!("{TUS}Upload-Length: 10\r\n"),
        b"",
    );
    assert!(interim.is_empty(), "{interim:?}");
    assert_eq!(r.status, 201);
}

#[test]
fn bodies_over_max_chunk_or_the_declared_length_get_413_and_leave_the_offset() {
    let backend = stored_backend();
    let t = Tether::start(&plain(backend.addr));
    let over = MIB + 1;
    // tus: an append over max_chunk, refused before its body is read.
    let location = tus_created(t.addr, 3 * MIB, "");
    let (interim, r) = refused_before_body(
        t.addr,
        "PATCH",
        &location,
        &format!("{TUS}Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"),
        over,
    );
    assert!(interim.is_empty(), "no 100 Continue: {interim:?}");
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(tus_offset(t.addr, &location, ""), Some(0));
    // tus creation-with-upload over max_chunk: no upload is made.
    let (_, r) = refused_before_body(
        t.addr,
        "POST",
        "/up/files",
        &format!(
            "{TUS}Upload-Length: {}\r\nContent-Type: application/offset+octet-stream\r\n",
            3 * MIB
        ),
        over,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.header("location"), None);
    // A chunked creation-with-upload: its size is unknown until read, so it is not taken.
    let r = raw_exchange(
        t.addr,
        b"POST /up/files HTTP/1.1\r\nHost: files.test\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n\
          Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 411, "{}", r.text());
    // IETF: a creation over max_chunk is refused before anything is recorded (no 104, no 100).
    let (interim, r) =
        refused_before_body(t.addr, "POST", "/up/mail", "Upload-Complete: ?0\r\n", over);
    assert!(interim.is_empty(), "{interim:?}");
    assert_eq!(r.status, 413);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    // IETF: a declared length, then an append beyond it.
    let (_, r) = exchange(
        t.addr,
        "POST",
        "/up/mail",
        "Upload-Complete: ?0\r\nUpload-Length: 100\r\n",
        &[7u8; 60],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let location = r.header("location").unwrap().to_string();
    assert_eq!(
        ietf_patch(t.addr, &location, 60, &[7u8; 41], false).status,
        413
    );
    let r = request(t.addr, "HEAD", &location, "", b"");
    assert_eq!(r.header("upload-offset"), Some("60"));
    assert_eq!(r.header("upload-length"), Some("100"));
    // An unknown IETF upload: 404 in the protocol's problem JSON.
    let r = ietf_patch(
        t.addr,
        "/.tether/uploads/0123456789abcdef0123456789abcdef",
        0,
        b"x",
        false,
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        backend.request_count(),
        0,
        "nothing half-written is forwarded"
    );
}

#[test]
fn concurrent_appends_to_one_upload_one_wins_and_the_bytes_never_interleave() {
    let backend = stored_backend();
    let t = Tether::start(&plain(backend.addr));
    let len = 256 * 1024;
    let location = tus_created(t.addr, 3 * len, "");
    let patch_head = |offset: usize| {
        head(
            "PATCH",
            &location,
            &format!(
                "{TUS}Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
            ),
            len,
        )
    };
    // A slow append sends half its body; a second one at the same offset completes meanwhile.
    let slow_bytes = data(len, 10);
    let mut slow = Client::connect(t.addr);
    let mut bytes = patch_head(0);
    bytes.extend_from_slice(&slow_bytes[..len / 2]);
    slow.send(&bytes);
    let first = data(len, 11);
    let r = tus_patch(t.addr, &location, 0, &first, "");
    assert_eq!(r.status, 204, "{}", r.text());
    slow.send(&slow_bytes[len / 2..]);
    let r = slow.read_response(false);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.header("upload-offset"), Some(len.to_string().as_str()));
    // Six appends at the same offset at once: one wins, the others are refused.
    let racers: Vec<Vec<u8>> = (0..6).map(|i| data(len, 20 + i)).collect();
    let barrier = Arc::new(Barrier::new(racers.len()));
    let handles: Vec<_> = racers
        .iter()
        .map(|body| {
            let mut bytes = patch_head(len);
            bytes.extend_from_slice(body);
            let (barrier, addr) = (barrier.clone(), t.addr);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                barrier.wait();
                c.send(&bytes);
                c.read_response(false).status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 204).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        racers.len() - 1,
        "{statuses:?}"
    );
    let winner = &racers[statuses.iter().position(|&s| s == 204).unwrap()];
    assert_eq!(tus_offset(t.addr, &location, ""), Some(2 * len));
    // The last append completes it: the backend gets the first append and the winner, unmixed.
    let last = data(len, 30);
    let r = tus_patch(t.addr, &location, 2 * len, &last, "");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("tether-upload-status"), Some("201"));
    let got = backend.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        sha(&got[0].body),
        sha(&[&first[..], winner, &last].concat())
    );
}

/// A tmpfs mounted for the length of a test (the test runs as root, as in CI); unmounted when dropped,
/// whatever the test's outcome.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs(dir),
            Ok(o) => panic!(
                "could not mount a {size} tmpfs at {} for the full-disk test (it needs root, as CI has): {}",
                dir.path().display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("could not run mount for the full-disk test: {e}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.0.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a process being killed): detach it now, freed when the last user goes.
            let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }
}

#[test]
fn a_full_disk_answers_507_and_keeps_the_acknowledged_offset() {
    let disk = Tmpfs::mount("2m");
    let backend = stored_backend();
    // Declared after the mount: dropped (killed) before it is unmounted.
    let t = Tether::start(&config(
        &[backend.addr],
        "",
        "",
        &format!("dir = \"{}\"\nmax_chunk = 2097152", disk.0.path().display()),
        "",
    ));
    let file = data(3 * MIB, 40);
    let location = tus_created(t.addr, file.len(), "");
    let part = 3 * MIB / 2;
    let r = tus_patch(t.addr, &location, 0, &file[..part], "");
    assert_eq!(r.status, 204, "{}", r.text());
    // 1 MiB more does not fit in what is left of 2 MiB.
    let r = tus_patch(t.addr, &location, part, &file[part..part + MIB], "");
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(tus_offset(t.addr, &location, ""), Some(part));
    // What fits goes on from the acknowledged offset (over whatever the failed write left).
    let quarter = MIB / 4;
    let r = tus_patch(t.addr, &location, part, &file[part..part + quarter], "");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(tus_offset(t.addr, &location, ""), Some(part + quarter));
    // Deleting it frees the disk: a new upload's first 1.5 MiB fit again.
    assert_eq!(request(t.addr, "DELETE", &location, TUS, b"").status, 204);
    let deadline = Instant::now() + PATIENCE;
    while spool_files(disk.0.path()) > 0 {
        assert!(Instant::now() < deadline, "the deleted upload's file stays");
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = tus_created(t.addr, file.len(), "");
    assert_eq!(tus_patch(t.addr, &again, 0, &file[..part], "").status, 204);
    assert_eq!(
        backend.request_count(),
        0,
        "nothing half-written is forwarded"
    );
    drop(t);
}

/// One node whose `/up/` route needs a login (`[pools.acme]`: alice and bob of the example users file).
fn login_config(backend: SocketAddr, uploads: &str) -> String {
    config(
        &[backend],
        "",
        "auth = \"login\"",
        uploads,
        &format!("[pools.acme]\nusers = \"{}\"\n", users_file()),
    )
}

fn cookie_of(addr: SocketAddr, user: &str) -> String {
    let r = form_login_at(addr, "files.test", user, "tether-demo");
    assert_eq!(r.status, 303, "{}", r.text());
    format!("Cookie: {}\r\n", session_cookie(&r))
}

#[test]
fn user_and_tenant_quotas_refuse_the_upload_that_would_pass_them_and_freed_bytes_count_again() {
    let backend = stored_backend();
    // acme's own cap (1500) rather than every tenant's (1 MB).
    let t = Tether::start(&login_config(
        backend.addr,
        "user_quota = 1000\ntenant_quota = 1000000\ntenant_quotas = { acme = 1500 }",
    ));
    let (alice, bob) = (cookie_of(t.addr, "alice"), cookie_of(t.addr, "bob"));
    let a1 = tus_created(t.addr, 600, &alice);
    let r = tus_create(t.addr, 500, &alice);
    assert_eq!(r.status, 413);
    assert!(r.text().contains("user_quota"), "{}", r.text());
    let a2 = tus_created(t.addr, 400, &alice);
    // The tenant (acme) holds 1000: bob may add 500, not 600.
    let r = tus_create(t.addr, 600, &bob);
    assert_eq!(r.status, 413);
    assert!(r.text().contains("tenant_quota"), "{}", r.text());
    tus_created(t.addr, 500, &bob);
    // The IETF protocol answers the same in its problem JSON.
    let (_, r) = exchange(
        t.addr,
        "POST",
        "/up/mail",
        &format!("Upload-Complete: ?0\r\nUpload-Length: 1\r\n{bob}"),
        b"",
    );
    assert_eq!(r.status, 413);
    assert!(r.text().contains("tenant_quota"), "{}", r.text());
    // A deletion makes room at once.
    assert_eq!(
        request(t.addr, "DELETE", &a2, &format!("{TUS}{alice}"), b"").status,
        204
    );
    tus_created(t.addr, 400, &bob);
    assert_eq!(tus_create(t.addr, 1, &bob).status, 413);
    // So does a completed (forwarded) upload: alice's 600 go to the backend, and she may hold 600 anew.
    let r = tus_patch(t.addr, &a1, 0, &data(600, 50), &alice);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("tether-upload-status"), Some("201"));
    tus_created(t.addr, 600, &alice);
    assert_eq!(tus_create(t.addr, 1, &alice).status, 413);
    assert_eq!(backend.request_count(), 1);
}

#[test]
fn another_users_or_another_sessions_upload_is_not_there() {
    let backend = stored_backend();
    let t = Tether::start(&login_config(backend.addr, ""));
    let (alice, bob) = (cookie_of(t.addr, "alice"), cookie_of(t.addr, "bob"));
    let location = tus_created(t.addr, 10, &alice);
    assert_eq!(tus_offset(t.addr, &location, &bob), None);
    assert_eq!(
        tus_patch(t.addr, &location, 0, b"0123456789", &bob).status,
        404
    );
    assert_eq!(
        request(t.addr, "DELETE", &location, &format!("{TUS}{bob}"), b"").status,
        404
    );
    // Alice in another login session, and nobody at all, do not see it either.
    let alice_again = cookie_of(t.addr, "alice");
    assert_eq!(tus_offset(t.addr, &location, &alice_again), None);
    assert_eq!(tus_offset(t.addr, &location, ""), None);
    // Her own session finds it untouched and finishes it.
    assert_eq!(tus_offset(t.addr, &location, &alice), Some(0));
    let r = tus_patch(t.addr, &location, 0, b"0123456789", &alice);
    assert_eq!(r.status, 204, "{}", r.text());
    let got = backend.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"0123456789");
    assert_eq!(got[0].header("x-tether-user"), Some("alice"));
}

#[test]
fn an_expired_upload_is_gone_from_both_nodes_and_both_spool_dirs() {
    let backend = stored_backend();
    let certs = tempfile::tempdir().unwrap();
    cluster_certs(certs.path(), "a,b");
    let configs: Vec<String> = mesh_configs(&["a", "b"], certs.path(), &[backend.addr])
        .into_iter()
        .map(|c| {
            c.replacen(
                "[[routes]]",
                "[[routes]]\npath_prefix = \"/up/\"\ncluster = \"app\"\nuploads = true\n[[routes]]",
                1,
            ) + "\n[uploads]\nexpiry = \"2s\"\n"
        })
        .collect();
    let a = Tether::start(&configs[0]);
    let b = Tether::start(&configs[1]);
    wait_peer(&a, "b", "up");
    wait_peer(&b, "a", "up");
    let file = data(1000, 60);
    let location = tus_created(a.addr, file.len(), "");
    // An append at each node: each holds a spool file.
    assert_eq!(
        tus_patch(a.addr, &location, 0, &file[..400], "").status,
        204
    );
    assert_eq!(tus_offset(b.addr, &location, ""), Some(400));
    assert_eq!(
        tus_patch(b.addr, &location, 400, &file[400..700], "").status,
        204
    );
    assert_eq!(spool_files(&spool_dir(&a)), 1);
    assert_eq!(spool_files(&spool_dir(&b)), 1);
    // Left unfinished past its expiry: unknown at both nodes, and swept from both disks.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let gone = [&a, &b].iter().all(|n| {
            tus_offset(n.addr, &location, "").is_none() && spool_files(&spool_dir(n)) == 0
        });
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the expired upload stays: offsets {:?} {:?}, files {} {}",
            tus_offset(a.addr, &location, ""),
            tus_offset(b.addr, &location, ""),
            spool_files(&spool_dir(&a)),
            spool_files(&spool_dir(&b))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // An append to it now finds nothing.
    assert_eq!(
        tus_patch(a.addr, &location, 700, &file[700..], "").status,
        404
    );
    assert_eq!(backend.request_count(), 0);
}

#[test]
fn a_forward_that_fails_goes_to_the_next_backend_which_gets_the_upload_once_byte_exact() {
    // The first backend closes without answering, the second answers 503, the third takes it.
    let closes = Backend::start(|_req, _s| None);
    let busy = Backend::start(|_req, _s| Some(Reply::text(503, "busy")));
    let takes = stored_backend();
    let t = Tether::start(&config(
        &[closes.addr, busy.addr, takes.addr],
        "",
        "",
        "forward_attempts = 3",
        "",
    ));
    let file = data(300 * 1024, 70);
    let location = tus_created(t.addr, file.len(), "");
    let r = tus_patch(t.addr, &location, 0, &file, "");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("tether-upload-status"), Some("201"));
    for b in [&closes, &busy] {
        let got = b.received();
        assert_eq!(got.len(), 1, "one attempt each");
        assert_eq!(sha(&got[0].body), sha(&file));
    }
    let got = takes.received();
    assert_eq!(
        got.len(),
        1,
        "the upload reaches the backend that took it once"
    );
    assert_eq!(sha(&got[0].body), sha(&file));
    assert_eq!(tus_offset(t.addr, &location, ""), None, "forwarded: gone");
}

#[test]
fn a_backend_error_keeps_the_complete_upload_and_an_empty_patch_forwards_it_again() {
    // A 500 is the backend's answer, not a gateway's: it is not tried elsewhere (the backend may have
    // acted on it), but the upload stays whole in the spool for the client to send again.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let backend = Backend::start(move |_req, _s| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Some(Reply::text(500, "oops"))
        } else {
            Some(Reply::text(201, "stored"))
        }
    });
    let t = Tether::start(&plain(backend.addr));
    let file = data(100_000, 80);
    let location = tus_created(t.addr, file.len(), "");
    let r = tus_patch(t.addr, &location, 0, &file, "");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("tether-upload-status"), Some("500"));
    assert_eq!(tus_offset(t.addr, &location, ""), Some(file.len()));
    let r = tus_patch(t.addr, &location, file.len(), b"", "");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("tether-upload-status"), Some("201"));
    let got = backend.received();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|g| sha(&g.body) == sha(&file)));
    assert_eq!(tus_offset(t.addr, &location, ""), None);
}

#[test]
fn slow_uploaders_take_no_qos_slot_from_the_uploads_cluster() {
    let backend = Backend::start(|_req, _s| Some(Reply::text(200, "ok")));
    // One request in flight at a time; a request that waited 2 s for the slot would get 503.
    let t = Tether::start(&config(
        &[backend.addr],
        "max_inflight = 1\nmax_queue = 8\nqueue_timeout = \"2s\"",
        "",
        "",
        "",
    ));
    let len = 16 * 1024;
    let body = data(len, 90);
    let piece = 1024;
    // Three uploads in progress, each with part of its body sent: an append, a tus
    // creation-with-upload, and an IETF creation (whose 104 shows it is reading its body).
    let location = tus_created(t.addr, len, "");
    let heads = [
        head(
            "PATCH",
            &location,
            &format!("{TUS}Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"),
            len,
        ),
        head(
            "POST",
            "/up/files",
            &format!(
                "{TUS}Upload-Length: {len}\r\nContent-Type: application/offset+octet-stream\r\n"
            ),
            len,
        ),
        head("POST", "/up/mail", "Upload-Complete: ?0\r\n", len),
    ];
    let mut slow: Vec<Client> = heads
        .iter()
        .map(|h| {
            let mut c = Client::connect(t.addr);
            c.send(h);
            c.send(&body[..piece]);
            c
        })
        .collect();
    assert_eq!(slow[2].read_response(false).status, 104);
    // Plain requests to the same cluster go through meanwhile, between the uploaders' pieces.
    let mut served = 0;
    let mut sent = piece;
    for i in 0..10 {
        if get(t.addr, &format!("/plain/{i}")).status == 200 {
            served += 1;
        }
        if sent + piece < len {
            for c in &mut slow {
                c.send(&body[sent..sent + piece]);
            }
            sent += piece;
        }
    }
    assert_eq!(
        served, 10,
        "plain requests served while uploads were in progress"
    );
    assert_eq!(backend.request_count(), 10);
    // The uploads finish as usual.
    for c in &mut slow {
        c.send(&body[sent..]);
    }
    let statuses: Vec<u16> = slow
        .iter_mut()
        .map(|c| read_final(c, false).1.status)
        .collect();
    assert_eq!(statuses, [204, 201, 201]);
}
