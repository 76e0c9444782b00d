//! W3C trace context (contract §14): the `traceparent` a task carries, as
//! a `traceparent` header on the task message or `metadata.traceparent` in
//! its envelope (the header wins). Nodes continue it in their spans and
//! hand it on to exec handlers (`TRACEPARENT`) and http handlers (the
//! `traceparent` header); the client library and the sidecar start one
//! when the caller sends none.
//!
//! ```
//! use jetweave::wire::trace::TraceParent;
//! let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
//! assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert!(tp.sampled());
//! let child = tp.child();
//! assert_eq!(child.trace_id(), tp.trace_id());
//! assert_ne!(child.span_id(), tp.span_id());
//! assert!(TraceParent::parse("garbage").is_none());
//! ```

use serde_json::{Map, Value};

/// The header (and metadata key) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent`: version 00, a 16-byte trace id, an 8-byte
/// parent (span) id, and the flags (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` when it is not valid (then the
    /// receiver starts a new trace, as the W3C spec says). A future version
    /// is read for its first four fields; version `ff` and all-zero ids
    /// are invalid.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let mut parts = s.split('-');
        let version = hex_bytes::<1>(parts.next()?)?;
        let trace_id = hex_bytes::<16>(parts.next()?)?;
        let span_id = hex_bytes::<8>(parts.next()?)?;
        let flags = hex_bytes::<1>(parts.next()?)?;
        let rest_ok = match version[0] {
            0 => parts.next().is_none(),
            0xff => false,
            _ => true,
        };
        let zero = trace_id.iter().all(|b| *b == 0) || span_id.iter().all(|b| *b == 0);
        (rest_ok && !zero).then_some(TraceParent {
            trace_id,
            span_id,
            flags: flags[0],
        })
    }

    /// A new trace (random ids), sampled.
    pub fn new_root() -> Self {
        TraceParent {
            trace_id: random_nonzero::<16>(),
            span_id: random_nonzero::<8>(),
            flags: 1,
        }
    }

    /// From ids (e.g. a span's); `None` when one is all zeros.
    pub fn from_ids(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Option<Self> {
        let zero = trace_id.iter().all(|b| *b == 0) || span_id.iter().all(|b| *b == 0);
        (!zero).then_some(TraceParent {
            trace_id,
            span_id,
            flags: u8::from(sampled),
        })
    }

    /// The same trace with a new span id (a child of this one).
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: random_nonzero::<8>(),
            ..*self
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent (span) id.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The sampled flag.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace context of a task: its message's `traceparent` header,
    /// else its envelope's `metadata.traceparent`.
    pub fn of_task(header: Option<&str>, metadata: &Map<String, Value>) -> Option<Self> {
        header
            .and_then(TraceParent::parse)
            .or_else(|| metadata.get(TRACEPARENT)?.as_str().and_then(Self::parse))
    }

    /// Puts a new trace into `metadata` unless it holds a valid one;
    /// returns the trace context the task carries.
    pub fn ensure_in(metadata: &mut Map<String, Value>) -> Self {
        if let Some(tp) = metadata.get(TRACEPARENT).and_then(Value::as_str) {
            if let Some(tp) = Self::parse(tp) {
                return tp;
            }
        }
        let tp = Self::new_root();
        metadata.insert(TRACEPARENT.into(), Value::String(tp.to_string()));
        tp
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (t, s) = (hex(&self.trace_id), hex(&self.span_id));
        write!(f, "00-{t}-{s}-{:02x}", self.flags)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from exactly `2N` lowercase hex digits.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let ok = s.len() == 2 * N && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if !ok {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let mut out = [0u8; N];
        out.iter_mut().for_each(|b| *b = fastrand::u8(..));
        if out.iter().any(|b| *b != 0) {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_refuses_as_w3c_says() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(s).unwrap().to_string(), s);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceParent::parse(unsampled).unwrap().sampled());
        // A later version may append fields; it is read as version 00.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert_eq!(TraceParent::parse(future).unwrap().to_string(), s);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_header_wins_over_metadata_and_a_new_trace_fills_the_gap() {
        let a = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let b = "00-11111111111111111111111111111111-2222222222222222-01";
        let mut meta = Map::new();
        meta.insert(TRACEPARENT.into(), Value::String(b.into()));
        let tp = TraceParent::of_task(Some(a), &meta).unwrap();
        assert_eq!(tp.to_string(), a);
        let tp = TraceParent::of_task(Some("junk"), &meta).unwrap();
        assert_eq!(tp.to_string(), b);
        assert_eq!(TraceParent::ensure_in(&mut meta).to_string(), b);
        let mut empty = Map::new();
        let new = TraceParent::ensure_in(&mut empty);
        assert_eq!(empty[TRACEPARENT], new.to_string());
        assert_ne!(new.trace_id(), [0; 16]);
    }
}
