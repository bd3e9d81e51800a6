//! Redis's RESP2/RESP3 framing over one direction of a connection.
//!
//! Like [`crate::http1`], the framer walks segments whose bytes are only
//! partly captured: a bulk payload and its CRLF are skipped by count, so a
//! multi-megabyte value costs nothing, and only type lines must be visible.
//! Commands are reported with their name and argument count, never their
//! arguments (values are secrets until proven otherwise); replies as success
//! or, for errors, the error's first word.
//!
//! Pure: bytes in, [`Sink`] callbacks out; memory bounded by
//! [`MAX_LINE`] and [`MAX_DEPTH`].

use crate::{
    lines::{self, CountedFramer, State},
    stream::{Segment, Stamp},
};

/// Longest type line (`+OK`, `$5`, `-ERR …`) kept; the rest is skipped.
pub const MAX_LINE: usize = 512;
/// Deepest aggregate nesting followed.
pub const MAX_DEPTH: usize = 32;
/// Longest command name or error word kept.
const MAX_WORD: usize = 32;

/// A complete command, as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Upper-cased: `GET`, `SET`, `MULTI`.
    pub name: String,
    /// Arguments after the name.
    pub args: u32,
    /// For `SELECT`, the database index it switches to: the one argument
    /// the framer reads (an index is not a secret).
    pub db_index: Option<u32>,
}

/// What a reply was, as much as spans need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// The error's first word (`ERR`, `WRONGTYPE`, `NOSCRIPT`).
    Error(String),
}

pub trait Sink {
    /// A complete command whose first byte was in the segment stamped `at`.
    fn on_command(&mut self, cmd: Command, at: Stamp);
    /// A complete top-level reply; `at` is the segment holding its last byte.
    fn on_reply(&mut self, reply: Reply, at: Stamp);
    /// Framing lost: a type line fell outside the capture, or the bytes are
    /// not RESP. The framer stays lost until [`Framer::resync`].
    fn on_desync(&mut self) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Commands,
    Replies,
}

/// Frames one direction of one Redis connection.
#[derive(Debug)]
pub struct Framer {
    dir: Direction,
    state: State,
    line: Vec<u8>,
    /// Elements still to read at each open aggregate level, and whether the
    /// level is an attribute (which precedes a value rather than being one).
    stack: Vec<(u64, bool)>,
    /// Whether the bulk being skipped is a command's name.
    name_bulk: bool,
    /// Whether the bulk being skipped is `SELECT`'s index.
    index_bulk: bool,
    index: Vec<u8>,
    name: Vec<u8>,
    elements: u64,
    error: Option<String>,
    started_at: Stamp,
    in_message: bool,
    /// The message being read is a RESP3 push (`>`): out-of-band data such
    /// as an invalidation, not the reply to any command.
    push: bool,
}

fn word(bytes: &[u8]) -> String {
    let w = bytes
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .unwrap_or(&[]);
    String::from_utf8_lossy(&w[..w.len().min(MAX_WORD)]).to_ascii_uppercase()
}

fn parse_len(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.trim().parse().ok()
}

/// Does `bytes` look like the start of a RESP message in `dir`?
pub fn looks_like_start(dir: Direction, bytes: &[u8]) -> bool {
    match (dir, bytes.first()) {
        // Clients send arrays of bulk strings; inline commands are rare and
        // indistinguishable from text protocols, so not sniffed.
        (Direction::Commands, Some(b'*')) => bytes.get(1).is_some_and(u8::is_ascii_digit),
        (Direction::Replies, Some(b)) => b"+-:$*_#,(!=%~>|".contains(b),
        _ => false,
    }
}

