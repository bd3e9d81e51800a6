//! Node.js's event loop: which request a call made on it is for.
//!
//! An event-loop thread serves every request at once, so the thread rule
//! (the one request in flight on the thread) never holds there. What does
//! hold: the probes report each read callback (`LOOP_ENTER`, naming the
//! socket the thread has just read, then `LOOP_EXIT`), and everything
//! JavaScript does about those bytes, the handler and the promise
//! continuations it queues, runs inside it. So a call written inside the
//! callback of a read on
//! - a server connection with exactly one request in flight is that
//!   request's child;
//! - a client connection whose last read ended one call, or, if it ended
//!   none, with exactly one call in flight, is a child of that call's
//!   parent (the code after an `await`; other calls may be in flight on a
//!   shared connection, as on a Redis client's);
//! - a client connection opened inside such a callback, before its first
//!   request (TLS and database handshakes read first), is a child of what
//!   that callback was for;
//!
//! and a connection's first request written outside any read callback
//! (Node writes it once the connect completes) is a child of what the
//! callback that opened it was for. Everything else stays a root, counted:
//! several requests in flight on the connection read
//! (`context_parent_ambiguous`), or no read callback, as in timers and
//! immediates (`context_loop_unknown`).

use crate::hash::{Map, Set};

use crate::{exchange::ConnKey, spans::context::SpanContext, stats::Stats};

/// Why a call made on an event loop is someone's, or no one's.
#[derive(Clone)]
enum Cause {
    /// The call is a child of this.
    Of(SpanContext),
    /// More than one request could have caused it.
    Ambiguous,
    /// The thread is in no read callback, or one of a read that carried no
    /// request of ours.
    Unknown,
}

/// Bound on each table (a connection that never closes must not grow one).
const MAX_ENTRIES: usize = 65536;

#[derive(Default)]
pub struct Loops {
    /// The processes whose read callbacks the probes report.
    processes: Set<u32>,
    /// The socket whose read callback each thread is in.
    regions: Map<(u32, u32), ConnKey>,
    /// Server requests in flight, by connection.
    serving: Map<ConnKey, Vec<SpanContext>>,
    /// Client calls in flight, by connection.
    calling: Map<ConnKey, Vec<SpanContext>>,
    /// What the last read on a client connection ended, if anything, and
    /// that read (its syscall's exit time: one read can come in several
    /// events).
    answered: Map<ConnKey, (u64, Answered)>,
    /// The read each connection of these processes is in now, by exit time.
    reading: Map<ConnKey, u64>,
    /// What the callback that opened a client connection was for (one
    /// request, or several at once), until the connection's first request.
    opened_for: Map<ConnKey, Cause>,
}

/// The calls a read on a client connection ended.
enum Answered {
    /// One: its parent, if it had one.
    One(Option<SpanContext>),
    /// More than one (two responses in one read).
    Many,
}

/// The context a call's parent had: its trace, and its span id. `None`
/// for a root call (no parent to share).
fn parent_of(call: &SpanContext) -> Option<SpanContext> {
    (call.parent_span_id != [0; 8]).then(|| SpanContext {
        trace_id: call.trace_id,
        span_id: call.parent_span_id,
        parent_span_id: [0; 8],
        trace_state: call.trace_state.clone(),
        remote_sampled: call.remote_sampled,
    })
}

fn insert_bounded<K: std::hash::Hash + Eq, V>(map: &mut Map<K, V>, key: K, value: V) {
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, value);
}

fn push_bounded(map: &mut Map<ConnKey, Vec<SpanContext>>, conn: ConnKey, ctx: SpanContext) {
    if map.len() >= MAX_ENTRIES && !map.contains_key(&conn) {
        map.clear();
    }
    let v = map.entry(conn).or_default();
    if v.len() >= 256 {
        v.remove(0);
    }
    v.push(ctx);
}

fn remove_ctx(map: &mut Map<ConnKey, Vec<SpanContext>>, conn: ConnKey, ctx: &SpanContext) {
    if let Some(v) = map.get_mut(&conn) {
        v.retain(|c| c.span_id != ctx.span_id);
        if v.is_empty() {
            map.remove(&conn);
        }
    }
}

