//! Who is whose parent: the trace context each exchange starts with.
//!
//! Decided when a request's head is framed, so that children can name their
//! parent before it ends. In order of trust:
//!
//! 1. A valid W3C `traceparent` on the request: the span joins that trace
//!    as a child of the span it names (for a client request, that is the
//!    instrumented application's own client span).
//! 2. Server side, same host: the traced client span at the other end of
//!    this very TCP connection (mirrored 4-tuple), in flight right now.
//! 3. Client side, same process: the one server request in flight on the
//!    thread that writes this request (thread-per-request servers). With
//!    two or more in flight on that thread, the parent cannot be known: the
//!    span stays a root and is counted. In a Go program the goroutine
//!    takes the thread's place ([`goroutines`](crate::linker::goroutines)): the
//!    one that read the request, the one that asked for the call (across
//!    `net/http`'s hand-off to its writer goroutine), and those it
//!    started while the request was in flight.
//!
//! A server span that found no parent (2) may still get one: the client's
//! request can reach the agent a moment after the server's (with TLS, the
//! client's plaintext is reported when its `SSL_write` returns, after the
//! server may already have read and decrypted it). Such a server span,
//! from a same-host peer, is an orphan until its request ends: when the
//! client call at the other end registers, the orphan is adopted, keeping
//! its span id and taking the caller's trace, unless it already has
//! children (who carry its old trace id).
//!
//! With `--context-propagation=headers` the probes choose some ids
//! themselves, because they must exist when the bytes leave: the span id
//! of every request they write a `traceparent` into, and the ids of the
//! server requests whose threads make those calls ([`Chosen`]). Those
//! span ids are always kept. So is their trace, unless the rules above
//! find a parent the probes could not see (a same-host caller over TLS,
//! a read the probes did not look at); then the local tree stays right
//! and only the next hop's link is lost.
//!
//! No I/O here. The local address of a client connection comes from the
//! probes (`sock:inet_sock_set_state`), through the connection's endpoints
//! or [`Linker::client_local_known`] when it arrives later.

pub mod event_loop;
pub mod goroutines;

use std::{cell::Cell, collections::VecDeque, net::SocketAddr};

use crate::hash::Map;

use zerospan_protocols::http1::Head;

use zerospan_protocols::stream::Stamp;

use crate::{
    exchange::{ConnKey, Endpoints, Role, Task},
    kernel::{
        events::{Chosen, GoAct, Origin},
        Runtime,
    },
    linker::{
        event_loop::Loops,
        goroutines::{Asker, Doer, Goroutines, Under},
    },
    spans::context::{parse_traceparent, SpanContext},
    stats::Stats,
};

/// What a protocol knows of a request as it starts, beyond where it
/// travels: the context it carries, if its protocol carries one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Start<'a> {
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    /// Whether the other end may be a server this agent traces, so that
    /// same-host links by 4-tuple (and adoption) apply: HTTP, not the
    /// databases, whose servers the agent does not trace.
    pub linkable: bool,
    /// The stream the request travels on, for protocols that carry many
    /// at once on one connection (HTTP/2); 0 for the others. A same-host
    /// link is only ever made between the two ends of the same stream.
    pub stream: u32,
    /// Whether the thread that moved the request's first bytes (in Go,
    /// the goroutine) is the one that handles it, so that it may parent
    /// the calls it makes (thread-per-request servers, `net/http`'s
    /// HTTP/1 server goroutines), and the request's own calls may take
    /// their parent from it. Not for HTTP/2 (its streams are read and
    /// written by I/O threads or goroutines), nor for a request whose
    /// fields were not all known (its own header may have named another
    /// parent).
    pub thread_bound: bool,
}

impl Start<'_> {
    /// A request that carries no context, to a server the agent does not
    /// trace (a database): the child of what its thread serves, or a root.
    pub const UNLINKED: Start<'static> = Start {
        traceparent: None,
        tracestate: None,
        linkable: false,
        stream: 0,
        thread_bound: true,
    };
}

impl<'a> From<&'a Head> for Start<'a> {
    fn from(head: &'a Head) -> Self {
        Start {
            traceparent: head.traceparent.as_deref(),
            tracestate: head.tracestate.as_deref(),
            linkable: true,
            stream: 0,
            thread_bound: true,
        }
    }
}

/// Client exchanges in flight, keyed by the server port they talk to.
struct Call {
    conn: ConnKey,
    peer: SocketAddr,
    /// The client socket's own address, once the probes reported it.
    local: Option<SocketAddr>,
    /// See [`Start::stream`].
    stream: u32,
    ctx: SpanContext,
}

