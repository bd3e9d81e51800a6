//! The connection table: routes each segment to its connection's framers and
//! pairs requests with responses, in order, into finished exchanges.
//!
//! No I/O here: addresses arrive already resolved, finished exchanges leave
//! through [`Tracker::drain`] and [`Tracker::drain_db`], connections that
//! carry nothing we know are queued in [`Tracker::take_evictions`] so the
//! caller can stop the kernel from capturing them, and databases found on
//! pre-existing sockets in [`Tracker::take_deepened`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use zerospan_common::origin;

use crate::db_conn::{self, DbConn, SqlOptions};
use crate::events::{Chosen, ConnKey};
use crate::linker::Linker;
use crate::mysql_conn::MysqlConn;
use crate::pg_conn::PgConn;
use crate::spans::context::SpanContext;
use crate::spans::http::{Endpoints, Exchange, Outcome, Role};
use crate::stats::Stats;
use zerospan_protocols::http1::{self, Desync, Framer, Head, Kind, Segment, Sink, Stamp};
use zerospan_protocols::{memcache, mysql, postgres, resp, tls};

/// `db.system.name` of PostgreSQL.
const PG: &str = "postgresql";

/// Most requests one connection may have outstanding (pipelined).
const MAX_PENDING: usize = 64;
/// Segments a connection of unknown role may show before we give up on it.
const MAX_DETECT_SEGMENTS: u32 = 64;
/// Ciphertext segments a TLS connection may show before its first
/// plaintext; past them its TLS library is one the agent does not hook.
const MAX_TLS_WAIT_SEGMENTS: u32 = 32;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub request_timeout_ns: u64,
    pub idle_timeout_ns: u64,
    /// How SQL connections report what they see.
    pub sql: SqlOptions,
}

/// A finished Redis command, ready to become a span.
#[derive(Debug)]
pub struct FinishedDb {
    pub tgid: u32,
    /// `db.system.name`.
    pub system: &'static str,
    pub ends: Endpoints,
    pub call: db_conn::Call,
}

/// A finished exchange, ready to become a span.
#[derive(Debug)]
pub struct Finished {
    pub tgid: u32,
    pub role: Role,
    pub ends: Endpoints,
    pub exchange: Exchange,
}

struct HttpConn {
    role: Role,
    requests: Framer,
    responses: Framer,
    book: Book,
}

/// Requests awaiting their responses, plus the finished ones.
#[derive(Default)]
struct Book {
    pending: VecDeque<Exchange>,
    /// Whether the response being framed belongs to `pending.front()`.
    response_matched: bool,
    finished: Vec<Exchange>,
    tid: u32,
    last_at: Stamp,
    /// The segment in which the response stream last lost sync, until the
    /// next response head is framed.
    response_lost_at: Option<Stamp>,
    /// Responses still owed to requests that timed out: HTTP/1 answers in
    /// order, so the next ones to arrive are theirs, not later requests'.
    owed_responses: u32,
}

enum State {
    /// Pre-existing socket: role not known until a request shows up.
    Detecting {
        segments: u32,
    },
    /// An outgoing connection that has not sent anything yet: the first
    /// bytes it writes say which protocol it speaks.
    Outgoing,
    /// An outgoing connection whose first read was 4 bytes that may be the
    /// header of a MySQL greeting; the next read tells.
    GreetingHeader {
        header: [u8; 4],
        at: Stamp,
    },
    Http(Box<HttpConn>),
    /// A key-value store client (Redis, memcached).
    Db(Box<DbConn>),
    /// A PostgreSQL client.
    Pg(Box<PgConn>),
    /// A MySQL or MariaDB client.
    Mysql(Box<MysqlConn>),
    /// TLS whose plaintext has not appeared yet: its role when known
    /// (server, client), and the ciphertext segments seen meanwhile.
    Tls {
        role: Option<Role>,
        segments: u32,
    },
    /// Not a protocol we know: ignored.
    Ignored,
}

struct Conn {
    ends: Endpoints,
    state: State,
    last_ns: u64,
    /// A database connection switching to TLS (the server accepted an
    /// SSLRequest): its ciphertext segments so far, until the plaintext
    /// comes from the TLS library and the protocol goes on inside it.
    tls_wait: Option<u32>,
    /// A handshake record's header read alone, waiting for its body.
    record_header: Option<[u8; 5]>,
}

pub struct Tracker {
    conns: HashMap<ConnKey, Conn>,
    limits: Limits,
    stats: Arc<Stats>,
    out: Vec<Finished>,
    out_db: Vec<FinishedDb>,
    evict: Vec<ConnKey>,
    /// Connections whose reads the kernel should capture deeply (databases
    /// recognised by the agent rather than by the probes).
    deepen: Vec<ConnKey>,
    linker: Linker,
    /// The current connection of each (tgid, fd).
    by_fd: HashMap<(u32, i32), ConnKey>,
    /// Local addresses the probes reported before the connection opened.
    early_local: HashMap<(u32, i32), SocketAddr>,
}

/// What a request head needs to be given its trace context.
struct Linking<'a> {
    key: ConnKey,
    role: Role,
    ends: Endpoints,
    linker: &'a mut Linker,
}

impl Linking<'_> {
    /// `at`: the syscall that moved the head's first bytes.
    fn start(&mut self, tid: u32, head: &Head, at: Stamp, stats: &Stats) -> SpanContext {
        match self.role {
            Role::Server => self
                .linker
                .server_started(self.key, tid, head, self.ends, at, stats),
            Role::Client => self
                .linker
                .client_started(self.key, tid, head, self.ends, at, stats),
        }
    }
}

