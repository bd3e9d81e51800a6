//! One direction of an HTTP/2 connection, framed (RFC 9113 §4): bytes in,
//! header blocks (decoded by this direction's HPACK decoder), data sizes,
//! resets and settings out, through a [`Sink`].
//!
//! Frames may be split across any segments and many may share one. Only
//! what spans need is kept: header blocks whole (bounded), the first bytes
//! of small control frames, and of DATA only its length, so uncaptured
//! bytes inside a DATA payload cost nothing. Uncaptured bytes anywhere
//! else lose the framing: [`Framer::is_lost`] from then on.

use super::hpack::{Decoder, Fields};
use crate::stream::{Segment, Stamp};

/// What a client sends first on every HTTP/2 connection (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most octets of one header block kept (HEADERS or PUSH_PROMISE with its
/// CONTINUATIONs). Past it the block is lost, and so is the table.
pub const MAX_BLOCK: usize = 32 * 1024;

mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
}

mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

const SETTINGS_HEADER_TABLE_SIZE: u16 = 1;
/// Control-frame bytes kept: RST_STREAM's code, GOAWAY's last stream and
/// code, a SETTINGS frame's first sixteen parameters.
const MAX_CONTROL: usize = 96;

/// What one direction carries.
pub trait Sink {
    /// A whole header block on `stream`: its fields, or `None` when the
    /// block could not be read (uncaptured, past [`MAX_BLOCK`], or
    /// undecodable). `at` is the segment where its HEADERS frame began.
    fn on_headers(&mut self, stream: u32, fields: Option<&Fields>, end_stream: bool, at: Stamp);
    /// A DATA frame of `len` octets of content (padding excluded), which
    /// ended in the segment `at`.
    fn on_data(&mut self, stream: u32, len: u64, end_stream: bool, at: Stamp);
    /// RST_STREAM, with its error code if it was captured.
    fn on_reset(&mut self, stream: u32, code: Option<u32>, at: Stamp);
    /// GOAWAY: streams past `last_stream` were not processed.
    fn on_goaway(&mut self, last_stream: u32, code: Option<u32>, at: Stamp);
    /// SETTINGS_HEADER_TABLE_SIZE from this direction's sender: the
    /// bound for the *other* direction's HPACK encoder.
    fn on_table_size(&mut self, _size: u32) {}
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// A header block being collected across HEADERS/PUSH_PROMISE and
/// CONTINUATION frames.
#[derive(Clone, Copy, Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// The segment where the block's first frame began.
    at: Stamp,
    lost: bool,
    /// A PUSH_PROMISE's block: decoded for the table, not reported.
    promise: bool,
}

#[derive(Debug)]
pub struct Framer {
    hpack: Decoder,
    fields: Fields,
    /// Octets of the client preface still expected.
    preface: u8,
    head: [u8; 9],
    head_len: u8,
    /// The frame whose payload is being read, and how much of it is left.
    frame: Option<Frame>,
    left: u32,
    frame_at: Stamp,
    /// The current frame's payload, for the frames whose payload is kept.
    payload: Vec<u8>,
    /// Some of the current frame's payload went uncaptured.
    payload_unseen: bool,
    /// The header block being collected, and its octets so far.
    block: Option<Block>,
    block_bytes: Vec<u8>,
    /// The current DATA frame's pad length, once its first octet is read.
    data_pad: Option<u8>,
    /// Why the framing was lost, once it was.
    lost: Option<&'static str>,
    /// See [`Framer::joined`].
    strict: bool,
}

impl Framer {
    fn with(hpack: Decoder, preface: bool) -> Self {
        Framer {
            hpack,
            fields: Fields::default(),
            preface: if preface { PREFACE.len() as u8 } else { 0 },
            head: [0; 9],
            head_len: 0,
            frame: None,
            left: 0,
            frame_at: Stamp::default(),
            payload: Vec::new(),
            payload_unseen: false,
            block: None,
            block_bytes: Vec::new(),
            data_pad: None,
            lost: None,
            strict: false,
        }
    }

