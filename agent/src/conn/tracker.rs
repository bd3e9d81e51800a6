//! The connection table: tells which protocol each connection speaks, and
//! routes its segments to that protocol (see [`super::protocol`]).
//!
//! No I/O here: addresses arrive already resolved, finished exchanges leave
//! as records through [`Tracker::drain`], connections that
//! carry nothing we know are queued in [`Tracker::take_evictions`] so the
//! caller can stop the kernel from capturing them, and databases found on
//! pre-existing sockets in [`Tracker::take_deepened`].

use std::net::SocketAddr;
use std::sync::Arc;

use zerospan_common::origin;
use zerospan_protocols::stream::{Segment, Stamp};
use zerospan_protocols::tls;

use super::{
    db::SqlOptions,
    detect::{self, Detection, Met, Seen, Settings},
    h2,
    protocol::{Cx, Protocol, Verdict},
};
use crate::exchange::{ConnKey, Endpoints, Outcome, Role, Task};
use crate::hash::Map;
use crate::kernel::events::{Chosen, GoAct};
use crate::kernel::{Deepen, Runtime};
use crate::linker::Linker;
use crate::spans::{http::Options, Record};
use crate::stats::Stats;

/// Segments a connection of unknown role may show before we give up on it.
const MAX_DETECT_SEGMENTS: u32 = 64;
/// Most bytes of a segment held for a detector that asked for more.
const MAX_HELD_BYTES: usize = 64;
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

enum State {
    /// Its protocol not known yet: the detector table is asked with each
    /// segment. `segments` counts those no detector took: a joined
    /// connection is given up past [`MAX_DETECT_SEGMENTS`] (an accepted or
    /// connected one always finds HTTP/1 at least).
    Detecting { met: Met, segments: u32 },
    /// Detector `by` asked to see the next segment, in the same direction,
    /// with this one (a MySQL greeting's header, read alone).
    Held {
        met: Met,
        by: usize,
        egress: bool,
        held: Box<Held>,
    },
    /// A protocol the agent knows: HTTP/1, HTTP/2, PostgreSQL,
    /// MySQL/MariaDB, Redis, memcached.
    Active(Box<dyn Protocol>),
    /// TLS whose plaintext has not appeared yet: its role when known
    /// (server, client), and the ciphertext segments seen meanwhile.
    Tls { role: Option<Role>, segments: u32 },
    /// Not a protocol we know: ignored.
    Ignored,
}

/// A segment a detector could not yet judge.
struct Held {
    bytes: Vec<u8>,
    len: u64,
    at: Stamp,
}

impl State {
    /// For the logs.
    fn name(&self) -> &'static str {
        match self {
            State::Detecting { .. } => "detecting",
            State::Held { .. } => "detecting (holding a segment)",
            State::Active(p) => p.name(),
            State::Tls { .. } => "tls-waiting",
            State::Ignored => "ignored",
        }
    }
}

/// -vv: each segment a connection is given, to follow one that went wrong
/// (a lost framing, a missing span) step by step. Never its bytes, which
/// may hold secrets: only its size and what it starts like.
fn trace_segment(
    key: ConnKey,
    source: &str,
    (task, egress): (Task, bool),
    seg: &Segment<'_>,
    state: &State,
) {
    log::trace!(
        "{key:?}: {task:?}'s {source} {} of {} bytes ({} captured) in state {}, starting like {}",
        if egress { "write" } else { "read" },
        seg.len,
        seg.bytes.len(),
        state.name(),
        starts_like(seg.bytes)
    );
}

/// What `bytes` start like, for the logs.
pub fn starts_like(bytes: &[u8]) -> &'static str {
    if h2::starts_preface(bytes) {
        "the HTTP/2 client preface"
    } else if tls::looks_like_record(bytes) {
        "a TLS record"
    } else {
        "anything else"
    }
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
    conns: Map<ConnKey, Conn>,
    limits: Limits,
    stats: Arc<Stats>,
    /// How HTTP spans are built (redaction, routes).
    http: Arc<Options>,
    out: Vec<Record>,
    evict: Vec<ConnKey>,
    /// Connections the kernel should capture deeply (protocols recognised
    /// by the agent rather than by the probes).
    deepen: Vec<(ConnKey, Deepen)>,
    linker: Linker,
    /// The current connection of each (tgid, fd).
    by_fd: Map<(u32, i32), ConnKey>,
    /// Local addresses the probes reported before the connection opened.
    early_local: Map<(u32, i32), SocketAddr>,
}

