//! PostgreSQL's frontend/backend protocol (v3) framing over one direction
//! of a connection, and the decoding of the few messages spans need.
//!
//! Every message is a type byte and a 32-bit length (the startup-phase
//! packets have no type byte), so the framer only has to see each header;
//! bodies are skipped by count, and only the first bytes of the messages
//! that matter (a query's text, an error's fields, a command tag) are kept,
//! up to [`keep_limit`]. When a header falls in bytes that were not
//! captured, the framer is lost until its owner resynchronises it.
//!
//! Pure: bytes in, [`Message`]s out; memory bounded by [`MAX_KEEP`].

use crate::{
    prefixed::{Header, Walk},
    stream::{Segment, Stamp},
};

/// Most bytes of one message body kept (a query's text).
pub const MAX_KEEP: usize = 4096;
/// Longest message the server accepts (1 GiB); longer means not PostgreSQL.
const MAX_MESSAGE: u32 = 1 << 30;
/// Longest startup packet the server accepts.
const MAX_STARTUP: u32 = 10_000;

/// Startup-phase request codes.
pub const PROTOCOL_3: u32 = 0x0003_0000;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    Frontend,
    /// Server to client.
    Backend,
}

/// What kind of message was framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// A startup-phase packet (startup, SSLRequest, GSSENCRequest, cancel).
    Startup,
    /// The server's one-byte answer to an SSLRequest or GSSENCRequest.
    EncryptionAnswer(u8),
    /// A regular message and its type byte.
    Typed(u8),
}

/// One framed message.
#[derive(Debug)]
pub struct Message<'a> {
    pub tag: Tag,
    /// The first bytes of the body, up to [`keep_limit`].
    pub body: &'a [u8],
    /// Some kept bytes were not captured: `body` is cut short.
    pub cut: bool,
    /// Segment holding the message's first byte.
    pub first_at: Stamp,
    /// Segment holding its last byte.
    pub last_at: Stamp,
}

/// How much of a body is worth keeping, by direction and type.
pub fn keep_limit(dir: Direction, tag: Tag) -> usize {
    match (dir, tag) {
        (_, Tag::Startup) => MAX_STARTUP as usize,
        (Direction::Frontend, Tag::Typed(b'Q' | b'P')) => MAX_KEEP,
        // Portal and statement names come first.
        (Direction::Frontend, Tag::Typed(b'B' | b'E' | b'C')) => 256,
        (Direction::Backend, Tag::Typed(b'E')) => 512,
        (Direction::Backend, Tag::Typed(b'C' | b'Z')) => 64,
        _ => 0,
    }
}

fn valid_type(dir: Direction, t: u8) -> bool {
    match dir {
        Direction::Frontend => b"QPBESDCHFXdcfp".contains(&t),
        Direction::Backend => b"123ACDEGHIKNRSTVWZcdnstv".contains(&t),
    }
}

/// What decides where PostgreSQL's headers are: startup-phase packets have
/// no type byte, and the answer to an encryption request is one byte.
#[derive(Debug)]
struct Headers {
    dir: Direction,
    /// The next message is a startup-phase packet (no type byte).
    startup_next: bool,
    /// The next byte is the answer to an encryption request.
    answer_next: bool,
}

impl Header for Headers {
    fn header_len(&self) -> usize {
        if self.answer_next {
            1
        } else if self.startup_next {
            4
        } else {
            5
        }
    }

    fn body(&mut self, h: &[u8]) -> Option<(u64, usize)> {
        let (tag, len) = match h.len() {
            1 => return Some((0, 0)),
            4 => {
                let len = be32(h)?;
                (8..=MAX_STARTUP).contains(&len).then_some(())?;
                (Tag::Startup, len)
            }
            _ => {
                let len = be32(&h[1..])?;
                (valid_type(self.dir, h[0]) && (4..=MAX_MESSAGE).contains(&len)).then_some(())?;
                (Tag::Typed(h[0]), len)
            }
        };
        Some((u64::from(len - 4), keep_limit(self.dir, tag)))
    }
}

/// Frames one direction of one PostgreSQL connection.
#[derive(Debug)]
pub struct Framer {
    walk: Walk,
    headers: Headers,
}

