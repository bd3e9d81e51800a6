//! One HTTP/2 connection, server or client side: a span per stream, from
//! the two directions' frames (`zerospan_protocols::h2`), gRPC calls among
//! them.
//!
//! A stream's span runs from its request's first HEADERS to the end of
//! both directions (END_STREAM each way), or to a reset. Fields the HPACK
//! decoder could not know (a connection joined mid-stream, a lost block)
//! are left out, never guessed, and the span says so in
//! `zerospan.incomplete`.

use crate::exchange::{Outcome, Role, Task};
use std::sync::Arc;

use crate::hash::Map;

use zerospan_protocols::h2::{hpack::Fields, Framer, Sink, PREFACE};
use zerospan_protocols::http1::Head;
use zerospan_protocols::stream::{Segment, Stamp};

use super::{
    http1,
    protocol::{Cx, Protocol, Verdict},
};
use crate::{
    linker::Start,
    spans::{
        context::SpanContext,
        http::{self, mark_incomplete, Exchange, Options},
        rpc, Record,
    },
    stats::Stats,
};

/// Most streams one connection may have open; past it the oldest is
/// given up (a peer that never ends its streams must not grow the table).
const MAX_STREAMS: usize = 256;
/// Most octets kept of a field value that goes into a span.
const MAX_VALUE: usize = 2048;

/// Whether `bytes` begin with the client preface, as far as they go: at
/// least `PRI`, the method RFC 9113 reserved so that no HTTP/1 request
/// starts so (as the probes' `is_h2_preface` decides).
pub fn starts_preface(bytes: &[u8]) -> bool {
    let n = bytes.len().min(PREFACE.len());
    n >= 3 && bytes[..n] == PREFACE[..n]
}

/// Whether `bytes`, the first an HTTP/2 server writes (or its client
/// reads), are a server's connection preface: a SETTINGS frame (RFC 9113
/// §3.4), which HTTP/2 servers may send before reading the client's.
pub fn starts_server_preface(bytes: &[u8]) -> bool {
    match bytes {
        [l0, l1, l2, 4, flags, 0, 0, 0, 0, ..] => {
            let len = u32::from_be_bytes([0, *l0, *l1, *l2]);
            len.is_multiple_of(6) && len <= 16_384 && *flags == 0
        }
        _ => false,
    }
}

/// The role of a traced process whose connection, joined mid-stream,
/// shows `bytes` moving `egress` (written) or not: `Some` only when they
/// are whole, well-formed frames, one a header block that decodes to a
/// request (`:method`) or a response (`:status`) without guessing. The
/// last may be a DATA frame whose payload runs on past them (the probes
/// leave DATA payloads out; a payload may go on in the next write).
pub fn joined_role(egress: bool, bytes: &[u8]) -> Option<Role> {
    let mut at = 0;
    let mut role = None;
    let mut frames = 0;
    while at < bytes.len() {
        let head: [u8; 9] = bytes.get(at..at + 9)?.try_into().ok()?;
        let flen = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        if kind > 9 || flen > 16_384 || stream >> 31 != 0 {
            return None;
        }
        let Some(payload) = bytes.get(at + 9..at + 9 + flen) else {
            return role.filter(|_| kind == 0 && stream != 0);
        };
        // HEADERS, whole in one frame, unpadded, without priority: the
        // common shape, and the only one taken as proof.
        if kind == 1 && stream != 0 && flags & 0x4 != 0 && flags & 0x28 == 0 && role.is_none() {
            let mut fields = Fields::default();
            zerospan_protocols::h2::hpack::Decoder::joined()
                .decode(payload, &mut fields)
                .ok()?;
            let request = fields.get(":method").is_some();
            let response = fields.get(":status").is_some();
            role = match (request, response, egress) {
                (true, false, true) | (false, true, false) => Some(Role::Client),
                (true, false, false) | (false, true, true) => Some(Role::Server),
                _ => return None,
            };
        }
        at += 9 + flen;
        frames += 1;
    }
    role.filter(|_| frames > 0)
}

pub struct H2Conn {
    role: Role,
    /// Frames the traced process reads, and those it writes.
    reads: Framer,
    writes: Framer,
    streams: Map<u32, Stream>,
    /// See [`Side::last_request`].
    last_request: u32,
    /// See [`Side::uncertain`].
    uncertain: bool,
    opts: Arc<Options>,
    /// Segments seen since each direction (read, written) lost its
    /// framing, while it waits for one to find its frames again.
    lost_for: [u32; 2],
}

/// Segments a direction that lost its framing waits for one that starts
/// with whole frames holding a header block, before the connection is
/// given up.
const RESYNC_WAIT: u32 = 64;

struct Stream {
    ctx: SpanContext,
    /// Who moved the request's first HEADERS: its thread (in Go, with its
    /// goroutine).
    task: Task,
    request: Head,
    grpc: bool,
    request_at: Stamp,
    request_body: u64,
    /// The request's body size is not known (an upgrading HTTP/1.1
    /// request whose body could not be framed).
    request_body_unknown: bool,
    request_ended: bool,
    /// A final response's HEADERS arrived (not a 1xx).
    answered: bool,
    status: Option<u16>,
    grpc_status: Option<u32>,
    /// The response's `content-length`, and when its last DATA came.
    response_length: Option<u64>,
    response_data_at: Stamp,
    response_body: u64,
    response_ended: bool,
    end_at: Stamp,
    reset: Option<u32>,
    /// The request's, or the response's, fields were not all known.
    request_unknown: bool,
    response_unknown: bool,
}

impl Stream {
    fn done(&self) -> bool {
        (self.request_ended && self.response_ended) || self.reset.is_some()
    }
}

/// One direction's events, applied to the connection's streams.
struct Side<'a, 'c> {
    role: Role,
    /// This direction carries the requests (client to server).
    requests: bool,
    task: Task,
    streams: &'a mut Map<u32, Stream>,
    cx: &'a mut Cx<'c>,
    finished: &'a mut Vec<(Stream, Outcome)>,
    /// The highest stream id a request was seen on.
    last_request: &'a mut u32,
    /// Bytes before this connection's first request HEADERS seen since
    /// were not read (joined, framing found again, events lost): a new
    /// stream id may then be a stream opened unseen, its trailers coming.
    uncertain: &'a mut bool,
    /// SETTINGS_HEADER_TABLE_SIZE this direction's sender announced.
    table_size: Option<u32>,
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(&value[..value.len().min(MAX_VALUE)]).into_owned()
}

impl Side<'_, '_> {
    fn finish_if_done(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(Stream::done) {
            let s = self.streams.remove(&id).expect("present");
            self.finished.push((s, Outcome::Complete));
        }
    }

