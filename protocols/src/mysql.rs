//! The MySQL/MariaDB client/server protocol: packet framing over one
//! direction of a connection, and the decoding of the few packets spans
//! need.
//!
//! Every packet is a 3-byte little-endian payload length and a sequence
//! number, so, as for PostgreSQL, only headers must be seen; payloads are
//! skipped by count and only their first bytes kept, up to [`keep_limit`].
//! Unlike PostgreSQL, the type of a packet is its first payload byte and
//! depends on where the exchange is, which the caller tracks.
//!
//! Pure: bytes in, [`Packet`]s out; memory bounded by [`MAX_KEEP`].

use crate::{
    prefixed::{Header, Walk},
    stream::{Segment, Stamp},
};

/// Most bytes of one payload kept (a query's text).
pub const MAX_KEEP: usize = 4096;
/// A payload of this length continues in the next packet.
pub const MAX_PAYLOAD: u32 = 0xff_ffff;

/// Capability flags spans depend on.
pub mod caps {
    pub const CONNECT_WITH_DB: u32 = 0x0000_0008;
    pub const PROTOCOL_41: u32 = 0x0000_0200;
    pub const SSL: u32 = 0x0000_0800;
    pub const COMPRESS: u32 = 0x0000_0020;
    pub const SECURE_CONNECTION: u32 = 0x0000_8000;
    pub const QUERY_ATTRIBUTES: u32 = 0x0800_0000;
    pub const PLUGIN_AUTH_LENENC_DATA: u32 = 0x0020_0000;
    pub const DEPRECATE_EOF: u32 = 0x0100_0000;
}

/// Server status flag: another result set follows this one.
pub const MORE_RESULTS_EXISTS: u16 = 0x0008;

/// Command bytes (the first payload byte of a client's sequence-0 packet).
pub mod command {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x09;
    pub const STMT_FETCH: u8 = 0x1c;
}

/// Server status flag: a cursor was opened; rows come with COM_STMT_FETCH.
pub const CURSOR_EXISTS: u16 = 0x0040;

/// A `COM_QUERY`'s SQL text, past the query attributes MySQL 8.0.23+
/// clients send when both sides support them (a count of parameters, a
/// count of parameter sets; none here in practice). `None` when parameters
/// precede the text, which is then not worth decoding.
pub fn query_sql(rest: &[u8], attributes: bool) -> Option<&[u8]> {
    // SQL never starts with NUL, so `00 01` can only be an empty
    // attribute block, whether or not the capability was seen.
    if attributes || rest.starts_with(&[0, 1]) {
        let (params, a) = lenenc(rest)?;
        let (_sets, b) = lenenc(rest.get(a..)?)?;
        return (params == 0).then(|| rest.get(a + b..)).flatten();
    }
    Some(rest)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    Client,
    /// Server to client.
    Server,
}

/// How much of a payload is worth keeping: a client's SQL; the head of a
/// server packet (status, error code and state, a greeting's version and
/// capabilities).
pub fn keep_limit(dir: Direction) -> usize {
    match dir {
        Direction::Client => MAX_KEEP,
        Direction::Server => 160,
    }
}

/// One framed packet.
#[derive(Debug)]
pub struct Packet<'a> {
    pub seq: u8,
    /// The payload's true length.
    pub len: u32,
    /// Its first bytes, up to [`keep_limit`].
    pub body: &'a [u8],
    /// Some kept bytes were not captured: `body` is cut short.
    pub cut: bool,
    pub first_at: Stamp,
    pub last_at: Stamp,
}

/// MySQL's headers: a 3-byte little-endian length and a sequence number.
#[derive(Debug)]
struct Headers {
    dir: Direction,
}

impl Header for Headers {
    fn header_len(&self) -> usize {
        4
    }

    fn body(&mut self, h: &[u8]) -> Option<(u64, usize)> {
        Some((u64::from(le24(h)), keep_limit(self.dir)))
    }
}

/// Frames one direction of one MySQL connection.
#[derive(Debug)]
pub struct Framer {
    walk: Walk,
    headers: Headers,
}

impl Framer {
    pub fn new(dir: Direction) -> Self {
        Framer {
            walk: Walk::new(),
            headers: Headers { dir },
        }
    }

    pub fn is_lost(&self) -> bool {
        self.walk.is_lost()
    }

    /// Gives up: the owner knows the stream can no longer be followed.
    pub fn lose(&mut self) {
        self.walk.lose();
    }

    /// Starts over: the caller knows a packet begins with the next byte.
    pub fn resync(&mut self) {
        self.walk.resync();
    }

    pub fn feed(&mut self, seg: Segment<'_>, sink: &mut impl Sink) {
        self.walk.feed(&mut self.headers, seg, |_, w| {
            sink.on_packet(Packet {
                seq: w.header[3],
                len: le24(w.header),
                body: w.body,
                cut: w.cut,
                first_at: w.first_at,
                last_at: w.last_at,
            });
        });
    }
}