impl Framer {
    /// A framer for a connection seen from its start: the frontend begins
    /// with a startup packet.
    pub fn new(dir: Direction) -> Self {
        Framer {
            walk: Walk::new(),
            headers: Headers {
                dir,
                startup_next: dir == Direction::Frontend,
                answer_next: false,
            },
        }
    }

    /// A framer joining a connection already past its startup.
    pub fn mid_stream(dir: Direction) -> Self {
        let mut f = Framer::new(dir);
        f.headers.startup_next = false;
        f
    }

    pub fn is_lost(&self) -> bool {
        self.walk.is_lost()
    }

    /// Starts over: the caller knows a message begins with the next byte.
    pub fn resync(&mut self) {
        self.walk.resync();
        self.headers.answer_next = false;
    }

    /// The client asked for encryption: the server's next byte answers it
    /// (backend framer).
    pub fn expect_encryption_answer(&mut self) {
        self.headers.answer_next = true;
    }

    /// Gives up: the owner knows the stream can no longer be followed.
    pub fn lose(&mut self) {
        self.walk.lose();
    }

    pub fn feed(&mut self, seg: Segment<'_>, sink: &mut impl Sink) {
        self.walk.feed(&mut self.headers, seg, |headers, w| {
            let tag = match w.header.len() {
                1 => {
                    headers.answer_next = false;
                    Tag::EncryptionAnswer(w.header[0])
                }
                4 => {
                    // Encryption requests are followed by another startup
                    // packet.
                    let code = be32(w.body).unwrap_or(0);
                    headers.startup_next = code == SSL_REQUEST || code == GSSENC_REQUEST;
                    Tag::Startup
                }
                _ => Tag::Typed(w.header[0]),
            };
            sink.on_message(Message {
                tag,
                body: w.body,
                cut: w.cut,
                first_at: w.first_at,
                last_at: w.last_at,
            });
        });
    }
}

/// What the framer reports: each message as it completes. Every framer
/// in this crate reports through a sink of its own; a closure is one.
pub trait Sink {
    fn on_message(&mut self, message: Message<'_>);
}

impl<F: FnMut(Message<'_>)> Sink for F {
    fn on_message(&mut self, message: Message<'_>) {
        self(message)
    }
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// The NUL-terminated string at the start of `b`, and what follows it.
/// Without a NUL (the body was cut), the whole rest is the string.
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(n) => (&b[..n], &b[n + 1..]),
        None => (b, &[]),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A startup packet's request code and, for protocol 3, the parameters
/// spans may use.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Startup {
    pub code: u32,
    pub user: Option<String>,
    pub database: Option<String>,
}

pub fn startup(body: &[u8]) -> Startup {
    let mut s = Startup {
        code: be32(body).unwrap_or(0),
        ..Startup::default()
    };
    if s.code != PROTOCOL_3 {
        return s;
    }
    let mut rest = &body[4..];
    while !rest.is_empty() && rest[0] != 0 {
        let (key, after) = cstr(rest);
        let (value, after) = cstr(after);
        match key {
            b"user" => s.user = Some(text(value)),
            b"database" => s.database = Some(text(value)),
            _ => {}
        }
        rest = after;
    }
    // The server's default database is the user's name.
    if s.database.is_none() {
        s.database.clone_from(&s.user);
    }
    s
}

/// A simple `Query`'s SQL text (as much as was kept).
pub fn query_text(body: &[u8]) -> String {
    text(cstr(body).0)
}

/// A `Parse`: the statement's name (empty for the unnamed one) and SQL.
pub fn parse(body: &[u8]) -> (String, String) {
    let (name, rest) = cstr(body);
    (text(name), text(cstr(rest).0))
}

/// A `Bind`: the portal's name and the statement's.
pub fn bind(body: &[u8]) -> (String, String) {
    let (portal, rest) = cstr(body);
    (text(portal), text(cstr(rest).0))
}

/// An `Execute`'s portal name.
pub fn execute(body: &[u8]) -> String {
    text(cstr(body).0)
}

/// A `Close`: `b'S'` (statement) or `b'P'` (portal), and the name.
pub fn close(body: &[u8]) -> (u8, String) {
    match body.split_first() {
        Some((&kind, rest)) => (kind, text(cstr(rest).0)),
        None => (0, String::new()),
    }
}

/// An `ErrorResponse`'s SQLSTATE (field `C`), when it was captured and is
/// five letters or digits.
pub fn error_code(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, after) = cstr(after);
        if field == b'C' {
            return (value.len() == 5 && value.iter().all(u8::is_ascii_alphanumeric))
                .then(|| text(value));
        }
        rest = after;
    }
    None
}

