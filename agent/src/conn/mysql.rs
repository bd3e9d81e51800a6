//! One MySQL/MariaDB client connection: its commands paired with their
//! responses.
//!
//! The connection starts with the server's greeting (which says MySQL or
//! MariaDB, and what it supports) and the client's login (which may name
//! the database). After that, each client packet with sequence number 0 is
//! a command, and the server answers each in order with an OK, an ERR, or
//! a result set (a column count, column definitions, rows, and a closing
//! EOF or OK, possibly followed by more result sets). Walking that shape
//! packet by packet is what tells where one response ends.
//!
//! `COM_QUERY` and `COM_STMT_EXECUTE` become spans; a prepared statement's
//! SQL is remembered by its id from the `COM_STMT_PREPARE` answer.
//! `COM_INIT_DB` (and `USE`) change `db.namespace`.
//!
//! When the response stream cannot be framed, it is found again at a read
//! captured whole that ends with an OK, EOF or ERR packet, like
//! PostgreSQL's (see `conn::postgres`).
//!
//! No I/O: segments in, finished [`Call`]s out.

use crate::exchange::{Outcome, ReplyStatus, Task};
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use zerospan_protocols::{
    mysql::{self, caps, command, Direction, Framer, Packet, CURSOR_EXISTS, MORE_RESULTS_EXISTS},
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

/// Most commands one connection may have waiting.
const MAX_PENDING: usize = 1024;

#[derive(Debug)]
enum Phase {
    /// Waiting for the server's greeting.
    Greeting,
    /// The client answered the greeting; authentication goes on until the
    /// server says OK or ERR.
    Login,
    Commands,
}

/// Where the response to the command at the head of the queue is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Its first packet (sequence 1): OK, ERR, a column count, a prepare's
    /// OK.
    First,
    /// The first packet of a further result set, or the OK after a LOAD
    /// DATA LOCAL file: the sequence goes on.
    NextResult,
    /// Definitions to skip (a result's columns, or a prepare's parameters
    /// and columns), then rows or the end.
    Definitions {
        left: u64,
        then_rows: bool,
    },
    /// After the column definitions: an EOF (when not deprecated), a row,
    /// or the end of an empty result.
    AfterColumns,
    Rows,
}

#[derive(Debug)]
enum Kind {
    /// A query or an execution: one span.
    Call(Call),
    /// A prepare: its answer names the statement.
    Prepare(Arc<Operation>),
    /// A change of database, effective on OK.
    InitDb(String),
    /// Answered but not traced (ping, reset, fetch…), walked like a query.
    Silent,
    /// Answered by one packet of text (`COM_STATISTICS`).
    SilentText,
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    expect: Expect,
}

pub struct MysqlConn {
    /// `db.system.name`: `mysql` or `mariadb`, from the greeting.
    pub system: &'static str,
    client: Framer,
    server: Framer,
    phase: Phase,
    pending: VecDeque<Pending>,
    pub finished: Vec<Call>,
    statements: HashMap<u32, Arc<Operation>>,
    namespace: Option<Arc<str>>,
    opts: SqlOptions,
    /// The user from the startup or login, when `opts.user`.
    user: Option<Arc<str>>,
    /// The last server packet's payload filled a whole packet: the next
    /// one continues it.
    continued: bool,
    /// The server agreed to switch to TLS.
    encrypted: bool,
    /// The server's capabilities, from its greeting.
    server_caps: u32,
    /// Both sides send query attributes before a query's text (MySQL 8).
    query_attributes: bool,
    /// Both sides compress: the packets inside cannot be read.
    compressed: bool,
    /// The client's login was read (not just an SSL request).
    logged_in: bool,
    /// The client is sending a LOAD DATA LOCAL file: its packets are data,
    /// whatever their sequence numbers, until an empty one.
    infile: bool,
    last_at: Stamp,
}

