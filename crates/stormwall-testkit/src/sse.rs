//! A small incremental server-sent-events parser for assertions on streamed bodies.
//!
//! It follows the parts of the WHATWG event-stream grammar the OpenAI APIs use (`event:`,
//! `data:`, comments, CRLF or LF line ends) so a test sees events exactly as an SDK would,
//! however the bytes were split into chunks on the wire.

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// Whether this is the `data: [DONE]` terminator of chat and completions streams.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }

    /// The data parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.data)
    }
}

/// Feeds arbitrary byte chunks in, gets complete events out.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of an unfinished line carried over between chunks.
    line: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// A parser with no buffered input.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `chunk` and returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line, &mut out);
                // Reuse the allocation for the next line.
                line.clear();
                self.line = line;
            } else {
                self.line.push(b);
            }
        }
        out
    }

    /// Whether bytes of an unfinished event are buffered (a stream cut mid-event).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.data.is_some() || self.event.is_some()
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            // A blank line dispatches; an event without data lines is dropped, per spec.
            let event = self.event.take();
            if let Some(data) = self.data.take() {
                out.push(SseEvent { event, data });
            }
            return;
        }
        if line.first() == Some(&b':') {
            return; // comment / keep-alive
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {} // id, retry and unknown fields do not matter to these tests
        }
    }
}

/// Parses a complete SSE body into its events.
pub fn parse_sse(body: &[u8]) -> Vec<SseEvent> {
    SseParser::new().push(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_chunks_and_crlf() {
        let body = b"event: a\r\ndata: {\"x\":1}\r\n\r\n: keep-alive\n\ndata: one\ndata: two\n\ndata: [DONE]\n\n";
        let whole = parse_sse(body);
        let mut p = SseParser::new();
        let mut split = Vec::new();
        for c in body.chunks(3) {
            split.extend(p.push(c));
        }
        assert_eq!(whole, split);
        assert!(!p.has_partial());
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].event.as_deref(), Some("a"));
        assert_eq!(whole[0].json().unwrap()["x"], 1);
        assert_eq!(whole[1].data, "one\ntwo");
        assert!(whole[2].is_done());
    }

    #[test]
    fn reports_partial_events() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: {\"a\":").is_empty());
        assert!(p.has_partial());
    }
}