/// Moves an HTTP connection's finished exchanges to the output; none of
/// them can be a parent any more.
fn collect_http(
    out: &mut Vec<Finished>,
    linker: &mut Linker,
    key: ConnKey,
    ends: Endpoints,
    h: &mut HttpConn,
) {
    let role = h.role;
    for mut exchange in h.book.finished.drain(..) {
        if let Some(ctx) = linker.take_adopted(&exchange.ctx.span_id) {
            exchange.ctx = ctx;
        }
        unlink(linker, key, role, ends, &exchange);
        out.push(Finished {
            tgid: key.tgid,
            role,
            ends,
            exchange,
        });
    }
}

/// Moves a database connection's finished calls to the output.
fn collect_db(
    out: &mut Vec<FinishedDb>,
    key: ConnKey,
    ends: Endpoints,
    system: &'static str,
    finished: &mut Vec<db_conn::Call>,
) {
    out.extend(finished.drain(..).map(|call| FinishedDb {
        tgid: key.tgid,
        system,
        ends,
        call,
    }));
}

/// Tells the linker an exchange ended, so it is no one's parent any more.
fn unlink(linker: &mut Linker, key: ConnKey, role: Role, ends: Endpoints, x: &Exchange) {
    match role {
        Role::Server => linker.server_finished(key, x.tid, &x.ctx),
        Role::Client => linker.client_finished(ends.peer, &x.ctx),
    }
}

struct RequestSink<'a, 'l> {
    book: &'a mut Book,
    stats: &'a Stats,
    linking: &'a mut Linking<'l>,
}

impl Sink for RequestSink<'_, '_> {
    fn on_head(&mut self, head: Head, at: Stamp) {
        if self.book.pending.len() >= MAX_PENDING {
            if let Some(dropped) = self.book.pending.pop_back() {
                let l = &mut *self.linking;
                unlink(l.linker, l.key, l.role, l.ends, &dropped);
            }
            Stats::inc(&self.stats.http_pipeline_overflow);
        }
        let ctx = self.linking.start(self.book.tid, &head, at, self.stats);
        self.book.pending.push_back(Exchange {
            ctx,
            request: head,
            response: None,
            request_at: at,
            request_body: None,
            end_at: at,
            response_body: None,
            outcome: Outcome::Complete,
            tid: self.book.tid,
        });
    }

    fn on_end(&mut self, body_bytes: Option<u64>, _at: Stamp) {
        if let Some(x) = self.book.pending.back_mut() {
            x.request_body = body_bytes;
        }
    }

    fn on_desync(&mut self, why: Desync) {
        if why != Desync::NotHttp {
            log::debug!("request stream lost sync: {why}");
            Stats::inc(&self.stats.http_desyncs);
        }
    }
}

struct ResponseSink<'a> {
    book: &'a mut Book,
    stats: &'a Stats,
    role: Role,
}

impl Sink for ResponseSink<'_> {
    fn on_head(&mut self, head: Head, _at: Stamp) {
        if let Some(lost) = self.book.response_lost_at.take() {
            self.give_up_before(lost);
        }
        if self.book.owed_responses > 0 {
            self.book.owed_responses -= 1;
            self.book.response_matched = false;
            Stats::inc(&self.stats.http_orphan_responses);
            return;
        }
        match self.book.pending.front_mut() {
            Some(x) if x.response.is_none() => {
                x.response = Some(head);
                self.book.response_matched = true;
            }
            _ => {
                self.book.response_matched = false;
                Stats::inc(&self.stats.http_orphan_responses);
            }
        }
    }

    fn on_end(&mut self, body_bytes: Option<u64>, at: Stamp) {
        if !std::mem::take(&mut self.book.response_matched) {
            return;
        }
        if let Some(mut x) = self.book.pending.pop_front() {
            x.response_body = body_bytes;
            x.end_at = at;
            self.book.finished.push(x);
        }
    }

    fn answers_head_request(&mut self) -> bool {
        self.book
            .pending
            .front()
            .is_some_and(|x| x.request.method == "HEAD")
    }

    fn on_desync(&mut self, why: Desync) {
        if why != Desync::NotHttp {
            log::debug!("response stream lost sync: {why}");
            Stats::inc(&self.stats.http_desyncs);
            self.book.response_lost_at = Some(self.book.last_at);
        }
    }
}

/// Could the response to `x` be inside the response bytes moved at `lost`?
/// Only if the request was there first: for a client, its write began
/// before that read ended; for a server, its read ended before that write
/// began (a read blocked across the write started earlier, yet its request
/// cannot be answered in it).
fn could_be_answered_in(role: Role, x: &Exchange, lost: Stamp) -> bool {
    match role {
        Role::Client => x.request_at.enter_ns < lost.exit_ns,
        Role::Server => x.request_at.exit_ns <= lost.enter_ns,
    }
}