impl Framer {
    pub fn new(dir: Direction) -> Self {
        Framer {
            dir,
            state: State::Line,
            line: Vec::new(),
            stack: Vec::new(),
            name_bulk: false,
            index_bulk: false,
            index: Vec::new(),
            name: Vec::new(),
            elements: 0,
            error: None,
            started_at: Stamp::default(),
            in_message: false,
            push: false,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Starts over: the caller knows a message begins with the next byte.
    pub fn resync(&mut self) {
        self.state = State::Line;
        self.line.clear();
        self.stack.clear();
        self.in_message = false;
    }

    pub fn feed<S: Sink>(&mut self, seg: Segment<'_>, sink: &mut S) {
        lines::feed(self, seg, sink);
    }

    fn lose_sync(&mut self, sink: &mut impl Sink) {
        self.state = State::Lost;
        sink.on_desync();
    }

    /// Consumes a prefix of `bytes`; returns how many bytes it took.
    fn step_bytes(&mut self, bytes: &[u8], at: Stamp, sink: &mut impl Sink) -> usize {
        match self.state {
            State::Lost => bytes.len(),
            State::Block { remaining } => {
                let take = remaining.min(bytes.len() as u64) as usize;
                if self.name_bulk {
                    let room = MAX_WORD.saturating_sub(self.name.len());
                    let keep = take.min(room);
                    // The payload's own bytes only, not its CRLF.
                    let payload = keep.min((remaining as usize).saturating_sub(2));
                    self.name.extend_from_slice(&bytes[..payload]);
                } else if self.index_bulk {
                    let room = 8usize.saturating_sub(self.index.len());
                    let payload = take.min(room).min((remaining as usize).saturating_sub(2));
                    self.index.extend_from_slice(&bytes[..payload]);
                }
                self.state = State::Block {
                    remaining: remaining - take as u64,
                };
                if remaining == take as u64 {
                    self.element_done(at, sink);
                }
                take
            }
            State::Line => {
                if !self.in_message {
                    self.in_message = true;
                    self.started_at = at;
                    self.elements = 0;
                    self.name.clear();
                    self.index.clear();
                    self.error = None;
                }
                let (used, line) = lines::take_line(&mut self.line, bytes, MAX_LINE);
                if let Some(line) = line {
                    self.on_line(&line, at, sink);
                }
                used
            }
        }
    }

    fn on_line(&mut self, line: &[u8], at: Stamp, sink: &mut impl Sink) {
        let Some((&kind, rest)) = line.split_first() else {
            // An empty line between commands is a no-op to the server
            // (redis-cli --pipe sends one before its closing ECHO).
            if self.dir == Direction::Commands && self.stack.is_empty() {
                self.in_message = false;
                return;
            }
            return self.lose_sync(sink);
        };
        let top = self.stack.is_empty();
        match kind {
            b'+' | b':' | b'_' | b'#' | b',' | b'(' => self.element_done(at, sink),
            b'-' => {
                if top {
                    self.error = Some(word(rest));
                }
                self.element_done(at, sink)
            }
            b'$' | b'!' | b'=' => match parse_len(rest) {
                // Null bulk: no payload.
                Some(-1) => self.element_done(at, sink),
                Some(n) if n >= 0 => {
                    // A command's first bulk is its name; a top-level bulk
                    // error's payload starts with the error's word.
                    let command_name = self.dir == Direction::Commands
                        && self.stack.len() == 1
                        && self.elements == 0;
                    let bulk_error = kind == b'!' && top;
                    self.name_bulk = command_name || bulk_error;
                    self.index_bulk = self.dir == Direction::Commands
                        && self.stack.len() == 1
                        && self.elements == 1
                        && self.name.eq_ignore_ascii_case(b"SELECT");
                    if bulk_error {
                        self.error = Some(String::new());
                    }
                    self.state = State::Block {
                        remaining: n as u64 + 2,
                    };
                }
                _ => self.lose_sync(sink),
            },
            b'*' | b'~' | b'>' | b'%' | b'|' => match parse_len(rest) {
                // Redis ignores an empty or null command array: no reply.
                Some(n) if n <= 0 && top && self.dir == Direction::Commands => {
                    self.in_message = false;
                }
                // An empty attribute describes the value that follows.
                Some(n) if n <= 0 && kind == b'|' => {}
                Some(n) if n <= 0 => {
                    self.push |= top && kind == b'>';
                    self.element_done(at, sink)
                }
                Some(n) if self.stack.len() < MAX_DEPTH => {
                    let n = n as u64;
                    // Maps and attributes hold key/value pairs.
                    let count = if kind == b'%' || kind == b'|' {
                        n.saturating_mul(2)
                    } else {
                        n
                    };
                    self.push |= top && kind == b'>';
                    self.stack.push((count, kind == b'|'));
                }
                _ => self.lose_sync(sink),
            },
            _ if self.dir == Direction::Commands && top => {
                // An inline command: `PING`, `SET k v` typed by hand.
                let mut words = line
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|w| !w.is_empty());
                let Some(first) = words.next() else {
                    return self.lose_sync(sink);
                };
                if !first.iter().all(u8::is_ascii_alphabetic) {
                    return self.lose_sync(sink);
                }
                self.name = first.to_vec();
                let rest: Vec<&[u8]> = words.collect();
                if let Some(index) = rest.first() {
                    self.index = index[..index.len().min(8)].to_vec();
                }
                self.elements = 1 + rest.len() as u64;
                self.message_done(at, sink);
            }
            _ => self.lose_sync(sink),
        }
    }

    /// One element ended; close the aggregates it completes.
    fn element_done(&mut self, at: Stamp, sink: &mut impl Sink) {
        self.state = State::Line;
        if self.stack.len() == 1 {
            self.elements += 1;
        }
        loop {
            let Some((left, is_attribute)) = self.stack.last_mut() else {
                return self.message_done(at, sink);
            };
            *left = left.saturating_sub(1);
            if *left > 0 {
                return;
            }
            let attribute = *is_attribute;
            self.stack.pop();
            if attribute {
                // The value the attribute describes comes next.
                return;
            }
        }
    }

    fn message_done(&mut self, at: Stamp, sink: &mut impl Sink) {
        self.state = State::Line;
        self.in_message = false;
        if std::mem::take(&mut self.push) {
            self.error = None;
            return;
        }
        match self.dir {
            Direction::Commands => {
                let name = word(&self.name);
                let db_index = if name == "SELECT" {
                    std::str::from_utf8(&self.index)
                        .ok()
                        .and_then(|i| i.parse().ok())
                } else {
                    None
                };
                let cmd = Command {
                    name,
                    args: self.elements.saturating_sub(1).min(u64::from(u32::MAX)) as u32,
                    db_index,
                };
                sink.on_command(cmd, self.started_at);
            }
            Direction::Replies => {
                let reply = match self.error.take() {
                    Some(e) if e.is_empty() => Reply::Error(word(&self.name)),
                    Some(e) => Reply::Error(e),
                    None => Reply::Ok,
                };
                sink.on_reply(reply, at);
            }
        }
    }
}

impl<S: Sink> CountedFramer<S> for Framer {
    fn state(&self) -> State {
        self.state
    }

