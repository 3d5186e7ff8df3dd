//! A real tus client through tether (issue #17): the Python library tus-py-client (`tuspy` on PyPI,
//! `import tusclient`) uploads a file in chunks smaller than the file, and, in a second process, resumes
//! an upload from its stored URL. The backend must receive the exact bytes, once. `scripts/test`
//! installs the library; without it these tests fail (they never pass by skipping).

mod common;

use common::login::*;
use common::uploads::*;
use common::*;
use std::net::SocketAddr;
use std::process::Command;

/// Uploads `argv[2]` to the tus endpoint `argv[1]` in chunks of `argv[3]` bytes, up to offset `argv[4]`
/// (0: the whole file); `argv[5]`, when not empty, is a stored upload URL to resume; `argv[6]` a
/// `Cookie` value; `argv[7]`, when not empty, sends each resumed chunk with `Upload-Checksum` (sha256).
/// Prints `url offset-at-start offset-at-end`.
const SCRIPT: &str = r#"
import hashlib, sys
from tusclient import client
from tusclient.uploader import Uploader
url, path, chunk, stop, resume, cookie, checksum = sys.argv[1:8]

class Sha256Uploader(Uploader):
    # tuspy's checksum extension speaks sha1; tether's, sha256 (Tus-Checksum-Algorithm).
    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)

c = client.TusClient(url, headers={"Cookie": cookie} if cookie else {})
if resume and checksum:
    up = Sha256Uploader(file_path=path, client=c, url=resume, chunk_size=int(chunk), upload_checksum=True)
elif resume:
    up = c.uploader(file_path=path, url=resume, chunk_size=int(chunk))
else:
    up = c.uploader(file_path=path, chunk_size=int(chunk), metadata={"filename": "report.pdf"})
start = up.offset
up.upload(stop_at=int(stop) or None)
print(up.url, start, up.offset)
"#;

/// What one run of the client printed: the upload's URL, its offset at the start and at the end.
struct Run {
    url: String,
    start: usize,
    end: usize,
}

fn tus_py(
    endpoint: &str,
    file: &std::path::Path,
    chunk: usize,
    stop: usize,
    resume: &str,
    cookie: &str,
    checksum: bool,
) -> Run {
    // The interpreter scripts/test installed tuspy for.
    let python = std::env::var("TETHER_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import tusclient"])
        .output()
        .unwrap_or_else(|e| {
            panic!("{python} did not run ({e}): scripts/test installs python3 and tuspy")
        });
    assert!(
        probe.status.success(),
        "tus-py-client is not installed (`import tusclient` failed: {}); run scripts/test, which installs it (pip install tuspy)",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let out = Command::new(&python)
        .args(["-c", SCRIPT, endpoint])
        .arg(file)
        .args([&chunk.to_string(), &stop.to_string(), resume, cookie])
        .arg(if checksum { "sha256" } else { "" })
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the tus client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    let [url, start, end] = fields[..] else {
        panic!("unexpected output: {stdout}");
    };
    Run {
        url: url.to_string(),
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
    }
}

fn node(backend: SocketAddr, route: &str, extra: &str) -> Tether {
    Tether::start(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[clusters.app]\nbackends = [{{ address = \"{backend}\" }}]\n\n\
         [[routes]]\npath_prefix = \"/up/\"\ncluster = \"app\"\nuploads = true\n{route}\n\n\
         [[routes]]\ncluster = \"app\"\n\n[uploads]\n\n{extra}\n"
    ))
}

/// A ~5 MiB file (not a whole number of chunks) in a temporary directory.
fn file(seed: u64) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.pdf");
    let bytes = data(5 * MIB + 12345, seed);
    std::fs::write(&path, &bytes).unwrap();
    (dir, path, bytes)
}

#[test]
fn tus_py_client_uploads_5_mib_in_1_mib_chunks_and_the_backend_gets_the_exact_bytes() {
    let backend = stored_backend();
    let t = node(backend.addr, "", "");
    let (_dir, path, bytes) = file(1);
    let run = tus_py(&t.url("/up/files"), &path, MIB, 0, "", "", false);
    assert!(run.url.contains("/.tether/uploads/"), "{}", run.url);
    assert_eq!((run.start, run.end), (0, bytes.len()));
    let got = backend.received();
    assert_eq!(got.len(), 1, "one request at the backend");
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/up/files");
    assert_eq!(
        got[0].header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    // tuspy's metadata, verbatim: "filename" and base64 of "report.pdf".
    assert_eq!(
        got[0].header("x-tether-upload-metadata"),
        Some("filename cmVwb3J0LnBkZg==")
    );
    assert_eq!(sha(&got[0].body), sha(&bytes));
}

#[test]
fn tus_py_client_resumes_from_a_stored_url_in_a_new_process() {
    let backend = stored_backend();
    let t = node(
        backend.addr,
        "auth = \"login\"",
        &format!("[pools.demo]\nusers = \"{}\"\n", users_file()),
    );
    let r = form_login_at(t.addr, "files.test", "alice", "tether-demo");
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = session_cookie(&r);
    let (_dir, path, bytes) = file(2);
    // The first process stops after 2.5 MiB (three PATCHes); nothing reaches the backend yet.
    let first = tus_py(
        &t.url("/up/files"),
        &path,
        MIB,
        5 * MIB / 2,
        "",
        &cookie,
        false,
    );
    assert_eq!(first.end, 5 * MIB / 2);
    assert_eq!(backend.request_count(), 0);
    // A new process with the stored URL asks for the offset and sends the rest, each chunk with its
    // sha256 in Upload-Checksum.
    let second = tus_py(
        &t.url("/up/files"),
        &path,
        MIB,
        0,
        &first.url,
        &cookie,
        true,
    );
    assert_eq!(second.url, first.url);
    assert_eq!((second.start, second.end), (first.end, bytes.len()));
    let got = backend.received();
    assert_eq!(got.len(), 1, "the backend gets the upload once");
    assert_eq!(sha(&got[0].body), sha(&bytes));
    assert_eq!(got[0].header("x-tether-user"), Some("alice"));
}
