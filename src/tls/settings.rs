//! The TLS settings an operator chooses per listener and per backend cluster — protocol versions,
//! key-exchange groups and cipher suites, each in preference order — compiled into the rustls crypto
//! provider that listener's (or cluster's) config is built with (docs/CONFIG.md, "TLS settings").
//!
//! Names are the IANA ones as rustls spells them (`X25519MLKEM768`, `secp256r1`,
//! `TLS13_AES_128_GCM_SHA256`, `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`), matched without regard to case;
//! OpenSSL's TLS 1.3 spelling (`TLS_AES_128_GCM_SHA256`) and `P-256`/`P-384` are accepted too, so a list
//! copied from an nginx or HAProxy config works.

use crate::config::TlsVersion;
use rustls::crypto::CryptoProvider;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::{ALL_CIPHER_SUITES, ALL_KX_GROUPS, default_provider};
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use std::sync::Arc;

/// Key-exchange groups offered when `groups` is not set, in preference order: the post-quantum hybrid
/// first (rustls's choice too: a recorded session cannot be decrypted later by a quantum computer; it
/// costs 16% of full and 19% of resumed handshake throughput, bench/RESULTS.md "Handshakes and new
/// connections"), then the classical curves.
pub const DEFAULT_GROUPS: &[&str] = &["X25519MLKEM768", "X25519", "secp256r1", "secp384r1"];

/// Cipher suites when `cipher_suites` is not set, in preference order (the server's order decides).
/// AES-128-GCM first, as Mozilla's "intermediate" and "modern" profiles order them: 128-bit AES has no
/// practical attack, and its TLS 1.3 suite's SHA-256 key schedule runs on the SHA extensions of current
/// x86 and ARM CPUs, while AES-256-GCM's SHA-384 does not (measured: 25% fewer resumed handshakes per
/// second with AES-256-GCM; bench/RESULTS.md, "Handshakes and new connections").
pub const DEFAULT_SUITES: &[&str] = &[
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// What is wrong with a TLS settings table, for the config error of the key named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("unknown key-exchange group {0:?} (known: {known})", known = known_groups())]
    UnknownGroup(String),
    #[error("unknown cipher suite {0:?} (known: {known})", known = known_suites())]
    UnknownSuite(String),
    #[error("{0} is listed twice")]
    Twice(String),
    #[error("must list at least one")]
    Empty(&'static str),
    #[error("min_version is above max_version")]
    Versions,
    #[error(
        "no cipher suite for TLS {0}: list one, or leave TLS {0} out with min_version/max_version"
    )]
    NoSuiteFor(&'static str),
}

impl SettingsError {
    /// The key of the table the error is about (`groups`, `cipher_suites` or `min_version`).
    pub fn key(&self) -> &'static str {
        match self {
            SettingsError::UnknownGroup(_) => "groups",
            SettingsError::UnknownSuite(_) | SettingsError::NoSuiteFor(_) => "cipher_suites",
            SettingsError::Twice(name) if group_by_name(name).is_some() => "groups",
            SettingsError::Twice(_) => "cipher_suites",
            SettingsError::Empty(key) => key,
            SettingsError::Versions => "min_version",
        }
    }
}

/// The settings of one listener or cluster, as the config has them (`None`: the default list).
#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    pub groups: Option<&'a [String]>,
    pub cipher_suites: Option<&'a [String]>,
}

/// The protocol versions from `min` to `max` (empty when `min` is above `max`).
pub fn versions(min: TlsVersion, max: TlsVersion) -> Vec<&'static SupportedProtocolVersion> {
    let mut v = Vec::with_capacity(2);
    if max == TlsVersion::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    if min == TlsVersion::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// The provider for `choice`: aws-lc-rs with the chosen groups and suites, in the chosen order, and only
