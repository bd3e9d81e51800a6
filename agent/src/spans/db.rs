//! Database and cache calls to spans, following OpenTelemetry's database
//! conventions: PostgreSQL, Redis and memcached today.

use zerospan_protocols::resp::Reply;

use super::{
    http::{outcome_status, peer_attributes},
    Category, Record, SpanKind, Status, Value,
};
use crate::conn::{
    db::{Call, Operation},
    Endpoints,
};

/// `{db.operation.name} {db.collection.name}`, or as much of it as is
/// known, else the system: what the conventions ask for.
fn span_name(system: &str, op: &Operation) -> String {
    match (&op.name, &op.collection) {
        (Some(name), Some(table)) => format!("{name} {table}"),
        (Some(name), None) => name.clone(),
        (None, _) => system.to_owned(),
    }
}

/// The record of a database call, in the database conventions. `system`
/// is `db.system.name`: `postgresql`, `redis`, `memcached`; `tgid` the
/// traced process.
pub fn record(system: &'static str, call: &Call, ends: Endpoints, tgid: u32) -> Record {
    let op = &*call.op;
    let name = span_name(system, op);
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(12);
    attrs.push(("db.system.name", system.into()));
    if let Some(ns) = &call.namespace {
        attrs.push(("db.namespace", ns.as_ref().into()));
    }
    // Opt-in (`--db-user`): the name current conventions dropped.
    if let Some(user) = &call.user {
        attrs.push(("db.user", user.as_ref().into()));
    }
    if let Some(op_name) = &op.name {
        attrs.push(("db.operation.name", op_name.as_str().into()));
    }
    if let Some(table) = &op.collection {
        attrs.push(("db.collection.name", table.as_str().into()));
    }
    if !op.query_text.is_empty() {
        attrs.push(("db.query.text", op.query_text.as_str().into()));
    }
    if let Some(peer) = ends.peer {
        attrs.push(("server.address", peer.ip().to_string().into()));
        attrs.push(("server.port", i64::from(peer.port()).into()));
    }
    peer_attributes(&mut attrs, ends);
    attrs.push(("thread.id", i64::from(call.task.tid).into()));
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
    Record {
        tgid,
        task: call.task,
        kind: SpanKind::Client,
        category: Category::Db,
        ctx: call.ctx.clone(),
        name,
        start_ns,
        end_ns: call.end_at.exit_ns.max(start_ns),
        attributes: attrs,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let op = |name: Option<&str>, table: Option<&str>| Operation {
            name: name.map(Into::into),
            collection: table.map(Into::into),
            query_text: String::new(),
        };
        assert_eq!(
            span_name("postgresql", &op(Some("INSERT"), Some("tasks"))),
            "INSERT tasks"
        );
        assert_eq!(span_name("redis", &op(Some("GET"), None)), "GET");
        assert_eq!(span_name("postgresql", &op(None, None)), "postgresql");
    }
}
