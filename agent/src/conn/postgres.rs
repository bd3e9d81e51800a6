//! One PostgreSQL client connection: its queries paired with their
//! results.
//!
//! What the client sends becomes a queue of units, answered strictly in
//! order: a simple `Query` ends at its `ReadyForQuery`; each extended
//! `Execute` ends at its own `CommandComplete` (or error, or empty query,
//! or suspension); a `Sync` ends at a `ReadyForQuery`. After an error, the
//! server skips every message up to the next `Sync`, so the `Execute`s
//! still waiting in that batch fail with the same error. Prepared
//! statements and portals are remembered per connection, so an `Execute`
//! of a statement prepared long ago still knows its SQL.
//!
//! When the response stream cannot be framed (a header in bytes that were
//! not captured), nothing is paired by guess: the stream is found again at
//! the next read that ends with `ReadyForQuery`, which is where a query
//! cycle ends. If exactly one cycle was waiting, that read answers it (the
//! `CommandComplete` or `ErrorResponse` just before the `ReadyForQuery`
//! says how); otherwise every waiting call ends as `ResponseLost`.
//!
//! No I/O: segments in, finished [`Call`]s out.

use crate::exchange::{Outcome, ReplyStatus, Task};
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use zerospan_protocols::{
    postgres::{self, Direction, Framer, Message, Tag},
    stream::{Segment, Stamp},
};

use super::{
    db::{call_context, collect, remember, SqlOptions},
    protocol::{Cx, Protocol, Verdict},
};
use crate::{
    spans::{
        context::SpanContext,
        db::{Call, Operation},
    },
    stats::Stats,
};

/// `db.system.name` of PostgreSQL.
const SYSTEM: &str = "postgresql";

/// Most calls one connection may have waiting (pipelines).
const MAX_PENDING: usize = 1024;

/// Something the client sent that the server will answer.
#[derive(Debug)]
enum Unit {
    /// The startup packet: answered by authentication, then the first
    /// `ReadyForQuery`.
    Startup,
    /// A simple query: one span, ended by `ReadyForQuery`.
    Query(Call),
    /// An extended `Execute`: one span, ended by its own completion.
    Execute(Call),
    /// `Sync` (or a function call): ended by `ReadyForQuery`.
    Sync,
}

impl Unit {
    fn ends_at_ready(&self) -> bool {
        !matches!(self, Unit::Execute(_))
    }
}

pub struct PgConn {
    front: Framer,
    back: Framer,
    units: VecDeque<Unit>,
    pub finished: Vec<Call>,
    statements: HashMap<String, Arc<Operation>>,
    portals: HashMap<String, Arc<Operation>>,
    namespace: Option<Arc<str>>,
    opts: SqlOptions,
    /// The user from the startup or login, when `opts.user`.
    user: Option<Arc<str>>,
    /// The error that failed the batch at the head of the queue: the
    /// `Execute`s left in it were skipped by the server.
    batch_error: Option<String>,
    /// `ReadyForQuery`s still owed to units that timed out: everything the
    /// server sends before them answers those units.
    owed: u32,
    /// The server agreed to encrypt: from here on the bytes are TLS.
    encrypted: bool,
    last_at: Stamp,
}

impl PgConn {
    /// A connection seen from its startup packet.
    pub fn new(opts: SqlOptions) -> Self {
        Self::with(Framer::new(Direction::Frontend), opts)
    }

    /// A connection that existed before the agent: joined at a query.
    pub fn mid_stream(opts: SqlOptions) -> Self {
        Self::with(Framer::mid_stream(Direction::Frontend), opts)
    }

    fn with(front: Framer, opts: SqlOptions) -> Self {
        PgConn {
            front,
            back: Framer::new(Direction::Backend),
            units: VecDeque::new(),
            finished: Vec::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            namespace: None,
            opts,
            user: None,
            batch_error: None,
            owed: 0,
            encrypted: false,
            last_at: Stamp::default(),
        }
    }

