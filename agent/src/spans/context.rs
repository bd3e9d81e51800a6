//! Trace context: W3C `traceparent` parsing, and the context each exchange
//! gets the moment its request is seen, so that children can point at it
//! before it ends.

use super::ids;

/// The identity of a span and its place in a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for a root.
    pub parent_span_id: [u8; 8],
    pub trace_state: String,
    /// The sampled flag of a remote parent, when the trace came in with one;
    /// in-process children inherit it.
    pub remote_sampled: Option<bool>,
}

impl SpanContext {
    /// A new root: fresh trace id.
    pub fn root() -> Self {
        SpanContext {
            trace_id: ids::trace_id(),
            span_id: ids::span_id(),
            parent_span_id: [0; 8],
            trace_state: String::new(),
            remote_sampled: None,
        }
    }

    /// A new span as the child of `parent`, in its trace.
    pub fn child_of(parent: &SpanContext) -> Self {
        SpanContext {
            trace_id: parent.trace_id,
            span_id: ids::span_id(),
            parent_span_id: parent.span_id,
            trace_state: parent.trace_state.clone(),
            remote_sampled: parent.remote_sampled,
        }
    }

    /// A new span whose parent is the remote span a `traceparent` names.
    pub fn child_of_remote(remote: &TraceParent, trace_state: Option<&str>) -> Self {
        SpanContext {
            trace_id: remote.trace_id,
            span_id: ids::span_id(),
            parent_span_id: remote.parent_id,
            trace_state: trace_state.map(valid_tracestate).unwrap_or_default(),
            remote_sampled: Some(remote.sampled),
        }
    }
}

/// A parsed W3C `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

fn hex_nibble(b: u8) -> Option<u8> {
    // Lowercase only: the specification forbids uppercase hex.
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_into(src: &[u8], dst: &mut [u8]) -> Option<()> {
    if src.len() != dst.len() * 2 {
        return None;
    }
    for (i, pair) in src.chunks_exact(2).enumerate() {
        dst[i] = hex_nibble(pair[0])? << 4 | hex_nibble(pair[1])?;
    }
    Some(())
}

/// Parses `traceparent` (W3C Trace Context, level 1), or `None` if it is
/// malformed in any way the specification says to reject.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let v = value.trim().as_bytes();
    // version "-" trace-id "-" parent-id "-" flags: 2+1+32+1+16+1+2 = 55.
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    hex_into(&v[0..2], &mut version)?;
    match version[0] {
        0xff => return None,
        // Version 00 is exactly 55 bytes; later versions may append fields
        // after a '-', which we ignore.
        0x00 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flags = [0u8; 1];
    hex_into(&v[3..35], &mut trace_id)?;
    hex_into(&v[36..52], &mut parent_id)?;
    hex_into(&v[53..55], &mut flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags[0] & 1 == 1,
    })
}

/// `tracestate` is passed on as received, unless it is clearly not one
/// (too long, or with characters the grammar forbids), in which case it is
/// dropped, as the specification allows.
fn valid_tracestate(s: &str) -> String {
    let s = s.trim();
    let printable = s.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if s.len() <= 512 && printable {
        s.to_owned()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example() {
        let tp = parse_traceparent(GOOD).unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.trace_id[15], 0x36);
        assert_eq!(
            tp.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(tp.sampled);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!parse_traceparent(&unsampled).unwrap().sampled);
    }

    #[test]
    fn rejects_what_the_specification_rejects() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        // A future version may carry more fields after a dash.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abcd";
        assert!(parse_traceparent(future).is_some());
        assert!(parse_traceparent(&future.replace("-abcd", "abcd")).is_none());
    }

    #[test]
    fn children_keep_the_trace_and_point_at_the_parent() {
        let remote = parse_traceparent(GOOD).unwrap();
        let server = SpanContext::child_of_remote(&remote, Some("vendor=opaque"));
        assert_eq!(server.trace_id, remote.trace_id);
        assert_eq!(server.parent_span_id, remote.parent_id);
        assert_eq!(server.trace_state, "vendor=opaque");
        assert_eq!(server.remote_sampled, Some(true));
        let client = SpanContext::child_of(&server);
        assert_eq!(client.trace_id, remote.trace_id);
        assert_eq!(client.parent_span_id, server.span_id);
        assert_ne!(client.span_id, server.span_id);
        assert_eq!(client.remote_sampled, Some(true));
        let bad_state = SpanContext::child_of_remote(&remote, Some("a=\u{7f}"));
        assert_eq!(bad_state.trace_state, "");
    }
}
