//! Server-Sent Events (the WHATWG HTML "event stream" format): writing the events tether streams to
//! clients, and parsing the events an upstream feed sends tether. The parser is fed arbitrary bytes in
//! arbitrary pieces and never panics; a line longer than its bound is an error (the feed reconnects).

use super::hub::Item;

/// Appends one notification as an event: `id:` then `data:` (the JSON text has no line breaks). A
/// notification that made room by dropping older ones is preceded by a `dropped` event saying how many.
pub fn write_item(out: &mut Vec<u8>, item: &Item) {
    if item.dropped > 0 {
        out.extend_from_slice(b"event: dropped\ndata: {\"count\":");
        out.extend_from_slice(itoa::Buffer::new().format(item.dropped).as_bytes());
        out.extend_from_slice(b"}\n\n");
    }
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(itoa::Buffer::new().format(item.id).as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&item.data);
    out.extend_from_slice(b"\n\n");
}

/// The `reset` event: the client's `Last-Event-ID` is not an id this node can place; what follows is
/// every notification not yet acknowledged, from the start of what the node holds.
pub fn write_reset(out: &mut Vec<u8>, after: u64) {
    out.extend_from_slice(b"event: reset\ndata: {\"after\":");
    out.extend_from_slice(itoa::Buffer::new().format(after).as_bytes());
    out.extend_from_slice(b"}\n\n");
}

/// A keep-alive comment (ignored by clients; keeps intermediaries from timing the stream out).
pub fn write_keepalive(out: &mut Vec<u8>) {
    out.extend_from_slice(b": keepalive\n\n");
}

/// One event an upstream sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field (empty: `message`).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The stream's last event id once this event arrived (what to resume from).
    pub id: Option<String>,
}

/// Why the parser gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("event stream line over {0} bytes")]
    LineTooLong(usize),
    #[error("event over {0} bytes")]
    EventTooLarge(usize),
}

/// An incremental event-stream parser.
#[derive(Debug)]
pub struct Parser {
    line: Vec<u8>,
    /// The previous byte was a CR (a following LF belongs to the same line end).
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    max_line: usize,
    /// The stream's first bytes: a UTF-8 byte order mark there is skipped.
    started: bool,
}

impl Parser {
    /// A parser refusing lines and events over `max` bytes.
    pub fn new(max: usize) -> Parser {
        Parser {
            line: Vec::new(),
            after_cr: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            last_id: None,
            max_line: max,
            started: false,
        }
    }

    /// The last event id seen (the `Last-Event-ID` to reconnect with).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Starts over after a reconnection, keeping the last event id.
    pub fn reset(&mut self) {
        let id = self.last_id.take();
        *self = Parser::new(self.max_line);
        self.last_id = id;
    }

    /// Feeds bytes; every complete event goes to `on_event`.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut on_event: impl FnMut(Event),
    ) -> Result<(), SseError> {
        if !self.started && !bytes.is_empty() {
            self.started = true;
            if let Some(rest) = bytes.strip_prefix("\u{feff}".as_bytes()) {
                bytes = rest;
            }
        }
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, &mut on_event)?;
                    self.line = line;
                    self.line.clear();
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() >= self.max_line {
                        return Err(SseError::LineTooLong(self.max_line));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(Event)) -> Result<(), SseError> {
        if line.is_empty() {
            // Dispatch (an event without data is none: the spec drops it, the id stays).
            if self.has_data {
                on_event(Event {
                    event: std::mem::take(&mut self.event),
                    data: std::mem::take(&mut self.data),
                    id: self.last_id.clone(),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_line {
                    return Err(SseError::EventTooLarge(self.max_line));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            // An id with a NUL is ignored (the spec's rule).
            b"id" if !value.contains('\0') => self.last_id = Some(value.into_owned()),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parts: &[&[u8]]) -> (Vec<Event>, Option<String>) {
        let mut p = Parser::new(1024);
        let mut out = Vec::new();
        for part in parts {
            p.feed(part, |e| out.push(e)).unwrap();
        }
        (out, p.last_id().map(str::to_string))
    }

    #[test]
    fn events_in_any_pieces_and_line_endings() {
        let text = b"\xef\xbb\xbf: hello\r\nid: 1\r\ndata: {\"user\":\"alice\"}\r\n\r\nevent: x\ndata: a\ndata: b\nid: 2\n\nid: 3\n\n";
        let whole = events(&[text]);
        assert_eq!(whole.0.len(), 2);
        assert_eq!(whole.0[0].data, "{\"user\":\"alice\"}");
        assert_eq!(whole.0[0].id.as_deref(), Some("1"));
        assert_eq!(whole.0[1].event, "x");
        assert_eq!(whole.0[1].data, "a\nb");
        assert_eq!(whole.1.as_deref(), Some("3"));
        // Split at every byte: the same events.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(events(&bytes), whole);
        // CR alone ends lines too.
        let cr = events(&[b"data: x\r\rdata: y\r\r"]);
        assert_eq!(cr.0.len(), 2);
    }

    #[test]
    fn long_lines_are_refused_not_buffered() {
        let mut p = Parser::new(8);
        assert_eq!(
            p.feed(b"data: 0123456789", |_| {}),
            Err(SseError::LineTooLong(8))
        );
    }

    #[test]
    fn no_input_panics() {
        let alphabet = b"\r\n:di ae\xff";
        let mut inputs = vec![Vec::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for i in &inputs {
                for &c in alphabet {
                    let mut v: Vec<u8> = i.clone();
                    v.push(c);
                    next.push(v);
                }
            }
            inputs.extend(next);
        }
        for i in &inputs {
            let mut p = Parser::new(4);
            let _ = p.feed(i, |_| {});
        }
    }

    #[test]
    fn written_events_parse_back() {
        let mut out = Vec::new();
        write_reset(&mut out, 9);
        write_item(
            &mut out,
            &Item {
                id: 10,
                flags: 0,
                dropped: 2,
                data: b"{\"a\":1}"[..].into(),
            },
        );
        write_keepalive(&mut out);
        let (ev, last) = events(&[&out]);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].event, "reset");
        assert_eq!(ev[1].event, "dropped");
        assert_eq!(ev[2].data, "{\"a\":1}");
        assert_eq!(last.as_deref(), Some("10"));
    }
}