    /// Feeds one segment. Returns false once the connection carries
    /// nothing more this agent can read (the server accepted TLS).
    pub fn feed(
        &mut self,
        egress: bool,
        task: Task,
        seg: Segment<'_>,
        mut context: impl FnMut() -> SpanContext,
        stats: &Stats,
    ) -> bool {
        self.last_at = seg.stamp;
        if egress {
            // Only with nothing waiting: answers to what was sent in the
            // lost bytes could still be on their way.
            if self.front.is_lost()
                && self.units.is_empty()
                && postgres::starts_messages(Direction::Frontend, seg.bytes, seg.len)
            {
                self.front.resync();
            }
            let was_lost = self.front.is_lost();
            // The framer lends its messages to methods of `self`, so it
            // steps out of `self` while it runs.
            let mut front =
                std::mem::replace(&mut self.front, Framer::mid_stream(Direction::Frontend));
            front.feed(seg, &mut |m: Message<'_>| {
                self.on_frontend(m, task, &mut context, stats)
            });
            self.front = front;
            if self.front.is_lost() && !was_lost {
                stats.desync(SYSTEM);
            }
        } else {
            if self.back.is_lost() {
                self.recover_tail(seg, stats);
                return !self.encrypted;
            }
            let mut back = std::mem::replace(&mut self.back, Framer::new(Direction::Backend));
            back.feed(seg, &mut |m: Message<'_>| self.on_backend(m, stats));
            self.back = back;
            if self.back.is_lost() {
                stats.desync(SYSTEM);
                // This very read may still end the cycle.
                self.recover_tail(seg, stats);
            }
        }
        !self.encrypted
    }

    fn new_call(&self, op: Arc<Operation>, task: Task, at: Stamp, ctx: SpanContext) -> Call {
        Call::sent(ctx, op, self.namespace.clone(), self.user.clone(), task, at)
    }

    fn push(&mut self, unit: Unit, stats: &Stats) {
        if self.units.len() >= MAX_PENDING {
            if let Some(Unit::Query(mut c) | Unit::Execute(mut c)) = self.units.pop_front() {
                c.outcome = Outcome::ResponseLost;
                self.finished.push(c);
            }
            Stats::inc(&stats.db_pipeline_overflow);
            // The pairing is off by one from here: find the stream again.
            self.back.lose();
        }
        self.units.push_back(unit);
    }

    fn on_frontend(
        &mut self,
        m: Message<'_>,
        task: Task,
        context: &mut impl FnMut() -> SpanContext,
        stats: &Stats,
    ) {
        match m.tag {
            Tag::Startup => {
                let s = postgres::startup(m.body);
                match s.code {
                    postgres::SSL_REQUEST | postgres::GSSENC_REQUEST => {
                        self.back.expect_encryption_answer()
                    }
                    postgres::PROTOCOL_3 => {
                        self.namespace = s.database.map(Into::into);
                        if self.opts.user {
                            self.user = s.user.map(Into::into);
                        }
                        self.push(Unit::Startup, stats);
                    }
                    // A cancel request: its connection carries nothing else.
                    _ => {}
                }
            }
            Tag::Typed(b'Q') => {
                let op = Operation::sql(&postgres::query_text(m.body), self.opts.sanitize);
                let call = self.new_call(op, task, m.first_at, context());
                self.push(Unit::Query(call), stats);
            }
            Tag::Typed(b'P') => {
                let (name, text) = postgres::parse(m.body);
                let op = Operation::sql(&text, self.opts.sanitize);
                remember(&mut self.statements, name, op, stats);
            }
            Tag::Typed(b'B') => {
                let (portal, statement) = postgres::bind(m.body);
                let op = match self.statements.get(&statement) {
                    Some(op) => op.clone(),
                    None => {
                        // Prepared before the agent attached.
                        Stats::inc(&stats.db_statements_unknown);
                        Arc::new(Operation::default())
                    }
                };
                remember(&mut self.portals, portal, op, stats);
            }
            Tag::Typed(b'E') => {
                let portal = postgres::execute(m.body);
                let op = self.portals.get(&portal).cloned().unwrap_or_default();
                let call = self.new_call(op, task, m.first_at, context());
                self.push(Unit::Execute(call), stats);
            }
            // A function call is answered like a simple query, without SQL.
            Tag::Typed(b'S' | b'F') => self.push(Unit::Sync, stats),
            Tag::Typed(b'C') => {
                let (kind, name) = postgres::close(m.body);
                match kind {
                    b'S' => self.statements.remove(&name),
                    _ => self.portals.remove(&name),
                };
            }
            // Describe, Flush, COPY data, passwords, Terminate.
            _ => {}
        }
    }