impl ResponseSink<'_> {
    /// After the response stream lost sync in the segment read at `lost`,
    /// the next response head that can be framed answers *some* pending
    /// request, but not necessarily the first: the responses to any request
    /// written before that read may have been inside the bytes we could not
    /// frame. Pairing by position would then attach every later response to
    /// the wrong request, so those requests end unanswered instead, and the
    /// head goes to the first request written after the loss.
    fn give_up_before(&mut self, lost: Stamp) {
        while let Some(x) = self.book.pending.front() {
            if x.response.is_some() || !could_be_answered_in(self.role, x, lost) {
                break;
            }
            let mut x = self.book.pending.pop_front().expect("front exists");
            x.outcome = Outcome::ResponseLost;
            x.end_at = lost;
            Stats::inc(&self.stats.http_responses_lost);
            self.book.finished.push(x);
        }
    }
}

impl HttpConn {
    fn new(role: Role) -> Self {
        HttpConn {
            role,
            requests: Framer::new(Kind::Request),
            responses: Framer::new(Kind::Response),
            book: Book::default(),
        }
    }

    /// Nothing framed yet in either direction.
    fn is_fresh(&self) -> bool {
        !self.requests.seen_message()
            && !self.responses.seen_message()
            && !self.requests.is_open()
            && !self.responses.is_open()
    }

    /// Feeds one segment; returns false once the stream is known not to be HTTP/1.
    fn feed(
        &mut self,
        egress: bool,
        tid: u32,
        seg: Segment<'_>,
        stats: &Stats,
        linking: &mut Linking<'_>,
    ) -> bool {
        self.book.tid = tid;
        self.book.last_at = seg.stamp;
        let carries_requests = match self.role {
            Role::Server => !egress,
            Role::Client => egress,
        };
        if carries_requests {
            // A new request means any response we could not frame is over.
            let mut sink = ResponseSink {
                book: &mut self.book,
                stats,
                role: self.role,
            };
            self.responses.finish_open(&mut sink);
            let mut sink = RequestSink {
                book: &mut self.book,
                stats,
                linking,
            };
            self.requests.feed(seg, &mut sink);
        } else {
            let mut sink = ResponseSink {
                book: &mut self.book,
                stats,
                role: self.role,
            };
            self.responses.feed(seg, &mut sink);
        }
        // Only bytes that are not HTTP/1 at all end tracking: a first head
        // too big for the capture (a long cookie) is HTTP that lost sync,
        // and the next message resynchronises.
        let never_http = |f: &Framer| {
            !f.seen_message() && f.is_lost() && f.last_desync() == Some(Desync::NotHttp)
        };
        !(never_http(&self.requests) || never_http(&self.responses))
    }

    /// Ends everything still open: the connection is gone.
    fn close(&mut self, outcome: Outcome, stats: &Stats) {
        let mut sink = ResponseSink {
            book: &mut self.book,
            stats,
            role: self.role,
        };
        self.responses.finish_open(&mut sink);
        // Requests whose response may have been in bytes we could not frame
        // are not known to have failed.
        if let Some(lost) = sink.book.response_lost_at.take() {
            sink.give_up_before(lost);
        }
        let last = self.book.last_at;
        while let Some(mut x) = self.book.pending.pop_front() {
            if outcome == Outcome::TimedOut && x.response.is_none() {
                self.book.owed_responses += 1;
            }
            x.outcome = outcome;
            x.end_at = last;
            Stats::inc(match outcome {
                Outcome::TimedOut => &stats.http_requests_timed_out,
                Outcome::AgentStopped => &stats.http_requests_in_flight_at_stop,
                _ => &stats.http_requests_unanswered,
            });
            self.book.finished.push(x);
        }
    }
}

