//! Users files: one pool of users, each with an argon2id hash, roles and groups, in TOML.
//!
//! ```toml
//! [[users]]
//! name = "alice"
//! hash = "$argon2id$v=19$m=19456,t=2,p=1$...$..."
//! roles = ["user"]
//! groups = []
//! ```
//!
//! Loading reports every problem as `file:line: key: message`, like the config loader (whose locating code it
//! shares). `tether users add` writes these files through [`UsersFile::add_or_replace`] and
//! [`UsersFile::save`]; saving rewrites the whole file (comments are not kept).

use super::password;
use crate::config::{ConfigError, ConfigErrors, locate, syntax_error};
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Longest user, role or group name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// One user of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name (see [`check_name`] for the characters allowed).
    pub name: String,
    /// argon2id PHC string.
    pub hash: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// No logins (an operator's `POST /api/users/NAME/disable`, or `disabled = true` in the file); sessions
    /// already open stay until they end or are revoked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// The file as written: a single array of tables.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Schema {
    #[serde(default)]
    users: Vec<User>,
}

/// A pool of users, in file order, names unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersFile {
    pub users: Vec<User>,
}

/// Whether `name` may be a user, role or group name: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits and
/// `.`, `_`, `-`, `@`, starting with a letter or digit. The message says what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} bytes"));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!("{name:?} must start with a letter or digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(format!(
            "{c:?} is not allowed (letters, digits, '.', '_', '-', '@')"
        ));
    }
    Ok(())
}