    fn on_backend(&mut self, m: Message<'_>, stats: &Stats) {
        match m.tag {
            Tag::EncryptionAnswer(b'N') => {}
            Tag::EncryptionAnswer(_) => self.encrypted = true,
            // COPY FROM STDIN in an extended batch: the server ignores the
            // Sync sent with the batch (the one after CopyDone ends it).
            Tag::Typed(b'G')
                if self.owed == 0
                    && matches!(self.units.front(), Some(Unit::Execute(_)))
                    && matches!(self.units.get(1), Some(Unit::Sync)) =>
            {
                self.units.remove(1);
            }
            Tag::Typed(b'C' | b'I' | b's') if self.owed == 0 => {
                if let Some(Unit::Execute(_)) = self.units.front() {
                    if let Some(Unit::Execute(mut c)) = self.units.pop_front() {
                        c.reply = Some(ReplyStatus::Ok);
                        c.end_at = m.last_at;
                        self.finished.push(c);
                    }
                }
            }
            Tag::Typed(b'E') if self.owed == 0 => {
                let code = postgres::error_code(m.body).unwrap_or_else(|| "_OTHER".to_owned());
                match self.units.front_mut() {
                    // Authentication failed: no span for connecting.
                    Some(Unit::Startup) => {
                        self.units.pop_front();
                    }
                    Some(Unit::Query(c)) => c.reply = Some(ReplyStatus::Error(code)),
                    Some(Unit::Execute(_)) => {
                        if let Some(Unit::Execute(mut c)) = self.units.pop_front() {
                            c.reply = Some(ReplyStatus::Error(code.clone()));
                            c.end_at = m.last_at;
                            self.finished.push(c);
                        }
                        self.batch_error = Some(code);
                    }
                    // A Parse or Bind failed before any Execute ran.
                    Some(Unit::Sync) => self.batch_error = Some(code),
                    None => Stats::inc(&stats.db_orphan_replies),
                }
            }
            Tag::Typed(b'Z') => self.ready(m.last_at, stats),
            // Rows, descriptions, parameters, notices, COPY data.
            _ => {}
        }
    }

    /// A `ReadyForQuery`: the cycle at the head of the queue is over.
    fn ready(&mut self, at: Stamp, stats: &Stats) {
        if self.owed > 0 {
            self.owed -= 1;
            return;
        }
        if !self.units.iter().any(Unit::ends_at_ready) {
            Stats::inc(&stats.db_orphan_replies);
            return;
        }
        let error = self.batch_error.take();
        while let Some(unit) = self.units.pop_front() {
            let last = unit.ends_at_ready();
            match unit {
                Unit::Query(mut c) => {
                    c.reply.get_or_insert(ReplyStatus::Ok);
                    c.end_at = at;
                    self.finished.push(c);
                }
                // Skipped by the server after the batch's error.
                Unit::Execute(mut c) => {
                    match &error {
                        Some(code) => c.reply = Some(ReplyStatus::Error(code.clone())),
                        None => c.outcome = Outcome::ResponseLost,
                    }
                    c.end_at = at;
                    self.finished.push(c);
                }
                Unit::Startup | Unit::Sync => {}
            }
            if last {
                break;
            }
        }
    }

