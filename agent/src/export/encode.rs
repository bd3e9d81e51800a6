//! An OTLP trace export request encoded straight from the agent's spans,
//! byte for byte what `prost` makes of [`otlp::request`](super::otlp::request)
//! (a test holds it to that).
//!
//! Building `opentelemetry-proto`'s messages first cost an allocation per
//! attribute key (17 or so a span), a copy of every string value and id,
//! and a walk for `encoded_len` at every level before the encoding itself:
//! about a fifth of the agent's CPU under load. Here each message's length
//! is computed from the span, then the span is written once.

use crate::spans::{Resource, Span, SpanKind, Status, Value};

/// Field tags (field number << 3 | wire type) of the messages written.
mod tag {
    pub const LEN: u8 = 2;
    pub const fn len(field: u8) -> u8 {
        field << 3 | LEN
    }
    pub const fn varint(field: u8) -> u8 {
        field << 3
    }
    pub const fn fixed64(field: u8) -> u8 {
        field << 3 | 1
    }
}

/// `ExportTraceServiceRequest` for `batch`, its spans grouped under their
/// process's resource in the order the processes first appear, appended
/// to `out`.
pub fn trace_request(batch: &[Span], out: &mut Vec<u8>) {
    // Each span with its length, worked out once: every enclosing
    // message's length needs it before the span is written.
    let groups = super::otlp::by_process(batch, |s| (s, span_len(s)));
    for (resource, spans) in &groups {
        let len = resource_spans_len(resource, spans);
        out.push(tag::len(1));
        put_varint(out, len as u64);
        resource_spans(out, resource, spans);
    }
}

/// A span and the length of its encoding.
type Measured<'a> = (&'a Span, usize);

const SCOPE_NAME: &str = "zerospan";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn resource_spans_len(resource: &Resource, spans: &[Measured<'_>]) -> usize {
    field_len(resource_len(resource)) + field_len(scope_spans_len(spans))
}

fn resource_spans(out: &mut Vec<u8>, resource: &Resource, spans: &[Measured<'_>]) {
    message(out, 1, resource_len(resource));
    for (k, v) in &resource.attributes {
        key_value(out, 1, k, v);
    }
    message(out, 2, scope_spans_len(spans));
    message(out, 1, scope_len());
    string(out, 1, SCOPE_NAME);
    string(out, 2, SCOPE_VERSION);
    for &(s, len) in spans {
        message(out, 2, len);
        span(out, s);
    }
}

fn resource_len(r: &Resource) -> usize {
    r.attributes
        .iter()
        .map(|(k, v)| field_len(key_value_len(k, v)))
        .sum()
}

fn scope_len() -> usize {
    string_len(SCOPE_NAME) + string_len(SCOPE_VERSION)
}

fn scope_spans_len(spans: &[Measured<'_>]) -> usize {
    field_len(scope_len()) + spans.iter().map(|&(_, len)| field_len(len)).sum::<usize>()
}

fn span_len(s: &Span) -> usize {
    let parent = if s.is_root() { 0 } else { field_len(8) };
    field_len(16)
        + field_len(8)
        + string_len(&s.trace_state)
        + parent
        + string_len(&s.name)
        + 2
        + fixed64_len(s.start_unix_ns)
        + fixed64_len(s.end_unix_ns)
        + s.attributes
            .iter()
            .map(|(k, v)| field_len(key_value_len(k, v)))
            .sum::<usize>()
        + field_len(status_len(&s.status))
}

fn span(out: &mut Vec<u8>, s: &Span) {
    bytes(out, 1, &s.trace_id);
    bytes(out, 2, &s.span_id);
    string(out, 3, &s.trace_state);
    if !s.is_root() {
        bytes(out, 4, &s.parent_span_id);
    }
    string(out, 5, &s.name);
    // SpanKind: SERVER 2, CLIENT 3.
    out.push(tag::varint(6));
    out.push(match s.kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    });
    fixed64(out, 7, s.start_unix_ns);
    fixed64(out, 8, s.end_unix_ns);
    for (k, v) in &s.attributes {
        key_value(out, 9, k, v);
    }
    // Status (field 15), present even when unset, as prost writes it.
    message(out, 15, status_len(&s.status));
    if let Status::Error(msg) = &s.status {
        string(out, 2, msg);
        // STATUS_CODE_ERROR
        out.push(tag::varint(3));
        out.push(2);
    }
}

fn status_len(status: &Status) -> usize {
    match status {
        Status::Unset => 0,
        Status::Error(msg) => string_len(msg) + 2,
    }
}

fn key_value_len(key: &str, v: &Value) -> usize {
    string_len(key) + field_len(any_value_len(v))
}

fn key_value(out: &mut Vec<u8>, field: u8, key: &str, v: &Value) {
    message(out, field, key_value_len(key, v));
    string(out, 1, key);
    message(out, 2, any_value_len(v));
    // A oneof's variant is written even when it holds its type's default.
    match v {
        Value::Str(s) => {
            out.push(tag::len(1));
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bool(b) => {
            out.push(tag::varint(2));
            out.push(u8::from(*b));
        }
        Value::Int(n) => {
            out.push(tag::varint(3));
            put_varint(out, *n as u64);
        }
    }
}

fn any_value_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => field_len(s.len()),
        Value::Bool(_) => 2,
        Value::Int(n) => 1 + varint_len(*n as u64),
    }
}

/// A length-delimited field's size: tag (every field here is below 16),
/// length, contents.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// proto3 leaves out empty strings and bytes.
fn string_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(s.len())
    }
}