    fn start(&mut self, id: u32, fields: Option<&Fields>, end_stream: bool, at: Stamp) {
        if self.streams.len() >= MAX_STREAMS {
            let oldest = self
                .streams
                .iter()
                .min_by_key(|(_, s)| s.request_at.exit_ns)
                .map(|(id, _)| *id);
            if let Some(s) = oldest.and_then(|id| self.streams.remove(&id)) {
                self.cx.forget(self.role, s.task, &s.ctx);
                Stats::inc(&self.cx.stats.h2_streams_dropped);
            }
        }
        let get = |name: &str| fields.and_then(|f| f.get(name)).map(text);
        let request = Head {
            method: get(":method").unwrap_or_default(),
            target: get(":path").unwrap_or_default(),
            host: get(":authority").or_else(|| get("host")),
            user_agent: get("user-agent"),
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
            content_length: get("content-length").and_then(|v| v.parse().ok()),
            ..Head::default()
        };
        let grpc = fields
            .and_then(|f| f.get("content-type"))
            .is_some_and(|v| v.starts_with(b"application/grpc"));
        let ctx = self.cx.start(
            self.role,
            self.task,
            at,
            Start {
                traceparent: request.traceparent.as_deref(),
                tracestate: request.tracestate.as_deref(),
                linkable: true,
                stream: id,
                thread_bound: false,
            },
        );
        self.streams.insert(
            id,
            Stream {
                ctx,
                task: self.task,
                request,
                grpc,
                request_at: at,
                request_body: 0,
                request_body_unknown: false,
                request_ended: end_stream,
                answered: false,
                status: None,
                grpc_status: None,
                response_length: None,
                response_data_at: at,
                response_body: 0,
                response_ended: false,
                end_at: at,
                reset: None,
                request_unknown: fields.is_none_or(|f| f.has_unknown() || f.truncated),
                response_unknown: false,
            },
        );
    }
}

/// A request's first HEADERS: it has a request pseudo-header, which
/// trailers never carry (RFC 9113 §8.1).
fn is_request_head(f: &Fields) -> bool {
    [":method", ":path", ":scheme", ":authority"]
        .iter()
        .any(|name| f.get(name).is_some())
}

/// A request-side HEADERS on a stream never seen opens a request, while
/// the connection is uncertain, only if it can be nothing else. On a
/// connection seen from its start every new stream id is a request, but
/// after a join or a resync the new id may be the trailers of a request
/// whose HEADERS went unread: a block decoded whole without a request
/// pseudo-header is such trailers, and so, being ambiguous, is an
/// unknown one that ends the stream (trailers always do, RFC 9113
/// §8.1). An unknown block that leaves the stream open can only be a
/// request, and its span says its fields are unknown.
fn opens_request(fields: Option<&Fields>, end_stream: bool) -> bool {
    match fields {
        Some(f) if is_request_head(f) => true,
        Some(f) if !f.has_unknown() && !f.truncated => false,
        _ => !end_stream,
    }
}

fn grpc_status(fields: &Fields) -> Option<u32> {
    std::str::from_utf8(fields.get("grpc-status")?)
        .ok()?
        .parse()
        .ok()
}

impl Sink for Side<'_, '_> {
    fn on_headers(&mut self, id: u32, fields: Option<&Fields>, end_stream: bool, at: Stamp) {
        if self.requests {
            match self.streams.get_mut(&id) {
                // Stream ids only grow (RFC 9113 §5.1.1): a lower one is
                // a stream already over (timed out, reset, dropped) or
                // opened before the agent, not a new request.
                None if id > *self.last_request => {
                    *self.last_request = id;
                    if fields
                        .is_some_and(|f| !is_request_head(f) && !f.has_unknown() && !f.truncated)
                    {
                        // Trailers, whatever the connection: a request
                        // without its pseudo-headers is malformed (RFC
                        // 9113 §8.3.1), and a lost segment is known only
                        // at the next tick.
                        Stats::inc(&self.cx.stats.h2_orphan_frames)
                    } else if !*self.uncertain {
                        self.start(id, fields, end_stream, at)
                    } else if opens_request(fields, end_stream) {
                        // Ids grow in the order streams open (RFC 9113
                        // §5.1.1): past a request's first HEADERS, every
                        // new id opened after it, in bytes read.
                        *self.uncertain &= !fields.is_some_and(is_request_head);
                        self.start(id, fields, end_stream, at)
                    } else {
                        Stats::inc(&self.cx.stats.h2_orphan_frames)
                    }
                }
                None => Stats::inc(&self.cx.stats.h2_orphan_frames),
                // Trailers of the request.
                Some(s) => s.request_ended |= end_stream,
            }
            return self.finish_if_done(id);
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // A stream opened before the agent saw the connection, or a
            // pushed one.
            Stats::inc(&self.cx.stats.h2_orphan_frames);
            return;
        };
        let unknown = fields.is_none_or(|f| f.has_unknown() || f.truncated);
        if !s.answered {
            let status = fields
                .and_then(|f| f.get(":status"))
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
            if matches!(status, Some(100..=199)) && !end_stream {
                // Informational: the final response is still to come.
                return;
            }
            s.answered = true;
            s.status = status;
            s.response_data_at = at;
            s.response_length = fields
                .and_then(|f| f.get("content-length"))
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        }
        if let Some(code) = fields.and_then(grpc_status) {
            s.grpc_status = Some(code);
        }
        s.response_unknown |= unknown;
        if end_stream {
            s.response_ended = true;
            s.end_at = at;
        }
        self.finish_if_done(id);
    }

    fn on_data(&mut self, id: u32, len: u64, end_stream: bool, at: Stamp) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if self.requests {
            s.request_body += len;
            s.request_ended |= end_stream;
        } else {
            s.response_body += len;
            s.response_data_at = at;
            if end_stream {
                s.response_ended = true;
                s.end_at = at;
            }
        }
        self.finish_if_done(id);
    }

    fn on_reset(&mut self, id: u32, code: Option<u32>, at: Stamp) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.response_ended {
            // An unknown code is still a reset.
            s.reset = Some(code.unwrap_or(u32::MAX));
            s.end_at = at;
        } else {
            // The response is whole: the reset only ends the request side
            // (RFC 9113 §8.1, a server that answered early).
            s.request_ended = true;
        }
        self.finish_if_done(id);
    }

    fn on_goaway(&mut self, last: u32, _code: Option<u32>, at: Stamp) {
        // From the server: the client's streams past `last` were never
        // processed (RFC 9113 §6.8).
        if self.requests {
            return;
        }
        let refused: Vec<u32> = self
            .streams
            .keys()
            .filter(|id| **id > last)
            .copied()
            .collect();
        for id in refused {
            if let Some(s) = self.streams.get_mut(&id) {
                s.reset = Some(7); // REFUSED_STREAM
                s.end_at = at;
            }
            self.finish_if_done(id);
        }
    }

    fn on_table_size(&mut self, size: u32) {
        self.table_size = Some(size);
    }
}

impl H2Conn {
    /// A connection seen from its first byte (the client preface).
    pub fn new(role: Role, opts: Arc<Options>) -> Self {
        let (reads, writes) = match role {
            Role::Server => (Framer::client_from_start(), Framer::server_from_start()),
            Role::Client => (Framer::server_from_start(), Framer::client_from_start()),
        };
        H2Conn {
            role,
            reads,
            writes,
            streams: Map::default(),
            last_request: 0,
            uncertain: false,
            opts,
            lost_for: [0; 2],
        }
    }