/// What the framer reports: each packet as it completes. Every framer
/// in this crate reports through a sink of its own; a closure is one.
pub trait Sink {
    fn on_packet(&mut self, packet: Packet<'_>);
}

impl<F: FnMut(Packet<'_>)> Sink for F {
    fn on_packet(&mut self, packet: Packet<'_>) {
        self(packet)
    }
}

fn le24(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], 0])
}

fn le16(b: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(..2)?.try_into().ok()?))
}

fn le32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

/// A length-encoded integer: its value and how many bytes it took.
pub fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let n = match *b.first()? {
        x @ 0..=0xfa => return Some((u64::from(x), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(b.get(1..1 + n)?);
    Some((u64::from_le_bytes(v), 1 + n))
}

fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(n) => (&b[..n], &b[n + 1..]),
        None => (b, &[]),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The server's greeting (protocol version 10).
#[derive(Debug, PartialEq, Eq)]
pub struct Greeting {
    pub version: String,
    pub caps: u32,
}

pub fn greeting(body: &[u8]) -> Option<Greeting> {
    let (&10, rest) = body.split_first()? else {
        return None;
    };
    let (version, rest) = cstr(rest);
    if version.is_empty() || !version.iter().all(|c| c.is_ascii_graphic()) {
        return None;
    }
    // Connection id, 8 bytes of scramble, a filler, then capabilities.
    let low = le16(rest.get(13..)?)?;
    let high = rest.get(18..).and_then(le16).unwrap_or(0);
    Some(Greeting {
        version: text(version),
        caps: u32::from(low) | (u32::from(high) << 16),
    })
}

/// Does a server's first read start with a greeting?
pub fn looks_like_greeting(bytes: &[u8]) -> bool {
    bytes.len() > 4 && bytes[3] == 0 && greeting(&bytes[4..]).is_some()
}

/// Could a server's first read be a greeting's header alone (some clients
/// read the 4-byte header, then the payload)?
pub fn could_be_greeting_header(bytes: &[u8]) -> bool {
    bytes.len() == 4 && bytes[3] == 0 && (20..=1024).contains(&le24(bytes))
}

/// The client's answer to the greeting.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Login {
    pub caps: u32,
    /// Only capabilities and a request to switch to TLS.
    pub ssl_request: bool,
    pub user: Option<String>,
    pub database: Option<String>,
}

pub fn login(body: &[u8]) -> Login {
    let caps = le32(body).unwrap_or(0);
    let mut l = Login {
        caps,
        ..Login::default()
    };
    if caps & caps::SSL != 0 && body.len() == 32 {
        l.ssl_request = true;
        return l;
    }
    // Max packet size, character set, 23 bytes of filler, then the user.
    let Some(rest) = body.get(32..) else {
        return l;
    };
    let (user, rest) = cstr(rest);
    l.user = Some(text(user));
    let rest = if caps & caps::PLUGIN_AUTH_LENENC_DATA != 0 {
        lenenc(rest).and_then(|(n, k)| rest.get(k.checked_add(usize::try_from(n).ok()?)?..))
    } else if caps & caps::SECURE_CONNECTION != 0 {
        rest.split_first().and_then(|(&n, r)| r.get(n as usize..))
    } else {
        Some(cstr(rest).1)
    };
    if caps & caps::CONNECT_WITH_DB != 0 {
        l.database = rest.map(|r| cstr(r).0).filter(|d| !d.is_empty()).map(text);
    }
    l
}

/// An ERR packet's error code and, with protocol 4.1, its SQL state.
pub fn error(body: &[u8]) -> Option<(u16, Option<String>)> {
    if body.first() != Some(&0xff) {
        return None;
    }
    let code = le16(body.get(1..)?)?;
    let state = (body.get(3) == Some(&b'#'))
        .then(|| body.get(4..9).map(text))
        .flatten();
    Some((code, state))
}

/// The status flags of an OK packet (`0x00`, or `0xfe` ending a result
/// set when EOF packets are deprecated).
pub fn ok_status(body: &[u8]) -> Option<u16> {
    let rest = body.get(1..)?;
    let (_, a) = lenenc(rest)?;
    let rest = rest.get(a..)?;
    let (_, b) = lenenc(rest)?;
    le16(rest.get(b..)?)
}

/// The status flags of a classic EOF packet.
pub fn eof_status(body: &[u8]) -> Option<u16> {
    le16(body.get(3..)?)
}

/// Is this a classic EOF packet (`0xfe`, warnings, status: exactly 5
/// bytes with protocol 4.1)? The OK that replaces it when EOFs are
/// deprecated is at least 7.
pub fn is_eof(p: &Packet<'_>) -> bool {
    p.body.first() == Some(&0xfe) && p.len == 5
}

/// Does this packet end a result set's rows (EOF, or the OK that replaces
/// it)? A row can also start with `0xfe` (an 8-byte length), but only when
/// its first value is 16 MiB or more, so its packet is a full one.
pub fn is_terminator(p: &Packet<'_>) -> bool {
    p.body.first() == Some(&0xfe) && p.len < MAX_PAYLOAD
}

/// Does this client write start with a text command (`COM_QUERY` or
/// `COM_STMT_PREPARE`, sequence 0, printable SQL) that fills it exactly?
/// What decides that a connection from before the agent is MySQL.
pub fn looks_like_command(bytes: &[u8], len: u64) -> bool {
    if bytes.len() < 6 || bytes[3] != 0 || u64::from(le24(bytes)) + 4 != len {
        return false;
    }
    let Some(sql) = query_sql(&bytes[5..], false) else {
        return false;
    };
    matches!(bytes[4], command::QUERY | command::STMT_PREPARE)
        && sql
            .iter()
            .take(64)
            .all(|&c| c >= 0x20 || c == b'\n' || c == b'\r' || c == b'\t')
}

/// A `COM_STMT_PREPARE`'s OK: statement id, columns, parameters.
pub fn prepare_ok(body: &[u8]) -> Option<(u32, u16, u16)> {
    if body.first() != Some(&0) {
        return None;
    }
    Some((
        le32(body.get(1..)?)?,
        le16(body.get(5..)?)?,
        le16(body.get(7..)?)?,
    ))
}

/// The statement id a `COM_STMT_EXECUTE` or `COM_STMT_CLOSE` names.
pub fn statement_id(body: &[u8]) -> Option<u32> {
    le32(body.get(1..)?)
}

/// The last packet of a read captured whole, when it can only be where a
/// response ends: found by looking for a header whose length reaches
/// exactly to the end, with an OK, EOF or ERR payload. Its sequence number
/// and payload.
pub fn last_packet(bytes: &[u8]) -> Option<(u8, &[u8])> {
    let n = bytes.len();
    (0..n.saturating_sub(4)).rev().take(64).find_map(|p| {
        let len = le24(&bytes[p..]) as usize;
        let body = &bytes[p + 4..];
        // The ends of long results: EOF (or the OK in its place) and ERR
        // with its SQL-state marker. Not a bare OK: binary rows start with
        // 0x00 too.
        let end = match body[0] {
            0xfe => len == 5 || len >= 7,
            0xff => body.get(3) == Some(&b'#'),
            _ => false,
        };
        (p + 4 + len == n && end && len < 64).then_some((bytes[p + 3], body))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(bytes: &[u8], t: u64) -> Segment<'_> {
        Segment {
            bytes,
            len: bytes.len() as u64,
            stamp: Stamp {
                enter_ns: t,
                exit_ns: t + 1,
            },
        }
    }

    fn packet(seq: u8, body: &[u8]) -> Vec<u8> {
        let mut p = (body.len() as u32).to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(body);
        p
    }

    fn greeting_packet() -> Vec<u8> {
        let mut b = vec![10];
        b.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(b"abcdefgh\0");
        b.extend_from_slice(&0xf7feu16.to_le_bytes());
        b.push(45);
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&0x81bfu16.to_le_bytes());
        b.extend_from_slice(&[21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        packet(0, &b)
    }

    fn frame(parts: &[&[u8]]) -> Vec<(u8, u32, Vec<u8>)> {
        let mut f = Framer::new(Direction::Server);
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            f.feed(seg(p, i as u64), &mut |p: Packet<'_>| {
                out.push((p.seq, p.len, p.body.to_vec()))
            });
        }
        out
    }

    #[test]
    fn packets_framed_at_every_split() {
        let mut s = greeting_packet();
        s.extend(packet(2, &[0, 0, 0, 2, 0, 0, 0]));
        s.extend(packet(1, b"\x01"));
        s.extend(packet(2, b""));
        let whole = frame(&[&s]);
        assert_eq!(whole.len(), 4);
        let g = greeting(&whole[0].2).unwrap();
        assert_eq!(g.version, "5.5.5-10.11.6-MariaDB-0+deb12u1");
        assert_eq!(g.caps & caps::PROTOCOL_41, caps::PROTOCOL_41);
        assert_eq!(g.caps & caps::DEPRECATE_EOF, caps::DEPRECATE_EOF);
        assert!(looks_like_greeting(&s));
        for a in 0..=s.len() {
            for b in a..=s.len() {
                assert_eq!(frame(&[&s[..a], &s[a..b], &s[b..]]), whole, "{a}/{b}");
            }
        }
    }

    #[test]
    fn login_gives_the_database_and_ssl_requests() {
        let caps = caps::PROTOCOL_41
            | caps::SECURE_CONNECTION
            | caps::CONNECT_WITH_DB
            | caps::PLUGIN_AUTH_LENENC_DATA;
        let mut b = caps.to_le_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0, 1, 45]);
        b.extend_from_slice(&[0; 23]);
        b.extend_from_slice(b"root\0");
        b.extend_from_slice(&[3, 1, 2, 3]);
        b.extend_from_slice(b"shop\0mysql_native_password\0");
        let l = login(&b);
        assert_eq!(l.database.as_deref(), Some("shop"));
        assert_eq!(l.user.as_deref(), Some("root"));
        assert!(!l.ssl_request);
        let mut ssl = (caps::PROTOCOL_41 | caps::SSL).to_le_bytes().to_vec();
        ssl.extend_from_slice(&[0; 28]);
        assert!(login(&ssl).ssl_request);
        assert_eq!(login(&[1, 2]).database, None);
        // An auth-data length near u64::MAX (found by the fuzzer).
        let mut huge = caps.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 28]);
        huge.extend_from_slice(b"u\0\xfe\xff\xff\xff\xff\xff\xff\xff\xff");
        assert_eq!(login(&huge).database, None);
    }

    #[test]
    fn errors_statuses_and_terminators() {
        let err = b"\xff\x26\x04#23000Duplicate entry";
        assert_eq!(error(err), Some((1062, Some("23000".into()))));
        assert_eq!(error(b"\xff\x26"), None);
        assert_eq!(ok_status(&[0, 1, 0, 0x0a, 0, 0, 0]), Some(0x000a));
        assert_eq!(eof_status(&[0xfe, 0, 0, 0x02, 0]), Some(2));
        let eof = Packet {
            seq: 5,
            len: 5,
            body: &[0xfe, 0, 0, 2, 0],
            cut: false,
            first_at: Stamp::default(),
            last_at: Stamp::default(),
        };
        assert!(is_terminator(&eof) && is_eof(&eof));
        let ok_in_eofs_place = Packet { len: 7, ..eof };
        assert!(is_terminator(&ok_in_eofs_place) && !is_eof(&ok_in_eofs_place));
        let huge_row = Packet {
            len: MAX_PAYLOAD,
            ..eof
        };
        assert!(!is_terminator(&huge_row));
        assert!(looks_like_command(&packet(0, b"\x03SELECT 1"), 13));
        assert!(!looks_like_command(&packet(0, b"\x03SELECT 1"), 14));
        assert!(!looks_like_command(&packet(1, b"\x03SELECT 1"), 13));
        assert!(!looks_like_command(b"GET / HTTP/1.1\r\n", 16));
        // MySQL 8's empty query-attribute block before the SQL.
        assert!(looks_like_command(&packet(0, b"\x03\x00\x01SELECT 1"), 15));
        assert_eq!(query_sql(b"\x00\x01SELECT 1", true), Some(&b"SELECT 1"[..]));
        assert_eq!(query_sql(b"SELECT 1", false), Some(&b"SELECT 1"[..]));
        assert_eq!(query_sql(b"\x01\x01\x00", true), None);
        assert_eq!(lenenc(&[0xfc, 0x10, 0x27]), Some((10_000, 3)));
        assert_eq!(lenenc(&[0xff]), None);
        assert_eq!(
            prepare_ok(&[0, 1, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0]),
            Some((1, 2, 1))
        );
    }

    #[test]
    fn the_end_of_a_long_result_is_found_in_its_tail() {
        let mut tail = vec![b'x'; 30];
        tail.extend(packet(200, &[0xfe, 0, 0, 0x22, 0]));
        assert_eq!(last_packet(&tail), Some((200, &[0xfe, 0, 0, 0x22, 0][..])));
        assert_eq!(last_packet(b"\x05\0\0\x07abc"), None);
        // A short binary row is not an end.
        assert_eq!(last_packet(&packet(9, &[0, 0, 5, b'h', b'e'])), None);
    }

    #[test]
    fn headers_in_uncaptured_bytes_lose_sync() {
        let mut s = packet(1, &[9; 500]);
        s.extend(packet(2, &[0xfe, 0, 0, 2, 0]));
        let mut f = Framer::new(Direction::Server);
        let mut n = 0;
        f.feed(
            Segment {
                bytes: &s[..100],
                len: 504,
                stamp: Stamp::default(),
            },
            &mut |_: Packet<'_>| n += 1,
        );
        f.feed(seg(&s[504..], 1), &mut |_: Packet<'_>| n += 1);
        assert_eq!(n, 2);
        f.feed(
            Segment {
                bytes: &s[..3],
                len: 200,
                stamp: Stamp::default(),
            },
            &mut |_: Packet<'_>| {},
        );
        assert!(f.is_lost());
    }
}
