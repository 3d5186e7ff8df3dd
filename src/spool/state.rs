//! An upload's replicated state (record kind 11, JSON; its bytes are never records: they live in spool
//! files, see `disk`): the encoding, the id, the append tags, and the small parsers of the protocols'
//! header values.

use crate::store::{Kind, Record, Store};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An upload's id: 16 random bytes, 32 lowercase hex digits in its URL.
pub(crate) type UploadId = [u8; 16];

/// Which protocol created the upload (its answers follow that protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Proto {
    Tus,
    Ietf,
}

/// What every node knows about an upload: written at creation and after every acknowledged append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upload {
    pub proto: Proto,
    /// The owner's user name; empty on a route without logins (the id is then the only key).
    pub user: String,
    /// The owner's login session id (hex); empty without logins.
    pub session: String,
    /// The route's name (`host path_prefix`) the upload was created on.
    pub route: String,
    /// The creation request's `Host` and path: where the completed upload is sent.
    pub host: String,
    pub path: String,
    /// The client's `Upload-Metadata` (tus), verbatim; empty if none.
    pub metadata: String,
    /// Declared length; `None` until an IETF client says which append is the last.
    pub length: Option<u64>,
    /// Bytes acknowledged: held by this node and a replica.
    pub offset: u64,
    /// The append that made `offset` (a random non-zero tag; 0: none yet). A node takes bytes peers
    /// pushed as acknowledged ones only through a chain of tags back to what it knows (`disk`).
    #[serde(default)]
    pub tag: u64,
    /// Seconds since the Unix epoch.
    pub created: u32,
    pub expires: u32,
    /// The identity header lines the backend gets (as the auth stage made them at creation).
    pub identity: String,
    /// The owner's tenant (the login's pool `tenant`), for `uploads.tenant_quota`; empty without logins.
    /// Optional in the encoding, so records written before it was added still decode.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
}

impl Upload {
    pub(crate) fn complete(&self) -> bool {
        self.length == Some(self.offset)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Upload> {
        serde_json::from_slice(bytes).ok()
    }

    /// The live upload `id` in `store`.
    pub(crate) fn get(store: &Store, id: &UploadId, now: u32) -> Option<Upload> {
        let record = store.get(Kind::Upload, id, now)?;
        Upload::decode(record.value.as_deref()?)
    }
}

/// A record of `kind` at `key` (the writer stamps the version).
pub(crate) fn record(kind: Kind, key: &[u8], value: Option<Arc<[u8]>>, expires: u32) -> Record {
    Record {
        kind,
        key: Arc::from(key),
        version: Default::default(),
        expires,
        value,
    }
}

pub(crate) fn hex(id: &UploadId) -> String {
    let mut s = String::with_capacity(32);
    for b in id {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// An id from its 32 lowercase hex digits; anything else is no id.
pub(crate) fn parse_id(s: &[u8]) -> Option<UploadId> {
    if s.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, pair) in s.chunks(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        id[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(id)
}

pub(crate) fn new_id() -> UploadId {
    crate::auth::session::new_session_id()
}

/// A new append's tag: random and never 0 (0 is the creation).
pub(crate) fn new_tag() -> u64 {
    let id = new_id();
    let mut b = [0u8; 8];
    b.copy_from_slice(&id[..8]);
    u64::from_be_bytes(b).max(1)
}

/// A non-negative decimal (`Upload-Offset`, `Upload-Length`): digits only, at most 15 of them.
pub(crate) fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A structured-field boolean (`Upload-Complete`): `?1` or `?0`.
pub(crate) fn parse_sf_bool(v: &[u8]) -> Option<bool> {
    match v.trim_ascii() {
        b"?1" => Some(true),
        b"?0" => Some(false),
        _ => None,
    }
}

/// Why a tus `Upload-Metadata` value is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum MetadataError {
    #[error("Upload-Metadata is not ASCII")]
    NotAscii,
    #[error("Upload-Metadata has an empty or malformed key")]
    BadKey,
    #[error("Upload-Metadata has a value that is not base64")]
    BadValue,
    #[error("Upload-Metadata repeats a key")]
    Repeated,
    #[error("Upload-Metadata is longer than 4096 bytes")]
    TooLong,
}

/// Checks a tus `Upload-Metadata` value: comma-separated pairs of a key (no spaces or commas) and an
/// optional base64 value, keys unique. Returns it as a string, kept verbatim.
pub(crate) fn parse_metadata(v: &[u8]) -> Result<String, MetadataError> {
    use base64::Engine;
    if v.len() > 4096 {
        return Err(MetadataError::TooLong);
    }
    let s = std::str::from_utf8(v).map_err(|_| MetadataError::NotAscii)?;
    if !s.is_ascii() {
        return Err(MetadataError::NotAscii);
    }
    let mut keys: Vec<&str> = Vec::new();
    for pair in s.split(',') {
        let pair = pair.trim();
        let mut parts = pair.splitn(2, ' ');
        let key = parts.next().unwrap_or("");
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(MetadataError::BadKey);
        }
        if let Some(value) = parts.next() {
            base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| MetadataError::BadValue)?;
        }
        if keys.contains(&key) {
            return Err(MetadataError::Repeated);
        }
        keys.push(key);
    }
    Ok(s.to_string())
}

/// `Upload-Checksum: sha256 BASE64`: the 32-byte digest. `Err` names the refusal.
pub(crate) fn parse_checksum(v: &[u8]) -> Result<[u8; 32], &'static str> {
    use base64::Engine;
    let s = std::str::from_utf8(v).map_err(|_| "Upload-Checksum is not ASCII")?;
    let (algo, value) = s
        .trim()
        .split_once(' ')
        .ok_or("Upload-Checksum needs an algorithm and a value")?;
    if algo != "sha256" {
        return Err("Upload-Checksum: only sha256 is supported");
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| "Upload-Checksum value is not base64")?;
    bytes
        .try_into()
        .map_err(|_| "Upload-Checksum: a sha256 digest is 32 bytes")
}

/// An IMF-fixdate (`Upload-Expires`) for seconds since the Unix epoch.
pub(crate) fn http_date(secs: u32) -> String {
    let days = i64::from(secs / 86_400);
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn ids_round_trip_and_refuse_junk() {
        let id = new_id();
        assert_eq!(parse_id(hex(&id).as_bytes()), Some(id));
        assert_eq!(parse_id(b"zz"), None);
        assert_eq!(parse_id(&[b'A'; 32]), None);
    }

    #[test]
    fn metadata_is_checked() {
        assert!(parse_metadata(b"filename d29ybGQ=,is_confidential").is_ok());
        assert_eq!(parse_metadata(b"a b c"), Err(MetadataError::BadValue));
        assert_eq!(parse_metadata(b"a,a"), Err(MetadataError::Repeated));
        assert_eq!(parse_metadata(b",x"), Err(MetadataError::BadKey));
    }

    #[test]
    fn numbers_and_checksums_are_strict() {
        assert_eq!(parse_u64(b"42"), Some(42));
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b" 1"), None);
        assert_eq!(parse_u64(b""), None);
        assert!(parse_checksum(b"md5 AAAA").is_err());
        assert!(parse_checksum(b"sha256 AAAA").is_err());
        assert_eq!(parse_sf_bool(b"?1"), Some(true));
        assert_eq!(parse_sf_bool(b"1"), None);
    }
}