fn fixed64_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        9
    }
}

fn message(out: &mut Vec<u8>, field: u8, len: usize) {
    out.push(tag::len(field));
    put_varint(out, len as u64);
}

fn string(out: &mut Vec<u8>, field: u8, s: &str) {
    bytes(out, field, s.as_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u8, b: &[u8]) {
    if !b.is_empty() {
        message(out, field, b.len());
        out.extend_from_slice(b);
    }
}

fn fixed64(out: &mut Vec<u8>, field: u8, v: u64) {
    if v != 0 {
        out.push(tag::fixed64(field));
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message as _;

    use super::*;
    use crate::spans::test_span;

    /// Byte for byte what prost makes of the messages `otlp` builds.
    fn same_as_prost(batch: &[Span]) {
        let mut ours = Vec::new();
        trace_request(batch, &mut ours);
        assert_eq!(ours, super::super::otlp::request(batch).encode_to_vec());
    }

    #[test]
    fn encodes_as_prost_does() {
        let mut a = test_span(1, 0, "GET /");
        let mut b = test_span(2, 1, "");
        b.kind = SpanKind::Client;
        b.trace_state = "k=v".into();
        b.status = Status::Error("boom".into());
        b.attributes = vec![
            ("s", Value::Str(String::new())),
            ("long", Value::Str("x".repeat(300))),
            ("neg", Value::Int(-1)),
            ("zero", Value::Int(0)),
            ("big", Value::Int(i64::MAX)),
            ("t", Value::Bool(true)),
            ("f", Value::Bool(false)),
        ];
        b.start_unix_ns = 0;
        b.end_unix_ns = u64::MAX;
        // A third span of the first process, after one of another.
        let mut c = test_span(3, 1, "third");
        c.resource = a.resource.clone();
        b.resource = Arc::new(Resource {
            pid: 7,
            attributes: (0..40).map(|i| (format!("k{i}"), Value::Int(i))).collect(),
        });
        a.status = Status::Error(String::new());
        same_as_prost(&[a.clone(), b.clone(), c]);
        same_as_prost(&[b]);
        same_as_prost(&[]);
        // A span with 200 attributes: lengths past one varint byte.
        a.attributes = (0..200)
            .map(|i| ("http.request.header.x", Value::Str(format!("{i}"))))
            .collect();
        same_as_prost(&[a]);
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
