//! memcached's text protocol over one direction of a connection.
//!
//! Commands are lines (`get k1 k2`, `set k 0 0 5`), storage commands are
//! followed by a data block of the announced size, skipped by count. Replies
//! are lines too: `VALUE … <bytes>` (followed by a data block) and `STAT …`
//! continue a reply, and any other line (`END`, `STORED`, `NOT_FOUND`, a
//! number, `ERROR`) ends it. Commands sent with `noreply` get no reply and
//! are reported as such, so pairing stays in step.
//!
//! Pure: bytes in, [`Sink`] callbacks out (the command and reply
//! shapes are Redis's, [`Command`] and [`Reply`]); memory bounded by
//! [`MAX_LINE`].

use crate::{
    lines::{self, CountedFramer, State},
    resp::{Command, Reply},
    stream::{Segment, Stamp},
};

/// Longest line kept; longer ones are cut (keys are at most 250 bytes).
pub const MAX_LINE: usize = 1024;

/// Commands that carry a data block after their line.
const STORAGE: [&str; 6] = ["set", "add", "replace", "append", "prepend", "cas"];
/// Every command this framer knows: the first word must be one of them.
const KNOWN: [&str; 19] = [
    "get",
    "gets",
    "gat",
    "gats",
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "delete",
    "incr",
    "decr",
    "touch",
    "flush_all",
    "version",
    "stats",
    "verbosity",
    "quit",
];

pub trait Sink {
    /// A complete command; `noreply` ones get no reply.
    fn on_command(&mut self, cmd: Command, noreply: bool, at: Stamp);
    /// A complete reply; `at` is the segment holding its last byte.
    fn on_reply(&mut self, reply: Reply, at: Stamp);
    fn on_desync(&mut self) {}
}

/// Which way the bytes go; the same as Redis's.
pub use crate::resp::Direction;

#[derive(Debug)]
pub struct Framer {
    dir: Direction,
    state: State,
    line: Vec<u8>,
    started_at: Stamp,
    in_message: bool,
    /// A storage command waiting for its data block to end.
    held: Option<(Command, bool)>,
}

/// Does `bytes` start like a memcached text command?
pub fn looks_like_start(bytes: &[u8]) -> bool {
    let word_end = bytes
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let word = &bytes[..word_end];
    word_end < bytes.len() && KNOWN.iter().any(|k| k.as_bytes() == word)
}