impl Tracker {
    pub fn new(limits: Limits, http: Arc<Options>, stats: Arc<Stats>) -> Self {
        Tracker {
            conns: Map::default(),
            limits,
            stats,
            http,
            out: Vec::new(),
            evict: Vec::new(),
            deepen: Vec::new(),
            linker: Linker::default(),
            by_fd: Map::default(),
            early_local: Map::default(),
        }
    }

    /// Connections tracked: never more than `Limits::max_connections`.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    pub fn stats(&self) -> &Stats {
        &self.stats
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
        log::trace!(
            "{key:?}: {}, peer {peer:?}, local {local:?}",
            match how {
                origin::ACCEPTED => "accepted",
                origin::CONNECTED => "connected",
                _ => "found open at attach",
            }
        );
        if how == origin::ACCEPTED && peer.is_none() {
            Stats::inc(&self.stats.connections_peer_unknown);
        }
        let met = match how {
            origin::ACCEPTED => Met::Accepted,
            origin::CONNECTED => Met::Connected,
            _ => Met::Joined,
        };
        let state = State::Detecting { met, segments: 0 };
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
    pub fn data(&mut self, key: ConnKey, task: Task, egress: bool, seg: Segment<'_>) {
        if !self.admit(key) {
            return;
        }
        let conn = Self::conn(&mut self.conns, key, seg.stamp.exit_ns);
        trace_segment(key, "syscall", (task, egress), &seg, &conn.state);
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
                State::Detecting {
                    met: Met::Connected,
                    ..
                } => Some(Some(Role::Client)),
                State::Detecting {
                    met: Met::Accepted, ..
                } => Some(Some(Role::Server)),
                State::Detecting {
                    met: Met::Joined, ..
                } => Some(None),
                State::Active(p) => p.fresh_role().map(Some),
                _ => None,
            };
            if let Some(role) = role {
                conn.state = State::Tls { role, segments: 1 };
                return;
            }
        }
        self.feed(key, task, egress, seg);
    }

    /// Plaintext a TLS library call moved on a socket: from now on the
    /// connection's bytes are these, and its syscalls' are ignored.
    pub fn plaintext(&mut self, key: ConnKey, task: Task, egress: bool, seg: Segment<'_>) {
        if !self.admit(key) {
            return;
        }
        let conn = Self::conn(&mut self.conns, key, seg.stamp.exit_ns);
        trace_segment(key, "TLS", (task, egress), &seg, &conn.state);
        if !conn.ends.tls {
            conn.ends.tls = true;
            conn.tls_wait = None;
            let state = std::mem::replace(&mut conn.state, State::Ignored);
            conn.state = match state {
                State::Tls { role, .. } => State::Detecting {
                    met: match role {
                        Some(Role::Server) => Met::Accepted,
                        Some(Role::Client) => Met::Connected,
                        None => Met::Joined,
                    },
                    segments: 0,
                },
                // A database that switched to TLS goes on inside it.
                State::Active(mut p) => {
                    p.tls_started();
                    State::Active(p)
                }
                other => other,
            };
        }
        self.feed(key, task, egress, seg);
    }

    /// The connection `key`, known from now on if it was not, active at
    /// `at_ns`. Over the table alone, so the rest of the tracker stays free
    /// to use.
    fn conn(conns: &mut Map<ConnKey, Conn>, key: ConnKey, at_ns: u64) -> &mut Conn {
        let conn = conns.entry(key).or_insert_with(|| Conn {
            ends: Endpoints::default(),
            state: State::Detecting {
                met: Met::Joined,
                segments: 0,
            },
            last_ns: at_ns,
            tls_wait: None,
            record_header: None,
        });
        conn.last_ns = at_ns;
        conn
    }

    fn feed(&mut self, key: ConnKey, task: Task, egress: bool, seg: Segment<'_>) {
        if !egress {
            self.linker.read_on(key, seg.stamp.exit_ns);
        }
        self.run(key, task, egress, seg);
    }

    /// Asks the detector table about a connection still being detected;
    /// once a protocol has it, feeds it the held segment, if any, and this
    /// one.
    fn detect(&mut self, key: ConnKey, task: Task, egress: bool, seg: Segment<'_>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let (met, only) = match &conn.state {
            State::Detecting { met, .. } => (*met, None),
            State::Held { met, by, .. } => (*met, Some(*by)),
            _ => return,
        };
        let set = Settings {
            http: &self.http,
            sql: self.limits.sql,
        };
        let mut buf = Vec::new();
        let seen = match &conn.state {
            // The held bytes and these, in the same direction, for the
            // one detector that asked.
            State::Held {
                egress: was, held, ..
            } if *was == egress => Seen {
                met,
                egress,
                bytes: detect::joined(&held.bytes, &seg, &mut buf),
                len: held.len + seg.len,
            },
            State::Held { .. } => {
                conn.state = State::Ignored;
                self.ignore(key);
                return;
            }
            _ => Seen {
                met,
                egress,
                bytes: seg.bytes,
                len: seg.len,
            },
        };
        match detect::detect(&seen, &set, only) {
            Detection::Found {
                protocol,
                deepen,
                by,
            } => {
                log::debug!("{key:?} ({met:?}) speaks {by}");
                if let Some(how) = deepen {
                    self.deepen.push((key, how));
                }
                let was = std::mem::replace(&mut conn.state, State::Active(protocol));
                if let State::Held { egress, held, .. } = was {
                    let first = Segment {
                        bytes: &held.bytes,
                        len: held.len,
                        stamp: held.at,
                    };
                    self.run(key, task, egress, first);
                }
            }
            Detection::Hold { by } => {
                let n = seg.bytes.len().min(MAX_HELD_BYTES);
                conn.state = State::Held {
                    met,
                    by,
                    egress,
                    held: Box::new(Held {
                        bytes: seg.bytes[..n].to_vec(),
                        len: seg.len,
                        at: seg.stamp,
                    }),
                };
                return;
            }
            Detection::None if only.is_some() => {
                conn.state = State::Ignored;
                self.ignore(key);
                return;
            }
            Detection::None => {
                if let State::Detecting { segments, .. } = &mut conn.state {
                    *segments += 1;
                    if *segments > MAX_DETECT_SEGMENTS {
                        conn.state = State::Ignored;
                        self.ignore(key);
                    }
                }
                return;
            }
        }
        self.run(key, task, egress, seg);
    }

    /// Feeds a connection's protocol, and carries out what it says; a
    /// connection still being detected goes to the detectors first (and
    /// comes back here once one took it, so a known protocol's segments
    /// never pass through detection).
    fn run(&mut self, key: ConnKey, task: Task, egress: bool, seg: Segment<'_>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let p = match &mut conn.state {
            State::Active(p) => p,
            State::Detecting { .. } | State::Held { .. } => {
                return self.detect(key, task, egress, seg);
            }
            _ => return,
        };
        let mut cx = Cx::new(key, conn.ends, &self.stats, &mut self.linker, &mut self.out);
        let mut verdict = p.feed(egress, task, seg, &mut cx);
        if verdict == Verdict::Switch {
            let Some(switch) = p.take_switch() else {
                return;
            };
            log::debug!("{key:?}: {} becomes {}", p.name(), switch.to.name());
            if let Some(how) = switch.deepen {
                self.deepen.push((key, how));
            }
            *p = switch.to;
            // The rest of the segment is the new protocol's first bytes.
            let at = switch.at.min(seg.bytes.len());
            let rest = Segment {
                bytes: &seg.bytes[at..],
                len: seg.len.saturating_sub(at as u64),
                stamp: seg.stamp,
            };
            verdict = if rest.len > 0 {
                p.feed(egress, task, rest, &mut cx)
            } else {
                Verdict::Continue
            };
        }
        match verdict {
            Verdict::Continue | Verdict::Switch => {}
            Verdict::AwaitTls => conn.tls_wait = Some(0),
            Verdict::NotMine => {
                log::debug!("{key:?} is not {} after all: ignored", p.name());
                conn.state = State::Ignored;
                self.ignore(key);
            }
            Verdict::Lost => {
                // Counted by the protocol; nothing more to capture.
                conn.state = State::Ignored;
                self.evict.push(key);
                self.forget_fd(key);
            }
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

    /// The probes learnt the peer of accepted connection `key` in its
    /// first read (its accept asked for no address): before that read's
    /// bytes, so its first request's span has it.
    /// Only a record whose local port is the listener's can be about this
    /// socket; without the listener's address, none is taken.
    pub fn peer_known(&mut self, key: ConnKey, peer: SocketAddr, local_port: u16) {
        if let Some(conn) = self.conns.get_mut(&key) {
            let ours = conn.ends.local.is_some_and(|l| l.port() == local_port);
            if conn.ends.peer.is_none() && ours {
                conn.ends.peer = Some(peer);
                Stats::inc(&self.stats.connections_peer_learnt);
            }
        }
    }

    pub fn close(&mut self, key: ConnKey) {
        log::trace!("{key:?}: closed");
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
        if let State::Active(p) = &mut conn.state {
            let mut cx = Cx::new(key, conn.ends, &self.stats, &mut self.linker, &mut self.out);
            p.end_all(outcome, &mut cx);
        }
    }

    /// What `tgid` runs (Go: its goroutines, not its threads, parent its
    /// calls; Node.js: its read callbacks do).
    pub fn set_runtime(&mut self, tgid: u32, runtime: Runtime) {
        self.linker.set_runtime(tgid, runtime);
    }

    pub fn runtime(&self, tgid: u32) -> Runtime {
        self.linker.runtime(tgid)
    }

    /// `tgid` exec'd a new image.
    pub fn exec(&mut self, tgid: u32, runtime: Runtime) {
        self.linker.exec(tgid, runtime);
    }

    /// Thread `tid` of a Node.js process starts the callback of a read on
    /// `key`, or (`None`) its callback returned.
    pub fn read_callback(&mut self, tgid: u32, tid: u32, key: Option<ConnKey>) {
        match key {
            Some(key) => self.linker.loop_enter(tid, key),
            None => self.linker.loop_exit(tgid, tid),
        }
    }

    /// Thread `tid` connected `key`.
    pub fn connected(&mut self, tid: u32, key: ConnKey) {
        self.linker.connected(tid, key);
    }

    /// What a Go program's runtime or `net/http` did at `at_ns` (see
    /// [`GoAct`]).
    pub fn go_event(&mut self, tgid: u32, at: (Task, u64), act: GoAct, object: u64) {
        self.linker.go_event(tgid, at, act, object, &self.stats);
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
        self.linker
            .sweep(now_ns.saturating_sub(limits.request_timeout_ns));
        let mut timed_out = Vec::new();
        let mut idle = Vec::new();
        for (key, conn) in &self.conns {
            let quiet = now_ns.saturating_sub(conn.last_ns);
            let waiting = match &conn.state {
                State::Active(p) => p.waiting_since(),
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
        let cutoff = now_ns.saturating_sub(limits.request_timeout_ns);
        for key in timed_out {
            if let Some(mut conn) = self.conns.remove(&key) {
                if let State::Active(p) = &mut conn.state {
                    let mut cx =
                        Cx::new(key, conn.ends, &self.stats, &mut self.linker, &mut self.out);
                    p.time_out(cutoff, &mut cx);
                }
                self.conns.insert(key, conn);
            }
        }
        for key in idle {
            self.conns.remove(&key);
            self.forget_fd(key);
        }
    }

    /// The kernel dropped events: every connection may have missed bytes,
    /// and the linker goroutine starts and hand-offs.
    pub fn events_lost(&mut self) {
        self.linker.events_lost();
        for conn in self.conns.values_mut() {
            if let State::Active(p) = &mut conn.state {
                p.events_lost();
            }
        }
    }

    /// Exchanges finished since the last call, every protocol's.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Record> {
        self.out.drain(..)
    }

    /// Connections the kernel should stop capturing.
    pub fn take_evictions(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.evict)
    }

    /// Connections the kernel should capture deeply, and how.
    pub fn take_deepened(&mut self) -> Vec<(ConnKey, Deepen)> {
        std::mem::take(&mut self.deepen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{SpanKind, Status, Value};
    use crate::test_support::seg;

    fn int(r: &Record, key: &str) -> Option<i64> {
        match r.attributes.iter().find(|(k, _)| *k == key) {
            Some((_, Value::Int(n))) => Some(*n),
            _ => None,
        }
    }

    fn text<'r>(r: &'r Record, key: &str) -> Option<&'r str> {
        match r.attributes.iter().find(|(k, _)| *k == key) {
            Some((_, Value::Str(v))) => Some(v),
            _ => None,
        }
    }

    /// The request target: a server's `url.path`, a client's `url.full`
    /// past its authority.
    fn target(r: &Record) -> &str {
        text(r, "url.path")
            .or_else(|| {
                let full = text(r, "url.full")?;
                let rest = full.split_once("://")?.1;
                Some(&rest[rest.find('/')?..])
            })
            .unwrap_or_default()
    }

    fn status(r: &Record) -> Option<u16> {
        int(r, "http.response.status_code").map(|c| c as u16)
    }

    fn body(r: &Record) -> Option<u64> {
        int(r, "http.response.body.size").map(|n| n as u64)
    }

    /// How the exchange ended, as its span tells.
    fn outcome(r: &Record) -> Outcome {
        match (
            text(r, "error.type"),
            text(r, "zerospan.incomplete"),
            &r.status,
        ) {
            (Some("timeout"), ..) => Outcome::TimedOut,
            (Some("connection_closed"), ..) => Outcome::Closed,
            (_, Some("response_unparsed"), _) => Outcome::ResponseLost,
            (_, Some("agent_stopped"), _) => Outcome::AgentStopped,
            (None, None, Status::Unset) => Outcome::Complete,
            other => panic!("no outcome for {other:?}"),
        }
    }

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

    fn feed(t: &mut Tracker, key: ConnKey, task: Task, egress: bool, seg: Segment<'_>) {
        t.data(key, task, egress, seg);
    }

    const KEY: ConnKey = ConnKey {
        tgid: 10,
        fd: 4,
        conn_id: 1,
    };

    /// A peer the probes learnt in the first read is taken only from a
    /// record whose local port is the listener's.
    #[test]
    fn a_learnt_peer_must_come_from_the_listeners_port() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        for (port, taken) in [(9090, false), (8080, true)] {
            let mut t = Tracker::new(limits(), Default::default(), Arc::default());
            t.open(KEY, origin::ACCEPTED, None, Some(local), 0);
            t.peer_known(KEY, peer, port);
            feed(
                &mut t,
                KEY,
                Task::thread(1),
                false,
                seg(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 10),
            );
            feed(
                &mut t,
                KEY,
                Task::thread(1),
                true,
                seg(b"HTTP/1.1 204 No Content\r\n\r\n", 20),
            );
            let done: Vec<Record> = t.drain().collect();
            assert_eq!(done.len(), 1);
            let want = taken.then_some("127.0.0.1");
            assert_eq!(text(&done[0], "network.peer.address"), want, "port {port}");
        }
    }

    #[test]
    fn keep_alive_server_pairs_in_order() {
        let mut t = Tracker::new(limits(), Default::default(), Arc::default());
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        for i in 0..3u64 {
            feed(
                &mut t,
                KEY,
                Task::thread(1),
                false,
                seg(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", i * 10),
            );
            feed(
                &mut t,
                KEY,
                Task::thread(1),
                true,
                seg(
                    b"HTTP/1.1 404 NF\r\nContent-Length: 2\r\n\r\nno",
                    i * 10 + 5,
                ),
            );
        }
        let done: Vec<_> = t.drain().collect();
        assert_eq!(done.len(), 3);
        assert!(done.iter().all(|f| f.kind == SpanKind::Server));
        assert_eq!(done[2].start_ns, 21);
        assert_eq!(done[2].end_ns, 26);
        assert_eq!(status(&done[2]), Some(404));
    }

    #[test]
    fn pipelined_requests_answered_in_one_write() {
        let mut t = Tracker::new(limits(), Default::default(), Arc::default());
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            false,
            seg(b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n", 0),
        );
        feed(&mut t,
            KEY,
            Task::thread(1),
            true,
            seg(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                5,
            ),
        );
        let done: Vec<_> = t.drain().collect();
        let targets: Vec<_> = done.iter().map(target).collect();
        assert_eq!(targets, ["/a", "/b"]);
        assert_eq!(body(&done[1]), Some(0));
    }

    #[test]
    fn non_http_connections_are_evicted_and_counted() {
        let stats = Arc::new(Stats::default());
        let mut t = Tracker::new(limits(), Default::default(), stats.clone());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        // Neither HTTP/1 nor anything else we know.
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            true,
            seg(b"\x00\xff garbage \r\n", 0),
        );
        assert_eq!(t.take_evictions(), vec![KEY]);
        assert_eq!(
            stats
                .connections_unknown_protocol
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            true,
            seg(b"GET / HTTP/1.1\r\n\r\n", 1),
        );
        assert_eq!(t.drain().count(), 0);
    }

    /// Ciphertext waits for the plaintext, which then stands for the
    /// connection; ciphertext after it is ignored; TLS whose plaintext
    /// never comes is given up and counted.
    #[test]
    fn tls_connections_take_their_plaintext_from_the_library() {
        let stats = Arc::new(Stats::default());
        let mut t = Tracker::new(limits(), Default::default(), stats.clone());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        feed(&mut t, KEY, Task::thread(1), true, seg(hello, 0));
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            false,
            seg(b"\x16\x03\x03\x00\x7a\x02", 1),
        );
        assert!(t.take_evictions().is_empty());
        t.plaintext(
            KEY,
            Task::thread(1),
            true,
            seg(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 2),
        );
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            true,
            seg(b"\x17\x03\x03\x00\x20", 3),
        );
        t.plaintext(
            KEY,
            Task::thread(1),
            false,
            seg(b"HTTP/1.1 204 No Content\r\n\r\n", 4),
        );
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(text(&done[0], "url.full"), Some("https://a/x"));
        assert_eq!(status(&done[0]), Some(204));

        let other = ConnKey { fd: 9, ..KEY };
        t.open(other, origin::CONNECTED, None, None, 0);
        for i in 0..=MAX_TLS_WAIT_SEGMENTS {
            feed(
                &mut t,
                other,
                Task::thread(1),
                i % 2 == 0,
                seg(hello, u64::from(i)),
            );
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
        let mut t = Tracker::new(limits(), Default::default(), Arc::default());
        t.open(KEY, origin::PREEXISTING, None, None, 0);
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            true,
            seg(b"partial body of an old response", 0),
        );
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            false,
            seg(b"GET /next HTTP/1.1\r\n\r\n", 10),
        );
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            true,
            seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 20),
        );
        let done: Vec<_> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].kind, SpanKind::Server);
    }

    #[test]
    fn close_and_timeout_end_unanswered_requests_as_errors() {
        let mut t = Tracker::new(limits(), Default::default(), Arc::default());
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            false,
            seg(b"GET / HTTP/1.1\r\n\r\n", 0),
        );
        t.close(KEY);
        let done: Vec<_> = t.drain().collect();
        assert_eq!(outcome(&done[0]), Outcome::Closed);

        let key2 = ConnKey { fd: 5, ..KEY };
        t.open(key2, origin::ACCEPTED, None, None, 0);
        feed(
            &mut t,
            key2,
            Task::thread(1),
            false,
            seg(b"GET / HTTP/1.1\r\n\r\n", 0),
        );
        t.sweep(500);
        assert_eq!(t.drain().count(), 0);
        t.sweep(5_000);
        let done: Vec<_> = t.drain().collect();
        assert_eq!(outcome(&done[0]), Outcome::TimedOut);
        // The connection stays known: its next exchange is still traced.
        assert_eq!(t.connections(), 1);
        feed(
            &mut t,
            key2,
            Task::thread(1),
            false,
            seg(b"GET /again HTTP/1.1\r\n\r\n", 6_000),
        );
        // The late answer to the timed-out request comes first, in order.
        feed(
            &mut t,
            key2,
            Task::thread(1),
            true,
            seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 6_050),
        );
        feed(
            &mut t,
            key2,
            Task::thread(1),
            true,
            seg(b"HTTP/1.1 204 No Content\r\n\r\n", 6_100),
        );
        let done: Vec<_> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(target(&done[0]), "/again");
        assert_eq!(outcome(&done[0]), Outcome::Complete);
        // Quiet long enough, it is forgotten.
        t.sweep(20_000);
        assert_eq!(t.connections(), 0);
    }

    #[test]
    fn response_delimited_by_close_ends_at_close() {
        let mut t = Tracker::new(limits(), Default::default(), Arc::default());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            true,
            seg(b"GET / HTTP/1.0\r\n\r\n", 0),
        );
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            false,
            seg(b"HTTP/1.0 200 OK\r\n\r\nbody", 10),
        );
        t.close(KEY);
        let done: Vec<_> = t.drain().collect();
        assert_eq!(outcome(&done[0]), Outcome::Complete);
        assert_eq!(body(&done[0]), Some(4));
        assert_eq!(done[0].end_ns, 11);
    }

    #[test]
    fn table_is_bounded() {
        let stats = Arc::new(Stats::default());
        let mut t = Tracker::new(limits(), Default::default(), stats.clone());
        for fd in 0..20 {
            t.open(ConnKey { fd, ..KEY }, origin::ACCEPTED, None, None, 0);
        }
        assert_eq!(t.connections(), 8);
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
        let mut t = Tracker::new(limits(), Default::default(), Arc::default());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: h\r\n\r\n");
        let pipelined = get("/a") + &get("/chunked") + &get("/503");
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            true,
            seg(pipelined.as_bytes(), 10),
        );
        feed(
            &mut t,
            KEY,
            Task::thread(1),
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
            Task::thread(1),
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
            Task::thread(1),
            true,
            seg(b"POST /p HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 40),
        );
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            false,
            seg(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 50),
        );
        let done: Vec<_> = t.drain().collect();
        let summary: Vec<_> = done
            .iter()
            .map(|x| (target(x), status(x), body(x), outcome(x)))
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
        assert_eq!(done[2].end_ns, stamp.exit_ns);
    }

    /// A first request whose head is longer than the capture (a big cookie)
    /// is HTTP that lost sync, not "not HTTP": the connection stays tracked
    /// and the next request on it becomes a span.
    #[test]
    fn an_oversized_first_head_does_not_end_tracking() {
        let stats = Arc::new(Stats::default());
        let mut t = Tracker::new(limits(), Default::default(), stats.clone());
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        let captured = b"GET /big HTTP/1.1\r\nCookie: aaaaaaaaaaaaaaaa";
        let stamp = Stamp {
            enter_ns: 1,
            exit_ns: 2,
        };
        feed(
            &mut t,
            KEY,
            Task::thread(1),
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
            Task::thread(1),
            true,
            seg(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 10),
        );
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            false,
            seg(b"GET /next HTTP/1.1\r\n\r\n", 20),
        );
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            true,
            seg(b"HTTP/1.1 204 No Content\r\n\r\n", 30),
        );
        let done: Vec<_> = t.drain().collect();
        let last = done.last().expect("the next request is traced");
        assert_eq!(target(last), "/next");
        assert_eq!(status(last), Some(204));
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
        let mut t = Tracker::new(limits(), Default::default(), Arc::default());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        feed(
            &mut t,
            KEY,
            Task::thread(1),
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
            Task::thread(1),
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
        assert_eq!(outcome(&done[0]), Outcome::ResponseLost);
    }

    /// A MySQL greeting's 4-byte header read alone is held, and judged
    /// with the read that follows; a write instead gives the connection up.
    #[test]
    fn a_held_greeting_header_is_judged_with_the_next_read() {
        let greeting = crate::conn::mysql::tests::greeting(false);
        let (header, body) = greeting.split_at(4);
        let mut t = Tracker::new(limits(), Default::default(), Arc::default());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        feed(&mut t, KEY, Task::thread(1), false, seg(header, 10));
        assert!(t.take_deepened().is_empty(), "held, not yet judged");
        feed(&mut t, KEY, Task::thread(1), false, seg(body, 11));
        assert_eq!(t.take_deepened(), [(KEY, Deepen::Database)]);
        assert!(t.take_evictions().is_empty());

        let other = ConnKey { fd: 9, ..KEY };
        t.open(other, origin::CONNECTED, None, None, 0);
        feed(&mut t, other, Task::thread(1), false, seg(header, 10));
        feed(
            &mut t,
            other,
            Task::thread(1),
            true,
            seg(b"GET / HTTP/1.1\r\n\r\n", 11),
        );
        assert_eq!(t.take_evictions(), [other]);
    }

    /// An outgoing connection whose first bytes are RESP is a Redis client:
    /// its commands pair with their replies into database calls.
    #[test]
    fn outgoing_resp_becomes_redis_calls() {
        let mut t = Tracker::new(limits(), Default::default(), Arc::default());
        t.open(KEY, origin::CONNECTED, None, None, 0);
        feed(
            &mut t,
            KEY,
            Task::thread(1),
            true,
            seg(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 10),
        );
        feed(&mut t, KEY, Task::thread(1), false, seg(b"$1\r\nv\r\n", 20));
        let calls: Vec<_> = t.drain().collect();
        assert_eq!(calls.len(), 1);
        assert_eq!(text(&calls[0], "db.operation.name"), Some("GET"));
        // A database call, not an HTTP exchange.
        assert_eq!(text(&calls[0], "db.system.name"), Some("redis"));
        assert!(t.take_evictions().is_empty());
    }
}