    /// If `seg` was captured whole and ends with `ReadyForQuery`, the next
    /// read starts a message: resynchronise, settling what was waiting.
    fn recover_tail(&mut self, seg: Segment<'_>, stats: &Stats) {
        let whole = seg.bytes.len() as u64 == seg.len;
        if !whole || !postgres::ends_with_ready(seg.bytes) {
            return;
        }
        self.back.resync();
        Stats::inc(&stats.db_resyncs);
        let cycles = self.units.iter().filter(|u| u.ends_at_ready()).count();
        // Calls in the cycle the read ends: up to the first unit that a
        // ReadyForQuery ends.
        let calls = self
            .units
            .iter()
            .scan(false, |past, u| {
                let before = !*past;
                *past |= u.ends_at_ready();
                before.then_some(u)
            })
            .filter(|u| matches!(u, Unit::Query(_) | Unit::Execute(_)))
            .count();
        let how = postgres::message_before_ready(seg.bytes).map(|(t, body)| match t {
            b'E' => {
                ReplyStatus::Error(postgres::error_code(body).unwrap_or_else(|| "_OTHER".into()))
            }
            _ => ReplyStatus::Ok,
        });
        // Exactly one cycle waiting, holding at most one call, and nothing
        // owed: this read ends that cycle, and says how. Calls sent after
        // it (without a Sync of their own yet) keep waiting.
        if self.owed == 0 && cycles == 1 && calls <= 1 {
            self.batch_error = None;
            while let Some(unit) = self.units.pop_front() {
                let last = unit.ends_at_ready();
                if let Unit::Query(mut c) | Unit::Execute(mut c) = unit {
                    match &how {
                        Some(reply) => c.reply = Some(reply.clone()),
                        None => c.outcome = Outcome::ResponseLost,
                    }
                    c.end_at = seg.stamp;
                    self.finished.push(c);
                }
                if last {
                    break;
                }
            }
            return;
        }
        self.owed = 0;
        self.end_pending(Outcome::ResponseLost, seg.stamp);
    }

    /// Ends every call still waiting: the connection closed, the agent
    /// stopped, or their results were lost.
    pub fn end_pending(&mut self, outcome: Outcome, at: Stamp) {
        if outcome == Outcome::TimedOut {
            // Their ReadyForQuery may still come, ahead of any later call's.
            let cycles = self.units.iter().filter(|u| u.ends_at_ready()).count();
            self.owed = self.owed.saturating_add(cycles as u32);
        }
        self.batch_error = None;
        for unit in self.units.drain(..) {
            if let Unit::Query(mut c) | Unit::Execute(mut c) = unit {
                c.outcome = outcome;
                c.end_at = at;
                self.finished.push(c);
            }
        }
    }
}

