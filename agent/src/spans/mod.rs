//! Spans as the agent builds them, before any export format.
//!
//! Spans carry their real ids and timestamps, and an `Arc` to the resource
//! of the process they came from, so exporters can group them per process.

pub mod context;
pub mod db;
pub mod http;
pub mod ids;
pub mod redact;
pub mod route;
pub mod rpc;
pub mod sampler;

use crate::exchange::Task;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

/// Which family of conventions a span follows: metrics choose their
/// instrument by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    Http,
    Rpc,
    Db,
}

/// A finished exchange, as every protocol reports it: what span building,
/// metrics and export need, in the protocol's semantic conventions already,
/// and nothing protocol-specific. Times are the kernel's monotonic clock.
#[derive(Clone, Debug)]
pub struct Record {
    /// The traced process.
    pub tgid: u32,
    /// Who started the exchange: the thread that framed its request (in
    /// Go, with its goroutine).
    pub task: Task,
    pub kind: SpanKind,
    pub category: Category,
    /// Given when the request started (see `linker`); it may still change
    /// before export, when a server span is adopted.
    pub ctx: context::SpanContext,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: Status,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error(String),
}

/// The resource of one traced process.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub pid: u32,
    pub attributes: Vec<(String, Value)>,
}

impl Resource {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }
}

#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for a root span.
    pub parent_span_id: [u8; 8],
    pub trace_state: String,
    /// The sampled flag of the remote parent this span's trace came in
    /// with, if any; parent-based samplers follow it.
    pub remote_sampled: Option<bool>,
    pub name: String,
    pub kind: SpanKind,
    pub category: Category,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: Status,
    pub resource: Arc<Resource>,
}

impl Span {
    /// The memory the span holds, near enough: its own size and what its
    /// strings and attributes own (not the resource, which spans of a
    /// process share). The export buffer is bounded by it.
    pub fn memory_bytes(&self) -> usize {
        let strings: usize = self
            .attributes
            .iter()
            .map(|(_, v)| match v {
                Value::Str(s) => s.capacity(),
                Value::Int(_) | Value::Bool(_) => 0,
            })
            .sum();
        let status = match &self.status {
            Status::Error(m) => m.capacity(),
            Status::Unset => 0,
        };
        std::mem::size_of::<Span>()
            + self.name.capacity()
            + self.trace_state.capacity()
            + self.attributes.capacity() * std::mem::size_of::<(&str, Value)>()
            + strings
            + status
    }

    /// The span of a record, in the process's resource, on the wall clock.
    pub fn from_record(r: Record, clock: &crate::clock::Clock, resource: Arc<Resource>) -> Span {
        let ctx = r.ctx;
        Span {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_span_id: ctx.parent_span_id,
            trace_state: ctx.trace_state,
            remote_sampled: ctx.remote_sampled,
            name: r.name,
            kind: r.kind,
            category: r.category,
            start_unix_ns: clock.to_unix_ns(r.start_ns),
            end_unix_ns: clock.to_unix_ns(r.end_ns.max(r.start_ns)),
            attributes: r.attributes,
            status: r.status,
            resource,
        }
    }

    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find_map(|(k, v)| (*k == key).then_some(v))
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id == [0; 8]
    }
}

/// A small server span for unit tests: trace id all ones, ids from `id`
/// and `parent` (0 for none), 1.5 ms long, service "web", pid 42.
#[cfg(test)]
pub fn test_span(id: u8, parent: u8, name: &str) -> Span {
    let mut parent_span_id = [0; 8];
    parent_span_id[7] = parent;
    let mut span_id = [0; 8];
    span_id[7] = id;
    Span {
        trace_id: [1; 16],
        span_id,
        parent_span_id,
        trace_state: String::new(),
        remote_sampled: None,
        name: name.into(),
        kind: SpanKind::Server,
        category: Category::Http,
        start_unix_ns: 0,
        end_unix_ns: 1_500_000,
        attributes: vec![("http.response.status_code", 200.into())],
        status: Status::Unset,
        resource: Arc::new(Resource {
            pid: 42,
            attributes: vec![("service.name".into(), "web".into())],
        }),
    }
}
