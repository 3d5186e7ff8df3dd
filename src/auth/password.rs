//! Password hashes: argon2id to PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), verification, a
//! dummy verification for unknown users, and the password rules a pool enforces when a password is set.
//!
//! Hashing and verifying cost tens of milliseconds of CPU and 19 MiB of memory each: the request path must run
//! them on a small pool of threads of their own, never on a worker.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// Memory cost in KiB. OWASP's password storage cheat sheet lists argon2id with m=19 MiB, t=2, p=1 as its
/// first recommended configuration (equivalent in strength to its m=46 MiB, t=1 one, lighter on memory): enough
/// to make GPU and ASIC guessing expensive, small enough that a handful of concurrent logins on a load balancer
/// do not matter. They are also the `argon2` crate's defaults.
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Passes over the memory (see [`MEMORY_KIB`]).
pub const ITERATIONS: u32 = 2;
/// Lanes. One: each hash runs on one thread, and the pool that runs them gets its parallelism from running
/// several hashes at once.
pub const PARALLELISM: u32 = 1;
/// Hash output length in bytes (the PHC string default).
pub const OUTPUT_LEN: usize = 32;

/// The highest costs a stored hash may ask for. Verification uses the parameters written in the hash, so a
/// users file with `m=4194304` would make every login allocate 4 GiB; loading refuses such hashes.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;
/// See [`MAX_MEMORY_KIB`].
pub const MAX_ITERATIONS: u32 = 16;
/// See [`MAX_MEMORY_KIB`].
pub const MAX_PARALLELISM: u32 = 8;

/// A hash with the parameters above whose output is random bytes, so no known password produces it:
/// [`dummy_verify`] checks against it so that an unknown user costs what a known one does.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$dGV0aGVyLWR1bW15LXNhbHQ$\
                          Gd3Lg4X7c8CjT1xvKJW8BdHnW0zk8n9QvUVSmVbrdHw";

/// Why a password or a hash was refused. Messages are one line and never include the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("password too short: at least {min} characters are required")]
    TooShort { min: usize },
    #[error("password must not be the user name")]
    SameAsUser,
    #[error("password is one of the most common passwords")]
    Common,
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("not an argon2id PHC string: {0}")]
    InvalidHash(String),
}

/// The rules a pool applies when a password is set (not when one is checked at login).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordRules {
    /// Fewest characters (Unicode scalar values) a password may have.
    pub min_length: usize,
    /// Refuse the passwords in [`COMMON_PASSWORDS`] (compared case-insensitively).
    pub refuse_common: bool,
}

impl Default for PasswordRules {
    /// At least 8 characters, common passwords refused (NIST SP 800-63B's minimum and blocklist).
    fn default() -> Self {
        PasswordRules {
            min_length: 8,
            refuse_common: true,
        }
    }
}

impl PasswordRules {
    /// Checks a new password for `username`: long enough, not the user name, not a common password.
    pub fn check(&self, password: &str, username: &str) -> Result<(), PasswordError> {
        if password.chars().count() < self.min_length {
            return Err(PasswordError::TooShort {
                min: self.min_length,
            });
        }
        if password.to_lowercase() == username.to_lowercase() {
            return Err(PasswordError::SameAsUser);
        }
        if self.refuse_common && is_common(password) {
            return Err(PasswordError::Common);
        }
        Ok(())
    }
}

/// Whether `password` is in [`COMMON_PASSWORDS`], ignoring case.
pub fn is_common(password: &str) -> bool {
    let lower = password.to_lowercase();
    COMMON_PASSWORDS.contains(&lower.as_str())
}

fn params() -> Params {
    // The constants are within argon2's bounds; a failure here is a programming error caught by the tests.
    Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, Some(OUTPUT_LEN)).expect("argon2 parameters")
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
}

/// Hashes `password` with argon2id, the parameters above and a random 16-byte salt, to a PHC string.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let salt = argon2::password_hash::try_generate_salt()
        .map_err(|e| PasswordError::Hash(format!("no random salt: {e}")))?;
    hasher()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Checks that `phc` is an argon2id (v=19) PHC string with a salt, a hash, and costs no higher than the