impl Loops {
    pub fn set(&mut self, tgid: u32, event_loop: bool) {
        if event_loop {
            self.processes.insert(tgid);
        } else {
            self.forget_process(tgid);
        }
    }

    pub fn is_loop(&self, tgid: u32) -> bool {
        self.processes.contains(&tgid)
    }

    /// Thread `tid` starts the callback of a read on `conn`.
    pub fn enter(&mut self, tid: u32, conn: ConnKey) {
        insert_bounded(&mut self.regions, (conn.tgid, tid), conn);
    }

    /// Thread `tid`'s read callback returned.
    pub fn exit(&mut self, tgid: u32, tid: u32) {
        self.regions.remove(&(tgid, tid));
    }

    /// Bytes of a read on `conn` (the syscall that ended at `at_ns`) are
    /// about to be framed: what an earlier read ended is no longer what
    /// the callback is about.
    pub fn read_on(&mut self, conn: ConnKey, at_ns: u64) {
        if !self.processes.contains(&conn.tgid) {
            return;
        }
        insert_bounded(&mut self.reading, conn, at_ns);
        if self.answered.get(&conn).is_some_and(|(at, _)| *at != at_ns) {
            self.answered.remove(&conn);
        }
    }

    /// What the read callback thread `tid` is in is for.
    fn cause_now(&self, tgid: u32, tid: u32) -> Option<Cause> {
        let conn = self.regions.get(&(tgid, tid))?;
        Some(self.cause_of_read(*conn))
    }

    /// What the callback of the last read on `conn` is for.
    fn cause_of_read(&self, conn: ConnKey) -> Cause {
        match self.serving.get(&conn).map(Vec::as_slice) {
            Some([one]) => return Cause::Of(one.clone()),
            Some([_, _, ..]) => return Cause::Ambiguous,
            _ => {}
        }
        match self.answered.get(&conn).map(|(_, a)| a) {
            Some(Answered::One(Some(p))) => return Cause::Of(p.clone()),
            Some(Answered::One(None)) => return Cause::Unknown,
            Some(Answered::Many) => return Cause::Ambiguous,
            None => {}
        }
        match self.calling.get(&conn).map(Vec::as_slice) {
            Some([one]) => return parent_of(one).map_or(Cause::Unknown, Cause::Of),
            Some([_, _, ..]) => return Cause::Ambiguous,
            _ => {}
        }
        self.opened_for
            .get(&conn)
            .cloned()
            .unwrap_or(Cause::Unknown)
    }

    /// Thread `tid` connected `conn`: what it does there before its first
    /// request is for what the thread's callback is for. An ambiguous
    /// callback is kept too, so that the first request, written outside
    /// it, is counted for its real reason.
    pub fn connected(&mut self, tid: u32, conn: ConnKey) {
        match self.cause_now(conn.tgid, tid) {
            Some(cause @ (Cause::Of(_) | Cause::Ambiguous)) => {
                insert_bounded(&mut self.opened_for, conn, cause)
            }
            Some(Cause::Unknown) | None => {}
        }
    }

    /// The parent of a call thread `tid` writes on `conn` (see the module
    /// docs); `None` for a root, counted by reason.
    pub fn parent_of_call(
        &mut self,
        conn: ConnKey,
        tid: u32,
        stats: &Stats,
    ) -> Option<SpanContext> {
        let cause = self.cause_now(conn.tgid, tid);
        let opened_for = self.opened_for.remove(&conn);
        let cause = match cause {
            Some(cause) => cause,
            // Outside any read callback: only a connection's first request,
            // by what opened it.
            None => opened_for.unwrap_or(Cause::Unknown),
        };
        match cause {
            Cause::Of(p) => Some(p),
            Cause::Ambiguous => {
                Stats::inc(&stats.context_parent_ambiguous);
                None
            }
            Cause::Unknown => {
                Stats::inc(&stats.context_loop_unknown);
                None
            }
        }
    }

    pub fn server_started(&mut self, conn: ConnKey, ctx: &SpanContext) {
        if self.processes.contains(&conn.tgid) {
            push_bounded(&mut self.serving, conn, ctx.clone());
        }
    }

