//! The one seam every connection-level protocol implements.
//!
//! The tracker knows a connection's protocol only through [`Protocol`]: it
//! feeds it segments in both directions, asks what is pending (for
//! timeouts and the sweep), and ends what is open. A protocol gets span
//! context through [`Cx::start`], the same for every protocol, and hands
//! out each finished exchange as a neutral [`Record`] through
//! [`Cx::finish`]. No I/O here or in any protocol.

use zerospan_protocols::stream::{Segment, Stamp};

use crate::exchange::{Endpoints, Outcome, Role};
use crate::{
    exchange::{ConnKey, Task},
    kernel::Deepen,
    linker::{Linker, Start},
    spans::{context::SpanContext, Record, SpanKind},
    stats::Stats,
};

/// What a connection's protocol says after a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still this protocol.
    Continue,
    /// The bytes are not this protocol after all: the connection is
    /// ignored from here, and the kernel stops capturing it.
    NotMine,
    /// The protocol lost its place in the stream for good (and ended what
    /// was open): the kernel stops capturing the connection.
    Lost,
    /// The connection switches to TLS (the server accepted it): its
    /// plaintext will come from the TLS library, and the protocol goes on
    /// inside it after [`Protocol::tls_started`].
    AwaitTls,
    /// The connection now carries another protocol (HTTP/1.1 upgraded to
    /// h2c): [`Protocol::take_switch`] hands it over.
    Switch,
}

/// The protocol a connection switched to, from where in the segment that
/// switched it its bytes begin.
pub struct Switch {
    pub to: Box<dyn Protocol>,
    /// Offset into the captured bytes of the segment just fed.
    pub at: usize,
    pub deepen: Option<Deepen>,
}

pub trait Protocol {
    /// The protocol's name in counters and logs: `http`, `redis`, ….
    fn name(&self) -> &'static str;

    /// Feeds one segment, read (`egress` false) or written by the traced
    /// process's `task`.
    fn feed(&mut self, egress: bool, task: Task, seg: Segment<'_>, cx: &mut Cx<'_>) -> Verdict;

    /// When the oldest exchange still waiting for its answer started
    /// (monotonic ns), for the request timeout.
    fn waiting_since(&self) -> Option<u64>;

    /// Ends every exchange still open with `outcome`: the connection
    /// closed, its requests timed out, or the agent is stopping.
    fn end_all(&mut self, outcome: Outcome, cx: &mut Cx<'_>);

    /// The request timeout passed for what started before
    /// `started_before_ns`. A protocol that answers in order ends
    /// everything open (what waits behind an unanswered request cannot be
    /// answered first); one that multiplexes ends only those.
    fn time_out(&mut self, _started_before_ns: u64, cx: &mut Cx<'_>) {
        self.end_all(Outcome::TimedOut, cx);
    }

    /// The kernel dropped events (ring buffer or argument map full): some
    /// of this connection's segments may be missing. A protocol whose
    /// state depends on every byte (HPACK) stops trusting it.
    fn events_lost(&mut self) {}

    /// After [`Verdict::Switch`]: the protocol the connection now carries.
    fn take_switch(&mut self) -> Option<Switch> {
        None
    }

    /// The connection's bytes now come, as plaintext, from its TLS library.
    fn tls_started(&mut self) {}

    /// Nothing framed yet: if a TLS record shows up now, the plaintext to
    /// come will have this role. `None` once anything was framed.
    fn fresh_role(&self) -> Option<Role> {
        None
    }
}

/// What a protocol may use while it handles one connection's segment.
pub struct Cx<'a> {
    pub key: ConnKey,
    pub ends: Endpoints,
    pub stats: &'a Stats,
    linker: &'a mut Linker,
    out: &'a mut Vec<Record>,
}

impl<'a> Cx<'a> {
    pub fn new(
        key: ConnKey,
        ends: Endpoints,
        stats: &'a Stats,
        linker: &'a mut Linker,
        out: &'a mut Vec<Record>,
    ) -> Self {
        Cx {
            key,
            ends,
            stats,
            linker,
            out,
        }
    }

    /// The span context of a request that starts now: by `task`, in the
    /// syscall `at` that moved its first bytes, with what it carries.
    pub fn start(&mut self, role: Role, task: Task, at: Stamp, carried: Start<'_>) -> SpanContext {
        self.linker
            .started(self.key, role, self.ends, task, at, carried, self.stats)
    }

    /// A started exchange that will never be reported (dropped past a
    /// bound, or framed from bytes that turned out not to be the
    /// protocol): it is no one's parent any more.
    pub fn forget(&mut self, role: Role, task: Task, ctx: &SpanContext) {
        self.linker.ended(self.key, role, self.ends, task, ctx);
    }

    /// A server exchange that goes on where its thread does not follow
    /// (HTTP/1.1 upgraded to HTTP/2): no longer the parent of `task`'s calls.
    pub fn unbind_thread(&mut self, task: Task, ctx: &SpanContext) {
        self.linker.unbind_thread(self.key.tgid, task, ctx);
    }

    /// A finished exchange: it is no one's parent any more, and leaves
    /// with the context it ended with (a server span may have been adopted
    /// since it started).
    pub fn finish(&mut self, mut r: Record) {
        if let Some(ctx) = self.linker.take_adopted(&r.ctx.span_id) {
            r.ctx = ctx;
        }
        let role = match r.kind {
            SpanKind::Server => Role::Server,
            SpanKind::Client => Role::Client,
        };
        self.linker.ended(self.key, role, self.ends, r.task, &r.ctx);
        self.out.push(r);
    }
}