impl MysqlConn {
    /// A connection that existed before the agent: joined at a command.
    /// Without the greeting, MySQL and MariaDB cannot be told apart; the
    /// protocol's name stands for both.
    pub fn mid_stream(opts: SqlOptions) -> Self {
        let mut c = Self::new(opts);
        c.phase = Phase::Commands;
        c
    }

    pub fn new(opts: SqlOptions) -> Self {
        MysqlConn {
            system: "mysql",
            client: Framer::new(Direction::Client),
            server: Framer::new(Direction::Server),
            phase: Phase::Greeting,
            pending: VecDeque::new(),
            finished: Vec::new(),
            statements: HashMap::new(),
            namespace: None,
            opts,
            user: None,
            continued: false,
            encrypted: false,
            server_caps: 0,
            query_attributes: false,
            compressed: false,
            logged_in: false,
            infile: false,
            last_at: Stamp::default(),
        }
    }

    /// Feeds one segment. Returns false once the connection carries
    /// nothing more this agent can read (TLS, or not MySQL after all).
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
            if self.client.is_lost() && self.pending.is_empty() {
                // Clients write whole commands: with nothing waiting, the
                // next write starts one.
                self.client.resync();
            }
            let was_lost = self.client.is_lost();
            // The framer lends its packets to methods of `self`.
            let mut client = std::mem::replace(&mut self.client, Framer::new(Direction::Client));
            client.feed(seg, &mut |p: Packet<'_>| {
                self.on_client(p, task, &mut context, stats)
            });
            self.client = client;
            if self.client.is_lost() && !was_lost {
                stats.desync("mysql");
            }
        } else if self.server.is_lost() {
            self.recover_tail(seg, stats);
        } else {
            let mut server = std::mem::replace(&mut self.server, Framer::new(Direction::Server));
            server.feed(seg, &mut |p: Packet<'_>| self.on_server(p, stats));
            self.server = server;
            if self.server.is_lost() {
                stats.desync("mysql");
                self.recover_tail(seg, stats);
            }
        }
        !self.encrypted && !self.compressed
    }

    fn new_call(&self, op: Arc<Operation>, task: Task, at: Stamp, ctx: SpanContext) -> Call {
        Call::sent(ctx, op, self.namespace.clone(), self.user.clone(), task, at)
    }

    fn push(&mut self, kind: Kind, stats: &Stats) {
        if self.pending.len() >= MAX_PENDING {
            if let Some(Pending {
                kind: Kind::Call(mut c),
                ..
            }) = self.pending.pop_front()
            {
                c.outcome = Outcome::ResponseLost;
                self.finished.push(c);
            }
            Stats::inc(&stats.db_pipeline_overflow);
            self.server.lose();
        }
        self.pending.push_back(Pending {
            kind,
            expect: Expect::First,
        });
    }

    fn on_client(
        &mut self,
        p: Packet<'_>,
        task: Task,
        context: &mut impl FnMut() -> SpanContext,
        stats: &Stats,
    ) {
        match self.phase {
            Phase::Greeting => {}
            // The login answers the greeting (sequence 1), or follows an
            // SSL request inside TLS (sequence 2); later packets of the
            // phase are authentication exchanges.
            Phase::Login if !self.logged_in => {
                if p.seq == 1 || p.seq == 2 {
                    let login = mysql::login(p.body);
                    self.logged_in = !login.ssl_request;
                    if login.ssl_request {
                        self.encrypted = true;
                    }
                    let both = login.caps & self.server_caps;
                    self.query_attributes = both & caps::QUERY_ATTRIBUTES != 0;
                    self.compressed = both & caps::COMPRESS != 0;
                    self.namespace = login.database.map(Into::into);
                    if self.opts.user {
                        self.user = login.user.map(Into::into);
                    }
                }
            }
            Phase::Login => {}
            Phase::Commands if self.infile => self.infile = p.len > 0,
            // Sequence numbers above 0 continue a command (long payloads).
            Phase::Commands if p.seq != 0 => {}
            Phase::Commands => {
                let Some((&cmd, rest)) = p.body.split_first() else {
                    return;
                };
                let kind = match cmd {
                    command::QUERY => {
                        let op = match mysql::query_sql(rest, self.query_attributes) {
                            Some(sql) => {
                                Operation::sql(&String::from_utf8_lossy(sql), self.opts.sanitize)
                            }
                            None => Arc::default(),
                        };
                        Kind::Call(self.new_call(op, task, p.first_at, context()))
                    }
                    command::STMT_EXECUTE => {
                        let op = match mysql::statement_id(p.body)
                            .and_then(|id| self.statements.get(&id))
                        {
                            Some(op) => op.clone(),
                            None => {
                                Stats::inc(&stats.db_statements_unknown);
                                Arc::default()
                            }
                        };
                        Kind::Call(self.new_call(op, task, p.first_at, context()))
                    }
                    command::STMT_PREPARE => Kind::Prepare(Operation::sql(
                        &String::from_utf8_lossy(rest),
                        self.opts.sanitize,
                    )),
                    command::INIT_DB => Kind::InitDb(String::from_utf8_lossy(rest).into_owned()),
                    // No answer comes to these.
                    command::STMT_CLOSE => {
                        if let Some(id) = mysql::statement_id(p.body) {
                            self.statements.remove(&id);
                        }
                        return;
                    }
                    command::QUIT | command::STMT_SEND_LONG_DATA => return,
                    command::STATISTICS => Kind::SilentText,
                    _ => Kind::Silent,
                };
                // Column definitions (COM_FIELD_LIST) or rows (a cursor's
                // COM_STMT_FETCH) up to an EOF, with no column count first.
                let expect = match cmd {
                    command::FIELD_LIST | command::STMT_FETCH => Expect::Rows,
                    _ => Expect::First,
                };
                self.push(kind, stats);
                if let Some(last) = self.pending.back_mut() {
                    last.expect = expect;
                }
            }
        }
    }

    fn on_server(&mut self, p: Packet<'_>, stats: &Stats) {
        // The rest of a payload too long for one packet.
        let continuation = std::mem::replace(&mut self.continued, p.len == mysql::MAX_PAYLOAD);
        if continuation {
            return;
        }
        match self.phase {
            Phase::Greeting => match mysql::greeting(p.body) {
                Some(g) if p.seq == 0 => {
                    self.server_caps = g.caps;
                    self.system = if g.version.contains("MariaDB") {
                        "mariadb"
                    } else {
                        "mysql"
                    };
                    self.phase = Phase::Login;
                }
                _ => self.server.lose(),
            },
            Phase::Login => match p.body.first() {
                Some(0x00) => self.phase = Phase::Commands,
                // Refused: nothing more will be asked on this connection.
                Some(0xff) => self.phase = Phase::Greeting,
                // An auth switch or more auth data: the exchange goes on.
                _ => {}
            },
            Phase::Commands => self.on_response(p, stats),
        }
    }

    fn on_response(&mut self, p: Packet<'_>, stats: &Stats) {
        // An answer starts at sequence number 1 (its command was 0); any
        // other packet here is the end of the previous answer (the EOF
        // after a prepare's definitions, when EOFs are not deprecated).
        let Some(head) = self.pending.front_mut() else {
            if p.seq == 1 {
                Stats::inc(&stats.db_orphan_replies);
            }
            return;
        };
        if head.expect == Expect::First && p.seq != 1 {
            return;
        }
        let first = p.body.first().copied();
        let eof = mysql::is_eof(&p);
        let done = match head.expect {
            Expect::First | Expect::NextResult => match (&head.kind, first) {
                (_, Some(0xff)) => Some(error_reply(p.body)),
                (Kind::SilentText, _) => Some(ReplyStatus::Ok),
                (Kind::Prepare(op), Some(0x00)) => match mysql::prepare_ok(p.body) {
                    Some((id, columns, params)) => {
                        remember(&mut self.statements, id, op.clone(), stats);
                        let left = u64::from(columns) + u64::from(params);
                        if left == 0 {
                            Some(ReplyStatus::Ok)
                        } else {
                            head.expect = Expect::Definitions {
                                left,
                                then_rows: false,
                            };
                            None
                        }
                    }
                    None => Some(ReplyStatus::Ok),
                },
                (_, Some(0x00)) => {
                    let more = mysql::ok_status(p.body).unwrap_or(0) & MORE_RESULTS_EXISTS != 0;
                    if more {
                        head.expect = Expect::NextResult;
                    }
                    (!more).then_some(ReplyStatus::Ok)
                }
                // LOAD DATA LOCAL: the client sends the file, then OK comes.
                (_, Some(0xfb)) => {
                    head.expect = Expect::NextResult;
                    self.infile = true;
                    None
                }
                _ => match mysql::lenenc(p.body) {
                    Some((columns, _)) if columns > 0 => {
                        head.expect = Expect::Definitions {
                            left: columns,
                            then_rows: true,
                        };
                        None
                    }
                    _ => {
                        self.server.lose();
                        return;
                    }
                },
            },
            // The EOF between a prepare's two groups of definitions.
            Expect::Definitions { .. } if eof => None,
            Expect::Definitions { left, then_rows } => {
                if left > 1 {
                    head.expect = Expect::Definitions {
                        left: left - 1,
                        then_rows,
                    };
                    None
                } else if then_rows {
                    head.expect = Expect::AfterColumns;
                    None
                } else {
                    Some(ReplyStatus::Ok)
                }
            }
            // Whether EOF packets are deprecated need not be known: a
            // classic EOF is exactly 5 bytes, the OK that replaces it at
            // least 7, and a row cannot start with 0xfe unless it is 16 MiB.
            // A statement executed with a cursor: no rows until fetched.
            Expect::AfterColumns
                if eof && mysql::eof_status(p.body).unwrap_or(0) & CURSOR_EXISTS != 0 =>
            {
                Some(ReplyStatus::Ok)
            }
            Expect::AfterColumns if eof => {
                head.expect = Expect::Rows;
                None
            }
            Expect::AfterColumns | Expect::Rows => {
                if first == Some(0xff) {
                    Some(error_reply(p.body))
                } else if mysql::is_terminator(&p) {
                    let status = if eof {
                        mysql::eof_status(p.body)
                    } else {
                        mysql::ok_status(p.body)
                    };
                    if status.unwrap_or(0) & MORE_RESULTS_EXISTS != 0 {
                        head.expect = Expect::NextResult;
                        None
                    } else {
                        Some(ReplyStatus::Ok)
                    }
                } else {
                    head.expect = Expect::Rows;
                    None
                }
            }
        };
        if let Some(reply) = done {
            self.complete(reply, p.last_at);
        }
    }

    /// The command at the head of the queue got its whole answer.
    fn complete(&mut self, reply: ReplyStatus, at: Stamp) {
        let Some(head) = self.pending.pop_front() else {
            return;
        };
        match head.kind {
            Kind::Call(mut c) => {
                if reply == ReplyStatus::Ok {
                    if let (Some("USE"), Some(db)) = (c.op.name.as_deref(), use_target(&c.op)) {
                        self.namespace = Some(db.into());
                    }
                }
                c.reply = Some(reply);
                c.end_at = at;
                self.finished.push(c);
            }
            Kind::InitDb(db) if reply == ReplyStatus::Ok => self.namespace = Some(db.into()),
            _ => {}
        }
    }

    /// The server stream is lost: a read captured whole that ends with an
    /// OK, EOF or ERR packet ends a response, and the next read starts one.
    fn recover_tail(&mut self, seg: Segment<'_>, stats: &Stats) {
        if seg.bytes.len() as u64 != seg.len || !matches!(self.phase, Phase::Commands) {
            return;
        }
        let Some((_, body)) = mysql::last_packet(seg.bytes) else {
            return;
        };
        let status = match body[0] {
            0xff => 0,
            0xfe if body.len() < 9 => mysql::eof_status(body).unwrap_or(0),
            _ => mysql::ok_status(body).unwrap_or(0),
        };
        if status & MORE_RESULTS_EXISTS != 0 {
            return;
        }
        self.server.resync();
        self.continued = false;
        Stats::inc(&stats.db_resyncs);
        if self.pending.len() == 1 {
            let reply = if body[0] == 0xff {
                error_reply(body)
            } else {
                ReplyStatus::Ok
            };
            self.complete(reply, seg.stamp);
        } else {
            self.end_pending(Outcome::ResponseLost, seg.stamp);
        }
    }

    /// Ends every command still waiting.
    pub fn end_pending(&mut self, outcome: Outcome, at: Stamp) {
        if outcome == Outcome::TimedOut && !self.pending.is_empty() {
            // Their answers may still come and cannot be told from later
            // ones': follow the stream again only from a clean tail.
            self.server.lose();
        }
        for p in self.pending.drain(..) {
            if let Kind::Call(mut c) = p.kind {
                c.outcome = outcome;
                c.end_at = at;
                self.finished.push(c);
            }
        }
    }
}

