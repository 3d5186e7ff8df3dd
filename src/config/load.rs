//! Reads a config file and turns every problem into a `file:line: key: message` error.
//!
//! Loading is two passes over the same text:
//!
//! 1. `toml` deserializes it into [`Config`]. A syntax or type error (including an unknown key, which serde
//!    refuses through `deny_unknown_fields`) stops here with a single error, located by the span `toml`
//!    reports; the dotted key path is recovered by finding that span in a `toml_edit` parse of the text.
//! 2. `validate` checks the meaning of every value and reports *all* problems, each by its dotted key path;
//!    [`locate`] finds the line of that key in the `toml_edit` parse. Errors are sorted into file order.

use super::names::{closest, quote_key};
use super::schema::Config;
use super::validate::{self, Issue, Machine};
use std::fmt;
use std::ops::Range;
use std::path::Path;
use toml_edit::{Array, ArrayOfTables, Document, InlineTable, Item, Table, Value};

/// One problem in a configuration file, located by file, line and key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given (or a label such as `<embedded demo config>`).
    pub file: String,
    /// 1-based line, 0 when the problem has no single line (e.g. a missing section).
    pub line: usize,
    /// Dotted key path, e.g. `clusters.api.backends[1].address`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line != 0 {
            write!(f, ":{}", self.line)?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one file (loading reports them all, not just the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, &file),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            key: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        }])),
    }
}

/// Loads and validates configuration text; `file` labels errors.
pub fn load_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    load_str_on(text, file, &Machine::detect())
}

/// [`load_str`] with the machine facts validation depends on given explicitly (tests use a fixed CPU count).
pub(crate) fn load_str_on(
    text: &str,
    file: &str,
    machine: &Machine,
) -> Result<Config, ConfigErrors> {
    let mut config: Config = match toml::from_str(text) {
        Ok(config) => config,
        Err(e) => return Err(ConfigErrors(vec![syntax_error(&e, text, file)])),
    };
    // Relative paths in the file (certificates, keys) are relative to the file itself.
    config.base_dir = Path::new(file)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    validate::validate(config, machine).map_err(|issues| located(issues, text, file))
}

/// Turns validation issues into errors with lines, in file order (issues with no line first, as they are about
/// the file as a whole).
fn located(issues: Vec<Issue>, text: &str, file: &str) -> ConfigErrors {
    let doc = Document::parse(text).ok();
    let line_of = |key: &str| doc.as_ref().map_or(0, |doc| locate_in(doc, text, key));
    let mut errors: Vec<ConfigError> = issues
        .into_iter()
        .map(|issue| {
            let mut message = issue.message;
            if let Some(related) = issue.related {
                match line_of(&related) {
                    0 => message.push_str(&format!(" (see {related})")),
                    line => message.push_str(&format!(" (see {related}, line {line})")),
                }
            }
            ConfigError {
                file: file.to_string(),
                line: line_of(&issue.key),
                key: issue.key,
                message,
            }
        })
        .collect();
    errors.sort_by_key(|e| e.line);
    ConfigErrors(errors)
}

/// A deserialization error from `toml`: syntax, type, unknown or missing key. (Also used for users files.)
pub(crate) fn syntax_error(e: &toml::de::Error, text: &str, file: &str) -> ConfigError {
    let span = e.span();
    let line = span.as_ref().map_or(0, |s| line_at(text, s.start));
    let path = span.and_then(|s| {
        let doc = Document::parse(text).ok()?;
        path_at(&doc, s)
    });
    let mut key = path.as_deref().map(render_path).unwrap_or_default();
    let raw = e.message().trim_end();
    let message = if let Some(field) = raw
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        // The span is the table that lacks the field: name the field itself.
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(&quote_key(field));
        "this required key is missing".to_string()
    } else if let Some(rest) = raw.strip_prefix("unknown field `") {
        unknown_key_message(rest)
    } else if raw.contains("untagged enum") {
        // `WorkerCount` deserializes through an untagged helper enum whose own error names nothing useful. It
        // also fails this way when `workers` is an array (`[[workers]]`): serde then reads the struct's fields
        // from the array's elements, and the first element, a table, is not a worker count.
        if key.ends_with("count") {
            "expected \"auto\" or a whole number of worker threads (at least 1)".to_string()
        } else {
            "invalid type: array, expected a table".to_string()
        }
    } else if is_duration_key(&key) && raw.ends_with("expected a string") {
        format!("{raw} holding a duration, e.g. \"10s\", \"500ms\" or \"1h\"")
    } else {
        friendlier(raw)
    };
    ConfigError {
        file: file.to_string(),
        line,
        key,
        message,
    }
}