    /// A connection that an HTTP/1.1 request upgraded to h2c (RFC 7540
    /// §3.2): both prefaces are still to come, and the request that
    /// upgraded it is stream 1, whose response comes over HTTP/2.
    pub fn upgraded(role: Role, opts: Arc<Options>, x: Exchange) -> Self {
        let mut conn = H2Conn::new(role, opts);
        conn.last_request = 1;
        conn.streams.insert(
            1,
            Stream {
                ctx: x.ctx,
                task: x.task,
                grpc: false,
                request_at: x.request_at,
                request_body: x.request_body.unwrap_or(0),
                request_body_unknown: x.request_body.is_none(),
                // Stream 1 is half-closed: the HTTP/1.1 request was all of it.
                request_ended: true,
                answered: false,
                status: None,
                grpc_status: None,
                response_length: None,
                response_data_at: x.request_at,
                response_body: 0,
                response_ended: false,
                end_at: x.request_at,
                reset: None,
                request_unknown: x.request.partial,
                response_unknown: false,
                request: x.request,
            },
        );
        conn
    }

    /// A connection joined mid-stream, at a frame boundary in both
    /// directions (see [`joined_role`]).
    pub fn joined(role: Role, opts: Arc<Options>) -> Self {
        H2Conn {
            role,
            reads: Framer::joined(),
            writes: Framer::joined(),
            streams: Map::default(),
            last_request: 0,
            uncertain: true,
            opts,
            lost_for: [0; 2],
        }
    }

    fn report(&self, s: Stream, outcome: Outcome, cx: &mut Cx<'_>) {
        let mut record: Record = if s.grpc {
            let method = s
                .request
                .target
                .strip_prefix('/')
                .unwrap_or_default()
                .to_owned();
            rpc::record(
                &rpc::Call {
                    ctx: s.ctx,
                    method,
                    authority: s.request.host,
                    // No status when the response was not seen whole.
                    status: s.grpc_status,
                    request_at: s.request_at,
                    end_at: s.end_at,
                    outcome,
                    reset: s.reset,
                    task: s.task,
                },
                self.role,
                cx.ends,
                cx.key.tgid,
            )
        } else {
            let answered = s.answered && s.status.is_some();
            let response = answered.then(|| Head {
                status: s.status.unwrap_or_default(),
                ..Head::default()
            });
            let mut r = http::record(
                &Exchange {
                    ctx: s.ctx,
                    request: s.request,
                    response,
                    request_at: s.request_at,
                    request_body: (s.request_ended && !s.request_body_unknown)
                        .then_some(s.request_body),
                    end_at: s.end_at,
                    response_body: s.response_ended.then_some(s.response_body),
                    outcome,
                    task: s.task,
                    version: "2",
                },
                self.role,
                cx.ends,
                &self.opts,
                cx.key.tgid,
            );
            if let (Some(code), Outcome::Complete) = (s.reset, outcome) {
                r.attributes
                    .push(("error.type", rpc::h2_error_name(code).into()));
                r.status = crate::spans::Status::Error("stream reset".to_owned());
            }
            r
        };
        if s.request_unknown {
            mark_incomplete(&mut record.attributes, "h2_request_fields_unknown");
        }
        if s.response_unknown {
            mark_incomplete(&mut record.attributes, "h2_response_fields_unknown");
        }
        if s.request_unknown || s.response_unknown {
            Stats::inc(&cx.stats.h2_fields_unknown);
        }
        cx.finish(record);
    }

    /// Ends the streams `which` picks with `outcome`.
    fn end_streams(&mut self, outcome: Outcome, cx: &mut Cx<'_>, which: impl Fn(&Stream) -> bool) {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| which(s))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(s) = self.streams.remove(&id) {
                Stats::inc(http1::unanswered_counter(cx.stats, outcome));
                self.report(s, outcome, cx);
            }
        }
    }
}