impl Protocol for PgConn {
    fn name(&self) -> &'static str {
        SYSTEM
    }

    fn feed(&mut self, egress: bool, task: Task, seg: Segment<'_>, cx: &mut Cx<'_>) -> Verdict {
        let stats = cx.stats;
        let readable = self.feed(egress, task, seg, call_context(cx, task, seg.stamp), stats);
        collect(SYSTEM, &mut self.finished, cx);
        if readable {
            Verdict::Continue
        } else {
            // The server accepted TLS: the startup comes again, as
            // plaintext from the TLS library.
            Verdict::AwaitTls
        }
    }

    fn waiting_since(&self) -> Option<u64> {
        self.units.iter().find_map(|u| match u {
            Unit::Query(c) | Unit::Execute(c) => Some(c.sent_at.enter_ns),
            _ => None,
        })
    }

    fn end_all(&mut self, outcome: Outcome, cx: &mut Cx<'_>) {
        self.end_pending(outcome, self.last_at);
        collect(SYSTEM, &mut self.finished, cx);
    }

    /// The TLS the server agreed to is up: what follows is the plaintext,
    /// starting with the startup packet again.
    fn tls_started(&mut self) {
        self.encrypted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{opts, seg};

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn startup(db: &str) -> Vec<u8> {
        let mut body = postgres::PROTOCOL_3.to_be_bytes().to_vec();
        body.extend_from_slice(format!("user\0alice\0database\0{db}\0\0").as_bytes());
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        m
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn error(code: &str) -> Vec<u8> {
        msg(b'E', format!("SERROR\0C{code}\0Mboom\0\0").as_bytes())
    }

    fn prepare(name: &str, sql: &str) -> Vec<u8> {
        let mut b = msg(b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
        b.extend(msg(b'S', b""));
        b
    }

    fn execute(name: &str) -> Vec<u8> {
        let mut b = msg(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes());
        b.extend(msg(b'E', b"\0\0\0\0\0"));
        b
    }

    struct Run {
        c: PgConn,
        stats: Stats,
        t: u64,
    }

    impl Run {
        fn new() -> Self {
            Run {
                c: PgConn::new(opts(true)),
                stats: Stats::default(),
                t: 0,
            }
        }
        fn send(&mut self, bytes: &[u8]) {
            self.t += 10;
            assert!(self.c.feed(
                true,
                Task::thread(1),
                seg(bytes, self.t),
                SpanContext::root,
                &self.stats
            ));
        }
        fn recv(&mut self, bytes: &[u8]) {
            self.t += 10;
            self.c.feed(
                false,
                Task::thread(1),
                seg(bytes, self.t),
                SpanContext::root,
                &self.stats,
            );
        }
        fn spans(&self) -> Vec<(String, Option<ReplyStatus>, Outcome)> {
            self.c
                .finished
                .iter()
                .map(|c| {
                    let name = match (&c.op.name, &c.op.collection) {
                        (Some(n), Some(t)) => format!("{n} {t}"),
                        (Some(n), None) => n.clone(),
                        _ => "?".into(),
                    };
                    (name, c.reply.clone(), c.outcome)
                })
                .collect()
        }
    }

    fn connected() -> Run {
        let mut r = Run::new();
        r.send(&startup("shop"));
        let mut auth = msg(b'R', &0u32.to_be_bytes());
        auth.extend(msg(b'S', b"server_version\x0015\0"));
        auth.extend(msg(b'K', &[0; 8]));
        auth.extend(ready());
        r.recv(&auth);
        r
    }

    #[test]
    fn simple_queries_with_results_and_errors() {
        let mut r = connected();
        r.send(&msg(b'Q', b"INSERT INTO tasks (title) VALUES ('secret')\0"));
        let mut resp = msg(b'C', b"INSERT 0 1\0");
        resp.extend(ready());
        r.recv(&resp);
        r.send(&msg(b'Q', b"SELECT * FROM nope\0"));
        let mut resp = error("42P01");
        resp.extend(ready());
        r.recv(&resp);
        assert_eq!(
            r.spans(),
            vec![
                (
                    "INSERT tasks".into(),
                    Some(ReplyStatus::Ok),
                    Outcome::Complete
                ),
                (
                    "SELECT nope".into(),
                    Some(ReplyStatus::Error("42P01".into())),
                    Outcome::Complete
                ),
            ]
        );
        let first = &r.c.finished[0];
        assert_eq!(first.op.query_text, "INSERT INTO tasks (title) VALUES (?)");
        assert_eq!(first.namespace.as_deref(), Some("shop"));
        // Asked for here; off by default.
        assert_eq!(first.user.as_deref(), Some("alice"));
        assert_eq!((first.sent_at.enter_ns, first.end_at.exit_ns), (30, 41));
    }

    #[test]
    fn prepared_once_executed_many_times_and_pipelined() {
        let mut r = connected();
        r.send(&prepare("s1", "UPDATE tasks SET done = $1 WHERE id = $2"));
        let mut resp = msg(b'1', b"");
        resp.extend(ready());
        r.recv(&resp);
        // Three executions pipelined before one Sync; the second fails, so
        // the server skips the third.
        let mut batch = execute("s1");
        batch.extend(execute("s1"));
        batch.extend(execute("s1"));
        batch.extend(msg(b'S', b""));
        r.send(&batch);
        let mut resp = msg(b'2', b"");
        resp.extend(msg(b'C', b"UPDATE 1\0"));
        resp.extend(msg(b'2', b""));
        resp.extend(error("23505"));
        resp.extend(ready());
        r.recv(&resp);
        let dup = Some(ReplyStatus::Error("23505".into()));
        assert_eq!(
            r.spans(),
            vec![
                (
                    "UPDATE tasks".into(),
                    Some(ReplyStatus::Ok),
                    Outcome::Complete
                ),
                ("UPDATE tasks".into(), dup.clone(), Outcome::Complete),
                ("UPDATE tasks".into(), dup, Outcome::Complete),
            ]
        );
        assert_eq!(
            r.c.finished[0].op.query_text,
            "UPDATE tasks SET done = $1 WHERE id = $2"
        );
        // The next batch is paired afresh.
        r.send(&{
            let mut b = execute("s1");
            b.extend(msg(b'S', b""));
            b
        });
        let mut resp = msg(b'2', b"");
        resp.extend(msg(b'C', b"UPDATE 0\0"));
        resp.extend(ready());
        r.recv(&resp);
        assert_eq!(r.c.finished[3].reply, Some(ReplyStatus::Ok));
    }

    /// COPY in an extended batch: the Sync sent with the batch is ignored
    /// by the server; the one after CopyDone ends it.
    #[test]
    fn extended_copy_does_not_shift_later_pairs() {
        let mut r = connected();
        let mut batch = msg(b'P', b"\0COPY tasks FROM STDIN\0\0\0");
        batch.extend(execute(""));
        batch.extend(msg(b'S', b""));
        r.send(&batch);
        let mut resp = msg(b'1', b"");
        resp.extend(msg(b'2', b""));
        resp.extend(msg(b'G', b"\0\0\0"));
        r.recv(&resp);
        let mut data = msg(b'd', b"x\n");
        data.extend(msg(b'c', b""));
        data.extend(msg(b'S', b""));
        r.send(&data);
        let mut resp = msg(b'C', b"COPY 1\0");
        resp.extend(ready());
        r.recv(&resp);
        r.send(&msg(b'Q', b"SELECT 1\0"));
        let mut resp = error("42601");
        resp.extend(ready());
        r.recv(&resp);
        let got = r.spans();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, Some(ReplyStatus::Ok));
        assert_eq!(got[1].1, Some(ReplyStatus::Error("42601".into())));
    }

    #[test]
    fn copy_from_stdin_is_one_query() {
        let mut r = connected();
        r.send(&msg(b'Q', b"COPY tasks FROM STDIN\0"));
        r.recv(&msg(b'G', b"\0\0\0"));
        let mut data = msg(b'd', b"1\tx\n");
        data.extend(msg(b'd', b"2\ty\n"));
        data.extend(msg(b'c', b""));
        r.send(&data);
        let mut resp = msg(b'C', b"COPY 2\0");
        resp.extend(ready());
        r.recv(&resp);
        assert_eq!(
            r.spans(),
            vec![(
                "COPY tasks".into(),
                Some(ReplyStatus::Ok),
                Outcome::Complete
            )]
        );
    }

    #[test]
    fn refused_ssl_then_startup_and_accepted_ssl_stops() {
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&postgres::SSL_REQUEST.to_be_bytes());
        let mut r = Run::new();
        r.send(&ssl);
        r.recv(b"N");
        r.send(&startup("db2"));
        r.recv(&ready());
        r.send(&msg(b'Q', b"SELECT 1\0"));
        let mut resp = msg(b'C', b"SELECT 1\0");
        resp.extend(ready());
        r.recv(&resp);
        assert_eq!(r.c.finished[0].namespace.as_deref(), Some("db2"));
        assert_eq!(r.spans()[0].1, Some(ReplyStatus::Ok));

        let mut r = Run::new();
        r.send(&ssl);
        r.t += 10;
        let still = r.c.feed(
            false,
            Task::thread(1),
            seg(b"S", r.t),
            SpanContext::root,
            &r.stats,
        );
        assert!(!still);
    }

    /// A long result whose row headers were not captured: the read that
    /// ends with ReadyForQuery settles the query.
    #[test]
    fn long_result_settled_from_its_tail() {
        let mut r = connected();
        r.send(&msg(b'Q', b"SELECT * FROM big\0"));
        let mut rows = Vec::new();
        for _ in 0..2000 {
            rows.extend(msg(b'D', b"\0\x01\0\0\0\x03abc"));
        }
        let mut tail = msg(b'C', b"SELECT 2000\0");
        tail.extend(ready());
        // Head captured, middle not, tail captured: as the probes send it.
        r.t += 10;
        let head = Segment {
            bytes: &rows[..4096],
            len: 4096,
            stamp: Stamp {
                enter_ns: r.t,
                exit_ns: r.t + 1,
            },
        };
        r.c.feed(false, Task::thread(1), head, SpanContext::root, &r.stats);
        let gap = Segment {
            bytes: &[],
            len: (rows.len() - 4096 - 10) as u64,
            stamp: head.stamp,
        };
        r.c.feed(false, Task::thread(1), gap, SpanContext::root, &r.stats);
        assert!(r.c.back.is_lost());
        let mut last = rows[rows.len() - 10..].to_vec();
        last.extend(&tail);
        r.c.feed(
            false,
            Task::thread(1),
            seg(&last, r.t),
            SpanContext::root,
            &r.stats,
        );
        assert_eq!(
            r.spans(),
            vec![(
                "SELECT big".into(),
                Some(ReplyStatus::Ok),
                Outcome::Complete
            )]
        );
        // And the stream is framed again.
        r.send(&msg(b'Q', b"DELETE FROM big\0"));
        let mut resp = error("42501");
        resp.extend(ready());
        r.recv(&resp);
        assert_eq!(r.spans()[1].1, Some(ReplyStatus::Error("42501".into())));
    }

    #[test]
    fn joined_mid_stream_and_unknown_statements() {
        let stats = Stats::default();
        let mut c = PgConn::mid_stream(opts(true));
        let mut b = execute("old");
        b.extend(msg(b'S', b""));
        c.feed(
            true,
            Task::thread(1),
            seg(&b, 10),
            SpanContext::root,
            &stats,
        );
        let mut resp = msg(b'2', b"");
        resp.extend(msg(b'C', b"SELECT 1\0"));
        resp.extend(ready());
        c.feed(
            false,
            Task::thread(1),
            seg(&resp, 20),
            SpanContext::root,
            &stats,
        );
        assert_eq!(c.finished.len(), 1);
        assert_eq!(*c.finished[0].op, Operation::default());
        assert_eq!(c.finished[0].namespace, None);
        assert_eq!(
            stats
                .db_statements_unknown
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn late_results_after_a_timeout_are_skipped() {
        let mut r = connected();
        r.send(&msg(b'Q', b"SELECT pg_sleep(100)\0"));
        let at = r.c.last_at;
        r.c.end_pending(Outcome::TimedOut, at);
        r.send(&msg(b'Q', b"SELECT 2\0"));
        let mut resp = msg(b'C', b"SELECT 1\0");
        resp.extend(ready());
        resp.extend(error("57014"));
        resp.extend(ready());
        r.recv(&resp);
        let got = r.spans();
        assert_eq!(got[0].2, Outcome::TimedOut);
        assert_eq!(got[1].1, Some(ReplyStatus::Error("57014".into())));
    }

    #[test]
    fn garbage_at_every_split_never_panics() {
        let mut stream = startup("x");
        stream.extend(msg(b'Q', b"SELECT 1\0"));
        stream.extend(b"\xff\x00garbage");
        for cut in 0..stream.len() {
            let stats = Stats::default();
            let mut c = PgConn::new(opts(false));
            c.feed(
                true,
                Task::thread(1),
                seg(&stream[..cut], 1),
                SpanContext::root,
                &stats,
            );
            c.feed(
                true,
                Task::thread(1),
                seg(&stream[cut..], 2),
                SpanContext::root,
                &stats,
            );
            c.feed(
                false,
                Task::thread(1),
                seg(&stream, 3),
                SpanContext::root,
                &stats,
            );
        }
    }
}