/// Whether a key holds a duration string (for a friendlier type error).
fn is_duration_key(key: &str) -> bool {
    key.starts_with("timeouts.")
        || [".slow_start", ".interval", ".timeout", ".cool_down"]
            .iter()
            .any(|suffix| key.ends_with(suffix))
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into an "unknown key" message with a
/// suggestion when one expected key is a likely typo of the given one.
fn unknown_key_message(rest: &str) -> String {
    let Some((name, tail)) = rest.split_once('`') else {
        return format!("unknown key `{rest}");
    };
    let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let mut message = format!("unknown key `{name}`");
    if let Some(best) = closest(name, expected.iter().copied()) {
        message.push_str(&format!(" (did you mean `{best}`?)"));
    }
    if expected.is_empty() {
        message.push_str("; this table takes no keys");
    } else {
        let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
        message.push_str(&format!("; expected one of {}", list.join(", ")));
    }
    message
}

/// Replaces Rust type names in serde's messages with TOML words.
fn friendlier(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, toml) in [
        ("expected usize", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: table"),
    ] {
        out = out.replace(rust, toml);
    }
    if let Some(at) = out.find("expected struct ") {
        out.replace_range(at.., "expected a table");
    }
    out
}

/// 1-based line of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

// ---------------------------------------------------------------------------------------------------------
// Key paths: `clusters.app.backends[0].address`, `clusters."my app"`, `workers.pin_cpus[2]`.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&quote_key(k));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Parses a path written by [`render_path`]; `None` if it is malformed.
fn parse_path(path: &str) -> Option<Vec<Seg>> {
    let mut segs = Vec::new();
    let mut chars = path.chars().peekable();
    let mut expect_key = true;
    while let Some(&c) = chars.peek() {
        match c {
            '[' => {
                chars.next();
                let mut digits = String::new();
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                    digits.push(d);
                }
                segs.push(Seg::Index(digits.parse().ok()?));
                expect_key = false;
            }
            '.' if !expect_key => {
                chars.next();
                expect_key = true;
            }
            '"' if expect_key => {
                chars.next();
                let mut key = String::new();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            'u' => {
                                let hex: String = chars.by_ref().take(4).collect();
                                key.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                            }
                            other => key.push(other),
                        },
                        other => key.push(other),
                    }
                }
                segs.push(Seg::Key(key));
                expect_key = false;
            }
            _ if expect_key => {
                let mut key = String::new();
                while let Some(&k) = chars.peek() {
                    if k == '.' || k == '[' {
                        break;
                    }
                    key.push(k);
                    chars.next();
                }
                segs.push(Seg::Key(key));
                expect_key = false;
            }
            _ => return None,
        }
    }
    Some(segs)
}

