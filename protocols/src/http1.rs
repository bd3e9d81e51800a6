//! HTTP/1.0 and HTTP/1.1 message framing over one direction of a connection.
//!
//! The probes see each syscall buffer as a *segment*: its true length, and a
//! captured prefix of it. The framer walks those segments as one byte stream
//! where some bytes are visible and the rest are only counted. Bodies are
//! skipped by count, so a multi-megabyte download needs no captured bytes at
//! all. Only heads and chunk-size lines must be visible; when one falls in an
//! uncaptured stretch the framer is *lost* and resynchronises on the next
//! segment that starts with a start line.
//!
//! Pure: bytes in, [`Sink`] callbacks out. No I/O, no clocks, no panics, and
//! memory bounded by [`MAX_HEAD`].

use std::fmt;

use crate::stream::{Segment, Stamp};

/// Largest message head (start line and headers) the framer buffers.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers one head may carry.
const MAX_HEADERS: usize = 96;
/// Longest request target kept; longer ones are cut (and marked by `…`).
const MAX_TARGET: usize = 2048;
/// Longest value kept for the headers we record.
const MAX_VALUE: usize = 512;
/// Longest method token accepted when sniffing a start line.
const MAX_METHOD: usize = 24;

/// Which kind of message this direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// The parts of a message head that spans need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Request method as sent (requests only).
    pub method: String,
    /// Request target as sent, possibly cut to `MAX_TARGET` (requests only).
    pub target: String,
    /// Response status code (responses only).
    pub status: u16,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// A request whose body length is ambiguous: `Content-Length` with
    /// `Transfer-Encoding`, or `Content-Length`s that disagree. Servers
    /// answer it with an error and close (RFC 9112 §6.3, RFC 9110 §8.6), so
    /// nothing after it on the connection is a request they read.
    pub framing_conflict: bool,
    /// Only the request line is known: the rest of the head could not be
    /// read (too long for the capture or the bound, too many headers, a
    /// malformed field). Its headers are unknown, not absent.
    pub partial: bool,
    /// `Upgrade` names `h2c`: a request asking to switch to cleartext
    /// HTTP/2, or the 101 response that switches (RFC 7540 §3.2).
    pub upgrade_h2c: bool,
}

impl Head {
    pub fn protocol_version(&self) -> &'static str {
        if self.minor_version == 0 {
            "1.0"
        } else {
            "1.1"
        }
    }
}

/// Why the framer lost its place in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desync {
    /// The bytes do not look like HTTP/1 at all.
    NotHttp,
    /// A head was malformed or larger than [`MAX_HEAD`].
    BadHead,
    /// A head or chunk-size line fell in bytes the probes did not capture.
    Uncaptured,
    /// A chunk-size line was malformed.
    BadChunk,
}

impl fmt::Display for Desync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Desync::NotHttp => "not HTTP/1",
            Desync::BadHead => "malformed or oversized head",
            Desync::Uncaptured => "head or chunk framing not captured",
            Desync::BadChunk => "malformed chunk size",
        })
    }
}

/// Receives what the framer finds, in stream order.
pub trait Sink {
    /// A complete head. `at` is the segment holding its first byte.
    fn on_head(&mut self, head: Head, at: Stamp);
    /// The message whose head was last reported is complete. `at` is the
    /// segment holding its last byte; `body_bytes` is its payload size, or
    /// `None` when sync was lost inside the body and its size is unknown.
    fn on_end(&mut self, body_bytes: Option<u64>, at: Stamp);
    /// Responses only: does the response just reported by `on_head` answer
    /// a HEAD request (and so carry no body, whatever its headers say)?
    fn answers_head_request(&mut self) -> bool {
        false
    }
    /// The framer lost sync. Any open message ends at the next head, or when
    /// the owner calls [`Framer::finish_open`].
    fn on_desync(&mut self, _why: Desync) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to LF.
    Ext {
        value: u64,
    },
    /// Expecting LF after CR of the size line.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line.
    TrailerStart,
    /// Inside a trailer line, up to LF.
    TrailerLine,
    /// Saw CR at the start of a trailer line; LF ends the message.
    TrailerEndLf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    /// Buffering a head.
    Head,
    /// Content-Length body.
    Body {
        remaining: u64,
    },
    Chunked(Chunk),
    /// Body delimited by connection close.
    UntilClose,
    /// Out of sync; `open` says a message is still unfinished.
    Lost {
        open: bool,
    },
    /// The connection stopped carrying HTTP/1 (after a 101 upgrade).
    Done,
}

/// Frames one direction of one connection.
#[derive(Debug)]
pub struct Framer {
    kind: Kind,
    state: State,
    head: Vec<u8>,
    /// Where the search for the end of the head resumes.
    scanned: usize,
    head_at: Stamp,
    body_bytes: u64,
    last_at: Stamp,
    /// Whether any message was ever framed: lets the owner tell "not HTTP"
    /// from "HTTP that lost sync".
    seen_message: bool,
    last_desync: Option<Desync>,
    /// See [`Framer::stopped_at`].
    stopped_at: Option<usize>,
}

