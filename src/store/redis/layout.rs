//! Where the Redis backend keeps the store on the server (docs/PROTOCOL.md, "Redis layout"): one string
//! per record, one change stream, one hash of node names — every key under the hash tag `{prefix}`, so a
//! Lua script may touch a record and the stream together (one slot, also on Redis Cluster).

use crate::store::{Kind, Record};
use std::fmt::Write as _;

/// Writes a record if it is newer than the one the server holds (last writer wins, as
/// [`Record::newer_than`]: the 10 version bytes compared as bytes — hlc then node id, both big-endian —
/// and on equal versions the larger encoding), sets its expiry, and appends it to the change stream.
/// Bytes are compared one by one: Lua's `<` on strings follows the server's collation locale.
///
/// KEYS: the record's key, the stream. ARGV: the encoding, the 1-based offset of its version, its
/// absolute expiry (seconds; 0: none), the stream's approximate length bound. Returns 1 when written,
/// 0 when the server holds this record or a newer one.
pub const PUT: &str = r#"
local function cmp(x, y)
  local n = math.min(#x, #y)
  for i = 1, n do
    local p, q = string.byte(x, i), string.byte(y, i)
    if p ~= q then
      if p < q then return -1 else return 1 end
    end
  end
  if #x == #y then return 0 elseif #x < #y then return -1 else return 1 end
end
local new = ARGV[1]
local old = redis.call('GET', KEYS[1])
if old then
  local at = tonumber(ARGV[2])
  local c = cmp(string.sub(new, at, at + 9), string.sub(old, at, at + 9))
  if c < 0 then return 0 end
  if c == 0 and cmp(new, old) <= 0 then return 0 end
end
redis.call('SET', KEYS[1], new)
local exp = tonumber(ARGV[3])
if exp > 0 then redis.call('EXPIREAT', KEYS[1], exp) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'r', new)
return 1
"#;

/// Gives a node a slot (0–15) among the nodes sharing the prefix, the same one on every start: the slot
/// it holds, or the lowest free one. The slot keeps notification ids of two nodes apart
/// (`notify::queue::IdClock`). KEYS: the nodes hash. ARGV: the node's name. Returns -1 past 16 nodes.
pub const CLAIM_SLOT: &str = r#"
local s = redis.call('HGET', KEYS[1], ARGV[1])
if s then return tonumber(s) end
local used = {}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do used[tonumber(v)] = true end
for i = 0, 15 do
  if not used[i] then
    redis.call('HSET', KEYS[1], ARGV[1], i)
    return i
  end
end
return -1
"#;

/// The server's key names for one prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `{prefix}`: the hash tag every key starts with.
    tag: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        Layout {
            tag: format!("{{{prefix}}}"),
        }
    }

    /// `{prefix}:r:KIND:HEXKEY`: a record (its canonical encoding), by kind number and key in hex.
    pub fn record(&self, kind: Kind, key: &[u8]) -> String {
        let mut s = String::with_capacity(self.tag.len() + 8 + 2 * key.len());
        let _ = write!(s, "{}:r:{}:", self.tag, kind as u8);
        for b in key {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// The `SCAN MATCH` pattern of every record key.
    pub fn records_pattern(&self) -> String {
        format!("{}:r:*", self.tag)
    }

    /// `{prefix}:log`: the change stream, one entry (`r` → encoding) per record written.
    pub fn stream(&self) -> String {
        format!("{}:log", self.tag)
    }

    /// `{prefix}:nodes`: node name → slot.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.tag)
    }
}

/// The `PUT` script's version offset for `record` (1-based): after kind, flags, key length and key.
pub fn version_offset(record: &Record) -> usize {
    4 + record.key.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Version;

    #[test]
    fn keys_share_one_hash_tag_and_spell_the_record_key_in_hex() {
        let l = Layout::new("prod");
        assert_eq!(
            l.record(Kind::LoginSession, &[0, 0xab, 0x10]),
            "{prod}:r:3:00ab10"
        );
        assert_eq!(l.stream(), "{prod}:log");
        assert_eq!(l.nodes(), "{prod}:nodes");
        assert_eq!(l.records_pattern(), "{prod}:r:*");
    }

    #[test]
    fn the_version_offset_points_at_the_version_bytes() {
        let r = Record {
            kind: Kind::Counter,
            key: b"abc"[..].into(),
            version: Version {
                hlc: 0x0102_0304_0506_0708,
                node_id: 0x090a,
            },
            expires: 0,
            value: Some(b"v"[..].into()),
        };
        let mut enc = Vec::new();
        r.encode(&mut enc);
        let at = version_offset(&r) - 1;
        assert_eq!(&enc[at..at + 10], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    }
}