fn error_reply(body: &[u8]) -> ReplyStatus {
    ReplyStatus::Error(
        mysql::error(body)
            .map(|(code, _)| code.to_string())
            .unwrap_or_else(|| "_OTHER".to_owned()),
    )
}

/// The database a sanitised `USE db` names.
fn use_target(op: &Operation) -> Option<&str> {
    op.query_text
        .split_whitespace()
        .nth(1)
        .map(|d| d.trim_matches(|c| c == '`' || c == ';'))
}

impl Protocol for MysqlConn {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn feed(&mut self, egress: bool, task: Task, seg: Segment<'_>, cx: &mut Cx<'_>) -> Verdict {
        let stats = cx.stats;
        let readable = self.feed(egress, task, seg, call_context(cx, task, seg.stamp), stats);
        collect(self.system, &mut self.finished, cx);
        match (readable, self.compressed) {
            (true, _) => Verdict::Continue,
            // Compressed packets are unreadable: not worth following.
            (false, true) => Verdict::NotMine,
            // TLS: the login comes as plaintext from the library.
            (false, false) => Verdict::AwaitTls,
        }
    }

    fn waiting_since(&self) -> Option<u64> {
        self.pending.iter().find_map(|p| match &p.kind {
            Kind::Call(c) => Some(c.sent_at.enter_ns),
            _ => None,
        })
    }