    fn set_state(&mut self, state: State) {
        self.state = state;
    }

    fn step(&mut self, bytes: &[u8], seg: &Segment<'_>, sink: &mut S) -> usize {
        self.step_bytes(bytes, seg.stamp, sink)
    }

    fn block_done(&mut self, seg: &Segment<'_>, sink: &mut S) {
        self.element_done(seg.stamp, sink);
    }

    fn lose(&mut self, sink: &mut S) {
        self.lose_sync(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        commands: Vec<(Command, u64)>,
        replies: Vec<(Reply, u64)>,
        desyncs: usize,
    }

    impl Sink for Rec {
        fn on_command(&mut self, cmd: Command, at: Stamp) {
            self.commands.push((cmd, at.exit_ns));
        }
        fn on_reply(&mut self, reply: Reply, at: Stamp) {
            self.replies.push((reply, at.exit_ns));
        }
        fn on_desync(&mut self) {
            self.desyncs += 1;
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

    fn cmd(name: &str, args: u32) -> Command {
        Command {
            name: name.into(),
            args,
            db_index: None,
        }
    }

    #[test]
    fn select_reports_its_index_at_every_split() {
        let stream = b"*2\r\n$6\r\nselect\r\n$2\r\n15\r\n*1\r\n$4\r\nPING\r\nSELECT 3\r\n";
        for cut in 0..=stream.len() {
            let mut f = Framer::new(Direction::Commands);
            let mut rec = Rec::default();
            f.feed(seg(&stream[..cut], 1), &mut rec);
            f.feed(seg(&stream[cut..], 2), &mut rec);
            let got: Vec<Command> = rec.commands.iter().map(|c| c.0.clone()).collect();
            let select = |i| Command {
                db_index: Some(i),
                ..cmd("SELECT", 1)
            };
            assert_eq!(
                got,
                vec![select(15), cmd("PING", 0), select(3)],
                "cut {cut}"
            );
        }
    }

    const PIPELINE: &[u8] = b"*3\r\n$3\r\nset\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n*1\r\n$4\r\nPING\r\n";

    #[test]
    fn a_pipeline_split_anywhere_gives_the_same_commands() {
        for cut in 0..=PIPELINE.len() {
            let mut f = Framer::new(Direction::Commands);
            let mut rec = Rec::default();
            f.feed(seg(&PIPELINE[..cut], 1), &mut rec);
            f.feed(seg(&PIPELINE[cut..], 2), &mut rec);
            let names: Vec<Command> = rec.commands.iter().map(|c| c.0.clone()).collect();
            assert_eq!(
                names,
                vec![cmd("SET", 2), cmd("GET", 1), cmd("PING", 0)],
                "cut at {cut}"
            );
            assert_eq!(rec.desyncs, 0);
        }
    }

    #[test]
    fn replies_of_every_resp3_type_and_errors() {
        let stream = b"+OK\r\n-WRONGTYPE Operation against a key\r\n:42\r\n$5\r\nhello\r\n$-1\r\n\
            *2\r\n$1\r\na\r\n*1\r\n:1\r\n%1\r\n+k\r\n+v\r\n_\r\n#t\r\n,1.5\r\n(123\r\n\
            !9\r\nERR stuff\r\n=8\r\ntxt:abcd\r\n~2\r\n+a\r\n+b\r\n|1\r\n+ttl\r\n:3\r\n+after-attr\r\n*0\r\n";
        for cut in 0..=stream.len() {
            let mut f = Framer::new(Direction::Replies);
            let mut rec = Rec::default();
            f.feed(seg(&stream[..cut], 1), &mut rec);
            f.feed(seg(&stream[cut..], 2), &mut rec);
            let replies: Vec<Reply> = rec.replies.iter().map(|r| r.0.clone()).collect();
            // The attribute (`|1`) belongs to the reply after it: 16 replies.
            let mut want = vec![Reply::Ok; 16];
            want[1] = Reply::Error("WRONGTYPE".into());
            want[11] = Reply::Error("ERR".into());
            assert_eq!(rec.desyncs, 0, "cut at {cut}");
            assert_eq!(replies.len(), want.len(), "cut at {cut}: {replies:?}");
            assert_eq!(replies, want, "cut at {cut}");
        }
    }

    #[test]
    fn pushes_empty_arrays_and_empty_attributes_are_not_messages() {
        let mut f = Framer::new(Direction::Replies);
        let mut rec = Rec::default();
        // An invalidation push between two replies, and an empty attribute.
        f.feed(
            seg(
                b"+OK\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n|0\r\n:1\r\n",
                1,
            ),
            &mut rec,
        );
        assert_eq!(rec.replies.len(), 2, "{:?}", rec.replies);
        let mut c = Framer::new(Direction::Commands);
        c.feed(seg(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n", 1), &mut rec);
        assert_eq!(rec.commands.len(), 1);
        assert_eq!(rec.commands[0].0.name, "PING");
    }

    #[test]
    fn big_values_are_skipped_by_count() {
        let mut f = Framer::new(Direction::Commands);
        let mut rec = Rec::default();
        // SET k <5 MB value>, most of it never captured.
        let head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5000000\r\nxxxx";
        let len = head.len() as u64 - 4 + 5_000_000 + 2;
        f.feed(
            Segment {
                bytes: head,
                len,
                stamp: Stamp {
                    enter_ns: 1,
                    exit_ns: 1,
                },
            },
            &mut rec,
        );
        f.feed(seg(b"*1\r\n$4\r\nPING\r\n", 2), &mut rec);
        let names: Vec<Command> = rec.commands.iter().map(|c| c.0.clone()).collect();
        assert_eq!(names, vec![cmd("SET", 2), cmd("PING", 0)]);
    }

    #[test]
    fn inline_commands_and_garbage() {
        let mut f = Framer::new(Direction::Commands);
        let mut rec = Rec::default();
        f.feed(seg(b"PING\r\n\r\nset a b\r\n", 1), &mut rec);
        let names: Vec<Command> = rec.commands.iter().map(|c| c.0.clone()).collect();
        assert_eq!(names, vec![cmd("PING", 0), cmd("SET", 2)]);
        f.feed(seg(b"\x16\x03\x01 not resp\r\n", 2), &mut rec);
        assert!(f.is_lost());
        assert_eq!(rec.desyncs, 1);
        // Lost stays lost, whatever comes, until the owner resyncs.
        f.feed(seg(b"*1\r\n$4\r\nPING\r\n", 3), &mut rec);
        assert_eq!(rec.commands.len(), 2);
        f.resync();
        f.feed(seg(b"*1\r\n$4\r\nPING\r\n", 4), &mut rec);
        assert_eq!(rec.commands.len(), 3);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_memory_stays_bounded() {
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let mut f = Framer::new(Direction::Replies);
            let mut rec = Rec::default();
            let mut buf = Vec::new();
            for _ in 0..256 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let b = b"*$+-:%~|>\r\n0123456789-_"[(x % 23) as usize];
                buf.push(b);
            }
            f.feed(seg(&buf, 1), &mut rec);
            assert!(f.line.len() <= MAX_LINE);
            assert!(f.stack.len() <= MAX_DEPTH);
        }
    }
}