/// `MAX_*` constants.
pub fn check_hash(phc: &str) -> Result<(), PasswordError> {
    let invalid = |m: String| Err(PasswordError::InvalidHash(m));
    if !phc.starts_with('$') {
        return invalid(
            "expected $argon2id$v=19$m=...,t=...,p=...$SALT$HASH, as `tether users add` writes"
                .into(),
        );
    }
    let parsed = match PasswordHash::new(phc) {
        Ok(p) => p,
        Err(e) => return invalid(e.to_string()),
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return invalid(format!("algorithm is {}", parsed.algorithm.as_str()));
    }
    if parsed.version != Some(0x13) {
        return invalid("version must be v=19".to_string());
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return invalid("salt or hash missing".to_string());
    }
    let p = match Params::try_from(&parsed) {
        Ok(p) => p,
        Err(e) => return invalid(e.to_string()),
    };
    if p.m_cost() > MAX_MEMORY_KIB || p.t_cost() > MAX_ITERATIONS || p.p_cost() > MAX_PARALLELISM {
        return invalid(format!(
            "costs m={},t={},p={} exceed the limit m={MAX_MEMORY_KIB},t={MAX_ITERATIONS},p={MAX_PARALLELISM}",
            p.m_cost(),
            p.t_cost(),
            p.p_cost()
        ));
    }
    Ok(())
}