/// Is this client write a startup-phase packet (protocol 3 startup,
/// SSLRequest or GSSENCRequest), alone in its write?
pub fn is_startup(bytes: &[u8], len: u64) -> bool {
    match (be32(bytes), bytes.get(4..).and_then(be32)) {
        (Some(n), Some(code)) => {
            u64::from(n) == len
                && (8..=MAX_STARTUP).contains(&n)
                && [PROTOCOL_3, SSL_REQUEST, GSSENC_REQUEST].contains(&code)
        }
        _ => false,
    }
}

/// Does `bytes` (a client write on a connection joined mid-stream) start
/// with a `Query` or `Parse` whose length and text are plausible? Strict on
/// purpose: this is what decides that a pre-existing connection is
/// PostgreSQL.
pub fn looks_like_query_start(bytes: &[u8], len: u64) -> bool {
    let (Some(&t), Some(n)) = (bytes.first(), bytes.get(1..).and_then(be32)) else {
        return false;
    };
    if !(t == b'Q' || t == b'P') || n < 5 || u64::from(n) + 1 > len {
        return false;
    }
    let body = &bytes[5..bytes.len().min(n as usize + 1)];
    let sql = if t == b'P' { cstr(body).1 } else { body };
    let sql = cstr(sql).0;
    // Some text, all of it printable.
    !sql.is_empty()
        && sql
            .iter()
            .take(64)
            .all(|&c| c >= 0x20 || c == b'\n' || c == b'\r' || c == b'\t')
        // A whole message in view must end with its NUL.
        && (bytes.len() <= n as usize || bytes[n as usize] == 0)
}

/// Does `bytes` (a segment of `len` bytes) start with whole, valid
/// messages in `dir`, ending exactly at its end when all of it is in view?
/// Where a lost client stream may be picked up again: clients write whole
/// messages, so a write that frames exactly starts at a boundary.
pub fn starts_messages(dir: Direction, bytes: &[u8], len: u64) -> bool {
    let mut pos = 0usize;
    let mut seen = 0;
    while pos + 5 <= bytes.len() && seen < 4096 {
        let Some(n) = be32(&bytes[pos + 1..]) else {
            return false;
        };
        if !valid_type(dir, bytes[pos]) || !(4..=MAX_MESSAGE).contains(&n) {
            return false;
        }
        pos += 1 + n as usize;
        seen += 1;
    }
    let whole = bytes.len() as u64 == len;
    seen > 0 && (!whole || pos == bytes.len())
}

/// Does a response segment end with `ReadyForQuery` (`Z`, length 5, and a
/// transaction status)? A read that does ends a query cycle and the next
/// read starts a message, which is how a framer lost in a long result
/// finds its place again.
pub fn ends_with_ready(bytes: &[u8]) -> bool {
    let n = bytes.len();
    n >= 6 && bytes[n - 6..n - 1] == [b'Z', 0, 0, 0, 5] && b"ITE".contains(&bytes[n - 1])
}