    /// The client-to-server direction from its first byte: the preface,
    /// then frames.
    pub fn client_from_start() -> Self {
        Self::with(Decoder::new(), true)
    }

    /// The server-to-client direction from its first byte.
    pub fn server_from_start() -> Self {
        Self::with(Decoder::new(), false)
    }

    /// A direction joined mid-stream, assumed at a frame boundary: its
    /// HPACK table is unknown, and frames are checked more strictly (a
    /// known type, no longer than the default maximum frame size), so a
    /// wrong assumption loses the framing rather than reads garbage.
    pub fn joined() -> Self {
        Framer {
            strict: true,
            ..Self::with(Decoder::joined(), false)
        }
    }

    /// The framing is lost: nothing more will be reported.
    pub fn is_lost(&self) -> bool {
        self.lost.is_some()
    }

    /// Why the framing was lost.
    pub fn lost_why(&self) -> Option<&'static str> {
        self.lost
    }

    /// Bytes of this direction may have gone unseen without the framer
    /// knowing (dropped before it): the HPACK table is unknown from here.
    pub fn table_lost(&mut self) {
        self.hpack.lost();
    }

    /// Whether this direction's HPACK table is known whole.
    pub fn table_known(&self) -> bool {
        self.hpack.is_certain()
    }

    /// The other direction's SETTINGS_HEADER_TABLE_SIZE.
    pub fn set_table_limit(&mut self, size: u32) {
        self.hpack.set_limit(size);
    }

    pub fn feed(&mut self, seg: Segment<'_>, sink: &mut impl Sink) {
        if self.is_lost() {
            return;
        }
        let mut bytes = seg.bytes;
        while !bytes.is_empty() && !self.is_lost() {
            let used = self.step(bytes, seg.stamp, sink);
            bytes = &bytes[used..];
        }
        let unseen = seg.len.saturating_sub(seg.bytes.len() as u64);
        if unseen > 0 && !self.is_lost() {
            self.skip(unseen, seg.stamp, sink);
        }
    }

    /// Consumes a prefix of `bytes`; returns how much.
    fn step(&mut self, bytes: &[u8], at: Stamp, sink: &mut impl Sink) -> usize {
        if self.preface > 0 {
            let done = PREFACE.len() - self.preface as usize;
            let n = bytes.len().min(self.preface as usize);
            if bytes[..n] != PREFACE[done..done + n] {
                self.lose("not the client preface");
                return bytes.len();
            }
            self.preface -= n as u8;
            return n;
        }
        let Some(frame) = self.frame else {
            if self.head_len == 0 {
                self.frame_at = at;
            }
            let n = bytes.len().min(9 - self.head_len as usize);
            let h = self.head_len as usize;
            self.head[h..h + n].copy_from_slice(&bytes[..n]);
            self.head_len += n as u8;
            if self.head_len == 9 {
                self.head_len = 0;
                self.begin(at, sink);
            }
            return n;
        };
        let n = bytes.len().min(self.left as usize);
        let chunk = &bytes[..n];
        match frame.kind {
            kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION => self.keep_block(chunk),
            kind::DATA => {
                if frame.flags & flag::PADDED != 0 && self.data_pad.is_none() && n > 0 {
                    self.data_pad = Some(chunk[0]);
                }
            }
            _ => {
                let room = MAX_CONTROL.saturating_sub(self.payload.len());
                self.payload.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
        self.left -= n as u32;
        if self.left == 0 {
            self.end(at, sink);
        }
        n
    }

    /// `n` octets went by uncaptured.
    fn skip(&mut self, n: u64, at: Stamp, sink: &mut impl Sink) {
        if self.preface > 0 || self.head_len > 0 {
            return self.lose("a frame header went uncaptured");
        }
        let Some(frame) = self.frame else {
            return self.lose("a frame header went uncaptured");
        };
        if n > u64::from(self.left) {
            // Past this frame's end: the next frame header is unseen.
            return self.lose("a frame header went uncaptured");
        }
        match frame.kind {
            kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION => {
                if let Some(b) = &mut self.block {
                    b.lost = true;
                }
            }
            kind::DATA if frame.flags & flag::PADDED != 0 && self.data_pad.is_none() => {
                // The pad length went unseen: the content size is unknown,
                // the frame's length is its upper bound.
                self.data_pad = Some(0);
            }
            // A control frame's payload, unseen: its values are unknown.
            _ => self.payload_unseen = true,
        }
        self.left -= n as u32;
        if self.left == 0 {
            self.end(at, sink);
        }
    }

    fn lose(&mut self, why: &'static str) {
        self.lost = Some(why);
        self.hpack.lost();
        self.block = None;
        self.block_bytes = Vec::new();
        self.payload = Vec::new();
    }

    /// A frame header was read whole.
    fn begin(&mut self, at: Stamp, sink: &mut impl Sink) {
        let h = self.head;
        let frame = Frame {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        };
        let continuing = self.block.is_some();
        let valid = match frame.kind {
            // A header block in progress takes only its CONTINUATIONs
            // (RFC 9113 §6.10).
            _ if continuing => {
                frame.kind == kind::CONTINUATION
                    && self.block.is_some_and(|b| b.stream == frame.stream)
            }
            kind::CONTINUATION => false,
            kind::DATA | kind::HEADERS | kind::PUSH_PROMISE | kind::RST_STREAM => frame.stream != 0,
            kind::SETTINGS | kind::GOAWAY => frame.stream == 0,
            _ => true,
        };
        if !valid {
            return self.lose("a frame HTTP/2 does not allow here");
        }
        if self.strict && (frame.kind > kind::CONTINUATION || frame.len > 16_384) {
            return self.lose("joined mid-frame, it seems");
        }
        if matches!(frame.kind, kind::HEADERS | kind::PUSH_PROMISE) {
            self.block = Some(Block {
                stream: frame.stream,
                end_stream: frame.kind == kind::HEADERS && frame.flags & flag::END_STREAM != 0,
                at: self.frame_at,
                lost: false,
                promise: frame.kind == kind::PUSH_PROMISE,
            });
            self.block_bytes.clear();
        }
        self.frame = Some(frame);
        self.left = frame.len;
        self.payload.clear();
        self.payload_unseen = false;
        self.data_pad = None;
        if frame.len == 0 {
            self.end(at, sink);
        }
    }

    fn keep_block(&mut self, chunk: &[u8]) {
        let Some(b) = &mut self.block else {
            return;
        };
        if b.lost {
            return;
        }
        if self.block_bytes.len() + chunk.len() > MAX_BLOCK {
            b.lost = true;
            self.block_bytes = Vec::new();
            return;
        }
        self.block_bytes.extend_from_slice(chunk);
    }

    /// The current frame's payload was read whole.
    fn end(&mut self, at: Stamp, sink: &mut impl Sink) {
        let Some(frame) = self.frame.take() else {
            return;
        };
        let control_lost = self.payload_unseen;
        match frame.kind {
            kind::DATA => {
                let pad = if frame.flags & flag::PADDED != 0 {
                    u32::from(self.data_pad.unwrap_or(0)) + 1
                } else {
                    0
                };
                let len = frame.len.saturating_sub(pad);
                sink.on_data(
                    frame.stream,
                    u64::from(len),
                    frame.flags & flag::END_STREAM != 0,
                    at,
                );
            }
            kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION => {
                self.strip_frame_fields(frame);
                if frame.flags & flag::END_HEADERS != 0 {
                    self.end_block(sink);
                }
            }
            kind::RST_STREAM => {
                let code = (!control_lost)
                    .then(|| {
                        self.payload
                            .get(..4)?
                            .try_into()
                            .ok()
                            .map(u32::from_be_bytes)
                    })
                    .flatten();
                sink.on_reset(frame.stream, code, at);
            }
            kind::GOAWAY => {
                let field = |i: usize| -> Option<u32> {
                    let b: [u8; 4] = self.payload.get(i..i + 4)?.try_into().ok()?;
                    Some(u32::from_be_bytes(b))
                };
                let (last, code) = if control_lost {
                    (None, None)
                } else {
                    (field(0).map(|s| s & 0x7fff_ffff), field(4))
                };
                sink.on_goaway(last.unwrap_or(u32::MAX >> 1), code, at);
            }
            kind::SETTINGS if frame.flags & flag::ACK == 0 && !control_lost => {
                for p in self.payload.chunks_exact(6) {
                    if u16::from_be_bytes([p[0], p[1]]) == SETTINGS_HEADER_TABLE_SIZE {
                        sink.on_table_size(u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                    }
                }
            }
            _ => {}
        }
    }

    /// Removes what the frame put around its block fragment: the pad
    /// length and padding, the priority fields, a promised stream id.
    /// The fragment is the tail of `block_bytes` this frame added.
    fn strip_frame_fields(&mut self, frame: Frame) {
        let Some(b) = &mut self.block else {
            return;
        };
        if b.lost || frame.kind == kind::CONTINUATION {
            return;
        }
        // HEADERS and PUSH_PROMISE start the block: all of it is theirs.
        let bytes = &mut self.block_bytes;
        let mut start = 0usize;
        let mut pad = 0usize;
        if frame.flags & flag::PADDED != 0 {
            match bytes.first() {
                Some(&p) => pad = p as usize,
                None => {
                    b.lost = true;
                    return;
                }
            }
            start = 1;
        }
        if frame.kind == kind::HEADERS && frame.flags & flag::PRIORITY != 0 {
            start += 5;
        }
        if frame.kind == kind::PUSH_PROMISE {
            start += 4;
        }
        if start + pad > bytes.len() {
            // Padding longer than the frame: a protocol error.
            b.lost = true;
            return;
        }
        bytes.truncate(bytes.len() - pad);
        bytes.drain(..start);
    }

    fn end_block(&mut self, sink: &mut impl Sink) {
        let Some(b) = self.block.take() else {
            return;
        };
        let decoded = if b.lost {
            self.hpack.lost();
            false
        } else {
            self.hpack
                .decode(&self.block_bytes, &mut self.fields)
                .is_ok()
        };
        if self.block_bytes.capacity() > MAX_BLOCK {
            self.block_bytes = Vec::new();
        }
        self.block_bytes.clear();
        if b.promise {
            return;
        }
        let fields = decoded.then_some(&self.fields);
        sink.on_headers(b.stream, fields, b.end_stream, b.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::hex;
    use crate::h2::hpack::Field;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[derive(Default)]
    struct Events(Vec<String>);

    impl Sink for Events {
        fn on_headers(&mut self, stream: u32, fields: Option<&Fields>, end: bool, _at: Stamp) {
            let f = match fields {
                Some(f) => f
                    .iter()
                    .map(|f| match f {
                        Field::Known { name, value } => format!(
                            "{}={}",
                            String::from_utf8_lossy(name),
                            String::from_utf8_lossy(value)
                        ),
                        Field::Unknown => "?".to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                None => "lost".to_owned(),
            };
            self.0.push(format!("headers {stream} end={end} {f}"));
        }
        fn on_data(&mut self, stream: u32, len: u64, end: bool, _at: Stamp) {
            self.0.push(format!("data {stream} {len} end={end}"));
        }
        fn on_reset(&mut self, stream: u32, code: Option<u32>, _at: Stamp) {
            self.0.push(format!("reset {stream} {code:?}"));
        }
        fn on_goaway(&mut self, last: u32, code: Option<u32>, _at: Stamp) {
            self.0.push(format!("goaway {last} {code:?}"));
        }
        fn on_table_size(&mut self, size: u32) {
            self.0.push(format!("table {size}"));
        }
    }

    /// A client's side of a conversation: every frame kind, a block over
    /// HEADERS and CONTINUATION with padding and priority, padded DATA.
    fn conversation() -> Vec<u8> {
        let block = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"); // C.4.1
        let mut c = PREFACE.to_vec();
        c.extend(frame(
            kind::SETTINGS,
            0,
            0,
            &[0, 1, 0, 0, 0x20, 0, 0, 3, 0, 0, 0, 100],
        ));
        c.extend(frame(kind::SETTINGS, flag::ACK, 0, &[]));
        let mut first = vec![3u8]; // pad length
        first.extend_from_slice(&[0x80, 0, 0, 0, 16]); // priority
        first.extend_from_slice(&block[..5]);
        first.extend_from_slice(&[0, 0, 0]);
        c.extend(frame(
            kind::HEADERS,
            flag::PADDED | flag::PRIORITY,
            1,
            &first,
        ));
        c.extend(frame(kind::CONTINUATION, 0, 1, &block[5..9]));
        c.extend(frame(kind::CONTINUATION, flag::END_HEADERS, 1, &block[9..]));
        c.extend(frame(
            kind::DATA,
            flag::PADDED | flag::END_STREAM,
            1,
            &[2, b'h', b'i', 0, 0],
        ));
        c.extend(frame(6, 0, 0, &[0; 8])); // PING
        c.extend(frame(8, 0, 1, &[0, 0, 1, 0])); // WINDOW_UPDATE
        c.extend(frame(2, 0, 3, &[0; 5])); // PRIORITY
                                           // C.4.2 references the entry C.4.1 inserted.
        c.extend(frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            3,
            &hex("8286 84be 5886 a8eb 1064 9cbf"),
        ));
        c.extend(frame(kind::RST_STREAM, 0, 3, &8u32.to_be_bytes()));
        c.extend(frame(kind::GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0, b'x']));
        c
    }

    const WANT: [&str; 6] = [
        "table 8192",
        "headers 1 end=false :method=GET :scheme=http :path=/ :authority=www.example.com",
        "data 1 2 end=true",
        "headers 3 end=true :method=GET :scheme=http :path=/ :authority=www.example.com \
         cache-control=no-cache",
        "reset 3 Some(8)",
        "goaway 3 Some(0)",
    ];

    fn seg(bytes: &[u8]) -> Segment<'_> {
        Segment {
            bytes,
            len: bytes.len() as u64,
            stamp: Stamp::default(),
        }
    }

    fn run(parts: &[&[u8]]) -> (Vec<String>, bool) {
        let mut f = Framer::client_from_start();
        let mut ev = Events::default();
        for p in parts {
            f.feed(seg(p), &mut ev);
        }
        (ev.0, f.is_lost())
    }

    #[test]
    fn frames_every_kind_split_at_every_byte() {
        let c = conversation();
        let want: Vec<String> = WANT.iter().map(|s| s.to_string()).collect();
        assert_eq!(run(&[&c]), (want.clone(), false));
        for cut in 0..=c.len() {
            assert_eq!(
                run(&[&c[..cut], &c[cut..]]),
                (want.clone(), false),
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = c.chunks(1).collect();
        assert_eq!(run(&bytes), (want, false));
    }

    #[test]
    fn uncaptured_data_is_counted_and_anything_else_lost() {
        let mut c = PREFACE.to_vec();
        c.extend(frame(kind::DATA, 0, 1, &[7; 100]));
        let mut f = Framer::client_from_start();
        let mut ev = Events::default();
        // 34 of 133 octets captured: the rest is DATA payload.
        f.feed(
            Segment {
                bytes: &c[..34],
                len: c.len() as u64,
                stamp: Stamp::default(),
            },
            &mut ev,
        );
        assert!(!f.is_lost());
        assert_eq!(ev.0, ["data 1 100 end=false"]);
        // A frame header that goes uncaptured loses the framing.
        let next = frame(kind::DATA, 0, 1, &[7; 10]);
        f.feed(
            Segment {
                bytes: &next[..4],
                len: next.len() as u64,
                stamp: Stamp::default(),
            },
            &mut ev,
        );
        assert!(f.is_lost());
    }

    #[test]
    fn an_uncaptured_block_is_reported_lost_and_so_is_the_table() {
        let block = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        let h = frame(kind::HEADERS, flag::END_HEADERS, 1, &block);
        let mut f = Framer::server_from_start();
        let mut ev = Events::default();
        f.feed(
            Segment {
                bytes: &h[..12],
                len: h.len() as u64,
                stamp: Stamp::default(),
            },
            &mut ev,
        );
        assert_eq!(ev.0, ["headers 1 end=false lost"]);
        assert!(!f.is_lost());
        assert!(!f.table_known());
        // The next block's reference to the lost block's entry is unknown.
        let h = frame(kind::HEADERS, flag::END_HEADERS, 3, &hex("82 be"));
        f.feed(seg(&h), &mut ev);
        assert_eq!(ev.0[1], "headers 3 end=false :method=GET ?");
    }

    #[test]
    fn blocks_past_the_bound_are_lost() {
        let mut big = vec![0x00, 0x01, b'x', 0x7f];
        let n = MAX_BLOCK;
        // A literal of n octets: 7-bit prefix integer.
        let mut rest = n - 127;
        while rest >= 128 {
            big.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        big.push(rest as u8);
        big.extend(std::iter::repeat_n(b'y', n));
        let mut c = Vec::new();
        for (i, chunk) in big.chunks(16384).enumerate() {
            let (kind, flags) = if i == 0 {
                (kind::HEADERS, 0)
            } else {
                (kind::CONTINUATION, 0)
            };
            c.extend(frame(kind, flags, 1, chunk));
        }
        c.extend(frame(kind::CONTINUATION, flag::END_HEADERS, 1, &[]));
        let mut f = Framer::server_from_start();
        let mut ev = Events::default();
        f.feed(seg(&c), &mut ev);
        assert_eq!(ev.0, ["headers 1 end=false lost"]);
        assert!(!f.is_lost());
    }

    #[test]
    fn bad_shapes_lose_the_framing_and_never_panic() {
        let block = hex("82");
        for bad in [
            // A CONTINUATION with no block open.
            frame(kind::CONTINUATION, flag::END_HEADERS, 1, &block),
            // A block interrupted by another frame.
            [
                frame(kind::HEADERS, 0, 1, &block),
                frame(kind::DATA, 0, 1, b"x"),
            ]
            .concat(),
            // HEADERS on stream 0, SETTINGS on stream 1.
            frame(kind::HEADERS, flag::END_HEADERS, 0, &block),
            frame(kind::SETTINGS, 0, 1, &[]),
        ] {
            let mut f = Framer::server_from_start();
            f.feed(seg(&bad), &mut Events::default());
            assert!(f.is_lost());
        }
        // Not the preface.
        let mut f = Framer::client_from_start();
        f.feed(seg(b"GET / HTTP/1.1\r\n\r\n"), &mut Events::default());
        assert!(f.is_lost());
        // Padding longer than the frame: the block is lost, not read.
        let mut f = Framer::server_from_start();
        let mut ev = Events::default();
        f.feed(
            seg(&frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::PADDED,
                1,
                &[9, 0x82],
            )),
            &mut ev,
        );
        assert_eq!(ev.0, ["headers 1 end=false lost"]);
        // Garbage.
        let mut x = 0x1234_5678u32;
        for _ in 0..200 {
            let junk: Vec<u8> = (0..300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let mut f = Framer::server_from_start();
            f.feed(seg(&junk), &mut Events::default());
        }
    }
}