impl Tracker {
    pub fn new(limits: Limits, stats: Arc<Stats>) -> Self {
        Tracker {
            conns: HashMap::new(),
            limits,
            stats,
            out: Vec::new(),
            out_db: Vec::new(),
            evict: Vec::new(),
            deepen: Vec::new(),
            linker: Linker::default(),
            by_fd: HashMap::new(),
            early_local: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    fn admit(&mut self, key: ConnKey) -> bool {
        if self.conns.contains_key(&key) || self.conns.len() < self.limits.max_connections {
            return true;
        }
        Stats::inc(&self.stats.connections_table_full);
        false
    }

    /// A socket became tracked. `local` is resolved by the caller.
    pub fn open(
        &mut self,
        key: ConnKey,
        how: u8,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
        at_ns: u64,
    ) {
        if !self.admit(key) {
            return;
        }
        let state = match how {
            origin::ACCEPTED => State::Http(Box::new(HttpConn::new(Role::Server))),
            origin::CONNECTED => State::Outgoing,
            _ => State::Detecting { segments: 0 },
        };
        let local = local.or_else(|| self.early_local.remove(&(key.tgid, key.fd)));
        if let Some(old) = self.by_fd.insert((key.tgid, key.fd), key) {
            if old != key {
                self.close(old);
            }
        }
        self.conns.insert(
            key,
            Conn {
                ends: Endpoints {
                    peer,
                    local,
                    tls: false,
                    tls_version: None,
                },
                state,
                last_ns: at_ns,
                tls_wait: None,
                record_header: None,
            },
        );
    }

    /// Bytes a syscall moved on a socket.
    pub fn data(&mut self, key: ConnKey, tid: u32, egress: bool, seg: Segment<'_>) {
        if !self.admit(key) {
            return;
        }
        let conn = self.conn(key, seg.stamp.exit_ns);
        if conn.ends.tls {
            // Ciphertext: the plaintext comes from the TLS library.
            return;
        }
        // Ciphertext before any plaintext: count it, and give up on TLS
        // the agent cannot see into.
        let waited = match (&mut conn.tls_wait, &mut conn.state) {
            (Some(n), _) | (None, State::Tls { segments: n, .. }) => {
                *n += 1;
                Some(*n)
            }
            _ => None,
        };
        if let Some(n) = waited {
            if conn.ends.tls_version.is_none() {
                conn.ends.tls_version = match (conn.record_header.take(), seg.bytes) {
                    // GnuTLS reads a record's header, then its body.
                    (Some(header), body) => {
                        let mut whole = header.to_vec();
                        whole.extend_from_slice(&body[..body.len().min(1024)]);
                        tls::server_hello_version(&whole)
                    }
                    (None, &[22, 3, a, b, c]) => {
                        conn.record_header = Some([22, 3, a, b, c]);
                        None
                    }
                    (None, bytes) => tls::server_hello_version(bytes),
                };
            }
            if n > MAX_TLS_WAIT_SEGMENTS {
                conn.state = State::Ignored;
                conn.tls_wait = None;
                Stats::inc(&self.stats.connections_tls_unhooked);
                self.evict.push(key);
                self.forget_fd(key);
            }
            return;
        }
        // A TLS record where a protocol's first bytes were expected: wait
        // for the plaintext rather than give the connection up.
        if tls::looks_like_record(seg.bytes) {
            let role = match &conn.state {
                State::Outgoing => Some(Some(Role::Client)),
                State::Http(h) if h.is_fresh() => Some(Some(h.role)),
                State::Detecting { .. } => Some(None),
                _ => None,
            };
            if let Some(role) = role {
                conn.state = State::Tls { role, segments: 1 };
                return;
            }
        }
        self.feed(key, tid, egress, seg);
    }

    /// Plaintext a TLS library call moved on a socket: from now on the
    /// connection's bytes are these, and its syscalls' are ignored.
    pub fn plaintext(&mut self, key: ConnKey, tid: u32, egress: bool, seg: Segment<'_>) {
        if !self.admit(key) {
            return;
        }
        let conn = self.conn(key, seg.stamp.exit_ns);
        if !conn.ends.tls {
            conn.ends.tls = true;
            conn.tls_wait = None;
            let state = std::mem::replace(&mut conn.state, State::Ignored);
            conn.state = match state {
                State::Tls {
                    role: Some(Role::Server),
                    ..
                } => State::Http(Box::new(HttpConn::new(Role::Server))),
                State::Tls {
                    role: Some(Role::Client),
                    ..
                } => State::Outgoing,
                State::Tls { role: None, .. } => State::Detecting { segments: 0 },
                // A database that switched to TLS goes on inside it.
                State::Pg(mut p) => {
                    p.tls_started();
                    State::Pg(p)
                }
                State::Mysql(mut m) => {
                    m.tls_started();
                    State::Mysql(m)
                }
                other => other,
            };
        }
        self.feed(key, tid, egress, seg);
    }

    fn conn(&mut self, key: ConnKey, at_ns: u64) -> &mut Conn {
        let conn = self.conns.entry(key).or_insert_with(|| Conn {
            ends: Endpoints::default(),
            state: State::Detecting { segments: 0 },
            last_ns: at_ns,
            tls_wait: None,
            record_header: None,
        });
        conn.last_ns = at_ns;
        conn
    }

    fn feed(&mut self, key: ConnKey, tid: u32, egress: bool, seg: Segment<'_>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        // A key-value store client, by what it writes first.
        let store = if !egress {
            None
        } else if resp::looks_like_start(resp::Direction::Commands, seg.bytes) {
            Some(DbConn::redis as fn() -> DbConn)
        } else if memcache::looks_like_start(seg.bytes) {
            Some(DbConn::memcached as fn() -> DbConn)
        } else {
            None
        };
        let sql = self.limits.sql;
        // PostgreSQL: from its startup packet, or (joined mid-stream) a
        // query. The probes capture its reads deeply from a startup packet
        // on; a query found here has to ask for that.
        let pg_startup = egress && postgres::is_startup(seg.bytes, seg.len);
        let pg_query = egress
            && postgres::looks_like_query_start(seg.bytes, seg.len)
            && postgres::starts_messages(postgres::Direction::Frontend, seg.bytes, seg.len);
        if let State::GreetingHeader { header, at } = conn.state {
            let mut whole = header.to_vec();
            whole.extend_from_slice(&seg.bytes[..seg.bytes.len().min(256)]);
            if egress || !mysql::looks_like_greeting(&whole) {
                conn.state = State::Ignored;
                self.ignore(key);
                return;
            }
            let mut m = MysqlConn::new(sql);
            let head = Segment {
                bytes: &header,
                len: 4,
                stamp: at,
            };
            let stats = &self.stats;
            m.feed(false, tid, head, SpanContext::root, stats);
            conn.state = State::Mysql(Box::new(m));
            self.deepen.push(key);
        }
        if let State::Outgoing = conn.state {
            conn.state = match store {
                // The server speaks first.
                None if !egress && mysql::looks_like_greeting(seg.bytes) => {
                    self.deepen.push(key);
                    State::Mysql(Box::new(MysqlConn::new(sql)))
                }
                None if !egress && mysql::could_be_greeting_header(seg.bytes) => {
                    conn.state = State::GreetingHeader {
                        header: seg.bytes.try_into().unwrap_or_default(),
                        at: seg.stamp,
                    };
                    return;
                }
                Some(new) => State::Db(Box::new(new().seen_from_start())),
                None if pg_startup => {
                    // The probes decide this themselves from the same
                    // bytes, except when they cannot see them whole
                    // (a startup written with writev): ask anyway.
                    self.deepen.push(key);
                    State::Pg(Box::new(PgConn::new(sql)))
                }
                None if pg_query => {
                    self.deepen.push(key);
                    State::Pg(Box::new(PgConn::mid_stream(sql)))
                }
                // HTTP, or nothing we know: the HTTP framer tells.
                None => State::Http(Box::new(HttpConn::new(Role::Client))),
            };
        }
        if let State::Detecting { segments } = &mut conn.state {
            if let Some(new) = store {
                conn.state = State::Db(Box::new(new()));
            } else if pg_query {
                self.deepen.push(key);
                conn.state = State::Pg(Box::new(PgConn::mid_stream(sql)));
            } else if egress && mysql::looks_like_command(seg.bytes, seg.len) {
                self.deepen.push(key);
                conn.state = State::Mysql(Box::new(MysqlConn::mid_stream(sql)));
            } else if http1::starts_request(seg.bytes) {
                let role = if egress { Role::Client } else { Role::Server };
                conn.state = State::Http(Box::new(HttpConn::new(role)));
            } else {
                *segments += 1;
                if *segments > MAX_DETECT_SEGMENTS {
                    conn.state = State::Ignored;
                    self.ignore(key);
                }
                return;
            }
        }
        if let State::Db(r) = &mut conn.state {
            let linker = &self.linker;
            let stats = &self.stats;
            r.feed(
                egress,
                tid,
                seg,
                || linker.call_on_thread(key, tid, stats),
                stats,
            );
            collect_db(&mut self.out_db, key, conn.ends, r.system, &mut r.finished);
            return;
        }
        if let State::Pg(p) = &mut conn.state {
            let linker = &self.linker;
            let stats = &self.stats;
            let readable = p.feed(
                egress,
                tid,
                seg,
                || linker.call_on_thread(key, tid, stats),
                stats,
            );
            collect_db(&mut self.out_db, key, conn.ends, PG, &mut p.finished);
            if !readable {
                // The server accepted TLS: the startup comes again, as
                // plaintext from the TLS library.
                conn.tls_wait = Some(0);
            }
            return;
        }
        if let State::Mysql(m) = &mut conn.state {
            let linker = &self.linker;
            let stats = &self.stats;
            let readable = m.feed(
                egress,
                tid,
                seg,
                || linker.call_on_thread(key, tid, stats),
                stats,
            );
            collect_db(&mut self.out_db, key, conn.ends, m.system, &mut m.finished);
            if !readable {
                if m.is_compressed() {
                    conn.state = State::Ignored;
                    self.ignore(key);
                } else {
                    // TLS: the login comes as plaintext from the library.
                    conn.tls_wait = Some(0);
                }
            }
            return;
        }
        let State::Http(h) = &mut conn.state else {
            return;
        };
        let role = h.role;
        let ends = conn.ends;
        let mut linking = Linking {
            key,
            role,
            ends,
            linker: &mut self.linker,
        };
        let still_http = h.feed(egress, tid, seg, &self.stats, &mut linking);
        collect_http(&mut self.out, &mut self.linker, key, ends, h);
        if !still_http {
            // Requests framed before the bytes stopped making sense must
            // not stay anyone's candidate parent.
            for x in h.book.pending.drain(..) {
                unlink(&mut self.linker, key, role, ends, &x);
            }
            conn.state = State::Ignored;
            self.ignore(key);
        }
    }

    /// A connection carries nothing we know: the kernel stops copying it
    /// (so no close will be reported for it) and it leaves the fd index.
    fn ignore(&mut self, key: ConnKey) {
        Stats::inc(&self.stats.connections_unknown_protocol);
        self.evict.push(key);
        self.forget_fd(key);
    }

    fn forget_fd(&mut self, key: ConnKey) {
        if self.by_fd.get(&(key.tgid, key.fd)) == Some(&key) {
            self.by_fd.remove(&(key.tgid, key.fd));
        }
    }

    /// The probes chose ids for a request on `key` (they wrote a
    /// `traceparent` into it, or will give them to its thread's calls).
    pub fn chosen(&mut self, key: ConnKey, egress: bool, chosen: Chosen) {
        if self.conns.contains_key(&key) {
            self.linker.chosen(key, egress, chosen);
        }
    }

    /// The probes reported the local address of `(tgid, fd)`'s outgoing
    /// connection (see `inet_sock_set_state` in the probes).
    pub fn local_known(&mut self, tgid: u32, fd: i32, local: SocketAddr) {
        let current = self.by_fd.get(&(tgid, fd)).copied();
        match current.and_then(|key| Some((key, self.conns.get_mut(&key)?))) {
            Some((key, conn)) if !matches!(conn.state, State::Ignored) => {
                conn.ends.local = Some(local);
                self.linker
                    .client_local_known(key, conn.ends.peer, local, &self.stats);
            }
            // Reported before the connect returned: kept for `open`.
            _ => {
                if self.early_local.len() >= self.limits.max_connections {
                    self.early_local.clear();
                }
                self.early_local.insert((tgid, fd), local);
            }
        }
    }

    pub fn close(&mut self, key: ConnKey) {
        self.forget_fd(key);
        self.linker.connection_closed(key);
        if let Some(conn) = self.conns.remove(&key) {
            if matches!(conn.state, State::Tls { .. }) {
                // Encrypted from start to end, and no plaintext ever came.
                Stats::inc(&self.stats.connections_tls_unhooked);
            }
            self.finish(key, conn, Outcome::Closed);
        }
    }

    fn finish(&mut self, key: ConnKey, mut conn: Conn, outcome: Outcome) {
        self.end_open(key, &mut conn, outcome);
    }

    /// Ends every exchange still open on `conn` with `outcome`, and
    /// collects them.
    fn end_open(&mut self, key: ConnKey, conn: &mut Conn, outcome: Outcome) {
        match &mut conn.state {
            State::Db(r) => {
                let at = r.last_at();
                r.end_pending(outcome, at);
                collect_db(&mut self.out_db, key, conn.ends, r.system, &mut r.finished);
            }
            State::Pg(p) => {
                let at = p.last_at();
                p.end_pending(outcome, at);
                collect_db(&mut self.out_db, key, conn.ends, PG, &mut p.finished);
            }
            State::Mysql(m) => {
                let at = m.last_at();
                m.end_pending(outcome, at);
                collect_db(&mut self.out_db, key, conn.ends, m.system, &mut m.finished);
            }
            State::Http(h) => {
                h.close(outcome, &self.stats);
                collect_http(&mut self.out, &mut self.linker, key, conn.ends, h);
            }
            _ => {}
        }
    }

    /// Closes every connection of a process that exited.
    pub fn process_exited(&mut self, tgid: u32) {
        let keys: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect();
        for key in keys {
            self.close(key);
        }
        self.linker.process_exited(tgid);
        self.by_fd.retain(|(t, _), _| *t != tgid);
        self.early_local.retain(|(t, _), _| *t != tgid);
    }

    /// Closes every connection: the agent is stopping.
    pub fn close_all(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(conn) = self.conns.remove(&key) {
                self.finish(key, conn, Outcome::AgentStopped);
            }
        }
    }

    /// Times out requests waiting too long and forgets idle connections.
    pub fn sweep(&mut self, now_ns: u64) {
        let limits = self.limits;
        let mut timed_out = Vec::new();
        let mut idle = Vec::new();
        for (key, conn) in &self.conns {
            let quiet = now_ns.saturating_sub(conn.last_ns);
            let waiting = match &conn.state {
                State::Http(h) => h.book.pending.front().map(|x| x.request_at.exit_ns),
                State::Db(r) => r.oldest_pending(),
                State::Pg(p) => p.oldest_pending(),
                State::Mysql(m) => m.oldest_pending(),
                _ => None,
            };
            match waiting {
                Some(t) if now_ns.saturating_sub(t) > limits.request_timeout_ns => {
                    timed_out.push(*key)
                }
                None if quiet > limits.idle_timeout_ns => idle.push(*key),
                _ => {}
            }
        }
        // The requests end; the connection, its addresses and its role
        // stay, so whatever it carries next is still traced in full.
        for key in timed_out {
            if let Some(mut conn) = self.conns.remove(&key) {
                self.end_open(key, &mut conn, Outcome::TimedOut);
                self.conns.insert(key, conn);
            }
        }
        for key in idle {
            self.conns.remove(&key);
            self.forget_fd(key);
        }
    }

    /// Exchanges finished since the last call.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Finished> {
        self.out.drain(..)
    }