/// What a thread or goroutine serves (see [`Linker::served_by`]).
enum Served<'a> {
    One(&'a SpanContext),
    /// Through the goroutine's start, from the one its starter served.
    Inherited(&'a SpanContext),
    Many,
    /// The goroutine's start was under a request that has ended.
    Stale(u64),
    Nothing,
}

/// A server span in flight that found no parent (see the module docs).
struct Orphan {
    /// Its connection's addresses: the client's local address, and ours.
    peer: SocketAddr,
    local: SocketAddr,
    /// See [`Start::stream`].
    stream: u32,
    /// The process, and who in it serves the span, if known.
    tgid: u32,
    doer: Option<Doer>,
    /// Set once a call was made as its child: then it cannot move.
    has_children: Cell<bool>,
}

#[derive(Default)]
pub struct Linker {
    /// Server spans in flight, by the thread (or goroutine) of the process
    /// that read their request.
    serving: Map<(u32, Doer), Vec<SpanContext>>,
    calling: Map<u16, Vec<Call>>,
    /// Orphans by span id, and their span ids by peer address.
    orphans: Map<[u8; 8], Orphan>,
    orphan_by_peer: Map<(SocketAddr, u32), [u8; 8]>,
    /// New contexts of adopted server spans, taken when they end.
    adopted: Map<[u8; 8], SpanContext>,
    /// Ids the probes chose for outgoing requests not framed yet, by
    /// connection, in request order.
    chosen_requests: Map<ConnKey, VecDeque<Chosen>>,
    /// Ids the probes chose for the server request whose head is in the
    /// read that ended at `Chosen::at_ns`.
    chosen_server: Map<ConnKey, Chosen>,
    /// Go processes: their goroutines serve requests, not their threads.
    go: Goroutines,
    /// Node.js processes: their threads are event loops.
    loops: Loops,
}

/// Most orphans kept; past it new ones are not adoptable.
const MAX_ORPHANS: usize = 4096;

/// Most in-flight entries kept per thread or per server port; past it the
/// oldest go (a request that never ends must not grow the table).
const MAX_PER_KEY: usize = 256;

fn push_bounded<T>(v: &mut Vec<T>, item: T) {
    if v.len() >= MAX_PER_KEY {
        v.remove(0);
    }
    v.push(item);
}

fn push_bounded_deque<T>(v: &mut VecDeque<T>, item: T) {
    if v.len() >= MAX_PER_KEY {
        v.pop_front();
    }
    v.push_back(item);
}

/// The request a goroutine was started `under`, if it is still in flight
/// (its span, as it is now: an adopted span has its new trace).
fn still_served<'a>(
    serving: &'a Map<(u32, Doer), Vec<SpanContext>>,
    tgid: u32,
    under: &Under,
) -> Option<&'a SpanContext> {
    serving
        .get(&(tgid, under.doer))?
        .iter()
        .find(|c| c.span_id == under.span_id)
}

/// The context a `traceparent` on the request gives, if it has a valid one.
fn from_header(start: &Start<'_>, stats: &Stats) -> Option<SpanContext> {
    let value = start.traceparent?;
    match parse_traceparent(value) {
        Some(tp) => Some(SpanContext::child_of_remote(&tp, start.tracestate)),
        None => {
            Stats::inc(&stats.context_traceparent_malformed);
            None
        }
    }
}

impl Linker {
    /// A request starts on `conn`, by `task`, in the syscall `at` that
    /// moved its first bytes: its span context, whatever the protocol.
    #[allow(clippy::too_many_arguments)]
    pub fn started(
        &mut self,
        conn: ConnKey,
        role: Role,
        ends: Endpoints,
        task: Task,
        at: Stamp,
        start: Start<'_>,
        stats: &Stats,
    ) -> SpanContext {
        match role {
            Role::Server => self.server_started(conn, task, start, ends, at, stats),
            Role::Client if start.linkable => {
                self.client_started(conn, task, start, ends, at, stats)
            }
            Role::Client => match from_header(&start, stats) {
                Some(ctx) => ctx,
                None => self.call_by_own(conn, task, &start, stats),
            },
        }
    }

    /// An exchange ended (or will never be reported): it can no longer be
    /// anyone's parent.
    pub fn ended(
        &mut self,
        conn: ConnKey,
        role: Role,
        ends: Endpoints,
        task: Task,
        ctx: &SpanContext,
    ) {
        match role {
            Role::Server => self.server_finished(conn, task, ctx),
            Role::Client => self.client_finished(conn, ends.peer, ctx),
        }
    }

    /// The probes chose ids for a request on `conn` (see [`Chosen`]).
    pub fn chosen(&mut self, conn: ConnKey, egress: bool, chosen: Chosen) {
        if egress {
            push_bounded_deque(self.chosen_requests.entry(conn).or_default(), chosen);
        } else {
            self.chosen_server.insert(conn, chosen);
        }
    }

    /// The ids the probes chose for the request whose head `conn` wrote
    /// at `at`: chosen inside that write, or not for it. Older ones were
    /// chosen for heads the agent did not frame (its framing lost sync).
    fn take_chosen_request(&mut self, conn: ConnKey, at: Stamp, stats: &Stats) -> Option<Chosen> {
        let queue = self.chosen_requests.get_mut(&conn)?;
        while queue.front().is_some_and(|c| c.at_ns < at.enter_ns) {
            queue.pop_front();
            Stats::inc(&stats.context_chosen_unmatched);
        }
        let found = queue.front().filter(|c| c.at_ns <= at.exit_ns).copied();
        if found.is_some() {
            queue.pop_front();
        }
        if queue.is_empty() {
            self.chosen_requests.remove(&conn);
        }
        found
    }