/// suites of the chosen versions.
pub fn provider(choice: &Choice<'_>) -> Result<Arc<CryptoProvider>, SettingsError> {
    if choice.min_version == TlsVersion::Tls13 && choice.max_version == TlsVersion::Tls12 {
        return Err(SettingsError::Versions);
    }
    let groups = pick(choice.groups, DEFAULT_GROUPS, "groups", |n| {
        group_by_name(n)
            .map(|g| (g, group_name(g)))
            .ok_or_else(|| SettingsError::UnknownGroup(n.to_string()))
    })?;
    let suites = pick(choice.cipher_suites, DEFAULT_SUITES, "cipher_suites", |n| {
        suite_by_name(n)
            .map(|s| (s, suite_name(s)))
            .ok_or_else(|| SettingsError::UnknownSuite(n.to_string()))
    })?;
    let is13 = |s: &SupportedCipherSuite| matches!(s, SupportedCipherSuite::Tls13(_));
    let suites: Vec<SupportedCipherSuite> = suites
        .into_iter()
        .filter(|s| {
            if is13(s) {
                choice.max_version == TlsVersion::Tls13
            } else {
                choice.min_version == TlsVersion::Tls12
            }
        })
        .collect();
    if choice.max_version == TlsVersion::Tls13 && !suites.iter().any(is13) {
        return Err(SettingsError::NoSuiteFor("1.3"));
    }
    if choice.min_version == TlsVersion::Tls12 && !suites.iter().any(|s| !is13(s)) {
        return Err(SettingsError::NoSuiteFor("1.2"));
    }
    Ok(Arc::new(CryptoProvider {
        cipher_suites: suites,
        kx_groups: groups,
        ..default_provider()
    }))
}

/// The named items of `list` (or of `default`), in order: each known and listed once, at least one.
fn pick<T: Copy>(
    list: Option<&[String]>,
    default: &[&str],
    key: &'static str,
    find: impl Fn(&str) -> Result<(T, String), SettingsError>,
) -> Result<Vec<T>, SettingsError> {
    let names: Vec<&str> = match list {
        Some(l) => l.iter().map(String::as_str).collect(),
        None => default.to_vec(),
    };
    if names.is_empty() {
        return Err(SettingsError::Empty(key));
    }
    let mut out: Vec<(T, String)> = Vec::with_capacity(names.len());
    for n in names {
        let (item, canonical) = find(n)?;
        if out.iter().any(|(_, c)| *c == canonical) {
            return Err(SettingsError::Twice(n.to_string()));
        }
        out.push((item, canonical));
    }
    Ok(out.into_iter().map(|(item, _)| item).collect())
}

/// A key-exchange group by its name (`X25519MLKEM768`, `x25519`, `secp256r1` or `P-256`, …).
pub fn group_by_name(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    let name = match name.to_ascii_lowercase().as_str() {
        "p-256" | "prime256v1" => "secp256r1".to_string(),
        "p-384" => "secp384r1".to_string(),
        other => other.to_string(),
    };
    ALL_KX_GROUPS
        .iter()
        .copied()
        .find(|g| group_name(*g).eq_ignore_ascii_case(&name))
}

/// A cipher suite by its name (`TLS13_AES_128_GCM_SHA256` or OpenSSL's `TLS_AES_128_GCM_SHA256`, …).
pub fn suite_by_name(name: &str) -> Option<SupportedCipherSuite> {
    let upper = name.to_ascii_uppercase();
    let tls13 = match upper.strip_prefix("TLS_") {
        Some(rest) if rest.starts_with("AES_") || rest.starts_with("CHACHA20_") => {
            format!("TLS13_{rest}")
        }
        _ => upper.clone(),
    };
    ALL_CIPHER_SUITES
        .iter()
        .copied()
        .find(|s| suite_name(*s) == upper || suite_name(*s) == tls13)
}

/// A group's name as rustls spells it (`X25519MLKEM768`, `secp256r1`).
pub fn group_name(g: &dyn SupportedKxGroup) -> String {
    format!("{:?}", g.name())
}

/// A suite's name as rustls spells it (`TLS13_AES_128_GCM_SHA256`).
pub fn suite_name(s: SupportedCipherSuite) -> String {
    format!("{:?}", s.suite())
}

