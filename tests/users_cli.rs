//! End-to-end: `tether users add` and `tether users check` with the real binary — users added with
//! `--password-stdin` verify with their passwords, weak passwords are refused with one line and a failing exit
//! code, and the cluster example's users file holds alice and bob with `tether-demo`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use tether::auth::password::verify;
use tether::auth::users::UsersFile;

/// Runs `tether ARGS` with `stdin` written to its standard input.
fn tether(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tether");
    // A command that refuses its arguments exits without reading its input: the pipe may be closed
    // before the write, which is not the test's failure.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("writing to tether's input: {e}"),
    }
    child.wait_with_output().expect("wait for tether")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn add_two_users_then_load_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let f = file.to_str().unwrap();

    let out = tether(
        &[
            "users",
            "add",
            f,
            "alice",
            "--role",
            "user",
            "--password-stdin",
        ],
        "wonderland-42\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("alice"), "{line}");
    assert!(
        !line.contains("wonderland") && !line.contains("$argon2id$"),
        "{line}"
    );

    let out = tether(
        &[
            "users",
            "add",
            f,
            "bob",
            "--role",
            "admin",
            "--role",
            "user",
            "--group",
            "ops",
            "--password-stdin",
        ],
        "builder-of-things\r\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let users = UsersFile::load(&file).unwrap();
    assert_eq!(users.users.len(), 2);
    let alice = users.get("alice").unwrap();
    let bob = users.get("bob").unwrap();
    assert_eq!(alice.roles, ["user"]);
    assert_eq!(bob.roles, ["admin", "user"]);
    assert_eq!(bob.groups, ["ops"]);
    assert!(verify(&alice.hash, "wonderland-42"));
    assert!(
        verify(&bob.hash, "builder-of-things"),
        "the CRLF is not part of the password"
    );
    assert!(!verify(&alice.hash, "builder-of-things"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Adding alice again replaces her password and roles, in place.
    let out = tether(
        &["users", "add", f, "alice", "--password-stdin"],
        "looking-glass-7\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("updated user alice"),
        "{}",
        text(&out.stdout)
    );
    let users = UsersFile::load(&file).unwrap();
    assert_eq!(users.users[0].name, "alice");
    assert!(users.users[0].roles.is_empty());
    assert!(verify(&users.users[0].hash, "looking-glass-7"));
    assert!(!verify(&users.users[0].hash, "wonderland-42"));

    let out = tether(&["users", "check", f], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ok (2 user(s))"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn weak_passwords_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let f = file.to_str().unwrap();
    for (password, user, reason) in [
        ("tiny7", "carol", "too short"),
        ("password1", "carol", "most common"),
        ("carol-smith", "carol-smith", "user name"),
    ] {
        let out = tether(
            &["users", "add", f, user, "--password-stdin"],
            &format!("{password}\n"),
        );
        assert!(!out.status.success(), "{password:?} was accepted");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(reason), "{err}");
        assert!(!err.contains(password), "{err}");
        assert!(!file.exists(), "a refused password created the file");
    }
    // --allow-weak takes it.
    let out = tether(
        &[
            "users",
            "add",
            f,
            "carol",
            "--password-stdin",
            "--allow-weak",
        ],
        "tiny7\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(verify(
        &UsersFile::load(&file).unwrap().users[0].hash,
        "tiny7"
    ));
}

#[test]
fn bad_names_and_bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let f = file.to_str().unwrap();
    let out = tether(
        &["users", "add", f, "a b", "--password-stdin"],
        "tether-demo\n",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid user name"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(&file, "[[users]]\nname = \"alice\"\npassword = \"x\"\n").unwrap();
    let out = tether(&["users", "check", f], "");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!("{f}:3: users[0].password: unknown key")),
        "{err}"
    );
    // add refuses to rewrite a file it cannot read, and leaves it alone.
    let out = tether(
        &["users", "add", f, "bob", "--password-stdin"],
        "tether-demo\n",
    );
    assert!(!out.status.success());
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("password = \"x\"")
    );
}

#[test]
fn cluster_example_users_verify_with_tether_demo() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cluster/users.toml");
    let users = UsersFile::load(&path).unwrap();
    let alice = users
        .get("alice")
        .expect("alice in configs/cluster/users.toml");
    let bob = users.get("bob").expect("bob in configs/cluster/users.toml");
    assert_eq!(alice.roles, ["user"]);
    assert_eq!(bob.roles, ["admin"]);
    assert!(verify(&alice.hash, "tether-demo"));
    assert!(verify(&bob.hash, "tether-demo"));
    assert!(!verify(&alice.hash, "tether-dem0"));
}