    /// A traced process read a request on `conn`, by `task`, in the read
    /// that moved its first bytes at `at`.
    fn server_started<'h>(
        &mut self,
        conn: ConnKey,
        task: Task,
        start: impl Into<Start<'h>>,
        ends: Endpoints,
        at: Stamp,
        stats: &Stats,
    ) -> SpanContext {
        let chosen = self
            .chosen_server
            .remove(&conn)
            .filter(|c| c.at_ns == at.exit_ns);
        let start = start.into();
        let stream = start.stream;
        let header = from_header(&start, stats);
        // Who serves it, for the calls it causes: the thread (or goroutine)
        // that read it, if the request is handled where it is read
        // ([`Start::thread_bound`]) and the goroutine is known.
        let doer = start
            .thread_bound
            .then(|| self.go.doer(conn.tgid, task))
            .flatten();
        let ctx = match chosen {
            Some(k) if k.origin == Origin::Header => {
                let agrees = header
                    .as_ref()
                    .is_some_and(|h| h.trace_id == k.trace_id && h.parent_span_id == k.parent_id);
                if !agrees {
                    Stats::inc(&stats.context_chosen_disagreed);
                }
                SpanContext {
                    trace_id: k.trace_id,
                    span_id: k.span_id,
                    parent_span_id: k.parent_id,
                    trace_state: header.map(|h| h.trace_state).unwrap_or_default(),
                    remote_sampled: Some(k.sampled),
                }
            }
            _ => {
                let linked = header.or_else(|| {
                    let parent = self.client_at_other_end(ends.peer?, ends.local?, stream)?;
                    Stats::inc(&stats.context_linked_same_host);
                    Some(SpanContext::child_of(parent))
                });
                let mut ctx = linked.clone().unwrap_or_else(SpanContext::root);
                if let Some(k) = chosen {
                    ctx.span_id = k.span_id;
                    if linked.is_none() {
                        ctx.trace_id = k.trace_id;
                    }
                }
                if linked.is_none() {
                    self.add_orphan(&ctx, (conn.tgid, doer), ends, stream);
                }
                ctx
            }
        };
        if let Some(doer) = doer {
            let serving = self.serving.entry((conn.tgid, doer)).or_default();
            push_bounded(serving, ctx.clone());
        }
        self.loops.server_started(conn, &ctx);
        ctx
    }

    /// Remembers a parentless server span whose peer is on this host.
    fn add_orphan(
        &mut self,
        ctx: &SpanContext,
        (tgid, doer): (u32, Option<Doer>),
        ends: Endpoints,
        stream: u32,
    ) {
        let (Some(peer), Some(local)) = (ends.peer, ends.local) else {
            return;
        };
        let same_host = peer.ip().is_loopback() || peer.ip() == local.ip();
        if !same_host || self.orphans.len() >= MAX_ORPHANS {
            return;
        }
        self.orphan_by_peer.insert((peer, stream), ctx.span_id);
        self.orphans.insert(
            ctx.span_id,
            Orphan {
                peer,
                local,
                stream,
                tgid,
                doer,
                has_children: Cell::new(false),
            },
        );
    }

    fn forget_orphan(&mut self, span_id: &[u8; 8]) {
        if let Some(o) = self.orphans.remove(span_id) {
            if self.orphan_by_peer.get(&(o.peer, o.stream)) == Some(span_id) {
                self.orphan_by_peer.remove(&(o.peer, o.stream));
            }
        }
    }

    /// A client call's addresses are known: if the server at the other end
    /// already read its request and found no parent, adopt it.
    fn adopt(
        &mut self,
        peer: SocketAddr,
        local: SocketAddr,
        call: (u32, &SpanContext),
        stats: &Stats,
    ) {
        let (stream, parent) = call;
        let Some(span_id) = self.orphan_by_peer.get(&(local, stream)).copied() else {
            return;
        };
        let Some(orphan) = self.orphans.get(&span_id) else {
            return;
        };
        let ip_ok = orphan.local.ip().is_unspecified() || orphan.local.ip() == peer.ip();
        if !ip_ok || orphan.local.port() != peer.port() || orphan.has_children.get() {
            return;
        }
        let serving = orphan.doer.map(|d| (orphan.tgid, d));
        self.forget_orphan(&span_id);
        let ctx = SpanContext {
            span_id,
            ..SpanContext::child_of(parent)
        };
        if let Some(v) = serving.and_then(|s| self.serving.get_mut(&s)) {
            for c in v.iter_mut().filter(|c| c.span_id == span_id) {
                *c = ctx.clone();
            }
        }
        self.loops.adopted(&ctx);
        self.adopted.insert(span_id, ctx);
        Stats::inc(&stats.context_linked_same_host);
    }

    /// The context a server exchange ended with, if it was adopted after
    /// its start.
    pub fn take_adopted(&mut self, span_id: &[u8; 8]) -> Option<SpanContext> {
        self.adopted.remove(span_id)
    }

    /// The in-flight client call whose connection is this one seen from the
    /// other end: its local address is our peer, its peer is our local.
    fn client_at_other_end(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        stream: u32,
    ) -> Option<&SpanContext> {
        self.calling.get(&local.port())?.iter().find_map(|call| {
            // A listener bound to the wildcard address accepts on any.
            let ip_ok = local.ip().is_unspecified() || call.peer.ip() == local.ip();
            (ip_ok && call.local == Some(peer) && call.stream == stream).then_some(&call.ctx)
        })
    }

    /// The probes reported the local address of a client connection after
    /// its request was already seen.
    pub fn client_local_known(
        &mut self,
        conn: ConnKey,
        peer: Option<SocketAddr>,
        local: SocketAddr,
        stats: &Stats,
    ) {
        let Some(calls) = peer.and_then(|p| self.calling.get_mut(&p.port())) else {
            return;
        };
        let mut waiting = Vec::new();
        for call in calls.iter_mut().filter(|c| c.conn == conn) {
            call.local = Some(local);
            waiting.push((call.peer, call.stream, call.ctx.clone()));
        }
        for (peer, stream, ctx) in waiting {
            self.adopt(peer, local, (stream, &ctx), stats);
        }
    }

    /// A traced process wrote a request on `conn`, by `task`, in the write
    /// at `at`.
    fn client_started<'h>(
        &mut self,
        conn: ConnKey,
        task: Task,
        start: impl Into<Start<'h>>,
        ends: Endpoints,
        at: Stamp,
        stats: &Stats,
    ) -> SpanContext {
        let start = start.into();
        let ctx = match self.take_chosen_request(conn, at, stats) {
            Some(k) => self.injected_call(conn, task, &k, stats),
            None => match from_header(&start, stats) {
                Some(ctx) => ctx,
                None => self.call_by_own(conn, task, &start, stats),
            },
        };
        self.loops.client_started(conn, &ctx);
        if let Some(peer) = ends.peer {
            let calls = self.calling.entry(peer.port()).or_default();
            push_bounded(
                calls,
                Call {
                    conn,
                    peer,
                    local: ends.local,
                    stream: start.stream,
                    ctx: ctx.clone(),
                },
            );
            if let Some(local) = ends.local {
                self.adopt(peer, local, (start.stream, &ctx), stats);
            }
        }
        ctx
    }

    /// The context of a call the probes wrote `traceparent` into: their
    /// span id; the parent the agent sees for it if there is one; else a
    /// root of the probes' trace, which the next hop joins. (The probes
    /// remember only the last request a thread read; where the agent sees
    /// none or several in flight, their choice could name a wrong parent,
    /// so it is not used.)
    fn injected_call(
        &mut self,
        conn: ConnKey,
        task: Task,
        k: &Chosen,
        stats: &Stats,
    ) -> SpanContext {
        let local = self.call_by(conn, task, stats);
        if local.parent_span_id != [0; 8] {
            return SpanContext {
                span_id: k.span_id,
                ..local
            };
        }
        SpanContext {
            trace_id: k.trace_id,
            span_id: k.span_id,
            parent_span_id: [0; 8],
            trace_state: String::new(),
            remote_sampled: None,
        }
    }

    /// [`Linker::call_by`] for a call whose thread is its own
    /// ([`Start::thread_bound`]); a root otherwise.
    fn call_by_own(
        &mut self,
        conn: ConnKey,
        task: Task,
        start: &Start<'_>,
        stats: &Stats,
    ) -> SpanContext {
        if start.thread_bound {
            self.call_by(conn, task, stats)
        } else {
            SpanContext::root()
        }
    }

    /// The context of a call made by `task` that carries no header of its
    /// own (any protocol): the child of the one request its thread (or, in
    /// Go, the goroutine it is made for) serves, else a root.
    fn call_by(&mut self, conn: ConnKey, task: Task, stats: &Stats) -> SpanContext {
        let tgid = conn.tgid;
        if self.loops.is_loop(tgid) {
            let Some(parent) = self.loops.parent_of_call(conn, task.tid, stats) else {
                return SpanContext::root();
            };
            if let Some(orphan) = self.orphans.get(&parent.span_id) {
                orphan.has_children.set(true);
            }
            return SpanContext::child_of(&parent);
        }
        let Some(mut doer) = self.go.doer(tgid, task) else {
            Stats::inc(&stats.context_goroutine_unknown);
            return SpanContext::root();
        };
        let mut handed_off = false;
        if let Doer::Goroutine(g) = doer {
            match self.go.asker(tgid, g) {
                Asker::Itself => {}
                Asker::Goroutine(asker) => {
                    doer = Doer::Goroutine(asker);
                    handed_off = true;
                }
                Asker::Unknown => {
                    Stats::inc(&stats.context_goroutine_unknown);
                    return SpanContext::root();
                }
            }
        }
        let parent = match self.served_by(tgid, doer) {
            Served::One(parent) => parent,
            Served::Inherited(parent) => {
                Stats::inc(&stats.context_goroutine_inherited);
                parent
            }
            Served::Many => {
                Stats::inc(&stats.context_parent_ambiguous);
                return SpanContext::root();
            }
            Served::Stale(g) => {
                Stats::inc(&stats.context_goroutine_stale);
                self.go.forget_under(tgid, g);
                return SpanContext::root();
            }
            Served::Nothing => return SpanContext::root(),
        };
        if handed_off {
            Stats::inc(&stats.context_goroutine_handoff);
        }
        if let Some(orphan) = self.orphans.get(&parent.span_id) {
            orphan.has_children.set(true);
        }
        SpanContext::child_of(parent)
    }

    /// What `doer` of process `tgid` serves now: the requests it read and
    /// has not answered; for a goroutine that read none, the request it
    /// was started under, while that is in flight.
    fn served_by(&self, tgid: u32, doer: Doer) -> Served<'_> {
        match self.serving.get(&(tgid, doer)).map(Vec::as_slice) {
            Some([one]) => return Served::One(one),
            Some([_, _, ..]) => return Served::Many,
            _ => {}
        }
        let Doer::Goroutine(g) = doer else {
            return Served::Nothing;
        };
        let Some(under) = self.go.under(tgid, g) else {
            return Served::Nothing;
        };
        match still_served(&self.serving, tgid, &under) {
            Some(ctx) => Served::Inherited(ctx),
            None => Served::Stale(g),
        }
    }

    /// Goroutine `task.goroutine` of Go process `tgid` did `act` on
    /// `object` at `at_ns` (see [`GoAct`]).
    pub fn go_event(
        &mut self,
        tgid: u32,
        (task, at_ns): (Task, u64),
        act: GoAct,
        object: u64,
        stats: &Stats,
    ) {
        let g = task.goroutine;
        if !self.go.is_go(tgid) || g == 0 {
            return;
        }
        let remembered = match act {
            GoAct::Spawn => {
                let under = match self.served_by(tgid, Doer::Goroutine(g)) {
                    Served::One(ctx) => Some(Under {
                        doer: Doer::Goroutine(g),
                        span_id: ctx.span_id,
                    }),
                    // The same request: started under what its starter was.
                    Served::Inherited(_) => self.go.under(tgid, g),
                    Served::Many | Served::Stale(_) | Served::Nothing => None,
                };
                // A reused `g`: a new goroutine has read nothing yet, so
                // what its last goroutine was serving (a hijacked
                // connection's request, an answer lost) is not its own.
                self.serving.remove(&(tgid, Doer::Goroutine(object)));
                self.go.spawned(tgid, object, under)
            }
            GoAct::RoundTrip => self.go.round_trip(tgid, g, object, at_ns),
            GoAct::WriteLoop => self.go.write_loop(tgid, g, object),
        };
        if remembered.is_err() {
            Stats::inc(&stats.context_goroutine_table_full);
        }
    }

    /// A tick: round trips not written within the request timeout (before
    /// `cutoff_ns`), and goroutines started under requests that ended, are
    /// forgotten.
    pub fn sweep(&mut self, cutoff_ns: u64) {
        let serving = &self.serving;
        self.go.sweep(cutoff_ns, |tgid, under| {
            still_served(serving, tgid, under).is_some()
        });
    }

    /// `tgid` exec'd a new image (Go or not): nothing its old image read
    /// is served any more, and its goroutines are gone.
    pub fn exec(&mut self, tgid: u32, runtime: Runtime) {
        self.serving.retain(|(t, _), _| *t != tgid);
        self.go.forget_goroutines(tgid);
        self.loops.forget_process(tgid);
        self.set_runtime(tgid, runtime);
    }

    /// The kernel dropped events: what is known of goroutines may be
    /// missing a start or a hand-off, so it is forgotten.
    pub fn events_lost(&mut self) {
        self.go.events_lost();
        self.loops.events_lost();
    }

    /// A server exchange ended: it can no longer be anyone's parent.
    fn server_finished(&mut self, conn: ConnKey, task: Task, ctx: &SpanContext) {
        self.loops.server_finished(conn, ctx);
        self.forget_orphan(&ctx.span_id);
        // Taken already when the exchange was collected; dropped here when
        // it ends any other way.
        self.adopted.remove(&ctx.span_id);
        self.unbind_thread(conn.tgid, task, ctx);
    }

    /// Server exchange `ctx`, read by `task` of `tgid`, goes on where its
    /// thread (or goroutine) does not follow it (its connection switched
    /// to HTTP/2): it parents that one's calls no more, and stays linkable.
    pub fn unbind_thread(&mut self, tgid: u32, task: Task, ctx: &SpanContext) {
        let Some(doer) = self.go.doer(tgid, task) else {
            return;
        };
        if let Some(v) = self.serving.get_mut(&(tgid, doer)) {
            v.retain(|c| c.span_id != ctx.span_id);
            if v.is_empty() {
                self.serving.remove(&(tgid, doer));
            }
        }
    }

    /// A client exchange to `peer` ended.
    fn client_finished(&mut self, conn: ConnKey, peer: Option<SocketAddr>, ctx: &SpanContext) {
        self.loops.client_finished(conn, ctx);
        let Some(port) = peer.map(|p| p.port()) else {
            return;
        };
        if let Some(calls) = self.calling.get_mut(&port) {
            calls.retain(|c| c.ctx.span_id != ctx.span_id);
            if calls.is_empty() {
                self.calling.remove(&port);
            }
        }
    }

    /// A connection closed: ids chosen for it are no one's any more.
    pub fn connection_closed(&mut self, conn: ConnKey) {
        self.loops.connection_closed(conn);
        self.chosen_requests.remove(&conn);
        self.chosen_server.remove(&conn);
    }

    /// Whether `tgid` runs Go: its goroutines serve requests, not its
    /// threads.
    pub fn set_runtime(&mut self, tgid: u32, runtime: Runtime) {
        self.go.set_go(tgid, runtime.go);
        self.loops.set(tgid, runtime.event_loop);
    }

    /// Thread `tid` of a Node.js process starts the callback of a read on
    /// `conn` (see [`Loops`]).
    pub fn loop_enter(&mut self, tid: u32, conn: ConnKey) {
        self.loops.enter(tid, conn);
    }

    pub fn loop_exit(&mut self, tgid: u32, tid: u32) {
        self.loops.exit(tgid, tid);
    }

    /// Bytes of the read on `conn` that ended at `at_ns` are about to be
    /// framed.
    pub fn read_on(&mut self, conn: ConnKey, at_ns: u64) {
        self.loops.read_on(conn, at_ns);
    }

    /// Thread `tid` connected `conn`.
    pub fn connected(&mut self, tid: u32, conn: ConnKey) {
        self.loops.connected(tid, conn);
    }

    pub fn runtime(&self, tgid: u32) -> Runtime {
        Runtime {
            go: self.go.is_go(tgid),
            event_loop: self.loops.is_loop(tgid),
        }
    }

    /// Forgets everything of a process that is gone.
    pub fn process_exited(&mut self, tgid: u32) {
        self.go.forget_process(tgid);
        self.loops.forget_process(tgid);
        self.chosen_requests.retain(|k, _| k.tgid != tgid);
        self.chosen_server.retain(|k, _| k.tgid != tgid);
        self.serving.retain(|(t, _), _| *t != tgid);
        let gone: Vec<[u8; 8]> = self
            .orphans
            .iter()
            .filter(|(_, o)| o.tgid == tgid)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.forget_orphan(&id);
            self.adopted.remove(&id);
        }
        self.calling.retain(|_, calls| {
            calls.retain(|c| c.conn.tgid != tgid);
            !calls.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    const AT: Stamp = Stamp {
        enter_ns: 0,
        exit_ns: 0,
    };

    fn key(tgid: u32, fd: i32) -> ConnKey {
        ConnKey {
            tgid,
            fd,
            conn_id: 1,
        }
    }

    fn head(traceparent: Option<&str>) -> Head {
        Head {
            method: "GET".into(),
            target: "/".into(),
            traceparent: traceparent.map(str::to_owned),
            ..Head::default()
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A thread of a program that is not Go.
    fn t(tid: u32) -> Task {
        Task::thread(tid)
    }

    /// Goroutine `g`, running on some thread.
    fn g(g: u64) -> Task {
        Task {
            tid: 99,
            goroutine: g,
        }
    }

    fn ends(peer: Option<&str>, local: Option<&str>) -> Endpoints {
        Endpoints {
            peer: peer.map(addr),
            local: local.map(addr),
            tls: false,
            tls_version: None,
        }
    }

    #[test]
    fn incoming_traceparent_makes_the_server_span_a_child() {
        let stats = Stats::default();
        let mut l = Linker::default();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let ctx = l.server_started(
            key(1, 3),
            t(1),
            &head(Some(tp)),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(ctx.trace_id[0], 0x4b);
        assert_eq!(
            ctx.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(ctx.remote_sampled, Some(false));
        let bad = l.server_started(
            key(1, 4),
            t(2),
            &head(Some("00-zz")),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(bad.parent_span_id, [0; 8]);
        assert_eq!(
            stats
                .context_traceparent_malformed
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn a_client_call_on_the_serving_thread_is_its_child_unless_ambiguous() {
        let stats = Stats::default();
        let mut l = Linker::default();
        let server = l.server_started(key(1, 3), t(7), &head(None), ends(None, None), AT, &stats);
        let client = l.client_started(key(1, 9), t(7), &head(None), ends(None, None), AT, &stats);
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent_span_id, server.span_id);
        // Another thread of the same process: no parent.
        let other = l.client_started(key(1, 10), t(8), &head(None), ends(None, None), AT, &stats);
        assert_eq!(other.parent_span_id, [0; 8]);
        // Two requests in flight on thread 7: cannot know, stays a root.
        let _second = l.server_started(key(1, 4), t(7), &head(None), ends(None, None), AT, &stats);
        let unknown = l.client_started(key(1, 11), t(7), &head(None), ends(None, None), AT, &stats);
        assert_eq!(unknown.parent_span_id, [0; 8]);
        assert_eq!(
            stats
                .context_parent_ambiguous
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Once the first ends, the second is the only one again.
        l.server_finished(key(1, 3), t(7), &server);
        let after = l.client_started(key(1, 12), t(7), &head(None), ends(None, None), AT, &stats);
        assert_eq!(after.parent_span_id, _second.span_id);
    }

    fn chosen(origin: Origin, at_ns: u64, span: u8, parent: u8) -> Chosen {
        Chosen {
            trace_id: [7; 16],
            span_id: [span; 8],
            parent_id: [parent; 8],
            sampled: true,
            origin,
            at_ns,
        }
    }

    #[test]
    fn ids_the_probes_chose_are_the_spans_ids() {
        let stats = Stats::default();
        let mut l = Linker::default();
        let tp = "00-07070707070707070707070707070707-0909090909090909-01";
        let stamp = |enter_ns, exit_ns| Stamp { enter_ns, exit_ns };
        // The server request, with the probes' reading of its header.
        l.chosen(key(1, 3), false, chosen(Origin::Header, 20, 1, 9));
        let server = l.server_started(
            key(1, 3),
            t(7),
            &head(Some(tp)),
            ends(None, None),
            stamp(10, 20),
            &stats,
        );
        assert_eq!(server.span_id, [1; 8]);
        assert_eq!(server.parent_span_id, [9; 8]);
        assert_eq!(server.remote_sampled, Some(true));
        assert_eq!(stats.context_chosen_disagreed.load(Relaxed), 0);
        // Its call, with the header the probes wrote: their span id, under
        // the server span.
        l.chosen(key(1, 5), true, chosen(Origin::Thread, 35, 2, 1));
        let call = l.client_started(
            key(1, 5),
            t(7),
            &head(None),
            ends(None, None),
            stamp(30, 40),
            &stats,
        );
        assert_eq!(call.span_id, [2; 8]);
        assert_eq!(call.parent_span_id, server.span_id);
        assert_eq!(call.trace_id, server.trace_id);
        // Ids chosen for a write the agent did not frame as a request are
        // dropped; ids chosen in a later write wait for it.
        l.chosen(key(1, 5), true, chosen(Origin::New, 45, 3, 0));
        l.chosen(key(1, 5), true, chosen(Origin::New, 99, 4, 0));
        let third = l.client_started(
            key(1, 5),
            t(7),
            &head(None),
            ends(None, None),
            stamp(50, 60),
            &stats,
        );
        assert_ne!(third.span_id, [3; 8]);
        assert_ne!(third.span_id, [4; 8]);
        assert_eq!(stats.context_chosen_unmatched.load(Relaxed), 1);
        l.server_finished(key(1, 3), t(7), &server);
        let fourth = l.client_started(
            key(1, 5),
            t(7),
            &head(None),
            ends(None, None),
            stamp(90, 100),
            &stats,
        );
        assert_eq!(fourth.span_id, [4; 8]);
        // Not serving anything the agent saw: a root of the probes' trace.
        assert_eq!(fourth.trace_id, [7; 16]);
        assert_eq!(fourth.parent_span_id, [0; 8]);
    }

    #[test]
    fn an_sdk_traceparent_on_a_client_request_wins() {
        let stats = Stats::default();
        let mut l = Linker::default();
        l.server_started(key(1, 3), t(7), &head(None), ends(None, None), AT, &stats);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let client = l.client_started(
            key(1, 9),
            t(7),
            &head(Some(tp)),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(client.trace_id[0], 0x4b);
        assert_eq!(client.parent_span_id[1], 0xf0);
    }

    #[test]
    fn the_server_end_of_a_traced_client_connection_is_its_child() {
        let stats = Stats::default();
        let mut l = Linker::default();
        // Process 1 calls 127.0.0.1:8000 from port 40000 (reported by the
        // probes after the request); process 3 calls it from 40002; process
        // 2 serves on a listener bound to 0.0.0.0:8000.
        let caller = l.client_started(
            key(1, 5),
            t(1),
            &head(None),
            ends(Some("127.0.0.1:8000"), None),
            AT,
            &stats,
        );
        l.client_local_known(
            key(1, 5),
            Some(addr("127.0.0.1:8000")),
            addr("127.0.0.1:40000"),
            &stats,
        );
        let bystander = l.client_started(
            key(3, 5),
            t(1),
            &head(None),
            ends(Some("127.0.0.1:8000"), Some("127.0.0.1:40002")),
            AT,
            &stats,
        );
        let server = l.server_started(
            key(2, 7),
            t(2),
            &head(None),
            ends(Some("127.0.0.1:40000"), Some("0.0.0.0:8000")),
            AT,
            &stats,
        );
        assert_eq!(server.trace_id, caller.trace_id);
        assert_eq!(server.parent_span_id, caller.span_id);
        let other = l.server_started(
            key(2, 8),
            t(3),
            &head(None),
            ends(Some("127.0.0.1:40002"), Some("0.0.0.0:8000")),
            AT,
            &stats,
        );
        assert_eq!(other.parent_span_id, bystander.span_id);
        // A request from an untraced client stays a root.
        let stranger = l.server_started(
            key(2, 9),
            t(4),
            &head(None),
            ends(Some("127.0.0.1:40009"), Some("0.0.0.0:8000")),
            AT,
            &stats,
        );
        assert_eq!(stranger.parent_span_id, [0; 8]);
        // Ended calls no longer match.
        l.client_finished(key(1, 3), Some(addr("127.0.0.1:8000")), &caller);
        let late = l.server_started(
            key(2, 10),
            t(5),
            &head(None),
            ends(Some("127.0.0.1:40000"), Some("0.0.0.0:8000")),
            AT,
            &stats,
        );
        assert_eq!(late.parent_span_id, [0; 8]);
    }

    fn go_linker() -> Linker {
        let mut l = Linker::default();
        l.set_runtime(
            1,
            Runtime {
                go: true,
                event_loop: false,
            },
        );
        l
    }

    #[test]
    fn a_goroutine_parents_the_calls_it_makes_for_its_request() {
        let stats = Stats::default();
        let mut l = go_linker();
        let a = l.server_started(key(1, 3), g(0xa), &head(None), ends(None, None), AT, &stats);
        let b = l.server_started(key(1, 4), g(0xb), &head(None), ends(None, None), AT, &stats);
        // Goroutine a's call, on whatever thread: a's child, not b's.
        let call = l.client_started(key(1, 9), g(0xa), &head(None), ends(None, None), AT, &stats);
        assert_eq!(call.parent_span_id, a.span_id);
        let call = l.client_started(
            key(1, 10),
            g(0xb),
            &head(None),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(call.parent_span_id, b.span_id);
        // A goroutine the probes did not name: a root, counted.
        let unknown = l.client_started(key(1, 11), g(0), &head(None), ends(None, None), AT, &stats);
        assert_eq!(unknown.parent_span_id, [0; 8]);
        assert_eq!(stats.context_goroutine_unknown.load(Relaxed), 1);
        // Its thread means nothing: the same tid read both requests.
        assert_eq!(l.serving.len(), 2);
    }

    #[test]
    fn a_net_http_writer_writes_for_the_goroutine_that_asked() {
        let stats = Stats::default();
        let mut l = go_linker();
        let a = l.server_started(key(1, 3), g(0xa), &head(None), ends(None, None), AT, &stats);
        let b = l.server_started(key(1, 4), g(0xb), &head(None), ends(None, None), AT, &stats);
        // Writer goroutine 0x71 writes persistConn 0x500's requests.
        l.go_event(1, (g(0x71), 0), GoAct::WriteLoop, 0x500, &stats);
        l.go_event(1, (g(0xb), 0), GoAct::RoundTrip, 0x500, &stats);
        let call = l.client_started(
            key(1, 9),
            g(0x71),
            &head(None),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(call.parent_span_id, b.span_id);
        l.go_event(1, (g(0xa), 0), GoAct::RoundTrip, 0x500, &stats);
        let call = l.client_started(
            key(1, 9),
            g(0x71),
            &head(None),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(call.parent_span_id, a.span_id);
        assert_eq!(stats.context_goroutine_handoff.load(Relaxed), 2);
        // A write nobody was seen asking for: a root, counted.
        let call = l.client_started(
            key(1, 9),
            g(0x71),
            &head(None),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(call.parent_span_id, [0; 8]);
        assert_eq!(stats.context_goroutine_unknown.load(Relaxed), 1);
    }

    #[test]
    fn goroutines_started_for_a_request_parent_its_calls_while_it_is_in_flight() {
        let stats = Stats::default();
        let mut l = go_linker();
        let a = l.server_started(key(1, 3), g(0xa), &head(None), ends(None, None), AT, &stats);
        // a starts c, which starts d: both work for a's request.
        l.go_event(1, (g(0xa), 0), GoAct::Spawn, 0xc, &stats);
        l.go_event(1, (g(0xc), 0), GoAct::Spawn, 0xd, &stats);
        let call = l.client_started(key(1, 9), g(0xd), &head(None), ends(None, None), AT, &stats);
        assert_eq!(call.parent_span_id, a.span_id);
        assert_eq!(call.trace_id, a.trace_id);
        assert_eq!(stats.context_goroutine_inherited.load(Relaxed), 1);
        // A goroutine started by one that serves nothing works for nobody.
        l.go_event(1, (g(0xe), 0), GoAct::Spawn, 0xf, &stats);
        let call = l.client_started(
            key(1, 10),
            g(0xf),
            &head(None),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(call.parent_span_id, [0; 8]);
        // Once a's request is answered, c is a worker that outlived it:
        // its calls are roots, never a's children.
        l.server_finished(key(1, 3), g(0xa), &a);
        let late = l.client_started(
            key(1, 11),
            g(0xc),
            &head(None),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(late.parent_span_id, [0; 8]);
        assert_eq!(stats.context_goroutine_stale.load(Relaxed), 1);
        // Even when goroutine a serves the next request.
        let next = l.server_started(key(1, 3), g(0xa), &head(None), ends(None, None), AT, &stats);
        let again = l.client_started(
            key(1, 12),
            g(0xd),
            &head(None),
            ends(None, None),
            AT,
            &stats,
        );
        assert_ne!(again.parent_span_id, next.span_id);
        assert_eq!(again.parent_span_id, [0; 8]);
        // A reused g starts over: d, started again under the new request.
        l.go_event(1, (g(0xa), 0), GoAct::Spawn, 0xd, &stats);
        let reused = l.client_started(
            key(1, 13),
            g(0xd),
            &head(None),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(reused.parent_span_id, next.span_id);
    }

    #[test]
    fn lost_events_leave_goroutines_parentless_never_wrong() {
        let stats = Stats::default();
        let mut l = go_linker();
        let a = l.server_started(key(1, 3), g(0xa), &head(None), ends(None, None), AT, &stats);
        l.go_event(1, (g(0xa), 0), GoAct::Spawn, 0xc, &stats);
        l.go_event(1, (g(0x71), 0), GoAct::WriteLoop, 0x500, &stats);
        l.events_lost();
        let call = l.client_started(key(1, 9), g(0xc), &head(None), ends(None, None), AT, &stats);
        assert_eq!(call.parent_span_id, [0; 8]);
        // The reading goroutine itself still knows its request.
        let own = l.client_started(
            key(1, 10),
            g(0xa),
            &head(None),
            ends(None, None),
            AT,
            &stats,
        );
        assert_eq!(own.parent_span_id, a.span_id);
    }

    #[test]
    fn a_reused_g_serves_nothing_its_last_goroutine_read() {
        let stats = Stats::default();
        let mut l = go_linker();
        // Goroutine 0xa read a request and ended without answering it (a
        // hijacked connection); its g starts a new goroutine, under nothing.
        l.server_started(key(1, 3), g(0xa), &head(None), ends(None, None), AT, &stats);
        l.go_event(1, (g(0xe), 0), GoAct::Spawn, 0xa, &stats);
        let call = l.client_started(key(1, 9), g(0xa), &head(None), ends(None, None), AT, &stats);
        assert_eq!(call.parent_span_id, [0; 8]);
    }

    #[test]
    fn an_exec_forgets_what_the_old_image_served() {
        let stats = Stats::default();
        let mut l = go_linker();
        l.server_started(key(1, 3), g(0xa), &head(None), ends(None, None), AT, &stats);
        l.go_event(1, (g(0xa), 0), GoAct::Spawn, 0xc, &stats);
        // A new Go image, whose goroutines may have the same addresses.
        l.exec(
            1,
            Runtime {
                go: true,
                event_loop: false,
            },
        );
        for goroutine in [0xa, 0xc] {
            let call = l.client_started(
                key(1, 9),
                g(goroutine),
                &head(None),
                ends(None, None),
                AT,
                &stats,
            );
            assert_eq!(call.parent_span_id, [0; 8]);
        }
    }
}