impl Framer {
    pub fn new(kind: Kind) -> Self {
        Framer {
            kind,
            state: State::Idle,
            head: Vec::new(),
            scanned: 0,
            head_at: Stamp::default(),
            body_bytes: 0,
            last_at: Stamp::default(),
            seen_message: false,
            last_desync: None,
            stopped_at: None,
        }
    }

    /// True once a head has been framed on this direction.
    pub fn seen_message(&self) -> bool {
        self.seen_message
    }

    /// True while a message has started but not ended.
    pub fn is_open(&self) -> bool {
        match self.state {
            State::Idle | State::Done => false,
            State::Head => !self.head.is_empty(),
            State::Lost { open } => open,
            _ => true,
        }
    }

    /// Why sync was last lost, if it ever was.
    pub fn last_desync(&self) -> Option<Desync> {
        self.last_desync
    }

    /// True while out of sync, waiting for a start line.
    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost { .. })
    }

    /// True when the stream stopped carrying HTTP/1.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// When the stream stopped carrying HTTP/1 in the segment just fed
    /// (after a 101), where in its captured bytes the other protocol's
    /// begin.
    pub fn stopped_at(&self) -> Option<usize> {
        self.stopped_at
    }

    /// Ends an open message whose end cannot be framed (lost sync, or a body
    /// delimited by close) at the last byte seen. Returns whether it did.
    pub fn finish_open(&mut self, sink: &mut impl Sink) -> bool {
        match self.state {
            State::UntilClose | State::Lost { open: true } => {
                let size = (self.state == State::UntilClose).then_some(self.body_bytes);
                sink.on_end(size, self.last_at);
                self.state = match self.state {
                    State::UntilClose => State::Idle,
                    _ => State::Lost { open: false },
                };
                true
            }
            _ => false,
        }
    }

    /// Feeds the next segment of this direction.
    pub fn feed(&mut self, seg: Segment<'_>, sink: &mut impl Sink) {
        self.stopped_at = None;
        if self.state == State::Done {
            self.last_at = seg.stamp;
            return;
        }
        let captured = seg.bytes.len().min(seg.len as usize);
        let bytes = &seg.bytes[..captured];
        let mut unseen = seg.len - captured as u64;
        if let State::Lost { open } = self.state {
            if looks_like_start(self.kind, bytes) {
                if open {
                    sink.on_end(None, self.last_at);
                }
                self.state = State::Idle;
            } else {
                self.last_at = seg.stamp;
                return;
            }
        }
        let mut pos = 0;
        while pos < bytes.len() {
            pos += self.step(&bytes[pos..], seg.stamp, sink);
            if self.state == State::Done {
                self.stopped_at = Some(pos);
            }
            if matches!(self.state, State::Lost { .. } | State::Done) {
                // The rest of the segment still moves the open message's end.
                self.last_at = seg.stamp;
                return;
            }
        }
        if unseen > 0 {
            self.last_at = seg.stamp;
            match &mut self.state {
                State::Body { remaining } => {
                    let take = unseen.min(*remaining);
                    *remaining -= take;
                    self.body_bytes += take;
                    unseen -= take;
                    if *remaining == 0 {
                        self.end(sink);
                        if unseen > 0 {
                            self.lose(Desync::Uncaptured, sink);
                        }
                    }
                }
                State::Chunked(_) => self.skip_unseen_chunk_bytes(unseen, sink),
                State::UntilClose => self.body_bytes += unseen,
                State::Done => {}
                _ => self.lose(Desync::Uncaptured, sink),
            }
        }
    }

    /// Skips uncaptured bytes of a chunked body. Chunk data is skipped by
    /// count, and the CRLF that must follow it is taken on trust: a server
    /// writing one chunk per write (size line, data, CRLF) then stays in
    /// sync with only the size line captured. A size line that falls in
    /// unseen bytes cannot be read, and sync is lost.
    fn skip_unseen_chunk_bytes(&mut self, mut unseen: u64, sink: &mut impl Sink) {
        while unseen > 0 {
            let State::Chunked(chunk) = &mut self.state else {
                return;
            };
            match chunk {
                Chunk::Data { remaining } => {
                    let take = unseen.min(*remaining);
                    *remaining -= take;
                    self.body_bytes += take;
                    unseen -= take;
                    if *remaining == 0 {
                        *chunk = Chunk::DataCr;
                    }
                }
                Chunk::DataCr => {
                    *chunk = Chunk::DataLf;
                    unseen -= 1;
                }
                Chunk::DataLf => {
                    *chunk = Chunk::Size {
                        value: 0,
                        digits: 0,
                    };
                    unseen -= 1;
                }
                _ => return self.lose(Desync::Uncaptured, sink),
            }
        }
    }

    /// Consumes a prefix of `bytes` and returns how many bytes it took.
    fn step(&mut self, bytes: &[u8], at: Stamp, sink: &mut impl Sink) -> usize {
        self.last_at = at;
        match self.state {
            State::Idle => {
                self.head.clear();
                self.scanned = 0;
                self.head_at = at;
                self.body_bytes = 0;
                self.state = State::Head;
                0
            }
            State::Head => self.step_head(bytes, sink),
            State::Body { remaining } => {
                let take = remaining.min(bytes.len() as u64);
                self.body_bytes += take;
                self.state = State::Body {
                    remaining: remaining - take,
                };
                if remaining == take {
                    self.end(sink);
                }
                take as usize
            }
            State::Chunked(c) => self.step_chunked(c, bytes, sink),
            State::UntilClose => {
                self.body_bytes += bytes.len() as u64;
                bytes.len()
            }
            State::Lost { .. } | State::Done => bytes.len(),
        }
    }

    fn step_head(&mut self, bytes: &[u8], sink: &mut impl Sink) -> usize {
        let room = MAX_HEAD - self.head.len();
        let take = bytes.len().min(room);
        self.head.extend_from_slice(&bytes[..take]);
        if !plausible_start(self.kind, &self.head) {
            let why = if self.seen_message {
                Desync::BadHead
            } else {
                Desync::NotHttp
            };
            self.lose(why, sink);
            return take;
        }
        let Some(end) = find_head_end(&self.head, self.scanned) else {
            self.scanned = self.head.len().saturating_sub(3);
            if self.head.len() >= MAX_HEAD {
                self.lose(Desync::BadHead, sink);
            }
            return take;
        };
        // Bytes after the head belong to the body or the next message.
        let overshoot = self.head.len() - end;
        let used = take - overshoot;
        match parse_head(self.kind, &self.head[..end]) {
            Some(head) => self.start_body(head, sink),
            None => {
                // A request line that parses makes it HTTP with a bad head
                // (what a server answers with 400), not something else.
                let why = if self.seen_message || request_line(self.kind, &self.head).is_some() {
                    Desync::BadHead
                } else {
                    Desync::NotHttp
                };
                self.lose(why, sink);
            }
        }
        used
    }

    fn start_body(&mut self, head: Head, sink: &mut impl Sink) {
        let bodiless_response = self.kind == Kind::Response
            && (head.status < 200 || head.status == 204 || head.status == 304);
        let interim = self.kind == Kind::Response && (100..200).contains(&head.status);
        if interim {
            if head.status == 101 {
                // The exchange is complete; the connection now carries
                // another protocol (WebSocket, h2c), which is not ours.
                self.seen_message = true;
                sink.on_head(head, self.head_at);
                sink.on_end(Some(0), self.last_at);
                self.state = State::Done;
            } else {
                // 100 Continue and friends precede the real response.
                self.state = State::Idle;
            }
            return;
        }
        let chunked = head.chunked;
        let length = head.content_length;
        let conflict = head.framing_conflict;
        self.seen_message = true;
        sink.on_head(head, self.head_at);
        if conflict {
            // Its body's length is unknown, and the server reads no request
            // after it: whatever follows (a smuggled request, say) is never
            // framed as one.
            sink.on_end(None, self.last_at);
            self.state = State::Done;
            return;
        }
        // Asked after `on_head`, which is when the sink decides which
        // request this response answers.
        let answers_head = self.kind == Kind::Response && sink.answers_head_request();
        self.state = if bodiless_response || answers_head {
            State::Body { remaining: 0 }
        } else if chunked {
            State::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            })
        } else if let Some(n) = length {
            State::Body { remaining: n }
        } else if self.kind == Kind::Response {
            State::UntilClose
        } else {
            State::Body { remaining: 0 }
        };
        if self.state == (State::Body { remaining: 0 }) {
            self.end(sink);
        }
    }

    fn step_chunked(&mut self, c: Chunk, bytes: &[u8], sink: &mut impl Sink) -> usize {
        let b = bytes[0];
        let next = match c {
            Chunk::Data { remaining } => {
                let take = remaining.min(bytes.len() as u64);
                self.body_bytes += take;
                self.state = State::Chunked(if take == remaining {
                    Chunk::DataCr
                } else {
                    Chunk::Data {
                        remaining: remaining - take,
                    }
                });
                return take as usize;
            }
            Chunk::Size { value, digits } => match hex_value(b) {
                Some(d) if digits < 15 => Chunk::Size {
                    value: value << 4 | d as u64,
                    digits: digits + 1,
                },
                None if digits > 0 && (b == b';' || b == b' ' || b == b'\t') => {
                    Chunk::Ext { value }
                }
                None if digits > 0 && b == b'\r' => Chunk::SizeLf { value },
                None if digits > 0 && b == b'\n' => return self.chunk_size_done(value),
                _ => {
                    self.lose(Desync::BadChunk, sink);
                    return 1;
                }
            },
            Chunk::Ext { value } => match b {
                b'\n' => return self.chunk_size_done(value),
                _ => Chunk::Ext { value },
            },
            Chunk::SizeLf { value } => {
                if b == b'\n' {
                    return self.chunk_size_done(value);
                }
                self.lose(Desync::BadChunk, sink);
                return 1;
            }
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                b'\n' => Chunk::Size {
                    value: 0,
                    digits: 0,
                },
                _ => {
                    self.lose(Desync::BadChunk, sink);
                    return 1;
                }
            },
            Chunk::DataLf => {
                if b != b'\n' {
                    self.lose(Desync::BadChunk, sink);
                    return 1;
                }
                Chunk::Size {
                    value: 0,
                    digits: 0,
                }
            }
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::TrailerEndLf,
                b'\n' => {
                    self.end(sink);
                    return 1;
                }
                _ => Chunk::TrailerLine,
            },
            Chunk::TrailerLine => match b {
                b'\n' => Chunk::TrailerStart,
                _ => Chunk::TrailerLine,
            },
            Chunk::TrailerEndLf => {
                if b == b'\n' {
                    self.end(sink);
                    return 1;
                }
                Chunk::TrailerLine
            }
        };
        self.state = State::Chunked(next);
        1
    }

    fn chunk_size_done(&mut self, value: u64) -> usize {
        self.state = State::Chunked(if value == 0 {
            Chunk::TrailerStart
        } else {
            Chunk::Data { remaining: value }
        });
        1
    }

    fn end(&mut self, sink: &mut impl Sink) {
        sink.on_end(Some(self.body_bytes), self.last_at);
        self.state = State::Idle;
    }

    fn lose(&mut self, why: Desync, sink: &mut impl Sink) {
        // A request whose head cannot be read whole still happened, and a
        // server's error answers it: reported with what its request line
        // says, marked partial, its body unknown.
        if self.state == State::Head && why != Desync::NotHttp {
            if let Some(head) = request_line(self.kind, &self.head) {
                self.seen_message = true;
                sink.on_head(head, self.head_at);
                sink.on_end(None, self.last_at);
            }
        }
        let open = matches!(
            self.state,
            State::Body { .. } | State::Chunked(_) | State::UntilClose
        );
        self.state = State::Lost { open };
        self.last_desync = Some(why);
        sink.on_desync(why);
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The request line at the start of a request head that could not be
/// parsed whole, as a partial head: only when that line is complete and
/// valid (method, target, HTTP/1.x), never from a guess.
fn request_line(kind: Kind, buf: &[u8]) -> Option<Head> {
    if kind != Kind::Request {
        return None;
    }
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let mut line = buf[..end + 2].to_vec();
    line.extend_from_slice(b"\r\n");
    let mut head = parse_head(kind, &line)?;
    head.partial = true;
    Some(head)
}

/// Could `buf` be the beginning of a start line of this kind?
fn plausible_start(kind: Kind, buf: &[u8]) -> bool {
    match kind {
        Kind::Response => {
            const PREFIX: &[u8] = b"HTTP/1.";
            let n = buf.len().min(PREFIX.len());
            buf[..n] == PREFIX[..n]
        }
        Kind::Request => {
            let method_len = buf.iter().position(|&b| b == b' ');
            let method = &buf[..method_len.unwrap_or(buf.len())];
            let token_ok = method.len() <= MAX_METHOD
                && method
                    .iter()
                    .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
            token_ok && (method_len.is_none() || !method.is_empty())
        }
    }
}

/// Does this segment begin with an HTTP/1 request line?
pub fn starts_request(bytes: &[u8]) -> bool {
    looks_like_start(Kind::Request, bytes)
}

/// Does this segment start a new message? Used to resynchronise.
fn looks_like_start(kind: Kind, bytes: &[u8]) -> bool {
    match kind {
        Kind::Response => bytes.starts_with(b"HTTP/1."),
        Kind::Request => {
            bytes.len() >= 4
                && bytes.iter().position(|&b| b == b' ').is_some_and(|n| {
                    n > 0 && n <= MAX_METHOD && plausible_start(kind, &bytes[..n + 1])
                })
        }
    }
}

/// Index just past the blank line that ends a head, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

fn clip(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > max {
        s.push('…');
    }
    s
}

/// Parses a complete head. `None` when it is not valid HTTP/1.
pub fn parse_head(kind: Kind, buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = Head::default();
    let parsed_headers: &[httparse::Header<'_>] = match kind {
        Kind::Request => {
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(_)) => {}
                _ => return None,
            }
            head.method = req.method?.to_owned();
            head.target = clip(req.path?.as_bytes(), MAX_TARGET);
            head.minor_version = req.version?;
            req.headers
        }
        Kind::Response => {
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(_)) => {}
                _ => return None,
            }
            head.status = resp.code?;
            head.minor_version = resp.version?;
            resp.headers
        }
    };
    for h in parsed_headers {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(value).ok()?.trim();
            let n: u64 = text.parse().ok()?;
            // Conflicting lengths make framing ambiguous: a response is
            // not framed by guess; a request is the server's to reject.
            if head.content_length.is_some_and(|old| old != n) {
                if kind == Kind::Response {
                    return None;
                }
                head.framing_conflict = true;
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(&[]);
            head.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_h2c |= value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
        } else if name.eq_ignore_ascii_case("host") {
            head.host.get_or_insert_with(|| clip(value, MAX_VALUE));
        } else if name.eq_ignore_ascii_case("user-agent") {
            head.user_agent
                .get_or_insert_with(|| clip(value, MAX_VALUE));
        } else if name.eq_ignore_ascii_case("traceparent") {
            head.traceparent
                .get_or_insert_with(|| clip(value, MAX_VALUE));
        } else if name.eq_ignore_ascii_case("tracestate") {
            head.tracestate
                .get_or_insert_with(|| clip(value, MAX_VALUE));
        }
    }
    // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); in a
    // request, having both is an error the server must close after.
    if head.chunked {
        head.framing_conflict |= kind == Kind::Request && head.content_length.is_some();
        head.content_length = None;
    }
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Head(Head, u64),
        End(Option<u64>, u64),
        Desync(Desync),
    }

    #[derive(Default)]
    struct Rec {
        events: Vec<Ev>,
        head_requests: Vec<bool>,
    }

    impl Sink for Rec {
        fn on_head(&mut self, head: Head, at: Stamp) {
            self.events.push(Ev::Head(head, at.exit_ns));
        }
        fn on_end(&mut self, body_bytes: Option<u64>, at: Stamp) {
            self.events.push(Ev::End(body_bytes, at.exit_ns));
        }
        fn answers_head_request(&mut self) -> bool {
            if self.head_requests.is_empty() {
                false
            } else {
                self.head_requests.remove(0)
            }
        }
        fn on_desync(&mut self, why: Desync) {
            self.events.push(Ev::Desync(why));
        }
    }

    impl Rec {
        fn heads(&self) -> Vec<&Head> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Ev::Head(h, _) => Some(h),
                    _ => None,
                })
                .collect()
        }
        fn ends(&self) -> Vec<(Option<u64>, u64)> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Ev::End(b, t) => Some((*b, *t)),
                    _ => None,
                })
                .collect()
        }
        fn desyncs(&self) -> usize {
            self.events
                .iter()
                .filter(|e| matches!(e, Ev::Desync(_)))
                .count()
        }
    }

    fn seg(bytes: &[u8], t: u64) -> Segment<'_> {
        Segment {
            bytes,
            len: bytes.len() as u64,
            stamp: Stamp {
                enter_ns: t,
                exit_ns: t,
            },
        }
    }

    /// Feeds `data` split at the given cut points; segment i has stamp i.
    fn feed_split(kind: Kind, data: &[u8], cuts: &[usize]) -> Rec {
        let mut f = Framer::new(kind);
        let mut rec = Rec::default();
        let mut last = 0;
        for (i, &c) in cuts.iter().chain(std::iter::once(&data.len())).enumerate() {
            f.feed(seg(&data[last..c], i as u64), &mut rec);
            last = c;
        }
        rec
    }

    const GET: &[u8] = b"GET /items/42?q=secret&x=1 HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n";
    const POST: &[u8] = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: y\r\n\r\n";

    #[test]
    fn parses_a_request_head() {
        let rec = feed_split(Kind::Request, GET, &[]);
        let heads = rec.heads();
        assert_eq!(heads.len(), 1);
        let h = heads[0];
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/items/42?q=secret&x=1");
        assert_eq!(h.host.as_deref(), Some("shop.local:8080"));
        assert_eq!(h.user_agent.as_deref(), Some("curl/8.5"));
        assert_eq!(h.protocol_version(), "1.1");
        assert_eq!(rec.ends(), vec![(Some(0), 0)]);
    }

    #[test]
    fn every_split_point_gives_the_same_messages() {
        let mut stream = Vec::new();
        stream.extend_from_slice(POST);
        stream.extend_from_slice(GET);
        for cut in 0..=stream.len() {
            let rec = feed_split(Kind::Request, &stream, &[cut]);
            let heads = rec.heads();
            assert_eq!(heads.len(), 2, "cut at {cut}");
            assert_eq!(heads[0].method, "POST");
            assert_eq!(heads[1].method, "GET");
            assert_eq!(rec.ends().len(), 2, "cut at {cut}");
            assert_eq!(rec.ends()[0].0, Some(5));
            assert_eq!(rec.desyncs(), 0, "cut at {cut}");
        }
    }

    #[test]
    fn chunked_body_split_at_every_pair_of_points() {
        for a in 0..CHUNKED.len() {
            for b in a..CHUNKED.len() {
                let rec = feed_split(Kind::Response, CHUNKED, &[a, b]);
                assert_eq!(rec.ends(), vec![(Some(12), 2)], "cuts at {a},{b}");
                assert_eq!(rec.desyncs(), 0);
            }
        }
    }

    #[test]
    fn pipelined_requests_in_one_segment() {
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(GET);
            stream.extend_from_slice(POST);
        }
        let rec = feed_split(Kind::Request, &stream, &[]);
        assert_eq!(rec.heads().len(), 6);
        assert_eq!(rec.ends().len(), 6);
    }

    #[test]
    fn pipelined_responses_honour_head_requests() {
        // A HEAD response advertises a length but carries no body.
        let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n";
        let mut f = Framer::new(Kind::Response);
        let mut rec = Rec {
            head_requests: vec![true, false, false],
            ..Default::default()
        };
        f.feed(seg(stream, 1), &mut rec);
        assert_eq!(rec.ends(), vec![(Some(0), 1), (Some(2), 1), (Some(0), 1)]);
        assert!(!f.is_open());
    }

    #[test]
    fn large_body_needs_no_captured_bytes() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n";
        let mut f = Framer::new(Kind::Response);
        let mut rec = Rec::default();
        // First write: the head plus a captured prefix of the body.
        let mut first = head.to_vec();
        first.extend_from_slice(&[b'x'; 100]);
        f.feed(
            Segment {
                bytes: &first,
                len: head.len() as u64 + 1_000_000,
                stamp: Stamp {
                    enter_ns: 1,
                    exit_ns: 1,
                },
            },
            &mut rec,
        );
        for t in 2..6 {
            f.feed(
                Segment {
                    bytes: &[b'x'; 64],
                    len: 1_000_000,
                    stamp: Stamp {
                        enter_ns: t,
                        exit_ns: t,
                    },
                },
                &mut rec,
            );
        }
        assert_eq!(rec.ends(), vec![(Some(5_000_000), 5)]);
        assert_eq!(rec.desyncs(), 0);
    }

    #[test]
    fn an_h2c_upgrade_says_where_http2_begins() {
        let mut req = Framer::new(Kind::Request);
        let mut rec = Rec::default();
        req.feed(
            seg(
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                  Upgrade: websocket, H2C\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
                1,
            ),
            &mut rec,
        );
        assert!(rec.heads()[0].upgrade_h2c);
        assert_eq!(req.stopped_at(), None);
        let head =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let mut resp = Framer::new(Kind::Response);
        let mut rec = Rec::default();
        resp.feed(seg(&bytes, 2), &mut rec);
        assert_eq!(rec.heads()[0].status, 101);
        assert!(rec.heads()[0].upgrade_h2c);
        assert_eq!(resp.stopped_at(), Some(head.len()));
        resp.feed(seg(b"more", 3), &mut rec);
        assert_eq!(resp.stopped_at(), None, "only in the segment that switched");
    }

    #[test]
    fn an_upgrade_ends_the_exchange_and_the_http_stream() {
        let mut f = Framer::new(Kind::Response);
        let mut rec = Rec::default();
        f.feed(
            seg(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
                1,
            ),
            &mut rec,
        );
        assert_eq!(rec.heads()[0].status, 101);
        assert_eq!(rec.ends(), vec![(Some(0), 1)]);
        assert!(f.is_done());
        f.feed(seg(b"HTTP/1.1 200 OK\r\n\r\n", 2), &mut rec);
        assert_eq!(
            rec.heads().len(),
            1,
            "frames after the upgrade are not HTTP"
        );
    }

    /// Python's http.server style: each write is a whole chunk (size line,
    /// data, CRLF) longer than the capture, so the CRLF is never seen.
    #[test]
    fn chunk_per_write_with_the_crlf_uncaptured() {
        let mut f = Framer::new(Kind::Response);
        let mut rec = Rec::default();
        f.feed(
            seg(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1),
            &mut rec,
        );
        for t in 2..5 {
            // "4b0\r\n" + 1200 bytes + "\r\n", 16 bytes captured.
            let chunk = Segment {
                bytes: b"4b0\r\nbetabetabet",
                len: 5 + 1200 + 2,
                stamp: Stamp {
                    enter_ns: t,
                    exit_ns: t,
                },
            };
            f.feed(chunk, &mut rec);
        }
        f.feed(seg(b"0\r\n\r\n", 5), &mut rec);
        assert_eq!(rec.ends(), vec![(Some(3600), 5)]);
        assert_eq!(rec.desyncs(), 0);
    }

    /// A size line in uncaptured bytes loses sync; the message then ends at
    /// the next start line with its size unknown, never a wrong one.
    #[test]
    fn lost_chunk_framing_ends_with_unknown_size() {
        let mut f = Framer::new(Kind::Response);
        let mut rec = Rec::default();
        let captured = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab";
        let big = Segment {
            bytes: captured,
            len: 5000,
            stamp: Stamp {
                enter_ns: 1,
                exit_ns: 1,
            },
        };
        f.feed(big, &mut rec);
        assert_eq!(rec.desyncs(), 1);
        f.feed(seg(b"HTTP/1.1 204 No Content\r\n\r\n", 2), &mut rec);
        assert_eq!(rec.ends(), vec![(None, 1), (Some(0), 2)]);
    }

    #[test]
    fn chunked_with_uncaptured_chunk_data() {
        // nginx-style writev: [size line][data][CRLF], the data mostly unseen.
        let mut f = Framer::new(Kind::Response);
        let mut rec = Rec::default();
        f.feed(
            seg(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1),
            &mut rec,
        );
        f.feed(seg(b"2710\r\n", 2), &mut rec);
        f.feed(
            Segment {
                bytes: b"abcd",
                len: 10_000,
                stamp: Stamp {
                    enter_ns: 3,
                    exit_ns: 3,
                },
            },
            &mut rec,
        );
        f.feed(seg(b"\r\n", 4), &mut rec);
        f.feed(seg(b"0\r\n\r\n", 5), &mut rec);
        assert_eq!(rec.ends(), vec![(Some(10_000), 5)]);
    }

    #[test]
    fn response_until_close() {
        let mut f = Framer::new(Kind::Response);
        let mut rec = Rec::default();
        f.feed(seg(b"HTTP/1.0 200 OK\r\n\r\nsome body", 1), &mut rec);
        f.feed(seg(b"more", 2), &mut rec);
        assert!(rec.ends().is_empty());
        assert!(f.finish_open(&mut rec));
        assert_eq!(rec.ends(), vec![(Some(13), 2)]);
    }

    #[test]
    fn interim_100_continue_is_not_the_response() {
        let stream =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let rec = feed_split(Kind::Response, stream, &[]);
        let heads = rec.heads();
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].status, 201);
    }

    #[test]
    fn garbage_is_not_http_and_never_panics() {
        let inputs: [&[u8]; 6] = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"*1\r\n$4\r\nPING\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET\x00/ HTTP/1.1\r\n\r\n",
            b"",
            b"HTTP/2.0 200 OK\r\n\r\n",
        ];
        for input in inputs {
            for kind in [Kind::Request, Kind::Response] {
                let rec = feed_split(kind, input, &[]);
                assert!(rec.heads().is_empty(), "{input:?}");
            }
        }
        let rec = feed_split(Kind::Request, inputs[0], &[]);
        assert_eq!(rec.events, vec![Ev::Desync(Desync::NotHttp)]);
    }

    /// Heads a server rejects (400) are still requests: too many headers, a
    /// malformed length, a header line far longer than the capture. Each is
    /// reported from its request line, marked partial, its body unknown.
    #[test]
    fn unreadable_request_heads_are_reported_from_their_request_line() {
        let mut many = b"GET /many HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let bad_length = b"POST /len HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec();
        for (bytes, len, target) in [
            (many.clone(), many.len() as u64, "/many"),
            (bad_length.clone(), bad_length.len() as u64, "/len"),
            // A 1 MiB header line, of which the capture holds the start.
            (
                b"GET /long HTTP/1.1\r\nCookie: aaaa".to_vec(),
                1 << 20,
                "/long",
            ),
        ] {
            let mut f = Framer::new(Kind::Request);
            let mut rec = Rec::default();
            let seg = Segment {
                bytes: &bytes,
                len,
                stamp: Stamp {
                    enter_ns: 1,
                    exit_ns: 1,
                },
            };
            f.feed(seg, &mut rec);
            let heads = rec.heads();
            assert_eq!(heads.len(), 1, "{target}");
            assert_eq!(heads[0].target, target);
            assert!(heads[0].partial);
            assert_eq!(heads[0].host, None, "headers are not guessed");
            assert_eq!(rec.ends(), [(None, 1)]);
            assert_eq!(rec.desyncs(), 1);
            // Not "not HTTP": the connection stays HTTP.
            assert_ne!(f.last_desync(), Some(Desync::NotHttp));
        }
        // Without a whole request line, nothing is reported.
        let mut f = Framer::new(Kind::Request);
        let mut rec = Rec::default();
        f.feed(
            Segment {
                bytes: b"GET /cut-off-in-the-targ",
                len: 5000,
                stamp: Stamp::default(),
            },
            &mut rec,
        );
        assert!(rec.heads().is_empty());
    }

    #[test]
    fn truncated_head_yields_nothing_until_complete() {
        let rec = feed_split(Kind::Request, &GET[..GET.len() - 2], &[10, 30]);
        assert!(rec.heads().is_empty());
        assert_eq!(rec.desyncs(), 0);
    }

    #[test]
    fn oversized_head_is_bounded() {
        let mut f = Framer::new(Kind::Request);
        let mut rec = Rec::default();
        f.feed(seg(b"GET / HTTP/1.1\r\n", 0), &mut rec);
        let filler = vec![b'a'; 4096];
        for t in 1..10 {
            f.feed(seg(&filler, t), &mut rec);
        }
        assert_eq!(rec.desyncs(), 1);
        assert!(f.head.len() <= MAX_HEAD);
    }

    #[test]
    fn resyncs_on_the_next_request_after_a_mid_stream_attach() {
        // Attached in the middle of a body: skip it, pick up the next request.
        let mut f = Framer::new(Kind::Request);
        let mut rec = Rec::default();
        f.feed(seg(b"tail of a previous body", 0), &mut rec);
        f.feed(seg(GET, 1), &mut rec);
        assert_eq!(rec.heads().len(), 1);
        assert_eq!(rec.ends(), vec![(Some(0), 1)]);
    }

    #[test]
    fn uncaptured_head_loses_sync_then_recovers() {
        let mut f = Framer::new(Kind::Request);
        let mut rec = Rec::default();
        f.feed(
            Segment {
                bytes: &GET[..20],
                len: GET.len() as u64,
                stamp: Stamp::default(),
            },
            &mut rec,
        );
        assert_eq!(rec.events, vec![Ev::Desync(Desync::Uncaptured)]);
        f.feed(seg(POST, 2), &mut rec);
        assert_eq!(rec.heads().len(), 1);
        assert_eq!(rec.ends(), vec![(Some(5), 2)]);
    }

    #[test]
    fn conflicting_content_lengths_are_rejected() {
        let bad = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        // A request: framed, as one the server will refuse.
        assert!(parse_head(Kind::Request, bad).is_some_and(|h| h.framing_conflict));
        let bad = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert!(parse_head(Kind::Response, bad).is_none());
        let same = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert!(parse_head(Kind::Request, same).is_some_and(|h| !h.framing_conflict));
    }

    /// The smuggling shapes: a request with an ambiguous length is the last
    /// one framed on its connection; what follows it, in the same write or
    /// later, never becomes a request (the server closes after answering).
    #[test]
    fn ambiguous_request_lengths_end_request_framing() {
        let shapes: [&[u8]; 2] = [
            b"POST /smug HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /smug HTTP/1.1\r\nContent-Length: 6\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        ];
        for bytes in shapes {
            let mut f = Framer::new(Kind::Request);
            let mut rec = Rec::default();
            f.feed(seg(bytes, 1), &mut rec);
            f.feed(seg(b"GET /later HTTP/1.1\r\n\r\n", 2), &mut rec);
            let targets: Vec<&str> = rec.heads().iter().map(|h| h.target.as_str()).collect();
            assert_eq!(targets, ["/smug"]);
            assert_eq!(rec.ends(), [(None, 1)]);
            assert_eq!(rec.desyncs(), 0);
        }
        // A response with both is chunked, as clients read it.
        let mut f = Framer::new(Kind::Response);
        let mut rec = Rec::default();
        f.feed(
            seg(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 1),
            &mut rec,
        );
        assert_eq!(rec.ends(), [(Some(2), 1)]);
    }

    #[test]
    fn long_targets_are_clipped() {
        let mut req = b"GET /".to_vec();
        req.extend(std::iter::repeat_n(b'a', 5000));
        req.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let h = parse_head(Kind::Request, &req).unwrap();
        assert!(h.target.len() <= MAX_TARGET + '…'.len_utf8());
        assert!(h.target.ends_with('…'));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic stand-in for the fuzz target in `fuzz/`.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"GET HTTP/1.1\r\n:0123456789abcdefchunkedContent-Length;Transfer-Encoding ";
        for _ in 0..2000 {
            let len = (next() % 300) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            for kind in [Kind::Request, Kind::Response] {
                let mut f = Framer::new(kind);
                let mut rec = Rec::default();
                for chunk in data.chunks(1 + (next() % 40) as usize) {
                    let extra = next() % 3;
                    f.feed(
                        Segment {
                            bytes: chunk,
                            len: chunk.len() as u64 + extra,
                            stamp: Stamp::default(),
                        },
                        &mut rec,
                    );
                }
                f.finish_open(&mut rec);
            }
        }
    }
}