impl Protocol for H2Conn {
    fn name(&self) -> &'static str {
        "http2"
    }

    fn feed(&mut self, egress: bool, task: Task, seg: Segment<'_>, cx: &mut Cx<'_>) -> Verdict {
        let (seg_len, seg_bytes) = (seg.len, seg.bytes);
        let mut finished = Vec::new();
        let (framer, other) = if egress {
            (&mut self.writes, &mut self.reads)
        } else {
            (&mut self.reads, &mut self.writes)
        };
        if framer.is_lost() {
            // Found again only at the proof a joined connection needs: a
            // segment of whole frames with a header block this side's
            // role moves, decoded without guessing. What the table held
            // before is unknown, as on a joined connection.
            let waited = &mut self.lost_for[usize::from(egress)];
            *waited += 1;
            if joined_role(egress, seg.bytes) != Some(self.role) {
                let give_up = *waited >= RESYNC_WAIT;
                // This segment goes unread: whatever is open (streams the
                // other direction started meanwhile too) may have had its
                // answer in it.
                self.end_streams(Outcome::ResponseLost, cx, |_| true);
                return if give_up {
                    Verdict::Lost
                } else {
                    Verdict::Continue
                };
            }
            *waited = 0;
            *framer = Framer::joined();
            self.uncertain = true;
            Stats::inc(&cx.stats.h2_resyncs);
        }
        let mut side = Side {
            role: self.role,
            requests: egress == (self.role == Role::Client),
            task,
            streams: &mut self.streams,
            cx,
            finished: &mut finished,
            last_request: &mut self.last_request,
            uncertain: &mut self.uncertain,
            table_size: None,
        };
        framer.feed(seg, &mut side);
        if let Some(size) = side.table_size {
            // The sender's decoder bounds what the other direction encodes.
            other.set_table_limit(size);
        }
        let lost = framer.lost_why();
        for (s, outcome) in finished {
            self.report(s, outcome, cx);
        }
        let Some(why) = lost else {
            return Verdict::Continue;
        };
        // The framing is gone: whatever is open may have been answered
        // in the bytes that could not be framed. (It may be found again;
        // until then each segment it cannot read ends what is open.)
        log::debug!(
            "{:?}: HTTP/2 framing lost in the {} direction, in a segment of {} bytes starting like {}: {}",
            cx.key,
            if egress { "written" } else { "read" },
            seg_len,
            crate::conn::tracker::starts_like(seg_bytes),
            why
        );
        cx.stats.desync("http2");
        self.end_streams(Outcome::ResponseLost, cx, |_| true);
        // Kept, for a while, in case the frames are found again.
        Verdict::Continue
    }

    fn waiting_since(&self) -> Option<u64> {
        // Streams still waiting for an answer; a streaming call that was
        // answered may go on as long as it likes.
        self.streams
            .values()
            .filter(|s| !s.answered)
            .map(|s| s.request_at.exit_ns)
            .min()
    }

    fn time_out(&mut self, started_before_ns: u64, cx: &mut Cx<'_>) {
        self.end_streams(Outcome::TimedOut, cx, |s| {
            !s.answered && s.request_at.exit_ns < started_before_ns
        });
    }

    fn end_all(&mut self, outcome: Outcome, cx: &mut Cx<'_>) {
        if outcome == Outcome::Closed {
            // A client may close once it has the whole body its
            // `content-length` announced, without reading the END_STREAM
            // that follows (curl does): that response is complete.
            let whole: Vec<u32> = self
                .streams
                .iter()
                .filter(|(_, s)| {
                    // Not gRPC: its outcome is in the trailers.
                    !s.grpc
                        && s.answered
                        && s.request_ended
                        && s.reset.is_none()
                        && s.response_length == Some(s.response_body)
                })
                .map(|(id, _)| *id)
                .collect();
            for id in whole {
                if let Some(mut s) = self.streams.remove(&id) {
                    s.response_ended = true;
                    s.end_at = s.response_data_at;
                    self.report(s, Outcome::Complete, cx);
                }
            }
        }
        self.end_streams(outcome, cx, |_| true);
    }

    fn events_lost(&mut self) {
        // A lost segment may have held a header block: what it inserted
        // is unknown, so no older table entry can be placed any more.
        self.reads.table_lost();
        self.writes.table_lost();
        self.uncertain = true;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::conn::db::SqlOptions;
    use crate::conn::tracker::{Limits, Tracker};
    use crate::exchange::ConnKey;
    use crate::kernel::Deepen;
    use crate::spans::{SpanKind, Status, Value};
    use crate::test_support::{seg, uncopied};
    use zerospan_common::origin;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A header block of literal fields, not indexed, not Huffman-coded.
    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in fields {
            b.push(0);
            b.push(n.len() as u8);
            b.extend_from_slice(n.as_bytes());
            b.push(v.len() as u8);
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;

    fn headers(stream: u32, end: bool, fields: &[(&str, &str)]) -> Vec<u8> {
        let flags = END_HEADERS | if end { END_STREAM } else { 0 };
        frame(1, flags, stream, &block(fields))
    }

    fn data(stream: u32, end: bool, len: usize) -> Vec<u8> {
        frame(
            0,
            if end { END_STREAM } else { 0 },
            stream,
            &vec![b'x'; len],
        )
    }

    fn get(stream: u32, path: &str) -> Vec<u8> {
        headers(
            stream,
            true,
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "svc:8080"),
            ],
        )
    }

    fn grpc_call(stream: u32) -> Vec<u8> {
        let mut b = headers(
            stream,
            false,
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/demo.Echo/Say"),
                (":authority", "svc:8080"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        );
        b.extend(data(stream, true, 5));
        b
    }

    fn grpc_answer(stream: u32, status: &str) -> Vec<u8> {
        let mut b = headers(
            stream,
            false,
            &[(":status", "200"), ("content-type", "application/grpc")],
        );
        b.extend(data(stream, false, 7));
        b.extend(headers(stream, true, &[("grpc-status", status)]));
        b
    }

    fn settings() -> Vec<u8> {
        frame(4, 0, 0, &[0, 1, 0, 0, 0x10, 0])
    }

    /// The client's bytes: preface, SETTINGS, a GET on stream 1 and a
    /// gRPC call on stream 3.
    fn client_bytes() -> Vec<u8> {
        let mut c = PREFACE.to_vec();
        c.extend(settings());
        c.extend(get(1, "/a?x=1"));
        c.extend(grpc_call(3));
        c
    }

    /// The server's, answering stream 3 first.
    fn server_bytes() -> Vec<u8> {
        let mut s = settings();
        s.extend(frame(4, 1, 0, &[]));
        s.extend(grpc_answer(3, "5"));
        s.extend(headers(1, false, &[(":status", "404")]));
        s.extend(data(1, true, 3));
        s
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 8,
            request_timeout_ns: 1_000,
            idle_timeout_ns: 1_000_000,
            sql: SqlOptions {
                sanitize: true,
                user: false,
            },
        }
    }

    const KEY: ConnKey = ConnKey {
        tgid: 10,
        fd: 4,
        conn_id: 1,
    };

    fn orphans(t: &Tracker) -> u64 {
        t.stats()
            .h2_orphan_frames
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn tracker() -> Tracker {
        Tracker::new(limits(), Default::default(), Arc::default())
    }

    fn attr<'r>(r: &'r Record, key: &str) -> Option<&'r Value> {
        r.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn text<'r>(r: &'r Record, key: &str) -> Option<&'r str> {
        match attr(r, key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn int(r: &Record, key: &str) -> Option<i64> {
        match attr(r, key) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        }
    }

    fn by_name(mut v: Vec<Record>) -> Vec<Record> {
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    #[test]
    fn a_server_connection_gives_a_span_per_stream_split_at_every_byte() {
        let (c, s) = (client_bytes(), server_bytes());
        // From 8: the first read must show the preface's first octets.
        for cut in 8..=c.len() {
            let mut t = tracker();
            t.open(KEY, origin::ACCEPTED, None, None, 0);
            t.data(KEY, Task::thread(7), false, seg(&c[..cut], 10));
            t.data(KEY, Task::thread(7), false, seg(&c[cut..], 20));
            t.data(KEY, Task::thread(7), true, seg(&s, 30));
            let done = by_name(t.drain().collect());
            assert_eq!(done.len(), 2, "cut {cut}");
            let (http, grpc) = (&done[0], &done[1]);
            assert_eq!(http.name, "GET");
            assert_eq!(http.kind, SpanKind::Server);
            assert_eq!(text(http, "url.path"), Some("/a"));
            assert_eq!(text(http, "url.query"), Some("x=1"));
            assert_eq!(text(http, "network.protocol.version"), Some("2"));
            assert_eq!(text(http, "server.address"), Some("svc"));
            assert_eq!(int(http, "server.port"), Some(8080));
            assert_eq!(int(http, "http.response.status_code"), Some(404));
            assert_eq!(int(http, "http.response.body.size"), Some(3));
            assert_eq!(http.status, Status::Unset);
            assert_eq!(grpc.name, "demo.Echo/Say");
            assert_eq!(grpc.category, crate::spans::Category::Rpc);
            assert_eq!(text(grpc, "rpc.system.name"), Some("grpc"));
            assert_eq!(text(grpc, "rpc.method"), Some("demo.Echo/Say"));
            assert_eq!(text(grpc, "rpc.response.status_code"), Some("NOT_FOUND"));
            // NOT_FOUND is the caller's error, not the server's.
            assert_eq!(grpc.status, Status::Unset);
            assert_eq!(text(grpc, "error.type"), None);
            assert_eq!(grpc.end_ns, 31);
            assert!(attr(grpc, "zerospan.incomplete").is_none());
            // The call starts in the read that holds its HEADERS' first byte.
            let first_byte = c.len() - grpc_call(3).len();
            assert_eq!(grpc.start_ns, if first_byte < cut { 11 } else { 21 });
        }
    }

    /// An HTTP/1.1 request upgraded to h2c (curl --http2 on http://): the
    /// 101 and the server's first frames in one write, split at every
    /// byte; the upgrading request's response is stream 1's.
    #[test]
    fn an_upgrade_to_h2c_answers_the_request_on_stream_1() {
        let request =
            b"GET /up HTTP/1.1\r\nHost: svc:8080\r\nConnection: Upgrade, HTTP2-Settings\r\n\
            Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        let mut answer =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec();
        answer.extend(settings());
        answer.extend(headers(1, false, &[(":status", "200")]));
        answer.extend(data(1, true, 6));
        let mut client = PREFACE.to_vec();
        client.extend(settings());
        client.extend(get(3, "/next"));
        let mut next = headers(3, false, &[(":status", "404")]);
        next.extend(data(3, true, 0));
        for role in [Role::Server, Role::Client] {
            for cut in 0..=answer.len() {
                let mut t = tracker();
                let (how, reads_requests) = match role {
                    Role::Server => (origin::ACCEPTED, true),
                    Role::Client => (origin::CONNECTED, false),
                };
                let peer: SocketAddr = "127.0.0.1:8080".parse().unwrap();
                t.open(KEY, how, Some(peer), None, 0);
                // Requests move in the direction the role reads them.
                t.data(KEY, Task::thread(7), !reads_requests, seg(request, 10));
                t.data(
                    KEY,
                    Task::thread(7),
                    reads_requests,
                    seg(&answer[..cut], 20),
                );
                t.data(
                    KEY,
                    Task::thread(7),
                    reads_requests,
                    seg(&answer[cut..], 30),
                );
                t.data(KEY, Task::thread(7), !reads_requests, seg(&client, 40));
                t.data(KEY, Task::thread(7), reads_requests, seg(&next, 50));
                let mut done: Vec<Record> = t.drain().collect();
                done.sort_by_key(|r| r.start_ns);
                assert_eq!(done.len(), 2, "{role:?} cut {cut}");
                let (up, later) = (&done[0], &done[1]);
                assert_eq!(up.name, "GET");
                assert_eq!(text(up, "network.protocol.version"), Some("2"));
                assert_eq!(int(up, "http.response.status_code"), Some(200));
                assert_eq!(int(up, "http.response.body.size"), Some(6));
                // A server's request starts as its read returns, a
                // client's as its write begins.
                let start = |t| if role == Role::Server { t + 1 } else { t };
                assert_eq!(up.start_ns, start(10));
                assert!(attr(up, "zerospan.incomplete").is_none());
                assert_eq!(int(later, "http.response.status_code"), Some(404));
                assert_eq!(later.start_ns, start(40));
                if role == Role::Server {
                    assert_eq!(text(up, "url.path"), Some("/up"));
                    assert_eq!(text(later, "url.path"), Some("/next"));
                } else {
                    assert_eq!(text(up, "url.full"), Some("http://svc:8080/up"));
                    assert_eq!(text(later, "url.full"), Some("http://svc:8080/next"));
                }
                assert_eq!(
                    t.take_deepened(),
                    [(KEY, Deepen::Http2)],
                    "{role:?} cut {cut}"
                );
            }
        }
    }

    /// curl closes once it has the body `content-length` announced, not
    /// waiting for the END_STREAM after it: complete. A body short of it
    /// is not.
    #[test]
    fn a_close_after_the_whole_announced_body_is_no_error() {
        for (body, complete) in [(25, true), (24, false)] {
            let mut t = tracker();
            t.open(KEY, origin::CONNECTED, None, None, 0);
            let mut c = PREFACE.to_vec();
            c.extend(settings());
            c.extend(get(1, "/x"));
            t.data(KEY, Task::thread(7), true, seg(&c, 10));
            let mut answer = settings();
            answer.extend(headers(
                1,
                false,
                &[(":status", "200"), ("content-length", "25")],
            ));
            answer.extend(data(1, false, body));
            t.data(KEY, Task::thread(7), false, seg(&answer, 20));
            t.close(KEY);
            let done: Vec<Record> = t.drain().collect();
            assert_eq!(done.len(), 1);
            let r = &done[0];
            assert_eq!(int(r, "http.response.status_code"), Some(200));
            if complete {
                assert_eq!(r.status, Status::Unset);
                assert_eq!(int(r, "http.response.body.size"), Some(25));
                assert_eq!(r.end_ns, 21);
            } else {
                assert_eq!(text(r, "error.type"), Some("connection_closed"));
            }
        }
    }

    /// An empty body announced as such, then a close: the span ends at
    /// the response's HEADERS, not before them. A gRPC call that closes
    /// without trailers is not made complete by a `content-length`.
    #[test]
    fn a_close_after_an_empty_announced_body_and_grpc_without_trailers() {
        let mut t = tracker();
        t.open(KEY, origin::CONNECTED, None, None, 0);
        let mut c = PREFACE.to_vec();
        c.extend(settings());
        c.extend(get(1, "/empty"));
        c.extend(grpc_call(3));
        t.data(KEY, Task::thread(7), true, seg(&c, 10));
        let mut answer = settings();
        answer.extend(headers(
            1,
            false,
            &[(":status", "404"), ("content-length", "0")],
        ));
        answer.extend(headers(
            3,
            false,
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("content-length", "7"),
            ],
        ));
        answer.extend(data(3, false, 7));
        t.data(KEY, Task::thread(7), false, seg(&answer, 20));
        t.close(KEY);
        let done = by_name(t.drain().collect());
        assert_eq!(done.len(), 2);
        let (http, grpc) = (&done[0], &done[1]);
        assert_eq!(int(http, "http.response.status_code"), Some(404));
        assert_eq!(int(http, "http.response.body.size"), Some(0));
        assert_eq!(text(http, "error.type"), Some("404"));
        assert_eq!(http.end_ns, 21);
        assert_eq!(grpc.name, "demo.Echo/Say");
        assert!(matches!(grpc.status, Status::Error(_)), "{grpc:?}");
    }

    /// A 101 to WebSocket is not h2c: the exchange ends, and the rest is
    /// not ours.
    #[test]
    fn an_upgrade_to_something_else_stays_a_101() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        t.data(
            KEY,
            Task::thread(7),
            false,
            seg(
                b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
                10,
            ),
        );
        t.data(
            KEY,
            Task::thread(7),
            true,
            seg(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                20,
            ),
        );
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(int(&done[0], "http.response.status_code"), Some(101));
        assert_eq!(text(&done[0], "network.protocol.version"), Some("1.1"));
        assert!(t.take_deepened().is_empty());
    }

    #[test]
    fn a_client_connection_reports_grpc_errors_as_errors() {
        let mut t = tracker();
        t.open(KEY, origin::CONNECTED, None, None, 0);
        t.data(KEY, Task::thread(7), true, seg(&client_bytes(), 10));
        t.data(KEY, Task::thread(7), false, seg(&server_bytes(), 20));
        let done = by_name(t.drain().collect());
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].kind, SpanKind::Client);
        assert_eq!(text(&done[0], "url.full"), Some("http://svc:8080/a?x=1"));
        assert_eq!(int(&done[0], "http.response.status_code"), Some(404));
        assert!(matches!(done[0].status, Status::Error(_)));
        assert_eq!(done[1].kind, SpanKind::Client);
        assert_eq!(text(&done[1], "error.type"), Some("NOT_FOUND"));
        assert!(matches!(done[1].status, Status::Error(_)));
        assert_eq!(done[1].start_ns, 10);
        assert_eq!(done[1].end_ns, 21);
    }

    #[test]
    fn trailers_only_responses_and_server_errors() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        let mut c = PREFACE.to_vec();
        c.extend(grpc_call(1));
        c.extend(grpc_call(3));
        t.data(KEY, Task::thread(7), false, seg(&c, 10));
        let mut s = headers(
            1,
            true,
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "12"),
            ],
        );
        s.extend(grpc_answer(3, "0"));
        t.data(KEY, Task::thread(7), true, seg(&s, 20));
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 2);
        let unimplemented = done
            .iter()
            .find(|r| text(r, "rpc.response.status_code") == Some("UNIMPLEMENTED"))
            .unwrap();
        assert_eq!(text(unimplemented, "error.type"), Some("UNIMPLEMENTED"));
        assert!(matches!(unimplemented.status, Status::Error(_)));
        let ok = done
            .iter()
            .find(|r| text(r, "rpc.response.status_code") == Some("OK"))
            .unwrap();
        assert_eq!(ok.status, Status::Unset);
    }

    #[test]
    fn a_reset_stream_is_an_error_and_the_others_go_on() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        let mut c = PREFACE.to_vec();
        c.extend(grpc_call(1));
        c.extend(get(3, "/slow"));
        t.data(KEY, Task::thread(7), false, seg(&c, 10));
        // The client cancels stream 1 (CANCEL = 8).
        t.data(
            KEY,
            Task::thread(7),
            false,
            seg(&frame(3, 0, 1, &8u32.to_be_bytes()), 20),
        );
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(text(&done[0], "error.type"), Some("CANCEL"));
        assert!(matches!(done[0].status, Status::Error(_)));
        assert_eq!(done[0].end_ns, 21);
        // Stream 3 times out alone; a stream opened later does not.
        t.data(KEY, Task::thread(7), false, seg(&get(5, "/later"), 1500));
        t.sweep(1_200);
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(text(&done[0], "url.path"), Some("/slow"));
        assert_eq!(text(&done[0], "error.type"), Some("timeout"));
        t.data(
            KEY,
            Task::thread(7),
            true,
            seg(&[headers(5, true, &[(":status", "200")])].concat(), 1600),
        );
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(text(&done[0], "url.path"), Some("/later"));
        assert_eq!(int(&done[0], "http.response.status_code"), Some(200));
    }

    #[test]
    fn a_hundred_concurrent_streams_give_a_hundred_exact_spans() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        let mut c = PREFACE.to_vec();
        for i in 0..100u32 {
            c.extend(get(2 * i + 1, &format!("/item/{i}")));
        }
        t.data(KEY, Task::thread(7), false, seg(&c, 10));
        // Answered in reverse order, each with its own status and size.
        let mut s = Vec::new();
        for i in (0..100u32).rev() {
            let status = if i % 10 == 0 { "500" } else { "200" };
            s.extend(headers(2 * i + 1, false, &[(":status", status)]));
            s.extend(data(2 * i + 1, true, i as usize));
        }
        t.data(KEY, Task::thread(7), true, seg(&s, 20));
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 100);
        for r in &done {
            let path = text(r, "url.path").unwrap();
            let i: i64 = path.rsplit('/').next().unwrap().parse().unwrap();
            assert_eq!(int(r, "http.response.body.size"), Some(i));
            let want = if i % 10 == 0 { 500 } else { 200 };
            assert_eq!(int(r, "http.response.status_code"), Some(want));
        }
    }

    #[test]
    fn a_connection_joined_mid_stream_never_guesses_a_field() {
        let mut t = tracker();
        t.open(KEY, origin::PREEXISTING, None, None, 0);
        // A request whose `:path` and `:authority` are references into a
        // dynamic table filled before the agent attached (0xbe, 0xbf).
        let req = frame(1, END_HEADERS | END_STREAM, 41, &[0x82, 0x86, 0xbe, 0xbf]);
        t.data(KEY, Task::thread(7), false, seg(&req, 10));
        t.data(
            KEY,
            Task::thread(7),
            true,
            seg(&headers(41, true, &[(":status", "200")]), 20),
        );
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        let r = &done[0];
        assert_eq!(r.kind, SpanKind::Server);
        assert_eq!(text(r, "http.request.method"), Some("GET"));
        assert_eq!(text(r, "url.path"), None);
        assert_eq!(text(r, "server.address"), None);
        assert_eq!(int(r, "http.response.status_code"), Some(200));
        assert_eq!(
            text(r, "zerospan.incomplete"),
            Some("h2_request_fields_unknown")
        );
        assert_eq!(
            t.stats()
                .h2_fields_unknown
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // A response for a stream that opened before the agent: no span.
        t.data(
            KEY,
            Task::thread(7),
            true,
            seg(&headers(39, true, &[(":status", "200")]), 30),
        );
        assert_eq!(t.drain().count(), 0);
    }

    #[test]
    fn after_a_join_trailers_on_a_new_stream_open_no_request() {
        let mut t = tracker();
        t.open(KEY, origin::PREEXISTING, None, None, 0);
        // Joined at an answer: no request of it seen yet.
        let answer = headers(39, true, &[(":status", "200")]);
        t.data(KEY, Task::thread(7), true, seg(&answer, 2));
        assert_eq!(orphans(&t), 1);
        // Trailers of a request whose HEADERS were not read: decoded
        // whole, no `:method`.
        let trailers = headers(41, true, &[("x-checksum", "abc")]);
        t.data(KEY, Task::thread(7), false, seg(&trailers, 10));
        // A block of dynamic references only that ends its stream:
        // trailers or a request, it cannot be told.
        let unknown_end = |id| frame(1, END_HEADERS | END_STREAM, id, &[0xbe, 0xbf]);
        t.data(KEY, Task::thread(7), false, seg(&unknown_end(43), 20));
        for (id, at) in [(41, 30), (43, 40)] {
            let answer = headers(id, true, &[(":status", "200")]);
            t.data(KEY, Task::thread(7), true, seg(&answer, at));
        }
        assert_eq!(t.drain().count(), 0);
        assert_eq!(orphans(&t), 5);
        // The same unknown block leaving its stream open can only be a
        // request: a span, its fields marked unknown.
        let unknown_open = frame(1, END_HEADERS, 45, &[0xbe, 0xbf]);
        t.data(KEY, Task::thread(7), false, seg(&unknown_open, 50));
        t.data(KEY, Task::thread(7), false, seg(&data(45, true, 3), 55));
        let answer = headers(45, true, &[(":status", "204")]);
        t.data(KEY, Task::thread(7), true, seg(&answer, 60));
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(int(&done[0], "http.response.status_code"), Some(204));
        assert_eq!(
            text(&done[0], "zerospan.incomplete"),
            Some("h2_request_fields_unknown")
        );
        // A request's first HEADERS (`:method`) seen: every later new id
        // opened after it, in bytes read, so the ambiguous block is a
        // request now.
        t.data(KEY, Task::thread(7), false, seg(&get(47, "/b"), 70));
        t.data(KEY, Task::thread(7), false, seg(&unknown_end(49), 75));
        for (id, at) in [(47, 80), (49, 85)] {
            let answer = headers(id, true, &[(":status", "200")]);
            t.data(KEY, Task::thread(7), true, seg(&answer, at));
        }
        let mut done: Vec<Record> = t.drain().collect();
        done.sort_by_key(|r| text(r, "zerospan.incomplete").is_some());
        assert_eq!(done.len(), 2);
        assert_eq!(text(&done[0], "url.path"), Some("/b"));
        assert_eq!(
            text(&done[1], "zerospan.incomplete"),
            Some("h2_request_fields_unknown")
        );
        assert_eq!(orphans(&t), 5);
    }

    #[test]
    fn lost_events_and_a_resync_make_a_connection_uncertain() {
        // A block of dynamic references only that ends its stream, on a
        // new id: after a loss, trailers or a request, it cannot be told.
        let unknown_end = |id| frame(1, END_HEADERS | END_STREAM, id, &[0xbe, 0xbf]);
        let answer = |id| headers(id, true, &[(":status", "200")]);
        for lose in ["events", "framing"] {
            let mut t = tracker();
            t.open(KEY, origin::ACCEPTED, None, None, 0);
            let mut c = PREFACE.to_vec();
            c.extend(get(1, "/a"));
            t.data(KEY, Task::thread(7), false, seg(&c, 10));
            t.data(KEY, Task::thread(7), true, seg(&answer(1), 20));
            assert_eq!(t.drain().count(), 1);
            match lose {
                "events" => t.events_lost(),
                _ => {
                    // The answers' direction loses its framing and finds
                    // it again at an answer (to nothing open: an orphan).
                    t.data(KEY, Task::thread(7), true, uncopied(30, 25));
                    t.data(KEY, Task::thread(7), true, seg(&answer(5), 30));
                    assert_eq!(
                        t.stats()
                            .h2_resyncs
                            .load(std::sync::atomic::Ordering::Relaxed),
                        1
                    );
                }
            }
            let before = orphans(&t);
            t.data(KEY, Task::thread(7), false, seg(&unknown_end(41), 40));
            t.data(KEY, Task::thread(7), true, seg(&answer(41), 50));
            assert_eq!(t.drain().count(), 0, "after lost {lose}");
            assert_eq!(orphans(&t), before + 2, "after lost {lose}");
        }
    }

    #[test]
    fn an_unread_request_block_on_a_connection_seen_from_its_start_is_a_request() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        // A block past MAX_BLOCK, in HEADERS and two CONTINUATIONs, that
        // ends its stream: not read, and still stream 1's request.
        let pad = "a".repeat(100);
        let fields: Vec<(&str, &str)> = std::iter::repeat_n(("x-pad", pad.as_str()), 330).collect();
        let big = block(&fields);
        assert!(big.len() > zerospan_protocols::h2::MAX_BLOCK);
        let mut c = PREFACE.to_vec();
        c.extend(frame(1, END_STREAM, 1, &big[..16000]));
        c.extend(frame(9, 0, 1, &big[16000..32000]));
        c.extend(frame(9, END_HEADERS, 1, &big[32000..]));
        t.data(KEY, Task::thread(7), false, seg(&c, 10));
        t.data(
            KEY,
            Task::thread(7),
            true,
            seg(&headers(1, true, &[(":status", "200")]), 20),
        );
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(int(&done[0], "http.response.status_code"), Some(200));
        assert_eq!(
            text(&done[0], "zerospan.incomplete"),
            Some("h2_request_fields_unknown")
        );
    }

    #[test]
    fn garbage_after_the_preface_loses_the_connection_without_a_span() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        let mut c = PREFACE.to_vec();
        c.extend(get(1, "/a"));
        t.data(KEY, Task::thread(7), false, seg(&c, 10));
        // A CONTINUATION with no block open: a protocol error.
        t.data(
            KEY,
            Task::thread(7),
            false,
            seg(&frame(9, END_HEADERS, 1, &[0x82]), 20),
        );
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(
            text(&done[0], "zerospan.incomplete"),
            Some("response_unparsed")
        );
        // Given up once no header block came for RESYNC_WAIT segments.
        for i in 0..RESYNC_WAIT {
            let junk = frame(9, END_HEADERS, 1, &[0x82]);
            t.data(KEY, Task::thread(7), false, seg(&junk, 30 + u64::from(i)));
        }
        assert_eq!(t.take_evictions(), vec![KEY]);
        let mut x = 7u32;
        for _ in 0..300 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let mut t = tracker();
            t.open(KEY, origin::PREEXISTING, None, None, 0);
            t.data(KEY, Task::thread(7), false, seg(&junk, 10));
            t.data(KEY, Task::thread(7), true, seg(&junk, 20));
            assert_eq!(t.drain().count(), 0);
        }
    }

    #[test]
    fn same_host_links_follow_the_stream_not_the_connection() {
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let server: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let ck = KEY;
        let sk = ConnKey {
            tgid: 20,
            fd: 9,
            conn_id: 2,
        };
        let mut t = tracker();
        t.open(ck, origin::CONNECTED, Some(server), Some(client), 0);
        t.open(sk, origin::ACCEPTED, Some(client), Some(server), 0);
        let mut c = PREFACE.to_vec();
        c.extend(get(1, "/one"));
        c.extend(get(3, "/three"));
        t.data(ck, Task::thread(7), true, seg(&c, 10));
        // The server reads the streams; it answers 3 first, then 1.
        t.data(sk, Task::thread(8), false, seg(&c, 12));
        let answers = [
            headers(3, true, &[(":status", "200")]),
            headers(1, true, &[(":status", "200")]),
        ]
        .concat();
        t.data(sk, Task::thread(8), true, seg(&answers, 20));
        t.data(ck, Task::thread(7), false, seg(&answers, 22));
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 4);
        let find = |kind: SpanKind, path: &str| {
            done.iter()
                .find(|r| {
                    r.kind == kind
                        && (text(r, "url.path") == Some(path)
                            || text(r, "url.full").is_some_and(|u| u.ends_with(path)))
                })
                .unwrap()
        };
        for path in ["/one", "/three"] {
            let (cl, sv) = (find(SpanKind::Client, path), find(SpanKind::Server, path));
            assert_eq!(sv.ctx.parent_span_id, cl.ctx.span_id, "{path}");
            assert_eq!(sv.ctx.trace_id, cl.ctx.trace_id, "{path}");
        }
    }

    #[test]
    fn a_stream_already_over_is_not_a_new_request() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        let mut c = PREFACE.to_vec();
        c.extend(headers(
            3,
            false,
            &[(":method", "POST"), (":scheme", "http"), (":path", "/up")],
        ));
        t.data(KEY, Task::thread(7), false, seg(&c, 10));
        t.sweep(2_000);
        assert_eq!(t.drain().count(), 1, "timed out");
        // Its trailers, late, and a HEADERS on a lower id: no new span.
        t.data(
            KEY,
            Task::thread(7),
            false,
            seg(&headers(3, true, &[("x-sum", "1")]), 2_100),
        );
        t.data(KEY, Task::thread(7), false, seg(&get(1, "/old"), 2_200));
        t.data(
            KEY,
            Task::thread(7),
            true,
            seg(&headers(1, true, &[(":status", "200")]), 2_300),
        );
        t.close(KEY);
        assert_eq!(t.drain().count(), 0);
        assert_eq!(
            t.stats()
                .h2_orphan_frames
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }

    #[test]
    fn after_lost_events_table_references_are_unknown() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        // `:authority` with incremental indexing: entry 62.
        let mut first = vec![0x82, 0x86, 0x84, 0x41, 8];
        first.extend_from_slice(b"svc:8080");
        let mut c = PREFACE.to_vec();
        c.extend(frame(1, END_HEADERS | END_STREAM, 1, &first));
        t.data(KEY, Task::thread(7), false, seg(&c, 10));
        t.data(
            KEY,
            Task::thread(7),
            true,
            seg(&headers(1, true, &[(":status", "200")]), 20),
        );
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(text(&done[0], "server.address"), Some("svc"));
        // The kernel dropped events: a block may be missing, so 62 may be
        // another entry now.
        t.events_lost();
        t.data(
            KEY,
            Task::thread(7),
            false,
            seg(
                &frame(1, END_HEADERS | END_STREAM, 3, &[0x82, 0x86, 0x84, 0xbe]),
                30,
            ),
        );
        t.data(
            KEY,
            Task::thread(7),
            true,
            seg(&headers(3, true, &[(":status", "200")]), 40),
        );
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(text(&done[0], "server.address"), None);
        assert_eq!(
            text(&done[0], "zerospan.incomplete"),
            Some("h2_request_fields_unknown")
        );
    }

    #[test]
    fn a_joined_direction_that_is_mid_frame_is_lost_not_misread() {
        let mut t = tracker();
        t.open(KEY, origin::PREEXISTING, None, None, 0);
        let req = frame(1, END_HEADERS | END_STREAM, 41, &[0x82, 0x86, 0x84]);
        t.data(KEY, Task::thread(7), false, seg(&req, 10));
        // The other direction starts inside a DATA payload: "frame" type
        // 0x78 of a 7.9 MB length.
        t.data(KEY, Task::thread(7), true, seg(&[b'x'; 40], 20));
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(
            text(&done[0], "zerospan.incomplete"),
            Some("response_unparsed")
        );
        // Kept a while, in case whole frames come again; given up after
        // RESYNC_WAIT segments without them.
        assert!(t.take_evictions().is_empty());
        for i in 0..RESYNC_WAIT {
            t.data(
                KEY,
                Task::thread(7),
                true,
                seg(&[b'x'; 40], 30 + u64::from(i)),
            );
        }
        assert_eq!(t.take_evictions(), vec![KEY]);
        assert_eq!(t.drain().count(), 0);
    }

    #[test]
    fn joined_role_takes_a_last_data_frame_cut_short_and_nothing_else() {
        let mut b = get(1, "/x");
        b.extend(&frame(0, 0, 1, &[b'z'; 100])[..40]);
        assert_eq!(joined_role(false, &b), Some(Role::Server));
        let mut h = get(1, "/x");
        h.extend(&get(3, "/y")[..12]);
        assert_eq!(joined_role(false, &h), None);
        // DATA alone proves nothing.
        assert_eq!(
            joined_role(false, &frame(0, 0, 1, &[b'z'; 100])[..40]),
            None
        );
    }

    #[test]
    fn streams_started_while_the_answers_are_unread_end_as_lost() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        let mut c = PREFACE.to_vec();
        c.extend(get(1, "/one"));
        t.data(KEY, Task::thread(7), false, seg(&c, 10));
        // The answers' direction loses its framing...
        t.data(KEY, Task::thread(7), true, uncopied(30, 20));
        // ...a request comes, and its answer is in a write it cannot read.
        t.data(KEY, Task::thread(7), false, seg(&get(3, "/two"), 30));
        t.data(KEY, Task::thread(7), true, seg(&[0xee; 20], 40));
        let mut done: Vec<Record> = t.drain().collect();
        done.sort_by_key(|r| text(r, "url.path").map(str::to_owned));
        let got: Vec<(Option<&str>, Option<&str>)> = done
            .iter()
            .map(|r| (text(r, "url.path"), text(r, "zerospan.incomplete")))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("/one"), Some("response_unparsed")),
                (Some("/two"), Some("response_unparsed"))
            ]
        );
        // Found again: stream 3's trailers are an orphan, not its end.
        let mut w = headers(3, true, &[("grpc-status", "0")]);
        w.extend(headers(5, true, &[(":status", "200")]));
        t.data(KEY, Task::thread(7), true, seg(&w, 50));
        assert_eq!(t.drain().count(), 0);
    }

    #[test]
    fn a_direction_that_lost_its_framing_finds_it_again_at_a_header_block() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        let mut c = PREFACE.to_vec();
        c.extend(get(1, "/before"));
        t.data(KEY, Task::thread(7), false, seg(&c, 10));
        // A frame header the probes did not copy: the request direction
        // is lost, and stream 1 with it.
        t.data(KEY, Task::thread(7), false, uncopied(30, 20));
        let done: Vec<Record> = t.drain().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(
            text(&done[0], "zerospan.incomplete"),
            Some("response_unparsed")
        );
        // A segment that starts mid-frame is not taken...
        let mut mid = get(3, "/mid")[4..].to_vec();
        mid.extend(get(5, "/mid"));
        t.data(KEY, Task::thread(7), false, seg(&mid, 30));
        // ...whole frames with a request's header block are: its stream
        // and the next are spans again, answered on the other side.
        let mut again = get(7, "/again");
        again.extend(get(9, "/and-again"));
        t.data(KEY, Task::thread(7), false, seg(&again, 40));
        let mut answers = headers(7, true, &[(":status", "200")]);
        answers.extend(headers(9, true, &[(":status", "404")]));
        // The answer to stream 1, lost with its request, is an orphan.
        answers.extend(headers(1, true, &[(":status", "200")]));
        t.data(KEY, Task::thread(7), true, seg(&answers, 50));
        let mut done: Vec<Record> = t.drain().collect();
        done.sort_by_key(|r| text(r, "url.path").map(str::to_owned));
        let got: Vec<(Option<&str>, Option<i64>)> = done
            .iter()
            .map(|r| (text(r, "url.path"), int(r, "http.response.status_code")))
            .collect();
        assert_eq!(
            got,
            vec![(Some("/again"), Some(200)), (Some("/and-again"), Some(404))]
        );
        let stats = t.stats();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        assert_eq!(stats.h2_resyncs.load(relaxed), 1);
        assert_eq!(stats.h2_orphan_frames.load(relaxed), 1);
        assert!(t.take_evictions().is_empty());
    }

    #[test]
    fn streams_a_goaway_refused_end_as_errors() {
        let mut t = tracker();
        t.open(KEY, origin::ACCEPTED, None, None, 0);
        let mut c = PREFACE.to_vec();
        c.extend(get(1, "/done"));
        c.extend(get(3, "/refused"));
        t.data(KEY, Task::thread(7), false, seg(&c, 10));
        // The server answers 1, then says it processed nothing past it.
        let mut s = headers(1, true, &[(":status", "200")]);
        s.extend(frame(7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
        t.data(KEY, Task::thread(7), true, seg(&s, 20));
        let mut done: Vec<Record> = t.drain().collect();
        done.sort_by_key(|r| text(r, "url.path").map(str::to_owned));
        assert_eq!(done.len(), 2);
        assert_eq!(text(&done[0], "url.path"), Some("/done"));
        assert_eq!(done[0].status, Status::Unset);
        assert_eq!(text(&done[1], "url.path"), Some("/refused"));
        assert_eq!(text(&done[1], "error.type"), Some("REFUSED_STREAM"));
        assert!(matches!(done[1].status, Status::Error(_)));
    }
}
