//! Database and cache calls to spans, following OpenTelemetry's database
//! conventions. Redis and memcached today.

use std::sync::Arc;

use zerospan_protocols::resp::Reply;

use super::{
    http::{outcome_status, Endpoints},
    Resource, Span, SpanKind, Status, Value,
};
use crate::{clock::Clock, db_conn::Call};

/// Placeholders written into `db.query.text` before it is cut short.
const MAX_PLACEHOLDERS: u32 = 16;

/// `SET ? ?`: the command with every argument redacted. The agent never
/// reads the arguments, so there is nothing to leak.
fn redacted_query(name: &str, args: u32) -> String {
    let mut q = String::with_capacity(name.len() + 2 * args.min(MAX_PLACEHOLDERS) as usize + 2);
    q.push_str(name);
    for _ in 0..args.min(MAX_PLACEHOLDERS) {
        q.push_str(" ?");
    }
    if args > MAX_PLACEHOLDERS {
        q.push_str(" …");
    }
    q
}

/// `system` is `db.system.name`: `redis`, `memcached`.
pub fn build_span(
    system: &'static str,
    call: &Call,
    ends: Endpoints,
    clock: &Clock,
    resource: Arc<Resource>,
) -> Span {
    let name = call.command.name.clone();
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(10);
    attrs.push(("db.system.name", system.into()));
    attrs.push(("db.operation.name", name.as_str().into()));
    attrs.push((
        "db.query.text",
        redacted_query(&name, call.command.args).into(),
    ));
    if let Some(peer) = ends.peer {
        attrs.push(("server.address", peer.ip().to_string().into()));
        attrs.push(("server.port", i64::from(peer.port()).into()));
        attrs.push(("network.peer.address", peer.ip().to_string().into()));
        attrs.push(("network.peer.port", i64::from(peer.port()).into()));
    }
    attrs.push(("thread.id", i64::from(call.tid).into()));
    let status = match &call.reply {
        Some(Reply::Error(word)) => {
            let word = if word.is_empty() {
                "_OTHER"
            } else {
                word.as_str()
            };
            attrs.push(("db.response.status_code", word.into()));
            attrs.push(("error.type", word.into()));
            Status::Error(String::new())
        }
        Some(Reply::Ok) => Status::Unset,
        None => outcome_status(call.outcome, &mut attrs),
    };
    let start_ns = call.sent_at.enter_ns;
    let end_ns = call.end_at.exit_ns.max(start_ns);
    Span {
        trace_id: call.ctx.trace_id,
        span_id: call.ctx.span_id,
        parent_span_id: call.ctx.parent_span_id,
        trace_state: call.ctx.trace_state.clone(),
        remote_sampled: call.ctx.remote_sampled,
        name,
        kind: SpanKind::Client,
        start_unix_ns: clock.to_unix_ns(start_ns),
        end_unix_ns: clock.to_unix_ns(end_ns),
        attributes: attrs,
        status,
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_text_never_holds_arguments() {
        assert_eq!(redacted_query("SET", 2), "SET ? ?");
        assert_eq!(redacted_query("PING", 0), "PING");
        let long = redacted_query("MSET", 40);
        assert!(
            long.starts_with("MSET ? ?") && long.ends_with(" …"),
            "{long}"
        );
    }
}