    fn end_all(&mut self, outcome: Outcome, cx: &mut Cx<'_>) {
        self.end_pending(outcome, self.last_at);
        collect(self.system, &mut self.finished, cx);
    }

    /// The TLS the client asked for is up: the full login comes next, as
    /// plaintext.
    fn tls_started(&mut self) {
        self.encrypted = false;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::test_support::{opts, seg};

    fn packet(seq: u8, body: &[u8]) -> Vec<u8> {
        let mut p = (body.len() as u32).to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(body);
        p
    }

    /// A MariaDB server's greeting packet, header included.
    pub(in crate::conn) fn greeting(deprecate_eof: bool) -> Vec<u8> {
        let mut caps = caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::CONNECT_WITH_DB;
        if deprecate_eof {
            caps |= caps::DEPRECATE_EOF;
        }
        let mut b = vec![10];
        b.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        b.extend_from_slice(&[7, 0, 0, 0]);
        b.extend_from_slice(b"abcdefgh\0");
        b.extend_from_slice(&(caps as u16).to_le_bytes());
        b.push(45);
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        b.extend_from_slice(&[0; 11]);
        packet(0, &b)
    }

    fn login(db: &str, deprecate_eof: bool) -> Vec<u8> {
        let mut caps = caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::CONNECT_WITH_DB;
        if deprecate_eof {
            caps |= caps::DEPRECATE_EOF;
        }
        let mut b = caps.to_le_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0, 1, 45]);
        b.extend_from_slice(&[0; 23]);
        b.extend_from_slice(b"root\0\x00");
        b.extend_from_slice(db.as_bytes());
        b.push(0);
        packet(1, &b)
    }

    fn ok(seq: u8) -> Vec<u8> {
        packet(seq, &[0, 1, 0, 2, 0, 0, 0])
    }

    fn eof(seq: u8) -> Vec<u8> {
        packet(seq, &[0xfe, 0, 0, 2, 0])
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut b = vec![command::QUERY];
        b.extend_from_slice(sql.as_bytes());
        packet(0, &b)
    }

    /// A result set of `rows` one-column rows, classic EOFs.
    fn result_set(rows: usize) -> Vec<u8> {
        let mut r = packet(1, &[1]);
        r.extend(packet(
            2,
            b"\x03def\0\0\0\x01x\0\x0c\x21\0\0\0\0\xfd\0\0\0\0\0",
        ));
        r.extend(eof(3));
        for i in 0..rows {
            r.extend(packet(4 + i as u8, b"\x05hello"));
        }
        r.extend(eof(4 + rows as u8));
        r
    }

    struct Run {
        c: MysqlConn,
        stats: Stats,
        t: u64,
    }

    impl Run {
        fn connect(deprecate_eof: bool) -> Run {
            let mut r = Run {
                c: MysqlConn::new(opts(true)),
                stats: Stats::default(),
                t: 0,
            };
            r.recv(&greeting(deprecate_eof));
            r.send(&login("shop", deprecate_eof));
            r.recv(&ok(2));
            r
        }
        fn send(&mut self, b: &[u8]) {
            self.t += 10;
            assert!(self.c.feed(
                true,
                Task::thread(1),
                seg(b, self.t),
                SpanContext::root,
                &self.stats
            ));
        }
        fn recv(&mut self, b: &[u8]) {
            self.t += 10;
            self.c.feed(
                false,
                Task::thread(1),
                seg(b, self.t),
                SpanContext::root,
                &self.stats,
            );
        }
        fn spans(&self) -> Vec<(String, Option<ReplyStatus>, Option<String>)> {
            self.c
                .finished
                .iter()
                .map(|c| {
                    (
                        c.op.query_text.clone(),
                        c.reply.clone(),
                        c.namespace.as_deref().map(Into::into),
                    )
                })
                .collect()
        }
    }

    #[test]
    fn queries_results_errors_and_init_db() {
        let mut r = Run::connect(false);
        assert_eq!(r.c.system, "mariadb");
        assert_eq!(r.c.user.as_deref(), Some("root"));
        r.send(&query("SELECT x FROM t WHERE y = 'secret'"));
        r.recv(&result_set(3));
        r.send(&query("INSERT INTO t VALUES (1)"));
        r.recv(&packet(1, b"\xff\x26\x04#23000Duplicate entry"));
        r.send(&packet(0, b"\x02other"));
        r.recv(&ok(1));
        r.send(&query("DELETE FROM t"));
        r.recv(&ok(1));
        let shop = Some("shop".to_owned());
        assert_eq!(
            r.spans(),
            vec![
                (
                    "SELECT x FROM t WHERE y = ?".into(),
                    Some(ReplyStatus::Ok),
                    shop.clone()
                ),
                (
                    "INSERT INTO t VALUES (?)".into(),
                    Some(ReplyStatus::Error("1062".into())),
                    shop
                ),
                (
                    "DELETE FROM t".into(),
                    Some(ReplyStatus::Ok),
                    Some("other".into())
                ),
            ]
        );
    }

    #[test]
    fn prepared_statements_and_deprecated_eof() {
        let mut r = Run::connect(true);
        let mut prep = vec![command::STMT_PREPARE];
        prep.extend_from_slice(b"SELECT name FROM items WHERE id = ?");
        r.send(&packet(0, &prep));
        // OK: statement 5, one column, one parameter; then their
        // definitions, without EOFs.
        let mut resp = packet(1, &[0, 5, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
        resp.extend(packet(2, b"\x03def\0\0\0\x01?\0"));
        resp.extend(packet(3, b"\x03def\0\0\0\x04name\0"));
        r.recv(&resp);
        for _ in 0..3 {
            r.send(&packet(
                0,
                &[command::STMT_EXECUTE, 5, 0, 0, 0, 0, 1, 0, 0, 0],
            ));
            let mut rs = packet(1, &[1]);
            rs.extend(packet(2, b"\x03def\0\0\0\x04name\0"));
            rs.extend(packet(3, b"\x00\x00\x05hello"));
            rs.extend(packet(4, &[0xfe, 0, 0, 2, 0, 0, 0]));
            r.recv(&rs);
        }
        let spans = r.spans();
        assert_eq!(spans.len(), 3);
        assert!(spans
            .iter()
            .all(|s| s.0 == "SELECT name FROM items WHERE id = ?" && s.1 == Some(ReplyStatus::Ok)));
        r.send(&packet(0, &[command::STMT_CLOSE, 5, 0, 0, 0]));
        r.send(&packet(
            0,
            &[command::STMT_EXECUTE, 5, 0, 0, 0, 0, 1, 0, 0, 0],
        ));
        r.recv(&ok(1));
        assert_eq!(r.c.finished[3].op.query_text, "");
    }

    #[test]
    fn multiple_result_sets_are_one_call() {
        let mut r = Run::connect(false);
        r.send(&query("CALL two_results()"));
        let mut first = result_set(1);
        // The closing EOF says more results follow.
        let n = first.len();
        first[n - 2] = 0x0a;
        r.recv(&first);
        assert!(r.c.finished.is_empty());
        let mut second = result_set(2);
        second.extend(ok(7));
        // Second set's EOF without MORE_RESULTS ends it.
        r.recv(&second);
        assert_eq!(r.c.finished.len(), 1);
    }

    #[test]
    fn ssl_request_stops_and_long_results_recover_from_the_tail() {
        let mut r = Run {
            c: MysqlConn::new(opts(true)),
            stats: Stats::default(),
            t: 0,
        };
        r.recv(&greeting(false));
        let mut ssl = (caps::PROTOCOL_41 | caps::SSL).to_le_bytes().to_vec();
        ssl.extend_from_slice(&[0; 28]);
        assert!(!r.c.feed(
            true,
            Task::thread(1),
            seg(&packet(1, &ssl), 5),
            SpanContext::root,
            &r.stats
        ));

        let mut r = Run::connect(false);
        r.send(&query("SELECT * FROM big"));
        let rs = result_set(200);
        let head = Segment {
            bytes: &rs[..100],
            len: (rs.len() - 50) as u64,
            stamp: Stamp::default(),
        };
        r.c.feed(false, Task::thread(1), head, SpanContext::root, &r.stats);
        assert!(r.c.server.is_lost());
        r.recv(&rs[rs.len() - 50..]);
        assert_eq!(r.spans()[0].1, Some(ReplyStatus::Ok));
        r.send(&query("SELECT 1"));
        r.recv(&result_set(1));
        assert_eq!(r.spans().len(), 2);
    }

    /// Joined mid-stream, the EOF style is read off the packets: an empty
    /// result closed by a 7-byte OK, then a classic one with rows.
    #[test]
    fn joined_mid_stream_either_eof_style() {
        let stats = Stats::default();
        let mut c = MysqlConn::mid_stream(opts(true));
        let coldef = b"\x03def\0\0\0\x01x\0\x0c\x21\0\0\0\0\xfd\0\0\0\0\0";
        c.feed(
            true,
            Task::thread(1),
            seg(&query("SELECT x FROM t WHERE 0"), 1),
            SpanContext::root,
            &stats,
        );
        let mut empty = packet(1, &[1]);
        empty.extend(packet(2, coldef));
        empty.extend(packet(3, &[0xfe, 0, 0, 2, 0, 0, 0]));
        c.feed(
            false,
            Task::thread(1),
            seg(&empty, 2),
            SpanContext::root,
            &stats,
        );
        c.feed(
            true,
            Task::thread(1),
            seg(&query("SELECT x FROM t"), 3),
            SpanContext::root,
            &stats,
        );
        c.feed(
            false,
            Task::thread(1),
            seg(&result_set(2), 4),
            SpanContext::root,
            &stats,
        );
        let replies: Vec<_> = c.finished.iter().map(|c| c.reply.clone()).collect();
        assert_eq!(replies, [Some(ReplyStatus::Ok), Some(ReplyStatus::Ok)]);
        assert_eq!(c.system, "mysql");
        assert_eq!(c.finished[0].namespace, None);
        assert_eq!(
            stats
                .db_orphan_replies
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    /// LOAD DATA LOCAL: file packets count sequence numbers up through 0;
    /// none is a command.
    #[test]
    fn load_data_local_file_packets_are_not_commands() {
        let mut r = Run::connect(false);
        r.send(&query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t"));
        r.recv(&packet(1, b"\xfbf"));
        for i in 0..300u32 {
            r.send(&packet((2 + i) as u8, b"\x03SELECT looks like a command"));
        }
        r.send(&packet(46, b""));
        r.recv(&ok(47));
        r.send(&query("SELECT 1"));
        r.recv(&result_set(1));
        let got = r.spans();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|c| c.1 == Some(ReplyStatus::Ok)));
        assert!(r.c.pending.is_empty());
    }

    /// A cursor: the execute's answer ends after the column definitions;
    /// COM_STMT_FETCH brings the rows.
    #[test]
    fn cursors_and_fetches_pair() {
        let mut r = Run::connect(false);
        r.send(&packet(
            0,
            &[command::STMT_EXECUTE, 1, 0, 0, 0, 1, 1, 0, 0, 0],
        ));
        let mut resp = packet(1, &[1]);
        resp.extend(packet(2, b"\x03def\0\0\0\x01x\0"));
        resp.extend(packet(3, &[0xfe, 0, 0, 0x42, 0]));
        r.recv(&resp);
        assert_eq!(r.c.finished.len(), 1);
        r.send(&packet(0, &[command::STMT_FETCH, 1, 0, 0, 0, 10, 0, 0, 0]));
        let mut rows = packet(1, b"\x00\x00\x01x");
        rows.extend(packet(2, &[0xfe, 0, 0, 0x82, 0]));
        r.recv(&rows);
        r.send(&query("SELECT 1"));
        r.recv(&result_set(1));
        assert_eq!(r.c.finished.len(), 2);
        assert!(r.c.pending.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        for cut in 0..200 {
            let junk: Vec<u8> = (0..cut).map(|i| (i * 37 % 256) as u8).collect();
            let stats = Stats::default();
            let mut c = MysqlConn::new(opts(true));
            c.feed(
                false,
                Task::thread(1),
                seg(&greeting(false), 1),
                SpanContext::root,
                &stats,
            );
            c.feed(
                true,
                Task::thread(1),
                seg(&junk, 2),
                SpanContext::root,
                &stats,
            );
            c.feed(
                false,
                Task::thread(1),
                seg(&junk, 3),
                SpanContext::root,
                &stats,
            );
        }
    }
}