impl UsersFile {
    /// Reads and validates a users file.
    pub fn load(path: &Path) -> Result<UsersFile, ConfigErrors> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => UsersFile::load_str(&text, &file),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file,
                line: 0,
                key: String::new(),
                message: format!("cannot read the users file: {e}"),
            }])),
        }
    }

    /// Parses and validates users file text; `file` labels errors. Reports every problem, in file order.
    pub fn load_str(text: &str, file: &str) -> Result<UsersFile, ConfigErrors> {
        let schema: Schema = match toml::from_str(text) {
            Ok(s) => s,
            Err(e) => return Err(ConfigErrors(vec![syntax_error(&e, text, file)])),
        };
        let mut issues: Vec<(String, String)> = Vec::new();
        for (i, user) in schema.users.iter().enumerate() {
            if let Err(m) = check_name(&user.name) {
                issues.push((
                    format!("users[{i}].name"),
                    format!("invalid user name: {m}"),
                ));
            } else if let Some(first) = schema.users[..i].iter().position(|u| u.name == user.name) {
                issues.push((
                    format!("users[{i}].name"),
                    format!(
                        "duplicate user {:?} (first at users[{first}], line {})",
                        user.name,
                        locate(text, &format!("users[{first}].name"))
                    ),
                ));
            }
            if let Err(e) = password::check_hash(&user.hash) {
                issues.push((format!("users[{i}].hash"), e.to_string()));
            }
            for (field, list) in [("roles", &user.roles), ("groups", &user.groups)] {
                for (j, item) in list.iter().enumerate() {
                    if let Err(m) = check_name(item) {
                        issues.push((
                            format!("users[{i}].{field}[{j}]"),
                            format!("invalid name: {m}"),
                        ));
                    } else if list[..j].contains(item) {
                        issues.push((
                            format!("users[{i}].{field}[{j}]"),
                            format!("{item:?} is listed twice"),
                        ));
                    }
                }
            }
        }
        if issues.is_empty() {
            return Ok(UsersFile {
                users: schema.users,
            });
        }
        let mut errors: Vec<ConfigError> = issues
            .into_iter()
            .map(|(key, message)| ConfigError {
                file: file.to_string(),
                line: locate(text, &key),
                key,
                message,
            })
            .collect();
        errors.sort_by_key(|e| e.line);
        Err(ConfigErrors(errors))
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Adds a user, or replaces the hash, roles and groups of the one with that name (keeping its place).
    /// Returns whether one was replaced. Refuses an invalid name, a hash that is not argon2id, and invalid or
    /// repeated role and group names, with a one-line message.
    pub fn add_or_replace(
        &mut self,
        name: &str,
        hash: &str,
        roles: &[String],
        groups: &[String],
    ) -> Result<bool, String> {
        check_name(name).map_err(|m| format!("invalid user name: {m}"))?;
        password::check_hash(hash).map_err(|e| e.to_string())?;
        for (what, list) in [("role", roles), ("group", groups)] {
            for (j, item) in list.iter().enumerate() {
                check_name(item).map_err(|m| format!("invalid {what} name: {m}"))?;
                if list[..j].contains(item) {
                    return Err(format!("{what} {item:?} is given twice"));
                }
            }
        }
        let user = User {
            name: name.to_string(),
            hash: hash.to_string(),
            roles: roles.to_vec(),
            groups: groups.to_vec(),
            disabled: false,
        };
        match self.users.iter_mut().find(|u| u.name == name) {
            Some(existing) => {
                *existing = user;
                Ok(true)
            }
            None => {
                self.users.push(user);
                Ok(false)
            }
        }
    }

    /// The file's text: a header comment and one `[[users]]` table per user.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(&Schema {
            users: self.users.clone(),
        })
        .expect("users serialize to TOML");
        format!(
            "# tether users file (argon2id hashes), written by `tether users add`; see docs/CONFIG.md.\n\n{body}"
        )
    }

    /// Writes the file atomically: a temporary file in the same directory, created with mode 0600 on unix,
    /// written and synced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
        let tmp = dir.join(format!(
            ".{}.tmp.{}",
            base.to_string_lossy(),
            std::process::id()
        ));
        let result = write_private(&tmp, self.to_toml().as_bytes())
            .and_then(|()| std::fs::rename(&tmp, path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        // Make the rename itself durable (best effort: not every platform opens directories).
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Creates `path` (which must not exist) readable and writable by its owner only, writes `bytes`, syncs.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    /// One real hash for all the tests here (hashing costs tens of milliseconds).
    static HASH: LazyLock<String> = LazyLock::new(|| password::hash("tether-demo").unwrap());

    fn errors(text: &str) -> Vec<String> {
        UsersFile::load_str(text, "users.toml")
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn names() {
        for ok in ["alice", "bob.smith", "b_o-b", "alice@example.com", "0day"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a b",
            "al/ice",
            "a\"b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loads_a_good_file_and_an_empty_one() {
        let text = format!(
            "[[users]]\nname = \"alice\"\nhash = \"{h}\"\nroles = [\"user\"]\n\n\
             [[users]]\nname = \"bob\"\nhash = \"{h}\"\nroles = [\"admin\"]\ngroups = [\"ops\"]\n",
            h = *HASH
        );
        let f = UsersFile::load_str(&text, "users.toml").unwrap();
        assert_eq!(f.users.len(), 2);
        assert_eq!(f.get("bob").unwrap().groups, ["ops"]);
        assert!(f.get("alice").unwrap().groups.is_empty());
        assert!(password::verify(
            &f.get("alice").unwrap().hash,
            "tether-demo"
        ));
        assert_eq!(UsersFile::load_str("", "u").unwrap().users.len(), 0);
        assert_eq!(
            UsersFile::load_str("users = []", "u").unwrap().users.len(),
            0
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let h = &*HASH;
        // Unknown key: a syntax-level error, located.
        let e = errors(&format!(
            "[[users]]\nname = \"alice\"\nhash = \"{h}\"\nrole = [\"user\"]\n"
        ));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("users.toml:4: users[0].role: unknown key `role`"),
            "{e:?}"
        );
        // Missing hash.
        let e = errors("[[users]]\nname = \"alice\"\n");
        assert!(
            e[0].starts_with("users.toml:1: users[0].hash: this required key is missing"),
            "{e:?}"
        );
        // Every validation problem, in file order.
        let text = format!(
            "[[users]]\nname = \"alice\"\nhash = \"{h}\"\n\n\
             [[users]]\nname = \"bad name\"\nhash = \"plaintext\"\n\n\
             [[users]]\nname = \"alice\"\nhash = \"{h}\"\nroles = [\"user\", \"user\"]\n"
        );
        let e = errors(&text);
        assert_eq!(
            e,
            [
                "users.toml:6: users[1].name: invalid user name: ' ' is not allowed (letters, digits, '.', '_', '-', '@')",
                "users.toml:7: users[1].hash: not an argon2id PHC string: expected \
                 $argon2id$v=19$m=...,t=...,p=...$SALT$HASH, as `tether users add` writes",
                "users.toml:10: users[2].name: duplicate user \"alice\" (first at users[0], line 2)",
                "users.toml:12: users[2].roles[1]: \"user\" is listed twice",
            ],
            "{e:#?}"
        );
        // Unreadable file.
        let e = UsersFile::load(Path::new("/nonexistent/users.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/users.toml: cannot read the users file:"),
            "{e}"
        );
    }

    #[test]
    fn add_or_replace_validates_and_keeps_order() {
        let mut f = UsersFile::default();
        let user = ["user".to_string()];
        assert_eq!(f.add_or_replace("alice", &HASH, &user, &[]), Ok(false));
        assert_eq!(f.add_or_replace("bob", &HASH, &[], &[]), Ok(false));
        assert_eq!(
            f.add_or_replace("alice", &HASH, &[], &["ops".into()]),
            Ok(true)
        );
        assert_eq!(f.users[0].name, "alice");
        assert_eq!(f.users[0].groups, ["ops"]);
        assert!(f.users[0].roles.is_empty());
        assert!(f.add_or_replace("a b", &HASH, &[], &[]).is_err());
        assert!(f.add_or_replace("carol", "plaintext", &[], &[]).is_err());
        assert!(
            f.add_or_replace("carol", &HASH, &["x y".into()], &[])
                .is_err()
        );
        assert!(f.add_or_replace("carol", &HASH, &user, &[]).is_ok());
        let twice = ["g".to_string(), "g".to_string()];
        assert!(f.add_or_replace("dave", &HASH, &[], &twice).is_err());
    }

    #[test]
    fn save_round_trips_atomically_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut f = UsersFile::default();
        f.add_or_replace("alice", &HASH, &["user".into()], &[])
            .unwrap();
        f.add_or_replace(
            "bob",
            &HASH,
            &["admin".into()],
            &["ops".into(), "dev".into()],
        )
        .unwrap();
        f.save(&path).unwrap();
        assert_eq!(UsersFile::load(&path).unwrap(), f);
        // Saving again replaces the file; no temporary file is left behind.
        f.add_or_replace("carol", &HASH, &[], &[]).unwrap();
        f.save(&path).unwrap();
        assert_eq!(UsersFile::load(&path).unwrap().users.len(), 3);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["users.toml"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