    pub fn server_finished(&mut self, conn: ConnKey, ctx: &SpanContext) {
        remove_ctx(&mut self.serving, conn, ctx);
    }

    pub fn client_started(&mut self, conn: ConnKey, ctx: &SpanContext) {
        if self.processes.contains(&conn.tgid) {
            self.opened_for.remove(&conn);
            push_bounded(&mut self.calling, conn, ctx.clone());
        }
    }

    pub fn client_finished(&mut self, conn: ConnKey, ctx: &SpanContext) {
        if !self.processes.contains(&conn.tgid) {
            return;
        }
        remove_ctx(&mut self.calling, conn, ctx);
        let at = self.reading.get(&conn).copied().unwrap_or(0);
        let answered = match self.answered.get(&conn) {
            Some(_) => Answered::Many,
            None => Answered::One(parent_of(ctx)),
        };
        insert_bounded(&mut self.answered, conn, (at, answered));
    }

    /// A server span took a caller's trace after it started (see
    /// `Linker::adopt`): calls made for it from now on are in that trace.
    pub fn adopted(&mut self, ctx: &SpanContext) {
        for c in self.serving.values_mut().flatten() {
            if c.span_id == ctx.span_id {
                *c = ctx.clone();
            }
        }
        for c in self.opened_for.values_mut() {
            if matches!(c, Cause::Of(p) if p.span_id == ctx.span_id) {
                *c = Cause::Of(ctx.clone());
            }
        }
    }

    /// The kernel dropped events: a callback's end, or a read, may be
    /// among them.
    pub fn events_lost(&mut self) {
        self.regions.clear();
        self.answered.clear();
        self.opened_for.clear();
    }

    pub fn connection_closed(&mut self, conn: ConnKey) {
        self.serving.remove(&conn);
        self.calling.remove(&conn);
        self.answered.remove(&conn);
        self.reading.remove(&conn);
        self.opened_for.remove(&conn);
    }