/// Whether `password` matches the PHC string `phc` (with the parameters written in it). The final comparison
/// is constant-time. A malformed hash never matches.
pub fn verify(phc: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    // Refuse other algorithms (argon2d, argon2i) rather than let the hash choose a weaker one.
    if parsed.algorithm.as_str() != "argon2id" {
        return false;
    }
    hasher()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Costs what [`verify`] against a hash with the current parameters costs, and always fails: for a login
/// with an unknown user name, so that it takes the same time as one with a known name. (A user whose stored
/// hash has other parameters verifies in a different time; re-hashing on the next successful login evens it.)
pub fn dummy_verify(password: &str) -> bool {
    // Even if some password matched DUMMY_HASH, an unknown user stays unknown.
    std::hint::black_box(verify(DUMMY_HASH, password));
    false
}

/// The most common passwords (lowercase), from the public breach-corpus top lists (SecLists, NCSC's 100k,
/// Have I Been Pwned). Refused by [`PasswordRules`] with `refuse_common`. Many are shorter than the default
/// minimum length; they stay for pools with a lower one.
pub const COMMON_PASSWORDS: &[&str] = &[
    "123456",
    "password",
    "123456789",
    "12345678",
    "12345",
    "qwerty",
    "1234567",
    "111111",
    "1234567890",
    "123123",
    "abc123",
    "1234",
    "password1",
    "iloveyou",
    "1q2w3e4r",
    "000000",
    "qwerty123",
    "zaq12wsx",
    "dragon",
    "sunshine",
    "princess",
    "letmein",
    "654321",
    "monkey",
    "1qaz2wsx",
    "123321",
    "qwertyuiop",
    "superman",
    "asdfghjkl",
    "football",
    "baseball",
    "welcome",
    "welcome1",
    "admin",
    "admin123",
    "administrator",
    "master",
    "shadow",
    "michael",
    "jennifer",
    "charlie",
    "jordan23",
    "trustno1",
    "hunter2",
    "starwars",
    "whatever",
    "computer",
    "michelle",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "password123",
    "password12",
    "password!",
    "changeme",
    "default",
    "secret",
    "login",
    "access",
    "killer",
    "freedom",
    "mustang",
    "hello123",
    "loveme",
    "lovely",
    "flower",
    "batman",
    "pokemon",
    "cheese",
    "soccer",
    "hockey",
    "ranger",
    "summer",
    "winter",
    "matrix",
    "asdfgh",
    "azerty",
    "qwer1234",
    "abcd1234",
    "aa123456",
    "a123456",
    "123qwe",
    "qwe123",
    "1q2w3e",
    "1q2w3e4r5t",
    "q1w2e3r4",
    "q1w2e3r4t5y6",
    "11111111",
    "00000000",
    "88888888",
    "987654321",
    "666666",
    "121212",
    "112233",
    "7777777",
    "iloveyou1",
    "qwertyui",
    "letmein1",
    "football1",
    "baseball1",
    "princess1",
    "sunshine1",
    "monkey123",
    "dragon123",
    "test1234",
    "test123",
    "testtest",
    "guest",
    "root",
    "toor",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_argon2id_phc_with_the_chosen_parameters_and_verifies() {
        let phc = hash("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        check_hash(&phc).unwrap();
        assert!(verify(&phc, "correct horse battery"));
        assert!(!verify(&phc, "correct horse batterY"));
        assert!(!verify(&phc, ""));
        // A fresh salt each time.
        assert_ne!(phc, hash("correct horse battery").unwrap());
    }

    #[test]
    fn malformed_or_foreign_hashes_never_verify() {
        assert!(!verify("", "x"));
        assert!(!verify("not a hash", "x"));
        assert!(!verify("$argon2id$v=19$m=19456,t=2,p=1$", "x"));
        // An argon2i hash of "password" (valid, but not argon2id).
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, params())
            .hash_password_with_salt(b"password", b"somesaltsomesalt")
            .unwrap()
            .to_string();
        assert!(!verify(&argon2i, "password"));
        assert!(check_hash(&argon2i).is_err());
    }

    #[test]
    fn dummy_hash_has_the_current_parameters() {
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(Params::try_from(&parsed).unwrap(), params());
        check_hash(DUMMY_HASH).unwrap();
        assert!(!dummy_verify("tether-demo"));
        assert!(!dummy_verify(""));
    }

    #[test]
    fn check_hash_refuses_excessive_costs_and_garbage() {
        let err = check_hash(
            "$argon2id$v=19$m=4194304,t=2,p=1$dGV0aGVyLWR1bW15LXNhbHQ$\
                              Gd3Lg4X7c8CjT1xvKJW8BdHnW0zk8n9QvUVSmVbrdHw",
        )
        .unwrap_err();
        assert!(err.to_string().contains("exceed the limit"), "{err}");
        assert!(check_hash("$argon2id$v=19$m=19456,t=2,p=1").is_err());
        assert!(check_hash("plaintext").is_err());
        assert!(
            check_hash("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW").is_err()
        );
    }

    #[test]
    fn rules_refuse_short_username_and_common_passwords() {
        let rules = PasswordRules::default();
        assert_eq!(
            rules.check("short", "alice"),
            Err(PasswordError::TooShort { min: 8 })
        );
        assert_eq!(
            rules.check("Alice-Liddell", "alice-liddell"),
            Err(PasswordError::SameAsUser)
        );
        assert_eq!(
            rules.check("Password1", "alice"),
            Err(PasswordError::Common)
        );
        assert_eq!(
            rules.check("qwertyuiop", "alice"),
            Err(PasswordError::Common)
        );
        assert_eq!(rules.check("tether-demo", "alice"), Ok(()));
        // Length counts characters, not bytes.
        assert!(rules.check("ééééééé", "alice").is_err());
        assert!(rules.check("éééééééé", "alice").is_ok());
        let lax = PasswordRules {
            min_length: 4,
            refuse_common: false,
        };
        assert_eq!(lax.check("password", "alice"), Ok(()));
        assert_eq!(
            lax.check("bob", "alice"),
            Err(PasswordError::TooShort { min: 4 })
        );
    }

    #[test]
    fn messages_are_one_line_and_never_hold_the_password() {
        let rules = PasswordRules::default();
        for (pw, user) in [
            ("sekret", "u"),
            ("qwerty123", "u"),
            ("carol123", "carol123"),
        ] {
            let msg = rules.check(pw, user).unwrap_err().to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(!msg.contains(pw), "{msg}");
        }
    }

    #[test]
    fn common_list_is_lowercase_and_has_about_a_hundred_entries() {
        assert!(COMMON_PASSWORDS.len() >= 100, "{}", COMMON_PASSWORDS.len());
        for p in COMMON_PASSWORDS {
            assert_eq!(*p, p.to_lowercase());
        }
    }
}
