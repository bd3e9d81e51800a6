//! gRPC calls to spans, following OpenTelemetry's stable RPC conventions
//! (v1.45: `rpc.system.name`, `rpc.method`, `rpc.response.status_code`).

use super::{
    context::SpanContext,
    http::{mark_incomplete, outcome_status, peer_attributes, split_host, tls_attributes},
    Category, Record, SpanKind, Status, Value,
};
use crate::exchange::{Endpoints, Outcome, Role, Task};
use zerospan_protocols::stream::Stamp;

/// One gRPC call, as framed on one HTTP/2 stream.
#[derive(Clone, Debug)]
pub struct Call {
    pub ctx: SpanContext,
    /// `service/method` from the request's `:path` (`demo.Echo/Say`); empty
    /// when the path could not be known.
    pub method: String,
    /// The request's `:authority`.
    pub authority: Option<String>,
    /// The `grpc-status` of the trailers (or of a Trailers-Only response).
    pub status: Option<u32>,
    /// Segment holding the request's first byte.
    pub request_at: Stamp,
    /// Segment that ended the call.
    pub end_at: Stamp,
    pub outcome: Outcome,
    /// The HTTP/2 error code of a stream reset that ended the call.
    pub reset: Option<u32>,
    /// Who framed the request: its thread (in Go, with its goroutine).
    pub task: Task,
}

/// gRPC status codes by number.
const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The codes a server reports as its own errors (semconv, gRPC): the rest
/// are the caller's mistakes, errors only on the client side.
const SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

/// HTTP/2 error codes by number (RFC 9113 §7).
const H2_ERRORS: [&str; 14] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
];

/// The name of an HTTP/2 error code, for `error.type`.
pub fn h2_error_name(code: u32) -> &'static str {
    H2_ERRORS.get(code as usize).copied().unwrap_or("_OTHER")
}

/// The record of a gRPC call. `tgid`: the traced process.
pub fn record(c: &Call, role: Role, ends: Endpoints, tgid: u32) -> Record {
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(12);
    attrs.push(("rpc.system.name", "grpc".into()));
    let name = if c.method.is_empty() {
        "grpc".to_owned()
    } else {
        attrs.push(("rpc.method", c.method.as_str().into()));
        c.method.clone()
    };
    let status_name = c
        .status
        .map(|s| STATUS_NAMES.get(s as usize).copied().unwrap_or("_OTHER"));
    if let Some(s) = status_name {
        attrs.push(("rpc.response.status_code", s.into()));
    }
    let authority = c.authority.as_deref().map(split_host);
    let (kind, start_ns, fallback) = match role {
        // The call has arrived once its first read returns; it starts for
        // a client when its write is issued.
        Role::Server => (SpanKind::Server, c.request_at.exit_ns, ends.local),
        Role::Client => (SpanKind::Client, c.request_at.enter_ns, ends.peer),
    };
    let server = authority
        .map(|(h, p)| (h.to_owned(), p.or(fallback.map(|a| a.port()))))
        .or_else(|| {
            fallback
                .filter(|a| !a.ip().is_unspecified())
                .map(|a| (super::http::ip_text(a.ip()), Some(a.port())))
        });
    if let Some((host, port)) = server {
        attrs.push(("server.address", host.into()));
        if let Some(p) = port {
            attrs.push(("server.port", i64::from(p).into()));
        }
    }
    peer_attributes(&mut attrs, ends);
    tls_attributes(&mut attrs, ends);
    attrs.push(("network.protocol.name", "http".into()));
    attrs.push(("network.protocol.version", "2".into()));
    attrs.push(("thread.id", i64::from(c.task.tid).into()));
    let status = match (c.outcome, c.status, c.reset) {
        (Outcome::Complete, Some(code), _) if code != 0 => {
            let error = match role {
                Role::Server => SERVER_ERRORS.contains(&code),
                Role::Client => true,
            };
            if error {
                attrs.push(("error.type", status_name.unwrap_or("_OTHER").into()));
                Status::Error(String::new())
            } else {
                Status::Unset
            }
        }
        (Outcome::Complete, None, Some(reset)) => {
            attrs.push(("error.type", h2_error_name(reset).into()));
            Status::Error("stream reset".to_owned())
        }
        (Outcome::Complete, None, None) => {
            // Ended, but its status went unseen.
            mark_incomplete(&mut attrs, "grpc_status_unknown");
            Status::Unset
        }
        (outcome, ..) => outcome_status(outcome, &mut attrs),
    };
    Record {
        tgid,
        task: c.task,
        kind,
        category: Category::Rpc,
        ctx: c.ctx.clone(),
        name,
        start_ns,
        end_ns: c.end_at.exit_ns.max(start_ns),
        attributes: attrs,
        status,
    }
}
