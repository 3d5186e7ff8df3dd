//! Names in config messages: suggesting the closest known name for a typo, and quoting a key for a key path.
//!
//! Shared by `load.rs` (unknown keys, key paths) and `validate` (unknown clusters, cluster keys), so neither
//! imports the other for them.

use std::borrow::Cow;

/// The candidate closest to `word` by edit distance, if close enough to be a likely typo.
pub(super) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// A key as written in a path: bare when it is a TOML bare key, else a quoted basic string.
pub(super) fn quote_key(key: &str) -> Cow<'_, str> {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 2);
    out.push('"');
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_suggests_only_near_misses() {
        let keys = ["address", "weight", "drain"];
        assert_eq!(closest("adress", keys.into_iter()), Some("address"));
        assert_eq!(closest("wieght", keys.into_iter()), Some("weight"));
        assert_eq!(closest("port", keys.into_iter()), None);
    }
}