/// The message just before a trailing `ReadyForQuery`, when it is a
/// `CommandComplete` or `ErrorResponse` wholly inside `bytes`: its type
/// byte and body. Found by looking for a header whose length reaches
/// exactly to the `Z`.
pub fn message_before_ready(bytes: &[u8]) -> Option<(u8, &[u8])> {
    if !ends_with_ready(bytes) {
        return None;
    }
    let z = bytes.len() - 6;
    (0..z.saturating_sub(4)).rev().find_map(|p| {
        let t = bytes[p];
        let n = be32(&bytes[p + 1..])? as usize;
        ((t == b'C' || t == b'E') && p + 1 + n == z && n >= 5 && bytes[z - 1] == 0)
            .then(|| (t, &bytes[p + 5..z]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(t: u64) -> Stamp {
        Stamp {
            enter_ns: t,
            exit_ns: t + 1,
        }
    }

    fn seg(bytes: &[u8], t: u64) -> Segment<'_> {
        Segment {
            bytes,
            len: bytes.len() as u64,
            stamp: stamp(t),
        }
    }

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn startup_packet() -> Vec<u8> {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0alice\0database\0shop\0application_name\0psql\0\0");
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        m
    }

    /// Every message framed from `parts`, as (tag, kept body, cut).
    fn frame(f: &mut Framer, parts: &[&[u8]]) -> Vec<(Tag, Vec<u8>, bool)> {
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            f.feed(seg(p, i as u64), &mut |m: Message<'_>| {
                out.push((m.tag, m.body.to_vec(), m.cut))
            });
        }
        out
    }

    fn frontend_stream() -> Vec<u8> {
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        let mut s = ssl;
        s.extend(startup_packet());
        s.extend(msg(b'Q', b"SELECT 1\0"));
        s.extend(msg(b'P', b"s1\0INSERT INTO t VALUES ($1)\0\0\0"));
        s.extend(msg(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x012\0\0"));
        s.extend(msg(b'E', b"\0\0\0\0\0"));
        s.extend(msg(b'S', b""));
        s
    }

    #[test]
    fn frontend_messages_framed_at_every_split() {
        let stream = frontend_stream();
        let whole = frame(&mut Framer::new(Direction::Frontend), &[&stream]);
        let tags: Vec<Tag> = whole.iter().map(|m| m.0).collect();
        assert_eq!(
            tags,
            vec![
                Tag::Startup,
                Tag::Startup,
                Tag::Typed(b'Q'),
                Tag::Typed(b'P'),
                Tag::Typed(b'B'),
                Tag::Typed(b'E'),
                Tag::Typed(b'S'),
            ]
        );
        let s = startup(&whole[1].1);
        assert_eq!(s.database.as_deref(), Some("shop"));
        assert_eq!(s.user.as_deref(), Some("alice"));
        assert_eq!(query_text(&whole[2].1), "SELECT 1");
        assert_eq!(
            parse(&whole[3].1),
            ("s1".into(), "INSERT INTO t VALUES ($1)".into())
        );
        assert_eq!(bind(&whole[4].1), (String::new(), "s1".into()));
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let got = frame(
                    &mut Framer::new(Direction::Frontend),
                    &[&stream[..a], &stream[a..b], &stream[b..]],
                );
                assert_eq!(got, whole, "split at {a}/{b}");
            }
        }
    }

    #[test]
    fn backend_answer_byte_then_messages() {
        let mut s = vec![b'N'];
        s.extend(msg(b'R', &0u32.to_be_bytes()));
        s.extend(msg(b'S', b"server_version\x0015.18\0"));
        s.extend(msg(b'Z', b"I"));
        let mut err = b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0".to_vec();
        err.push(0);
        s.extend(msg(b'E', &err));
        s.extend(msg(b'Z', b"I"));
        for a in 0..=s.len() {
            let mut f = Framer::new(Direction::Backend);
            f.expect_encryption_answer();
            let got = frame(&mut f, &[&s[..a], &s[a..]]);
            assert_eq!(got[0].0, Tag::EncryptionAnswer(b'N'), "split {a}");
            assert_eq!(got.len(), 6, "split {a}");
            assert_eq!(error_code(&got[4].1).as_deref(), Some("42P01"));
        }
    }

    /// Rows skipped by count through uncaptured bytes; a header in them
    /// loses sync.
    #[test]
    fn uncaptured_bodies_are_skipped_and_lost_headers_lose_sync() {
        let mut s = msg(b'D', &[7u8; 3000]);
        s.extend(msg(b'C', b"SELECT 1\0"));
        let mut f = Framer::new(Direction::Backend);
        let mut out = Vec::new();
        // Only the first 100 bytes captured, the rest of the row unseen.
        f.feed(
            Segment {
                bytes: &s[..100],
                len: 3005,
                stamp: stamp(1),
            },
            &mut |m: Message<'_>| out.push(m.tag),
        );
        f.feed(seg(&s[3005..], 2), &mut |m: Message<'_>| out.push(m.tag));
        assert_eq!(out, vec![Tag::Typed(b'D'), Tag::Typed(b'C')]);
        let mut f = Framer::new(Direction::Backend);
        f.feed(
            Segment {
                bytes: &s[..100],
                len: 3010,
                stamp: stamp(1),
            },
            &mut |_: Message<'_>| {},
        );
        assert!(f.is_lost());
    }

    #[test]
    fn garbage_loses_sync_without_panicking() {
        for junk in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"Q\xff\xff\xff\xff",
            b"Q\0\0\0\x02",
            b"",
        ] {
            let mut f = Framer::mid_stream(Direction::Frontend);
            f.feed(seg(junk, 1), &mut |_: Message<'_>| {});
            assert!(f.is_lost() || junk.is_empty() || junk.len() < 5);
            let mut f = Framer::new(Direction::Frontend);
            f.feed(seg(junk, 1), &mut |_: Message<'_>| {});
        }
    }

    #[test]
    fn decoders_tolerate_cut_bodies() {
        assert_eq!(query_text(b"SELECT * FROM big"), "SELECT * FROM big");
        assert_eq!(parse(b"name"), ("name".into(), String::new()));
        assert_eq!(error_code(b"SERROR\0C4"), None);
        assert_eq!(error_code(b"C23505\0"), Some("23505".into()));
        assert_eq!(startup(b"\0\x03").code, 0);
        assert_eq!(close(b"Sstmt\0"), (b'S', "stmt".into()));
        assert_eq!(execute(b"p1\0\0\0\0\0"), "p1");
    }

    #[test]
    fn startup_detection() {
        let p = startup_packet();
        assert!(is_startup(&p, p.len() as u64));
        assert!(!is_startup(&p, p.len() as u64 + 1));
        assert!(!is_startup(b"*1\r\n$4\r\nPING\r\n", 14));
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        assert!(is_startup(&ssl, 8));
    }

    #[test]
    fn query_start_detection_is_strict() {
        let q = msg(b'Q', b"SELECT 1\0");
        assert!(looks_like_query_start(&q, q.len() as u64));
        let p = msg(b'P', b"\0SELECT $1\0\0\0");
        assert!(looks_like_query_start(&p, p.len() as u64));
        assert!(!looks_like_query_start(b"QUIT\r\n", 6));
        assert!(!looks_like_query_start(b"PUT / HTTP/1.1\r\n", 16));
        let mut bad = msg(b'Q', b"SELECT 1\0");
        let n = bad.len();
        bad[n - 1] = b'x';
        assert!(!looks_like_query_start(&bad, n as u64));
        // Longer than the write: not a message start.
        assert!(!looks_like_query_start(&q[..6], 6));
    }

    #[test]
    fn writes_that_frame_exactly_are_message_starts() {
        let mut w = msg(b'B', b"\0s1\0\0\0\0\0\0\0");
        w.extend(msg(b'E', b"\0\0\0\0\0"));
        w.extend(msg(b'S', b""));
        assert!(starts_messages(Direction::Frontend, &w, w.len() as u64));
        // Cut short by the capture: what is in view must still frame.
        assert!(starts_messages(Direction::Frontend, &w[..12], 5000));
        // Mid-message bytes do not frame.
        assert!(!starts_messages(
            Direction::Frontend,
            &w[3..],
            w.len() as u64 - 3
        ));
        assert!(!starts_messages(Direction::Frontend, b"", 0));
    }

    #[test]
    fn tail_of_a_long_result_shows_how_it_ended() {
        let mut tail = vec![1, 2, 3];
        tail.extend(msg(b'C', b"SELECT 5000\0"));
        tail.extend(msg(b'Z', b"I"));
        assert!(ends_with_ready(&tail));
        assert_eq!(
            message_before_ready(&tail),
            Some((b'C', &b"SELECT 5000\0"[..]))
        );
        let mut tail = vec![9; 40];
        tail.extend(msg(b'E', b"C57014\0\0"));
        tail.extend(msg(b'Z', b"E"));
        let (t, body) = message_before_ready(&tail).unwrap();
        assert_eq!((t, error_code(body).as_deref()), (b'E', Some("57014")));
        assert!(!ends_with_ready(b"Z\0\0\0\x05X"));
        assert_eq!(message_before_ready(&msg(b'Z', b"I")), None);
    }
}