fn known_groups() -> String {
    ALL_KX_GROUPS
        .iter()
        .map(|g| group_name(*g))
        .collect::<Vec<_>>()
        .join(", ")
}

fn known_suites() -> String {
    ALL_CIPHER_SUITES
        .iter()
        .map(|s| suite_name(*s))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice<'a>(groups: Option<&'a [String]>, suites: Option<&'a [String]>) -> Choice<'a> {
        Choice {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            groups,
            cipher_suites: suites,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_defaults_compile_in_their_order() {
        let p = provider(&choice(None, None)).unwrap();
        let g: Vec<String> = p.kx_groups.iter().map(|g| group_name(*g)).collect();
        assert_eq!(g, ["X25519MLKEM768", "X25519", "secp256r1", "secp384r1"]);
        assert_eq!(suite_name(p.cipher_suites[0]), "TLS13_AES_128_GCM_SHA256");
        assert_eq!(p.cipher_suites.len(), DEFAULT_SUITES.len());
    }

    #[test]
    fn names_are_read_in_every_usual_spelling() {
        let g = names(&["x25519", "P-256", "SECP384R1"]);
        let s = names(&[
            "TLS_AES_256_GCM_SHA384",
            "tls_ecdhe_rsa_with_aes_128_gcm_sha256",
        ]);
        let p = provider(&choice(Some(&g), Some(&s))).unwrap();
        let got: Vec<String> = p.kx_groups.iter().map(|g| group_name(*g)).collect();
        assert_eq!(got, ["X25519", "secp256r1", "secp384r1"]);
        let got: Vec<String> = p.cipher_suites.iter().map(|s| suite_name(*s)).collect();
        assert_eq!(
            got,
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
    }

    #[test]
    fn bad_tables_are_refused_with_the_key_to_blame() {
        let bad = |c: Choice<'_>| provider(&c).unwrap_err();
        let e = bad(choice(Some(&names(&["X25519", "curve9"])), None));
        assert_eq!(e, SettingsError::UnknownGroup("curve9".into()));
        assert_eq!(e.key(), "groups");
        assert!(e.to_string().contains("X25519MLKEM768"), "{e}");
        let e = bad(choice(None, Some(&names(&["TLS13_AES_128_CCM_SHA256"]))));
        assert_eq!(e.key(), "cipher_suites");
        assert_eq!(bad(choice(Some(&[]), None)), SettingsError::Empty("groups"));
        assert_eq!(bad(choice(None, Some(&[]))).key(), "cipher_suites");
        let e = bad(choice(Some(&names(&["X25519", "x25519"])), None));
        assert_eq!(
            (e.key(), e),
            ("groups", SettingsError::Twice("x25519".into()))
        );
        // TLS 1.2 allowed but only TLS 1.3 suites listed, and the reverse.
        let only13 = names(&["TLS13_AES_128_GCM_SHA256"]);
        assert_eq!(
            bad(choice(None, Some(&only13))),
            SettingsError::NoSuiteFor("1.2")
        );
        let only12 = names(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]);
        assert_eq!(
            bad(choice(None, Some(&only12))),
            SettingsError::NoSuiteFor("1.3")
        );
        let mut c = choice(None, None);
        c.min_version = TlsVersion::Tls13;
        c.max_version = TlsVersion::Tls12;
        assert_eq!(bad(c), SettingsError::Versions);
    }

    #[test]
    fn suites_of_versions_left_out_are_dropped() {
        let mut c = choice(None, None);
        c.min_version = TlsVersion::Tls13;
        let p = provider(&c).unwrap();
        assert!(
            p.cipher_suites
                .iter()
                .all(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
        );
        assert_eq!(versions(TlsVersion::Tls13, TlsVersion::Tls13).len(), 1);
        let mut c = choice(None, None);
        c.max_version = TlsVersion::Tls12;
        let p = provider(&c).unwrap();
        assert!(
            p.cipher_suites
                .iter()
                .all(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
        );
        assert_eq!(versions(TlsVersion::Tls12, TlsVersion::Tls12).len(), 1);
    }
}
