//! Spans to OTLP protobuf messages, one `ResourceSpans` per traced process.
//!
//! We build requests ourselves on `opentelemetry-proto` rather than going
//! through an SDK exporter: one SDK exporter carries one resource, and an
//! agent reports for many processes at once (see ARCHITECTURE.md).

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource as ProtoResource,
    trace::v1::{
        span::SpanKind as ProtoKind, status::StatusCode, ResourceSpans, ScopeSpans,
        Span as ProtoSpan, Status as ProtoStatus,
    },
};

use crate::spans::{Resource, Span, SpanKind, Status, Value};

fn any(v: &Value) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(match v {
            Value::Str(s) => any_value::Value::StringValue(s.clone()),
            Value::Int(n) => any_value::Value::IntValue(*n),
            Value::Bool(b) => any_value::Value::BoolValue(*b),
        }),
    })
}

pub fn kv(key: &str, v: &Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: any(v),
        ..Default::default()
    }
}

fn resource(r: &Resource) -> ProtoResource {
    ProtoResource {
        attributes: r.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

fn span(s: &Span) -> ProtoSpan {
    ProtoSpan {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state.clone(),
        parent_span_id: if s.is_root() {
            Vec::new()
        } else {
            s.parent_span_id.to_vec()
        },
        name: s.name.clone(),
        kind: match s.kind {
            SpanKind::Server => ProtoKind::Server,
            SpanKind::Client => ProtoKind::Client,
        } as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(match &s.status {
            Status::Unset => ProtoStatus::default(),
            Status::Error(msg) => ProtoStatus {
                message: msg.clone(),
                code: StatusCode::Error as i32,
            },
        }),
        ..Default::default()
    }
}

/// `each` of the batch's spans, grouped under their process's resource,
/// the processes in the order they first appear: one `ResourceSpans` per
/// group, however the request is built.
pub fn by_process<'a, T>(
    batch: &'a [Span],
    mut each: impl FnMut(&'a Span) -> T,
) -> Vec<(&'a Arc<Resource>, Vec<T>)> {
    let mut groups: Vec<(&Arc<Resource>, Vec<T>)> = Vec::new();
    for s in batch {
        let item = each(s);
        match groups.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &s.resource)) {
            Some((_, items)) => items.push(item),
            None => groups.push((&s.resource, vec![item])),
        }
    }
    groups
}

/// One request for a batch, spans grouped under their process's resource.
pub fn request(batch: &[Span]) -> ExportTraceServiceRequest {
    let groups = by_process(batch, span);
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(r, spans)| ResourceSpans {
                resource: Some(resource(r)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "zerospan".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}