    pub fn forget_process(&mut self, tgid: u32) {
        self.processes.remove(&tgid);
        self.regions.retain(|(t, _), _| *t != tgid);
        for map in [&mut self.serving, &mut self.calling] {
            map.retain(|c, _| c.tgid != tgid);
        }
        self.answered.retain(|c, _| c.tgid != tgid);
        self.reading.retain(|c, _| c.tgid != tgid);
        self.opened_for.retain(|c, _| c.tgid != tgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    const NODE: u32 = 7;
    const LOOP: u32 = 7;

    fn conn(fd: i32) -> ConnKey {
        ConnKey {
            tgid: NODE,
            fd,
            conn_id: fd as u64,
        }
    }

    fn request() -> SpanContext {
        SpanContext::root()
    }

    fn loops() -> Loops {
        let mut l = Loops::default();
        l.set(NODE, true);
        l
    }

    /// A call made in the callback of a request's read is that request's;
    /// one made after the callback returned is no one's.
    #[test]
    fn a_read_callback_names_its_request() {
        let (mut l, stats) = (loops(), Stats::default());
        let r = request();
        l.server_started(conn(10), &r);
        l.enter(LOOP, conn(10));
        let p = l.parent_of_call(conn(20), LOOP, &stats).unwrap();
        assert_eq!(p.span_id, r.span_id);
        l.exit(NODE, LOOP);
        assert!(l.parent_of_call(conn(20), LOOP, &stats).is_none());
        assert_eq!(stats.context_loop_unknown.load(Ordering::Relaxed), 1);
    }

    /// Two requests in flight on the connection read (pipelined): no
    /// guess.
    #[test]
    fn two_requests_on_the_read_connection_are_ambiguous() {
        let (mut l, stats) = (loops(), Stats::default());
        l.server_started(conn(10), &request());
        l.server_started(conn(10), &request());
        l.enter(LOOP, conn(10));
        assert!(l.parent_of_call(conn(20), LOOP, &stats).is_none());
        assert_eq!(stats.context_parent_ambiguous.load(Ordering::Relaxed), 1);
    }

    /// The code after an `await`: the callback of the read that ended a
    /// call is for that call's parent, until another read on that
    /// connection.
    #[test]
    fn a_response_read_names_its_calls_parent() {
        let (mut l, stats) = (loops(), Stats::default());
        let r = request();
        let call = SpanContext::child_of(&r);
        l.client_started(conn(20), &call);
        l.read_on(conn(20), 1);
        l.client_finished(conn(20), &call);
        l.enter(LOOP, conn(20));
        let p = l.parent_of_call(conn(21), LOOP, &stats).unwrap();
        assert_eq!((p.trace_id, p.span_id), (r.trace_id, r.span_id));
        l.exit(NODE, LOOP);
        // Unsolicited bytes on that connection later (a push, a close)
        // are about nothing.
        l.read_on(conn(20), 2);
        l.enter(LOOP, conn(20));
        assert!(l.parent_of_call(conn(21), LOOP, &stats).is_none());
    }

    /// A shared connection (one Redis client for every request): the read
    /// that ended one call names its parent though others are in flight;
    /// a read that ended two names no one.
    #[test]
    fn a_shared_connection_names_the_call_its_read_ended() {
        let (mut l, stats) = (loops(), Stats::default());
        let (r1, r2, r3) = (request(), request(), request());
        let calls: Vec<SpanContext> = [&r1, &r2, &r3].map(SpanContext::child_of).into();
        for c in &calls {
            l.client_started(conn(20), c);
        }
        l.read_on(conn(20), 1);
        l.client_finished(conn(20), &calls[1]);
        // The same read, in a second event (a read of more than one
        // capture): still the call it ended.
        l.read_on(conn(20), 1);
        l.enter(LOOP, conn(20));
        let p = l.parent_of_call(conn(21), LOOP, &stats).unwrap();
        assert_eq!(p.span_id, r2.span_id);
        l.exit(NODE, LOOP);
        l.read_on(conn(20), 2);
        l.client_finished(conn(20), &calls[0]);
        l.client_finished(conn(20), &calls[2]);
        l.enter(LOOP, conn(20));
        assert!(l.parent_of_call(conn(21), LOOP, &stats).is_none());
        assert_eq!(stats.context_parent_ambiguous.load(Ordering::Relaxed), 1);
    }

    /// A connection opened in a request's callback: its first request,
    /// written once the connect completes (outside any read callback), is
    /// that request's; the next one outside a callback is no one's.
    #[test]
    fn a_connection_opened_for_a_request_carries_its_first_call() {
        let (mut l, stats) = (loops(), Stats::default());
        let r = request();
        l.server_started(conn(10), &r);
        l.enter(LOOP, conn(10));
        l.connected(LOOP, conn(30));
        l.exit(NODE, LOOP);
        let p = l.parent_of_call(conn(30), LOOP, &stats).unwrap();
        assert_eq!(p.span_id, r.span_id);
        assert!(l.parent_of_call(conn(30), LOOP, &stats).is_none());
    }

    /// A connection opened in the callback of a read that carried two
    /// requests: its first request, written outside the callback, is a
    /// root counted as ambiguous (its real reason), not as unknown.
    #[test]
    fn a_connection_opened_for_two_requests_is_ambiguous() {
        let (mut l, stats) = (loops(), Stats::default());
        l.server_started(conn(10), &request());
        l.server_started(conn(10), &request());
        l.enter(LOOP, conn(10));
        l.connected(LOOP, conn(30));
        l.exit(NODE, LOOP);
        assert!(l.parent_of_call(conn(30), LOOP, &stats).is_none());
        assert_eq!(stats.context_parent_ambiguous.load(Ordering::Relaxed), 1);
        assert_eq!(stats.context_loop_unknown.load(Ordering::Relaxed), 0);
    }

    /// Processes whose loops are not reported are left to the thread rule.
    #[test]
    fn other_processes_are_not_followed() {
        let mut l = loops();
        l.server_started(
            ConnKey {
                tgid: 8,
                ..conn(10)
            },
            &request(),
        );
        assert!(l.serving.is_empty());
        l.forget_process(NODE);
        assert!(!l.is_loop(NODE));
    }
}