impl Framer {
    pub fn new(dir: Direction) -> Self {
        Framer {
            dir,
            state: State::Line,
            line: Vec::new(),
            started_at: Stamp::default(),
            in_message: false,
            held: None,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Starts over: the caller knows a message begins with the next byte.
    pub fn resync(&mut self) {
        self.state = State::Line;
        self.line.clear();
        self.in_message = false;
        self.held = None;
    }

    pub fn feed<S: Sink>(&mut self, seg: Segment<'_>, sink: &mut S) {
        lines::feed(self, seg, sink);
    }

    fn step_bytes(&mut self, bytes: &[u8], at: Stamp, sink: &mut impl Sink) -> usize {
        match self.state {
            State::Lost => bytes.len(),
            State::Block { remaining } => {
                let take = remaining.min(bytes.len() as u64);
                self.state = State::Block {
                    remaining: remaining - take,
                };
                if remaining == take {
                    self.data_block_done(sink);
                }
                take as usize
            }
            State::Line => {
                if !self.in_message {
                    self.in_message = true;
                    self.started_at = at;
                }
                let (used, line) = lines::take_line(&mut self.line, bytes, MAX_LINE);
                if let Some(line) = line {
                    match self.dir {
                        Direction::Commands => self.command_line(&line, sink),
                        Direction::Replies => self.reply_line(&line, at, sink),
                    }
                }
                used
            }
        }
    }

    fn lose_sync(&mut self, sink: &mut impl Sink) {
        self.state = State::Lost;
        sink.on_desync();
    }

    fn command_line(&mut self, line: &[u8], sink: &mut impl Sink) {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_ascii_whitespace();
        let Some(name) = words.next() else {
            self.in_message = false;
            return;
        };
        if !KNOWN.contains(&name) {
            return self.lose_sync(sink);
        }
        let rest: Vec<&str> = words.collect();
        // `noreply` only where the command takes it, after its fixed
        // arguments: `get noreply` fetches a key named "noreply".
        let fixed_args = match name {
            "set" | "add" | "replace" | "append" | "prepend" => Some(4),
            "cas" => Some(5),
            "delete" | "verbosity" => Some(1),
            "incr" | "decr" | "touch" => Some(2),
            "flush_all" => Some(0),
            _ => None,
        };
        let noreply = fixed_args.is_some_and(|n| rest.len() > n && rest.last() == Some(&"noreply"));
        let storage = STORAGE.contains(&name);
        // Keys: all arguments of retrievals, the first of the others.
        let keys = match name {
            "get" | "gets" => rest.len(),
            "gat" | "gats" => rest.len().saturating_sub(1),
            "version" | "stats" | "flush_all" | "verbosity" | "quit" => 0,
            _ => 1,
        };
        let cmd = Command {
            name: name.to_owned(),
            args: keys.min(u32::MAX as usize) as u32,
            db_index: None,
        };
        if storage {
            // set <key> <flags> <exptime> <bytes> [noreply]; cas adds <cas>.
            let Some(remaining) = rest
                .get(3)
                .and_then(|b| b.parse::<u64>().ok())
                .and_then(|n| n.checked_add(2))
            else {
                return self.lose_sync(sink);
            };
            self.held = Some((cmd, noreply));
            self.state = State::Block { remaining };
            return;
        }
        self.in_message = false;
        sink.on_command(cmd, noreply, self.started_at);
    }

    fn reply_line(&mut self, line: &[u8], at: Stamp, sink: &mut impl Sink) {
        if let Some(rest) = line.strip_prefix(b"VALUE ") {
            // VALUE <key> <flags> <bytes> [<cas>]: a data block follows.
            let text = String::from_utf8_lossy(rest);
            let Some(remaining) = text
                .split_ascii_whitespace()
                .nth(2)
                .and_then(|b| b.parse::<u64>().ok())
                .and_then(|n| n.checked_add(2))
            else {
                return self.lose_sync(sink);
            };
            self.state = State::Block { remaining };
            return;
        }
        if line.starts_with(b"STAT ") {
            return;
        }
        if line.is_empty() {
            return self.lose_sync(sink);
        }
        let reply = if line == b"ERROR"
            || line.starts_with(b"CLIENT_ERROR")
            || line.starts_with(b"SERVER_ERROR")
        {
            let word = line.split(|&b| b == b' ').next().unwrap_or(line);
            Reply::Error(String::from_utf8_lossy(word).into_owned())
        } else {
            Reply::Ok
        };
        self.in_message = false;
        sink.on_reply(reply, at);
    }

    fn data_block_done(&mut self, sink: &mut impl Sink) {
        self.state = State::Line;
        if let Some((cmd, noreply)) = self.held.take() {
            self.in_message = false;
            sink.on_command(cmd, noreply, self.started_at);
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

    fn block_done(&mut self, _seg: &Segment<'_>, sink: &mut S) {
        self.data_block_done(sink);
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
        commands: Vec<(String, u32, bool)>,
        replies: Vec<Reply>,
        desyncs: usize,
    }

    impl Sink for Rec {
        fn on_command(&mut self, cmd: Command, noreply: bool, _at: Stamp) {
            self.commands.push((cmd.name, cmd.args, noreply));
        }
        fn on_reply(&mut self, reply: Reply, _at: Stamp) {
            self.replies.push(reply);
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

    #[test]
    fn commands_split_anywhere() {
        let stream = b"set a 0 0 5\r\nhello\r\nget a b c\r\nset n 0 0 1 noreply\r\n1\r\nincr n 2\r\ndelete a\r\ngets a\r\n";
        for cut in 0..=stream.len() {
            let mut f = Framer::new(Direction::Commands);
            let mut rec = Rec::default();
            f.feed(seg(&stream[..cut], 1), &mut rec);
            f.feed(seg(&stream[cut..], 2), &mut rec);
            assert_eq!(
                rec.commands,
                vec![
                    ("set".into(), 1, false),
                    ("get".into(), 3, false),
                    ("set".into(), 1, true),
                    ("incr".into(), 1, false),
                    ("delete".into(), 1, false),
                    ("gets".into(), 1, false),
                ],
                "cut at {cut}"
            );
            assert_eq!(rec.desyncs, 0);
        }
    }

    #[test]
    fn replies_split_anywhere() {
        let stream =
            b"STORED\r\nVALUE a 0 5\r\nhello\r\nVALUE c 0 3\r\nxyz\r\nEND\r\n3\r\nNOT_FOUND\r\n\
            CLIENT_ERROR bad data chunk\r\nEND\r\nSTAT pid 1\r\nSTAT uptime 2\r\nEND\r\nERROR\r\n";
        for cut in 0..=stream.len() {
            let mut f = Framer::new(Direction::Replies);
            let mut rec = Rec::default();
            f.feed(seg(&stream[..cut], 1), &mut rec);
            f.feed(seg(&stream[cut..], 2), &mut rec);
            let err = |w: &str| Reply::Error(w.into());
            assert_eq!(
                rec.replies,
                vec![
                    Reply::Ok,
                    Reply::Ok,
                    Reply::Ok,
                    Reply::Ok,
                    err("CLIENT_ERROR"),
                    Reply::Ok,
                    Reply::Ok,
                    err("ERROR"),
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn noreply_only_where_the_command_takes_it() {
        let mut f = Framer::new(Direction::Commands);
        let mut rec = Rec::default();
        f.feed(seg(b"get noreply\r\ndelete noreply\r\ndelete k noreply\r\nset k 0 0 1 noreply\r\nx\r\n", 1), &mut rec);
        let flags: Vec<bool> = rec.commands.iter().map(|c| c.2).collect();
        assert_eq!(flags, vec![false, false, true, true]);
        // An absurd length loses sync instead of overflowing.
        f.feed(seg(b"set k 0 0 18446744073709551615\r\n", 2), &mut rec);
        assert!(f.is_lost());
    }

    #[test]
    fn values_skipped_by_count_and_garbage() {
        let mut f = Framer::new(Direction::Replies);
        let mut rec = Rec::default();
        let head = b"VALUE big 0 1000000\r\nzzzz";
        f.feed(
            Segment {
                bytes: head,
                len: head.len() as u64 - 4 + 1_000_000 + 2,
                stamp: Stamp::default(),
            },
            &mut rec,
        );
        f.feed(seg(b"END\r\n", 2), &mut rec);
        assert_eq!(rec.replies, vec![Reply::Ok]);
        assert!(looks_like_start(b"get k\r\n"));
        assert!(!looks_like_start(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_start(b"getaway"));
        let mut c = Framer::new(Direction::Commands);
        c.feed(seg(b"bogus command\r\n", 1), &mut rec);
        assert!(c.is_lost());
    }
}
