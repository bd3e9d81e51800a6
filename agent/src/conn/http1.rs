//! One HTTP/1 connection, server or client side: requests paired with
//! their responses, in order (keep-alive and pipelining), through two
//! `http1` framers.
//!
//! When the response stream loses its framing, requests whose response may
//! have been in the lost bytes end unanswered rather than being paired by
//! position (see [`ResponseSink::give_up_before`]); requests that time out
//! are owed the next responses, which are skipped, not paired.

use crate::exchange::{Outcome, Role, Task};
use std::{collections::VecDeque, sync::Arc};

use zerospan_protocols::http1::{Desync, Framer, Head, Kind, Sink};

use zerospan_protocols::stream::{Segment, Stamp};

use super::{
    h2::H2Conn,
    protocol::{Cx, Protocol, Switch, Verdict},
};
use crate::kernel::Deepen;
use crate::{
    linker::Start,
    spans::http::{self, Exchange, Options},
    stats::{Counter, Stats},
};

/// Most requests one connection may have outstanding (pipelined).
const MAX_PENDING: usize = 64;

pub struct HttpConn {
    role: Role,
    requests: Framer,
    responses: Framer,
    book: Book,
    /// How spans are built from the exchanges.
    opts: Arc<Options>,
    /// The protocol a 101 switched the connection to, until the tracker
    /// takes it.
    switch: Option<Switch>,
}

/// Requests awaiting their responses, plus the finished ones.
#[derive(Default)]
struct Book {
    pending: VecDeque<Exchange>,
    /// Whether the response being framed belongs to `pending.front()`.
    response_matched: bool,
    finished: Vec<Exchange>,
    task: Task,
    last_at: Stamp,
    /// The segment in which the response stream last lost sync, until the
    /// next response head is framed.
    response_lost_at: Option<Stamp>,
    /// Responses still owed to requests that timed out: HTTP/1 answers in
    /// order, so the next ones to arrive are theirs, not later requests'.
    owed_responses: u32,
    /// The request a 101 just switched to h2c: its response comes over
    /// HTTP/2, as stream 1.
    upgraded: Option<Exchange>,
}

struct RequestSink<'a, 'c> {
    book: &'a mut Book,
    role: Role,
    cx: &'a mut Cx<'c>,
}

impl Sink for RequestSink<'_, '_> {
    fn on_head(&mut self, head: Head, at: Stamp) {
        if self.book.pending.len() >= MAX_PENDING {
            if let Some(dropped) = self.book.pending.pop_back() {
                self.cx.forget(self.role, dropped.task, &dropped.ctx);
            }
            Stats::inc(&self.cx.stats.http_pipeline_overflow);
        }
        let ctx = self
            .cx
            .start(self.role, self.book.task, at, Start::from(&head));
        self.book.pending.push_back(Exchange {
            version: head.protocol_version(),
            ctx,
            request: head,
            response: None,
            request_at: at,
            request_body: None,
            end_at: at,
            response_body: None,
            outcome: Outcome::Complete,
            task: self.book.task,
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
            self.cx.stats.desync("http");
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
            Some(x) if head.status == 101 && head.upgrade_h2c && x.request.upgrade_h2c => {
                self.book.upgraded = self.book.pending.pop_front();
                self.book.response_matched = false;
            }
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
            self.stats.desync("http");
            self.book.response_lost_at = Some(self.book.last_at);
        }
    }
}

/// The counter of an HTTP request (HTTP/1 or a stream of HTTP/2) that
/// ended with `outcome` before its response did.
pub(super) fn unanswered_counter(stats: &Stats, outcome: Outcome) -> &Counter {
    match outcome {
        Outcome::TimedOut => &stats.http_requests_timed_out,
        Outcome::AgentStopped => &stats.http_requests_in_flight_at_stop,
        Outcome::ResponseLost => &stats.http_responses_lost,
        _ => &stats.http_requests_unanswered,
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
    pub fn new(role: Role, opts: Arc<Options>) -> Self {
        HttpConn {
            role,
            requests: Framer::new(Kind::Request),
            responses: Framer::new(Kind::Response),
            book: Book::default(),
            opts,
            switch: None,
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
    fn feed_segment(
        &mut self,
        egress: bool,
        task: Task,
        seg: Segment<'_>,
        cx: &mut Cx<'_>,
    ) -> bool {
        let stats = cx.stats;
        self.book.task = task;
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
                role: self.role,
                cx,
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
            Stats::inc(unanswered_counter(stats, outcome));
            self.book.finished.push(x);
        }
    }
}

impl HttpConn {
    /// Hands out the exchanges finished so far.
    fn collect(&mut self, cx: &mut Cx<'_>) {
        for x in self.book.finished.drain(..) {
            cx.finish(http::record(
                &x,
                self.role,
                cx.ends,
                &self.opts,
                cx.key.tgid,
            ));
        }
    }
}

impl Protocol for HttpConn {
    fn name(&self) -> &'static str {
        "http"
    }

    fn feed(&mut self, egress: bool, task: Task, seg: Segment<'_>, cx: &mut Cx<'_>) -> Verdict {
        let still_http = self.feed_segment(egress, task, seg, cx);
        self.collect(cx);
        if let Some(x) = self.book.upgraded.take() {
            // Nothing may follow an upgrade request on HTTP/1 (RFC 9110
            // §7.8): anything framed after it was not a request.
            for x in self.book.pending.drain(..) {
                cx.forget(self.role, x.task, &x.ctx);
                Stats::inc(&cx.stats.http_pipeline_overflow);
            }
            // Its response comes as HTTP/2 stream 1, among streams its
            // thread may serve next: it must not parent their calls.
            if self.role == Role::Server {
                cx.unbind_thread(x.task, &x.ctx);
            }
            let at = self.responses.stopped_at().unwrap_or(seg.bytes.len());
            self.switch = Some(Switch {
                to: Box::new(H2Conn::upgraded(self.role, self.opts.clone(), x)),
                at,
                deepen: Some(Deepen::Http2),
            });
            return Verdict::Switch;
        }
        if still_http {
            return Verdict::Continue;
        }
        // Requests framed before the bytes stopped making sense must not
        // stay anyone's candidate parent.
        for x in self.book.pending.drain(..) {
            cx.forget(self.role, x.task, &x.ctx);
        }
        Verdict::NotMine
    }

    fn waiting_since(&self) -> Option<u64> {
        self.book.pending.front().map(|x| x.request_at.exit_ns)
    }

    fn end_all(&mut self, outcome: Outcome, cx: &mut Cx<'_>) {
        self.close(outcome, cx.stats);
        self.collect(cx);
    }

    fn fresh_role(&self) -> Option<Role> {
        self.is_fresh().then_some(self.role)
    }

    fn take_switch(&mut self) -> Option<Switch> {
        self.switch.take()
    }
}
