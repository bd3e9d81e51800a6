//! Database and cache calls to spans, following OpenTelemetry's database
//! conventions: PostgreSQL, Redis and memcached today.

use std::sync::Arc;

use zerospan_protocols::{resp::Command, sql, stream::Stamp};

use super::{
    context::SpanContext,
    http::{outcome_status, peer_attributes},
    Category, Record, SpanKind, Status, Value,
};
use crate::exchange::{Endpoints, Outcome, ReplyStatus, Task};

/// Placeholders written into a redacted command before it is cut short.
const MAX_PLACEHOLDERS: u32 = 16;

/// What a call asked the database to do, as spans name it. Shared by every
/// execution of one prepared statement.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Operation {
    /// `db.operation.name`: `SELECT`, `GET`.
    pub name: Option<String>,
    /// `db.collection.name`: the one table the statement names.
    pub collection: Option<String>,
    /// `db.query.text`, already sanitised (unless configured otherwise);
    /// empty when not known.
    pub query_text: String,
}

impl Operation {
    /// A piece of SQL: its operation and table, and its text, sanitised
    /// unless asked otherwise. Computed once per statement, not per call.
    pub fn sql(text: &str, sanitize: bool) -> Arc<Self> {
        let (name, collection) = sql::operation_and_table(text);
        let query_text = if sanitize {
            sql::sanitize(text)
        } else {
            text.to_owned()
        };
        Arc::new(Operation {
            name,
            collection,
            query_text,
        })
    }

    /// A key-value store command: its name, and its arguments as `?`. The
    /// agent never reads the arguments, so there is nothing to leak.
    pub fn command(cmd: &Command) -> Self {
        let args = cmd.args.min(MAX_PLACEHOLDERS) as usize;
        let mut q = String::with_capacity(cmd.name.len() + 2 * args + 4);
        q.push_str(&cmd.name);
        for _ in 0..args {
            q.push_str(" ?");
        }
        if cmd.args > MAX_PLACEHOLDERS {
            q.push_str(" …");
        }
        Operation {
            name: Some(cmd.name.clone()),
            collection: None,
            query_text: q,
        }
    }
}

/// One command and what came back.
#[derive(Clone, Debug)]
pub struct Call {
    pub ctx: SpanContext,
    pub op: Arc<Operation>,
    /// `db.namespace`, when the connection's start was seen.
    pub namespace: Option<Arc<str>>,
    /// The database user, only when configured to export it.
    pub user: Option<Arc<str>>,
    /// Segment holding the command's first byte.
    pub sent_at: Stamp,
    /// Segment holding the reply's last byte (or the last activity seen).
    pub end_at: Stamp,
    pub reply: Option<ReplyStatus>,
    pub outcome: Outcome,
    pub task: Task,
}

impl Call {
    /// A call just sent, not answered yet.
    pub fn sent(
        ctx: SpanContext,
        op: Arc<Operation>,
        namespace: Option<Arc<str>>,
        user: Option<Arc<str>>,
        task: Task,
        at: Stamp,
    ) -> Self {
        Call {
            ctx,
            op,
            namespace,
            user,
            sent_at: at,
            end_at: at,
            reply: None,
            outcome: Outcome::Complete,
            task,
        }
    }
}

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
        attrs.push(("server.address", super::http::ip_text(peer.ip()).into()));
        attrs.push(("server.port", i64::from(peer.port()).into()));
    }
    peer_attributes(&mut attrs, ends);
    attrs.push(("thread.id", i64::from(call.task.tid).into()));
    let status = match &call.reply {
        Some(ReplyStatus::Error(word)) => {
            let word = if word.is_empty() {
                "_OTHER"
            } else {
                word.as_str()
            };
            attrs.push(("db.response.status_code", word.into()));
            attrs.push(("error.type", word.into()));
            Status::Error(String::new())
        }
        Some(ReplyStatus::Ok) => Status::Unset,
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