/// A place in a `toml_edit` document while walking a key path.
#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a Table),
    Inline(&'a InlineTable),
    Array(&'a Array),
    Tables(&'a ArrayOfTables),
    Leaf,
}

impl<'a> Node<'a> {
    fn of_item(item: &'a Item) -> Self {
        match item {
            Item::Table(t) => Node::Table(t),
            Item::ArrayOfTables(a) => Node::Tables(a),
            Item::Value(v) => Node::of_value(v),
            Item::None => Node::Leaf,
        }
    }

    fn of_value(value: &'a Value) -> Self {
        match value {
            Value::InlineTable(t) => Node::Inline(t),
            Value::Array(a) => Node::Array(a),
            _ => Node::Leaf,
        }
    }
}

/// The 1-based line where the key `path` (e.g. `clusters.app.backends[1].weight`) is written in `text`: the line
/// of the key itself for `key = value` and `[table]` headers, of the `[[header]]` for an element of an array of
/// tables, of the value for an element of an inline array. When the path is only partly present (a key left to
/// its default), the line of the deepest part found; 0 when not even the first key is written, or the text
/// does not parse. (Loading parses the text once and calls `locate_in` for every error; the users file loader
/// calls this.)
pub(crate) fn locate(text: &str, path: &str) -> usize {
    match Document::parse(text) {
        Ok(doc) => locate_in(&doc, text, path),
        Err(_) => 0,
    }
}

fn locate_in(doc: &Document<&str>, text: &str, path: &str) -> usize {
    let Some(segs) = parse_path(path) else {
        return 0;
    };
    let mut node = Node::of_item(doc.as_item());
    let mut found: Option<Range<usize>> = None;
    for seg in &segs {
        let (span, next) = match (seg, node) {
            (Seg::Key(k), Node::Table(t)) => match t.get_key_value(k) {
                Some((key, item)) => (key.span().or_else(|| item.span()), Node::of_item(item)),
                None => break,
            },
            (Seg::Key(k), Node::Inline(t)) => match t.get_key_value(k) {
                Some((key, item)) => (key.span().or_else(|| item.span()), Node::of_item(item)),
                None => break,
            },
            (Seg::Index(i), Node::Tables(a)) => match a.get(*i) {
                Some(t) => (t.span(), Node::Table(t)),
                None => break,
            },
            (Seg::Index(i), Node::Array(a)) => match a.get(*i) {
                Some(v) => (v.span(), Node::of_value(v)),
                None => break,
            },
            _ => break,
        };
        if span.is_some() {
            found = span;
        }
        node = next;
    }
    found.map_or(0, |s| line_at(text, s.start))
}

/// The key path of the key, value or table header whose span is exactly `target`, or else of the most specific
/// one holding its start.
fn path_at(doc: &Document<&str>, target: Range<usize>) -> Option<Vec<Seg>> {
    let mut best = None;
    let mut path = Vec::new();
    collect_at(Node::of_item(doc.as_item()), &target, &mut path, &mut best);
    best.map(|b: Candidate| b.path)
}

struct Candidate {
    exact: bool,
    len: usize,
    path: Vec<Seg>,
}

fn consider(
    span: Option<Range<usize>>,
    target: &Range<usize>,
    path: &[Seg],
    best: &mut Option<Candidate>,
) {
    let Some(span) = span else { return };
    if span.is_empty() || !span.contains(&target.start) {
        return;
    }
    let exact = span == *target;
    let len = span.len();
    // An exact match beats containment; smaller spans are more specific; on a tie (a dotted key and its implicit
    // table) the deeper path wins.
    let better = match best {
        None => true,
        Some(b) => {
            (exact, std::cmp::Reverse(len), path.len())
                > (b.exact, std::cmp::Reverse(b.len), b.path.len())
        }
    };
    if better {
        *best = Some(Candidate {
            exact,
            len,
            path: path.to_vec(),
        });
    }
}

fn collect_at(
    node: Node<'_>,
    target: &Range<usize>,
    path: &mut Vec<Seg>,
    best: &mut Option<Candidate>,
) {
    match node {
        Node::Table(t) => {
            for (k, item) in t.iter() {
                path.push(Seg::Key(k.to_string()));
                consider(t.key(k).and_then(|key| key.span()), target, path, best);
                consider(item.span(), target, path, best);
                collect_at(Node::of_item(item), target, path, best);
                path.pop();
            }
        }
        Node::Inline(t) => {
            for (k, value) in t.iter() {
                path.push(Seg::Key(k.to_string()));
                consider(t.key(k).and_then(|key| key.span()), target, path, best);
                consider(value.span(), target, path, best);
                collect_at(Node::of_value(value), target, path, best);
                path.pop();
            }
        }
        Node::Tables(a) => {
            for (i, t) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                consider(t.span(), target, path, best);
                collect_at(Node::Table(t), target, path, best);
                path.pop();
            }
        }
        Node::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                consider(v.span(), target, path, best);
                collect_at(Node::of_value(v), target, path, best);
                path.pop();
            }
        }
        Node::Leaf => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::*;
    use std::path::PathBuf;

    fn err(text: &str) -> ConfigError {
        let errors = load_str_on(text, "t.toml", &Machine { cpus: 2 })
            .unwrap_err()
            .0;
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.into_iter().next().unwrap()
    }

    fn manifest_path(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    const MINIMAL: &str = r#"[[listeners]]
address = "127.0.0.1:8080"

[clusters.app]
backends = [{ address = "127.0.0.1:9001" }]

[[routes]]
cluster = "app"
"#;

    // --- Display ------------------------------------------------------------------------------------------

    #[test]
    fn display_has_file_line_key_message() {
        let e = ConfigError {
            file: "tether.toml".into(),
            line: 12,
            key: "clusters.app.backends[0].weight".into(),
            message: "must be between 1 and 256, got 0".into(),
        };
        assert_eq!(
            e.to_string(),
            "tether.toml:12: clusters.app.backends[0].weight: must be between 1 and 256, got 0"
        );
    }

    #[test]
    fn display_omits_line_zero_and_empty_key() {
        let no_line = ConfigError {
            file: "f".into(),
            line: 0,
            key: "listeners".into(),
            message: "m".into(),
        };
        assert_eq!(no_line.to_string(), "f: listeners: m");
        let no_key = ConfigError {
            file: "f".into(),
            line: 3,
            key: String::new(),
            message: "m".into(),
        };
        assert_eq!(no_key.to_string(), "f:3: m");
        let neither = ConfigError {
            line: 0,
            ..no_key.clone()
        };
        assert_eq!(neither.to_string(), "f: m");
        assert_eq!(
            ConfigErrors(vec![no_line, no_key]).to_string(),
            "f: listeners: m\nf:3: m"
        );
    }

    // --- locate -------------------------------------------------------------------------------------------

    const LOCATE: &str = r#"# comment
[workers]
max_connections = 10
pin_cpus = [
    0,
    1,
]

[[listeners]]
address = "127.0.0.1:80"

[[listeners]]
name = "b"
address = "127.0.0.1:81"

[clusters.app]
retries = 1
backends = [{ address = "127.0.0.1:1" },
            { address = "127.0.0.1:2", weight = 3 }]

[clusters."my app"]
backends = [{ address = "127.0.0.1:3" }]

[[clusters.web.backends]]
address = "127.0.0.1:4"

[[clusters.web.backends]]
weight = 2
address = "127.0.0.1:5"

[routes_like]
limits.max_headers = 5
"#;

    #[test]
    fn locate_keys_in_tables() {
        assert_eq!(locate(LOCATE, "workers"), 2);
        assert_eq!(locate(LOCATE, "workers.max_connections"), 3);
        assert_eq!(locate(LOCATE, "workers.pin_cpus"), 4);
        assert_eq!(locate(LOCATE, "workers.pin_cpus[1]"), 6);
    }

    #[test]
    fn locate_arrays_of_tables() {
        assert_eq!(locate(LOCATE, "listeners"), 9);
        assert_eq!(locate(LOCATE, "listeners[0]"), 9);
        assert_eq!(locate(LOCATE, "listeners[0].address"), 10);
        assert_eq!(locate(LOCATE, "listeners[1]"), 12);
        assert_eq!(locate(LOCATE, "listeners[1].address"), 14);
        assert_eq!(locate(LOCATE, "clusters.web.backends[0].address"), 25);
        assert_eq!(locate(LOCATE, "clusters.web.backends[1]"), 27);
        assert_eq!(locate(LOCATE, "clusters.web.backends[1].weight"), 28);
    }

    #[test]
    fn locate_inline_tables_in_arrays() {
        assert_eq!(locate(LOCATE, "clusters.app"), 16);
        assert_eq!(locate(LOCATE, "clusters.app.retries"), 17);
        assert_eq!(locate(LOCATE, "clusters.app.backends"), 18);
        assert_eq!(locate(LOCATE, "clusters.app.backends[0].address"), 18);
        assert_eq!(locate(LOCATE, "clusters.app.backends[1]"), 19);
        assert_eq!(locate(LOCATE, "clusters.app.backends[1].weight"), 19);
    }

    #[test]
    fn locate_quoted_and_dotted_keys() {
        assert_eq!(locate(LOCATE, "clusters.\"my app\""), 21);
        assert_eq!(
            locate(LOCATE, "clusters.\"my app\".backends[0].address"),
            22
        );
        assert_eq!(locate(LOCATE, "routes_like.limits.max_headers"), 32);
        let dotted = "a = 1\nclusters.app.backends = [\n  { address = \"x\" },\n]\nclusters.app.retries = 3\n";
        assert_eq!(locate(dotted, "clusters.app"), 2);
        assert_eq!(locate(dotted, "clusters.app.backends[0].address"), 3);
        assert_eq!(locate(dotted, "clusters.app.retries"), 5);
    }

    #[test]
    fn locate_missing_keys() {
        // A key left to its default: the line of the deepest part that is written.
        assert_eq!(locate(LOCATE, "listeners[1].backlog"), 12);
        assert_eq!(locate(LOCATE, "clusters.app.backends[1].drain"), 19);
        assert_eq!(locate(LOCATE, "listeners[7].address"), 9);
        // Not written at all, or not parseable.
        assert_eq!(locate(LOCATE, "routes"), 0);
        assert_eq!(locate(LOCATE, "timeouts.client"), 0);
        assert_eq!(locate("x = [", "x"), 0);
    }

    #[test]
    fn paths_round_trip() {
        for path in [
            "clusters.app.backends[0].address",
            "clusters.\"my app\".backends[1]",
            "clusters.\"a\\\"b\".retries",
            "clusters.\"\"",
            "workers.pin_cpus[3]",
        ] {
            assert_eq!(render_path(&parse_path(path).unwrap()), path);
        }
        assert_eq!(quote_key("a.b"), "\"a.b\"");
        assert_eq!(parse_path("a[x]"), None);
    }

    // --- Syntax and type errors ---------------------------------------------------------------------------

    #[test]
    fn syntax_error_reports_its_line() {
        let e = err("[[listeners]]\naddress = \"127.0.0.1:80\n\n[clusters.app]\n");
        assert_eq!((e.line, e.key.as_str()), (2, ""));
        let e = err("[workers]\nmax_connections = 10\n= 5\n");
        assert_eq!((e.line, e.key.as_str()), (3, ""));
        let e = err("[workers]\nmax_connections = 1\nmax_connections = 2\n");
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn unknown_key_reports_line_and_full_path() {
        let text = MINIMAL.replace(
            "backends = [{ address = \"127.0.0.1:9001\" }]",
            "backends = [\n  { address = \"127.0.0.1:9001\" },\n  { adress = \"127.0.0.1:9002\" },\n]",
        );
        let e = err(&text);
        assert_eq!(
            (e.line, e.key.as_str()),
            (7, "clusters.app.backends[1].adress")
        );
        assert!(e.message.contains("did you mean `address`?"), "{e}");
        assert!(e.message.contains("`weight`"), "{e}");

        let e = err(&format!(
            "{MINIMAL}\n[[listeners]]\naddres = \"127.0.0.1:81\"\n"
        ));
        assert_eq!((e.line, e.key.as_str()), (11, "listeners[1].addres"));

        let e = err(&format!("[worker]\ncount = 2\n{MINIMAL}"));
        assert_eq!((e.line, e.key.as_str()), (1, "worker"));
        assert!(e.message.contains("did you mean `workers`?"), "{e}");

        let e = err(&format!("timeouts.conect = \"1s\"\n{MINIMAL}"));
        assert_eq!((e.line, e.key.as_str()), (1, "timeouts.conect"));
        assert!(e.message.contains("did you mean `connect`?"), "{e}");
    }

    #[test]
    fn type_errors_report_key_and_line() {
        let e = err(&format!("[workers]\nbuffer_size = \"16k\"\n{MINIMAL}"));
        assert_eq!((e.line, e.key.as_str()), (2, "workers.buffer_size"));
        assert!(e.message.contains("non-negative integer"), "{e}");

        let e = err(&format!("[timeouts]\n\nclient = \"10 parsecs\"\n{MINIMAL}"));
        assert_eq!((e.line, e.key.as_str()), (3, "timeouts.client"));
        assert!(e.message.contains("invalid duration"), "{e}");

        let e = err(&format!("[timeouts]\nconnect = 5\n{MINIMAL}"));
        assert_eq!((e.line, e.key.as_str()), (2, "timeouts.connect"));
        assert!(e.message.contains("\"10s\""), "{e}");

        let e = err(&format!("[workers]\ncount = 1.5\n{MINIMAL}"));
        assert_eq!((e.line, e.key.as_str()), (2, "workers.count"));
        assert!(e.message.contains("\"auto\""), "{e}");

        let e = err(&format!("[workers]\ncount = 0\n{MINIMAL}"));
        assert_eq!((e.line, e.key.as_str()), (2, "workers.count"));

        let e = err(&format!("[access_log]\nformat = \"xml\"\n{MINIMAL}"));
        assert_eq!((e.line, e.key.as_str()), (2, "access_log.format"));

        let e = err(&format!("[[workers]]\ncount = 2\n{MINIMAL}"));
        // toml points at the first `[[workers]]` header.
        assert_eq!((e.line, e.key.as_str()), (1, "workers[0]"));
        assert_eq!(e.message, "invalid type: array, expected a table");

        let e = err(&MINIMAL.replace("{ address", "{ weight = -1, address"));
        assert_eq!(
            (e.line, e.key.as_str()),
            (5, "clusters.app.backends[0].weight")
        );
    }

    #[test]
    fn missing_required_key_names_it() {
        let e = err(&MINIMAL.replace(
            "backends = [{ address = \"127.0.0.1:9001\" }]",
            "retries = 1",
        ));
        assert_eq!((e.line, e.key.as_str()), (4, "clusters.app.backends"));
        assert!(e.message.contains("missing"), "{e}");

        let e = err(&MINIMAL.replace("cluster = \"app\"", "host = \"*\""));
        assert_eq!((e.line, e.key.as_str()), (7, "routes[0].cluster"));

        let e = err(&MINIMAL.replace("{ address = \"127.0.0.1:9001\" }", "{ weight = 1 }"));
        assert_eq!(
            (e.line, e.key.as_str()),
            (5, "clusters.app.backends[0].address")
        );
    }

    // --- Files and defaults -------------------------------------------------------------------------------

    #[test]
    fn basic_config_loads() {
        let c = load_file(&manifest_path("configs/basic.toml")).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].address, "127.0.0.1:8080");
        let app = &c.clusters["app"];
        assert_eq!(app.balance, BalanceAlgorithm::RoundRobin);
        let addrs: Vec<&str> = app.backends.iter().map(|b| b.address.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1:9001", "127.0.0.1:9002"]);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(
            (c.routes[0].host.as_str(), c.routes[0].path_prefix.as_str()),
            ("*", "/")
        );
        assert_eq!(c.routes[0].cluster, "app");
    }

    #[test]
    fn full_config_loads() {
        let c = load_file(&manifest_path("configs/full.toml")).unwrap();
        assert_eq!(c.clusters.len(), 2);
        let check = c.clusters["app"].health_check.as_ref().unwrap();
        assert_eq!(
            (check.path.as_str(), check.rise, check.fall),
            ("/health", 2, 3)
        );
        assert_eq!(
            c.clusters["static"].hash_on,
            Some(HashOn::Cookie("session".into()))
        );
        assert!(c.routes.len() >= 3);
        assert!(c.routes.iter().any(|r| r.host.starts_with("*.")));
        assert!(c.routes.iter().any(|r| r.host == "*"));
        assert!(
            c.routes
                .iter()
                .any(|r| !r.host.contains('*') && r.path_prefix != "/")
        );
    }

    /// Every key of the schema, as a path with `[]` for "any element" and `*` for "any cluster or pool name".
    const ALL_KEYS: &[&str] = &[
        "workers.count",
        "workers.pin_cpus",
        "workers.max_connections",
        "workers.buffer_size",
        "workers.accept_batch",
        "workers.upstream_idle_pool",
        "workers.busy_poll",
        "workers.batch_window",
        "workers.batch_target",
        "timeouts.client_head",
        "timeouts.client_idle",
        "timeouts.client",
        "timeouts.connect",
        "timeouts.server",
        "timeouts.tunnel",
        "timeouts.upstream_idle",
        "timeouts.shutdown_grace",
        "timeouts.tls_handshake",
        "limits.max_head_size",
        "limits.max_headers",
        "limits.max_connections_per_client",
        "access_log.enabled",
        "access_log.target",
        "access_log.format",
        "listeners[].name",
        "listeners[].address",
        "listeners[].backlog",
        "listeners[].trust_forwarded",
        "listeners[].redirect_https",
        "listeners[].tls.certificates[].cert",
        "listeners[].tls.certificates[].key",
        "listeners[].tls.certificates[].names",
        "listeners[].tls.strict_sni",
        "listeners[].tls.min_version",
        "listeners[].tls.max_version",
        "listeners[].tls.groups",
        "listeners[].tls.cipher_suites",
        "listeners[].tls.alpn",
        "listeners[].tls.plain_http",
        "tls.session_tickets",
        "tls.ticket_rotation",
        "tls.session_cache_size",
        "clusters.*.tls.ca",
        "clusters.*.tls.sni",
        "clusters.*.tls.verify",
        "clusters.*.tls.client_cert",
        "clusters.*.tls.client_key",
        "clusters.*.tls.min_idle",
        "clusters.*.tls.min_version",
        "clusters.*.tls.max_version",
        "clusters.*.tls.groups",
        "clusters.*.tls.cipher_suites",
        "clusters.*.balance",
        "clusters.*.hash_on",
        "clusters.*.retries",
        "clusters.*.slow_start",
        "clusters.*.health_check.method",
        "clusters.*.health_check.path",
        "clusters.*.health_check.host",
        "clusters.*.health_check.expect_status",
        "clusters.*.health_check.interval",
        "clusters.*.health_check.timeout",
        "clusters.*.health_check.rise",
        "clusters.*.health_check.fall",
        "clusters.*.passive_health.consecutive_failures",
        "clusters.*.passive_health.cool_down",
        "clusters.*.passive_health.count_5xx",
        "clusters.*.backends[].address",
        "clusters.*.backends[].weight",
        "clusters.*.backends[].drain",
        "routes[].host",
        "routes[].path_prefix",
        "routes[].cluster",
        "routes[].methods",
        "routes[].header",
        "routes[].class",
        "routes[].session",
        "routes[].priority",
        "routes[].on_backend_down",
        "sessions.max_entries",
        "sessions.ttl",
        "sessions.cookie_keys",
        "sessions.same_site",
        "sessions.cookie_path",
        "qos.aging",
        "qos.priority_header",
        "clusters.*.max_inflight",
        "clusters.*.max_queue",
        "clusters.*.queue_timeout",
        "routes[].auth",
        "routes[].pool",
        "routes[].roles",
        "routes[].groups",
        "routes[].identity",
        "routes[].rate_limits",
        "rate_limits[].name",
        "rate_limits[].key",
        "rate_limits[].rate",
        "rate_limits[].per",
        "rate_limits[].burst",
        "rate_limits[].cluster_wide",
        "rate_limits[].tiers",
        "deny.kernel_filter",
        "deny.allow",
        "deny.deny",
        "deny.rules[].requests_per_sec",
        "deny.rules[].bad_requests_per_min",
        "deny.rules[].ban",
        "auth.cookie",
        "auth.idle_timeout",
        "auth.max_lifetime",
        "auth.access_token_ttl",
        "auth.refresh_token_ttl",
        "auth.key_rotation",
        "auth.issuer",
        "auth.audience",
        "auth.identity_token_ttl",
        "auth.identity_token_header",
        "auth.user_header",
        "auth.tenant_header",
        "auth.roles_header",
        "auth.hash_threads",
        "auth.hash_queue",
        "auth.login_page",
        "pools.*.tenant",
        "pools.*.users",
        "pools.*.hosts",
        "pools.*.min_password_length",
        "pools.*.refuse_common_passwords",
        "pools.*.self_registration",
        "pools.*.upstream.login_url",
        "pools.*.upstream.refresh_url",
        "pools.*.upstream.header",
        "pools.*.upstream.timeout",
        "pools.*.tier",
        "pools.*.quotas[].metric",
        "pools.*.quotas[].period",
        "pools.*.quotas[].limit",
        "metering.enabled",
        "metering.file",
        "metering.over_quota",
        "pools.*.lockout.enabled",
        "pools.*.lockout.failures",
        "pools.*.lockout.wait_increment",
        "pools.*.lockout.max_wait",
        "pools.*.lockout.quick_login_check",
        "pools.*.lockout.min_quick_wait",
        "pools.*.lockout.reset_after",
        "pools.*.lockout.permanent_after",
        "pools.*.lockout.per_address",
        "pools.*.lockout.address_failures",
        "pools.*.clients[].client_id",
        "pools.*.clients[].secret_hash",
        "pools.*.clients[].redirect_uris",
        "pools.*.clients[].post_logout_redirect_uris",
        "pools.*.clients[].scopes",
        "pools.*.clients[].code_ttl",
        "pools.*.clients[].access_token_ttl",
        "pools.*.clients[].refresh_token_ttl",
        "routes[].notifications",
        "routes[].uploads",
        "uploads.dir",
        "uploads.max_size",
        "uploads.max_chunk",
        "uploads.expiry",
        "uploads.user_quota",
        "uploads.tenant_quota",
        "uploads.tenant_quotas",
        "uploads.threads",
        "uploads.forward_attempts",
        "uploads.forward_timeout",
        "uploads.window",
        "notifications.publish_address",
        "notifications.publish_secret",
        "notifications.max_count",
        "notifications.max_bytes",
        "notifications.when_full",
        "notifications.ttl",
        "notifications.piggyback_bytes",
        "notifications.delete_on",
        "notifications.keepalive",
        "notifications.max_wait",
        "notifications.feeds[].name",
        "notifications.feeds[].url",
        "notifications.feeds[].delete_on",
        "notifications.feeds[].max_backoff",
        "admin.address",
        "admin.token",
        "admin.token_file",
        "admin.cert",
        "admin.key",
        "admin.client_ca",
        "store.backend",
        "store.node",
        "store.addresses",
        "store.tls",
        "store.ca",
        "store.username",
        "store.password_file",
        "store.prefix",
        "store.connect_timeout",
        "store.command_timeout",
        "store.sync_timeout",
        "store.on_sync_timeout",
        "store.wait_replicas",
        "store.stream_length",
        "store.max_staleness",
    ];

    /// The leaf keys written in a document, as in [`ALL_KEYS`].
    fn written_keys(node: Node<'_>, path: &str, out: &mut Vec<String>) {
        let join = |k: &str| match path {
            "" => k.to_string(),
            "clusters" => "clusters.*".to_string(),
            "pools" => "pools.*".to_string(),
            // A table of tier names: the key is `tiers`, whatever the names.
            "rate_limits[].tiers" => path.to_string(),
            // A table of tenant names, likewise.
            "uploads.tenant_quotas" => path.to_string(),
            _ => format!("{path}.{k}"),
        };
        match node {
            Node::Table(t) => {
                for (k, item) in t.iter() {
                    written_keys(Node::of_item(item), &join(k), out);
                }
            }
            Node::Inline(t) => {
                for (k, v) in t.iter() {
                    written_keys(Node::of_value(v), &join(k), out);
                }
            }
            Node::Tables(a) => {
                for t in a.iter() {
                    written_keys(Node::Table(t), &format!("{path}[]"), out);
                }
            }
            Node::Array(a) if a.iter().any(|v| v.is_inline_table()) => {
                for v in a.iter() {
                    written_keys(Node::of_value(v), &format!("{path}[]"), out);
                }
            }
            Node::Array(_) | Node::Leaf => out.push(path.to_string()),
        }
    }

    #[test]
    fn full_config_sets_every_key() {
        let text = std::fs::read_to_string(manifest_path("configs/full.toml")).unwrap();
        let doc = Document::parse(text.as_str()).unwrap();
        let mut keys = Vec::new();
        written_keys(Node::of_item(doc.as_item()), "", &mut keys);
        keys.sort();
        keys.dedup();
        let mut expected: Vec<String> = ALL_KEYS.iter().map(|k| k.to_string()).collect();
        expected.sort();
        assert_eq!(keys, expected);
    }

    #[test]
    fn config_doc_mentions_every_key() {
        let doc = std::fs::read_to_string(manifest_path("docs/CONFIG.md")).unwrap();
        for key in ALL_KEYS {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                doc.contains(&format!("`{leaf}`")),
                "docs/CONFIG.md lacks `{leaf}`"
            );
        }
    }

    #[test]
    fn almost_empty_config_takes_the_defaults() {
        let c = load_str_on(MINIMAL, "t.toml", &Machine { cpus: 1 }).unwrap();
        assert_eq!(c.workers, WorkersConfig::default());
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.access_log, AccessLogConfig::default());
        assert_eq!(
            c.listeners,
            [ListenerConfig {
                name: None,
                address: "127.0.0.1:8080".into(),
                backlog: 1024,
                trust_forwarded: false,
                tls: None,
                redirect_https: false,
            }]
        );
        let app = &c.clusters["app"];
        assert_eq!(app.balance, BalanceAlgorithm::WeightedRoundRobin);
        assert_eq!(app.balance, BalanceAlgorithm::default());
        assert_eq!(app.hash_on, None);
        assert_eq!(app.retries, 2);
        assert_eq!(app.slow_start, std::time::Duration::ZERO);
        assert_eq!(app.health_check, None);
        assert_eq!(
            app.passive_health,
            PassiveHealthConfig {
                consecutive_failures: 5,
                cool_down: std::time::Duration::from_secs(10),
                count_5xx: true,
            }
        );
        assert_eq!(
            app.backends,
            [BackendConfig {
                address: "127.0.0.1:9001".into(),
                weight: 1,
                drain: false,
            }]
        );
        assert_eq!(
            c.routes,
            [RouteConfig {
                host: "*".into(),
                path_prefix: "/".into(),
                cluster: "app".into(),
                methods: Vec::new(),
                header: None,
                class: RouteClass::Stateless,
                session: None,
                priority: None,
                on_backend_down: FailoverPolicy::Rebind,
                auth: RouteAuthMode::None,
                pool: None,
                roles: Vec::new(),
                groups: Vec::new(),
                identity: true,
                rate_limits: Vec::new(),
                notifications: false,
                uploads: false,
            }]
        );
        assert_eq!(c.auth, None);
        assert!(c.pools.is_empty());
    }

    #[test]
    fn empty_auth_and_pool_tables_take_the_defaults() {
        let users = manifest_path("configs/cluster/users.toml");
        let text = format!(
            "{MINIMAL}[auth]\n[pools.mail]\nusers = {:?}\n[pools.ext]\nupstream = {{ login_url = \"http://127.0.0.1:9003/login\" }}\n",
            users.display().to_string()
        );
        let c = load_str_on(&text, "t.toml", &Machine { cpus: 1 }).unwrap();
        assert_eq!(c.auth, Some(AuthConfig::default()));
        let mail = &c.pools["mail"];
        assert_eq!(
            (
                mail.tenant.as_deref(),
                mail.hosts.len(),
                mail.min_password_length
            ),
            (None, 0, 8)
        );
        assert!(mail.refuse_common_passwords && !mail.self_registration && mail.upstream.is_none());
        assert_eq!(
            c.pools["ext"].upstream,
            Some(UpstreamAuthConfig {
                login_url: "http://127.0.0.1:9003/login".into(),
                refresh_url: None,
                header: "Authorization".into(),
                timeout: std::time::Duration::from_secs(5),
            })
        );
    }

    #[test]
    fn load_file_labels_errors_with_the_path() {
        let path = manifest_path("tests/fixtures/config/errors.toml");
        let errors = load_file(&path).unwrap_err();
        let text = errors.to_string();
        let label = path.display().to_string();
        assert!(errors.0.len() > 1, "{text}");
        assert!(errors.0.iter().all(|e| e.file == label), "{text}");
        let lines: Vec<usize> = errors.0.iter().map(|e| e.line).collect();
        assert!(lines.is_sorted(), "{text}");
    }

    #[test]
    fn unreadable_file_is_one_error() {
        let errors = load_file(Path::new("/nonexistent/tether.toml")).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].line, 0);
        assert!(
            errors
                .to_string()
                .starts_with("/nonexistent/tether.toml: cannot read"),
            "{errors}"
        );
    }
}