    /// Database calls finished since the last call.
    pub fn drain_db(&mut self) -> std::vec::Drain<'_, FinishedDb> {
        self.out_db.drain(..)
    }

    /// Connections the kernel should stop capturing.
    pub fn take_evictions(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.evict)
    }

    /// Connections whose reads the kernel should capture deeply.
    pub fn take_deepened(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.deepen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::seg;

    fn limits() -> Limits {
        Limits {
            max_connections: 8,
            request_timeout_ns: 1_000,
            idle_timeout_ns: 10_000,
            sql: SqlOptions {
                sanitize: true,
                user: false,
            },
        }
    }

    fn feed(t: &mut Tracker, key: ConnKey, tid: u32, egress: bool, seg: Segment<'_>) {
        t.data(key, tid, egress, seg);
    }

    const KEY: ConnKey = ConnKey {
        tgid: 10,
        fd: 4,
        conn_id: 1,
    };

    #[test]
    fn keep_alive_server_pairs_in_order() {
        let mut t = Tracker::new(limits(), Arc::default());
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        for i in 0..3u64 {
            feed(
                &mut t,
                KEY,
                1,
                false,
                seg(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", i * 10),
            );
            feed(
                &mut t,
                KEY,
                1,
                true,
                seg(
                    b"HTTP/1.1 404 NF\r\nContent-Length: 2\r\n\r\nno",
                    i * 10 + 5,
                ),
            );
        }
        let done: Vec<_> = t.drain().collect();
        assert_eq!(done.len(), 3);
        assert!(done.iter().all(|f| f.role == Role::Server));
        assert_eq!(done[2].exchange.request_at.exit_ns, 21);
        assert_eq!(done[2].exchange.end_at.exit_ns, 26);
        assert_eq!(done[2].exchange.response.as_ref().unwrap().status, 404);
    }

    #[test]
    fn pipelined_requests_answered_in_one_write() {
        let mut t = Tracker::new(limits(), Arc::default());
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        feed(
            &mut t,
            KEY,
            1,
            false,
            seg(b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n", 0),
        );
        feed(&mut t,
            KEY,
            1,
            true,
            seg(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                5,
            ),
        );
        let done: Vec<_> = t.drain().collect();
        let targets: Vec<_> = done
            .iter()
            .map(|f| f.exchange.request.target.as_str())
            .collect();
        assert_eq!(targets, ["/a", "/b"]);
        assert_eq!(done[1].exchange.response_body, Some(0));
    }

    #[test]
    fn non_http_connections_are_evicted_and_counted() {
        let stats = Arc::new(Stats::default());
        let mut t = Tracker::new(limits(), stats.clone());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        // Neither HTTP/1 nor anything else we know.
        feed(&mut t, KEY, 1, true, seg(b"\x00\xff garbage \r\n", 0));
        assert_eq!(t.take_evictions(), vec![KEY]);
        assert_eq!(
            stats
                .connections_unknown_protocol
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        feed(&mut t, KEY, 1, true, seg(b"GET / HTTP/1.1\r\n\r\n", 1));
        assert_eq!(t.drain().count(), 0);
    }

    /// Ciphertext waits for the plaintext, which then stands for the
    /// connection; ciphertext after it is ignored; TLS whose plaintext
    /// never comes is given up and counted.
    #[test]
    fn tls_connections_take_their_plaintext_from_the_library() {
        let stats = Arc::new(Stats::default());
        let mut t = Tracker::new(limits(), stats.clone());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        feed(&mut t, KEY, 1, true, seg(hello, 0));
        feed(&mut t, KEY, 1, false, seg(b"\x16\x03\x03\x00\x7a\x02", 1));
        assert!(t.take_evictions().is_empty());
        t.plaintext(KEY, 1, true, seg(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 2));
        feed(&mut t, KEY, 1, true, seg(b"\x17\x03\x03\x00\x20", 3));
        t.plaintext(KEY, 1, false, seg(b"HTTP/1.1 204 No Content\r\n\r\n", 4));
        let done: Vec<Finished> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert!(done[0].ends.tls);
        assert_eq!(done[0].exchange.response.as_ref().unwrap().status, 204);

        let other = ConnKey { fd: 9, ..KEY };
        t.open(other, origin::CONNECTED, None, None, 0);
        for i in 0..=MAX_TLS_WAIT_SEGMENTS {
            feed(&mut t, other, 1, i % 2 == 0, seg(hello, u64::from(i)));
        }
        assert_eq!(t.take_evictions(), vec![other]);
        assert_eq!(
            stats
                .connections_tls_unhooked
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn preexisting_socket_detects_role_from_the_next_request() {
        let mut t = Tracker::new(limits(), Arc::default());
        t.open(KEY, origin::PREEXISTING, None, None, 0);
        feed(
            &mut t,
            KEY,
            1,
            true,
            seg(b"partial body of an old response", 0),
        );
        feed(
            &mut t,
            KEY,
            1,
            false,
            seg(b"GET /next HTTP/1.1\r\n\r\n", 10),
        );
        feed(
            &mut t,
            KEY,
            1,
            true,
            seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 20),
        );
        let done: Vec<_> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].role, Role::Server);
    }

    #[test]
    fn close_and_timeout_end_unanswered_requests_as_errors() {
        let mut t = Tracker::new(limits(), Arc::default());
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        feed(&mut t, KEY, 1, false, seg(b"GET / HTTP/1.1\r\n\r\n", 0));
        t.close(KEY);
        let done: Vec<_> = t.drain().collect();
        assert_eq!(done[0].exchange.outcome, Outcome::Closed);

        let key2 = ConnKey { fd: 5, ..KEY };
        t.open(key2, origin::ACCEPTED, None, None, 0);
        feed(&mut t, key2, 1, false, seg(b"GET / HTTP/1.1\r\n\r\n", 0));
        t.sweep(500);
        assert_eq!(t.drain().count(), 0);
        t.sweep(5_000);
        let done: Vec<_> = t.drain().collect();
        assert_eq!(done[0].exchange.outcome, Outcome::TimedOut);
        // The connection stays known: its next exchange is still traced.
        assert_eq!(t.len(), 1);
        feed(
            &mut t,
            key2,
            1,
            false,
            seg(b"GET /again HTTP/1.1\r\n\r\n", 6_000),
        );
        // The late answer to the timed-out request comes first, in order.
        feed(
            &mut t,
            key2,
            1,
            true,
            seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 6_050),
        );
        feed(
            &mut t,
            key2,
            1,
            true,
            seg(b"HTTP/1.1 204 No Content\r\n\r\n", 6_100),
        );
        let done: Vec<_> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].exchange.request.target, "/again");
        assert_eq!(done[0].exchange.outcome, Outcome::Complete);
        // Quiet long enough, it is forgotten.
        t.sweep(20_000);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn response_delimited_by_close_ends_at_close() {
        let mut t = Tracker::new(limits(), Arc::default());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        feed(&mut t, KEY, 1, true, seg(b"GET / HTTP/1.0\r\n\r\n", 0));
        feed(
            &mut t,
            KEY,
            1,
            false,
            seg(b"HTTP/1.0 200 OK\r\n\r\nbody", 10),
        );
        t.close(KEY);
        let done: Vec<_> = t.drain().collect();
        assert_eq!(done[0].exchange.outcome, Outcome::Complete);
        assert_eq!(done[0].exchange.response_body, Some(4));
        assert_eq!(done[0].exchange.end_at.exit_ns, 11);
    }

    #[test]
    fn table_is_bounded() {
        let stats = Arc::new(Stats::default());
        let mut t = Tracker::new(limits(), stats.clone());
        for fd in 0..20 {
            t.open(ConnKey { fd, ..KEY }, origin::ACCEPTED, None, None, 0);
        }
        assert_eq!(t.len(), 8);
        assert_eq!(
            stats
                .connections_table_full
                .load(std::sync::atomic::Ordering::Relaxed),
            12
        );
    }

    /// A client reads a chunked response and the next pipelined response in
    /// one large read, most of it uncaptured. The 503 request's response may
    /// be in the lost bytes, so it must not take the next response framed
    /// (the POST's 201): it ends unanswered and the POST pairs correctly.
    #[test]
    fn lost_response_framing_never_shifts_later_pairs() {
        let mut t = Tracker::new(limits(), Arc::default());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: h\r\n\r\n");
        let pipelined = get("/a") + &get("/chunked") + &get("/503");
        feed(&mut t, KEY, 1, true, seg(pipelined.as_bytes(), 10));
        feed(
            &mut t,
            KEY,
            1,
            false,
            seg(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 20),
        );
        // Chunked head and the start of a 4000-byte chunk are captured; the
        // rest of the chunk, the last chunk and the 503 response are not.
        let captured = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfa0\r\nzzzz";
        let stamp = Stamp {
            enter_ns: 30,
            exit_ns: 31,
        };
        feed(
            &mut t,
            KEY,
            1,
            false,
            Segment {
                bytes: captured,
                len: 4200,
                stamp,
            },
        );
        feed(
            &mut t,
            KEY,
            1,
            true,
            seg(b"POST /p HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 40),
        );
        feed(
            &mut t,
            KEY,
            1,
            false,
            seg(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 50),
        );
        let done: Vec<_> = t.drain().map(|f| f.exchange).collect();
        let summary: Vec<_> = done
            .iter()
            .map(|x| {
                let status = x.response.as_ref().map(|r| r.status);
                (
                    x.request.target.as_str(),
                    status,
                    x.response_body,
                    x.outcome,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("/a", Some(200), Some(2), Outcome::Complete),
                ("/chunked", Some(200), None, Outcome::Complete),
                ("/503", None, None, Outcome::ResponseLost),
                ("/p", Some(201), Some(0), Outcome::Complete),
            ]
        );
        assert_eq!(done[2].end_at, stamp);
    }

    /// A first request whose head is longer than the capture (a big cookie)
    /// is HTTP that lost sync, not "not HTTP": the connection stays tracked
    /// and the next request on it becomes a span.
    #[test]
    fn an_oversized_first_head_does_not_end_tracking() {
        let stats = Arc::new(Stats::default());
        let mut t = Tracker::new(limits(), stats.clone());
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        let captured = b"GET /big HTTP/1.1\r\nCookie: aaaaaaaaaaaaaaaa";
        let stamp = Stamp {
            enter_ns: 1,
            exit_ns: 2,
        };
        feed(
            &mut t,
            KEY,
            1,
            false,
            Segment {
                bytes: captured,
                len: 6000,
                stamp,
            },
        );
        assert!(t.take_evictions().is_empty());
        feed(
            &mut t,
            KEY,
            1,
            true,
            seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 10),
        );
        feed(
            &mut t,
            KEY,
            1,
            false,
            seg(b"GET /next HTTP/1.1\r\n\r\n", 20),
        );
        feed(
            &mut t,
            KEY,
            1,
            true,
            seg(b"HTTP/1.1 204 No Content\r\n\r\n", 30),
        );
        let done: Vec<_> = t.drain().collect();
        let last = done.last().expect("the next request is traced");
        assert_eq!(last.exchange.request.target, "/next");
        assert_eq!(last.exchange.response.as_ref().map(|r| r.status), Some(204));
        assert_eq!(
            stats
                .connections_unknown_protocol
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    /// A response head lost in uncaptured bytes, then the connection closes
    /// (one exchange per connection): the request is incomplete, not failed.
    #[test]
    fn a_lost_response_then_close_is_not_an_error() {
        let mut t = Tracker::new(limits(), Arc::default());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        feed(
            &mut t,
            KEY,
            1,
            true,
            seg(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", 10),
        );
        let stamp = Stamp {
            enter_ns: 20,
            exit_ns: 21,
        };
        feed(
            &mut t,
            KEY,
            1,
            false,
            Segment {
                bytes: b"",
                len: 3000,
                stamp,
            },
        );
        t.close(KEY);
        let done: Vec<_> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].exchange.outcome, Outcome::ResponseLost);
    }

    /// An outgoing connection whose first bytes are RESP is a Redis client:
    /// its commands pair with their replies into database calls.
    #[test]
    fn outgoing_resp_becomes_redis_calls() {
        let mut t = Tracker::new(limits(), Arc::default());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        feed(
            &mut t,
            KEY,
            1,
            true,
            seg(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 10),
        );
        feed(&mut t, KEY, 1, false, seg(b"$1\r\nv\r\n", 20));
        let calls: Vec<_> = t.drain_db().collect();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].call.op.name.as_deref(), Some("GET"));
        assert_eq!(t.drain().count(), 0);
        assert!(t.take_evictions().is_empty());
    }
}
