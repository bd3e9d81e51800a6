//! TLS plaintext written before its socket was known.
//!
//! A memory-buffer TLS library (Node.js's OpenSSL) makes no syscall inside
//! its calls, so the probes learn an object's socket only from its first
//! read. What it wrote before (a client's request, an HTTP/2 preface) the
//! probes send with no socket, named by the library object; this module
//! holds it until the probes say whose it is (`kind::TLS_OWNER`), and then
//! it goes to the tracker ahead of the read that named the socket. What
//! is never claimed, what came before the socket opened (a freed object's
//! address reused), and an object's writes past the bounds are dropped
//! and counted, never replayed with a hole in them.

use crate::exchange::Task;
use std::collections::VecDeque;

use crate::hash::Map;

use zerospan_protocols::stream::{Segment, Stamp};

/// Most library objects held at once; past it the oldest is dropped.
const MAX_OBJECTS: usize = 1024;
/// Most captured bytes held for one object; writes past it are dropped
/// (a connection that writes this much before reading anything is not a
/// request/response protocol the agent traces).
const MAX_BYTES: usize = 64 * 1024;
/// How long a write waits for its socket to be named.
const MAX_AGE_NS: u64 = 10_000_000_000;

/// One write, copied out of the ring buffer.
#[derive(Debug)]
pub struct Held {
    pub task: Task,
    pub bytes: Vec<u8>,
    pub len: u64,
    pub stamp: Stamp,
}

impl Held {
    pub fn segment(&self) -> Segment<'_> {
        Segment {
            bytes: &self.bytes,
            len: self.len,
            stamp: self.stamp,
        }
    }
}

struct Writes {
    held: Vec<Held>,
    bytes: usize,
    /// When its first write was held.
    since: u64,
    /// A write went past the bounds: the rest would be a stream with a
    /// hole in it, so nothing of this object is replayed.
    poisoned: bool,
}

/// Writes waiting for their socket, by `(tgid, library object)`.
#[derive(Default)]
pub struct Unowned {
    by_object: Map<(u32, u64), Writes>,
    /// Objects in the order they were first held, for the bound and the
    /// age limit (entries already claimed are skipped).
    order: VecDeque<((u32, u64), u64)>,
}

impl Unowned {
    /// Holds a write of object `ssl` in process `tgid`. Returns how many
    /// writes were dropped to stay within the bounds.
    pub fn hold(&mut self, tgid: u32, ssl: u64, task: Task, seg: Segment<'_>) -> u64 {
        let mut dropped = 0;
        let key = (tgid, ssl);
        if !self.by_object.contains_key(&key) {
            while self.by_object.len() >= MAX_OBJECTS {
                match self.order.pop_front() {
                    Some((old, _)) => dropped += self.drop_object(old),
                    None => break,
                }
            }
            self.order.push_back((key, seg.stamp.exit_ns));
        }
        let writes = self.by_object.entry(key).or_insert_with(|| Writes {
            held: Vec::new(),
            bytes: 0,
            since: seg.stamp.exit_ns,
            poisoned: false,
        });
        if writes.poisoned {
            return dropped + 1;
        }
        if writes.bytes + seg.bytes.len() > MAX_BYTES {
            writes.poisoned = true;
            let lost = writes.held.len() as u64 + 1;
            writes.held = Vec::new();
            return dropped + lost;
        }
        writes.bytes += seg.bytes.len();
        writes.held.push(Held {
            task,
            bytes: seg.bytes.to_vec(),
            len: seg.len,
            stamp: seg.stamp,
        });
        dropped
    }

    /// The writes held for object `ssl` of `tgid`, oldest first: their
    /// socket, opened at `opened_ns`, is now known. Writes from before it
    /// opened were another object's that had the same address and went
    /// away without a read: they are dropped (the second value counts
    /// them), never given to this socket. A socket that predates the agent
    /// (`None`: its opening was not seen) keeps them all: the probes sent
    /// none before the agent attached, so none predate the socket. (An
    /// object freed without a read since the attach, whose address a new
    /// object on such a socket reuses, is not told apart: rare.)
    pub fn claim(&mut self, tgid: u32, ssl: u64, opened_ns: Option<u64>) -> (Vec<Held>, u64) {
        let Some(w) = self.by_object.remove(&(tgid, ssl)) else {
            return (Vec::new(), 0);
        };
        let (mine, before): (Vec<Held>, Vec<Held>) = w
            .held
            .into_iter()
            .partition(|h| opened_ns.is_none_or(|t| h.stamp.enter_ns >= t));
        (mine, before.len() as u64)
    }

    /// Drops what waited since before `now_ns - MAX_AGE_NS`. Returns how
    /// many writes went.
    pub fn expire(&mut self, now_ns: u64) -> u64 {
        let mut dropped = 0;
        let cutoff = now_ns.saturating_sub(MAX_AGE_NS);
        while let Some(&(key, since)) = self.order.front() {
            if since >= cutoff {
                break;
            }
            self.order.pop_front();
            // The entry may be of an object claimed since, and the same
            // object held again later: that has its own entry.
            let fresh = self.by_object.get(&key).is_some_and(|w| w.since >= cutoff);
            if !fresh {
                dropped += self.drop_object(key);
            }
        }
        // Claimed objects leave stale entries in `order`; keep it bounded.
        if self.order.len() > 2 * MAX_OBJECTS {
            let live = &self.by_object;
            self.order.retain(|(key, _)| live.contains_key(key));
        }
        dropped
    }

    /// Drops what process `tgid`, gone, held. Returns how many writes went.
    pub fn forget_process(&mut self, tgid: u32) -> u64 {
        let mut dropped = 0;
        self.by_object.retain(|key, w| {
            if key.0 == tgid {
                dropped += w.held.len() as u64;
            }
            key.0 != tgid
        });
        dropped
    }

    fn drop_object(&mut self, key: (u32, u64)) -> u64 {
        self.by_object
            .remove(&key)
            .map_or(0, |w| w.held.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::ConnKey;

    fn seg(bytes: &[u8], at: u64) -> Segment<'_> {
        Segment {
            bytes,
            len: bytes.len() as u64,
            stamp: Stamp {
                enter_ns: at,
                exit_ns: at,
            },
        }
    }

    #[test]
    fn writes_are_claimed_in_order_by_their_object_only() {
        let mut u = Unowned::default();
        assert_eq!(
            u.hold(7, 0xa, Task::thread(1), seg(b"PRI * HTTP/2.0", 1)),
            0
        );
        assert_eq!(u.hold(7, 0xb, Task::thread(1), seg(b"other", 2)), 0);
        assert_eq!(u.hold(7, 0xa, Task::thread(1), seg(b"HEADERS", 3)), 0);
        assert!(
            u.claim(8, 0xa, Some(0)).0.is_empty(),
            "another process's object"
        );
        let got: Vec<Vec<u8>> = u
            .claim(7, 0xa, Some(0))
            .0
            .into_iter()
            .map(|h| h.bytes)
            .collect();
        assert_eq!(got, [b"PRI * HTTP/2.0".to_vec(), b"HEADERS".to_vec()]);
        assert!(u.claim(7, 0xa, Some(0)).0.is_empty(), "claimed once");
        assert_eq!(u.claim(7, 0xb, Some(0)).0.len(), 1);
    }

    #[test]
    fn writes_from_before_the_socket_opened_are_not_its() {
        let mut u = Unowned::default();
        u.hold(7, 0xa, Task::thread(1), seg(b"old request", 5));
        u.hold(7, 0xa, Task::thread(1), seg(b"new request", 50));
        let (mine, dropped) = u.claim(7, 0xa, Some(40));
        assert_eq!(dropped, 1);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].bytes, b"new request");
    }

    #[test]
    fn a_socket_that_predates_the_agent_gets_every_write() {
        // Its id says nothing of when it opened (`ConnKey::opened_ns`).
        let mut u = Unowned::default();
        u.hold(7, 0xa, Task::thread(1), seg(b"request", 5));
        u.hold(7, 0xa, Task::thread(1), seg(b"more", 50));
        let key = ConnKey {
            tgid: 7,
            fd: 3,
            conn_id: ConnKey::SEEDED | 1,
        };
        let (mine, dropped) = u.claim(7, 0xa, key.opened_ns());
        assert_eq!(dropped, 0);
        let got: Vec<&[u8]> = mine.iter().map(|h| h.bytes.as_slice()).collect();
        assert_eq!(got, [b"request".as_slice(), b"more"]);
    }

    #[test]
    fn past_the_budget_nothing_of_the_object_is_replayed() {
        let mut u = Unowned::default();
        let big = vec![0u8; 4096];
        let mut dropped = 0;
        for i in 0..(MAX_BYTES / 4096) {
            dropped += u.hold(1, 1, Task::thread(1), seg(&big, i as u64));
        }
        assert_eq!(dropped, 0);
        // One more does not fit: all of it goes, and what follows too,
        // however small (a stream with a hole would be misframed).
        assert_eq!(
            u.hold(1, 1, Task::thread(1), seg(&big, 100)),
            (MAX_BYTES / 4096) as u64 + 1
        );
        assert_eq!(u.hold(1, 1, Task::thread(1), seg(b"x", 101)), 1);
        assert!(u.claim(1, 1, Some(0)).0.is_empty());
    }

    #[test]
    fn bounds_and_age_drop_and_count() {
        let mut u = Unowned::default();
        let big = vec![0u8; 4096];
        let mut dropped = 0;
        for i in 0..(MAX_BYTES / 4096) {
            dropped += u.hold(1, 1, Task::thread(1), seg(&big, i as u64));
        }
        assert_eq!(dropped, 0);
        for ssl in 2..(MAX_OBJECTS as u64 + 2) {
            dropped += u.hold(1, ssl, Task::thread(1), seg(b"x", 5));
        }
        // Object 1, the oldest, went to make room.
        assert_eq!(dropped, (MAX_BYTES / 4096) as u64);
        assert!(u.claim(1, 1, Some(0)).0.is_empty());
        assert_eq!(u.expire(MAX_AGE_NS + 6), MAX_OBJECTS as u64);
        assert!(u.claim(1, 2, Some(0)).0.is_empty());
    }

    #[test]
    fn a_process_that_exited_loses_what_it_held() {
        let mut u = Unowned::default();
        u.hold(3, 1, Task::thread(1), seg(b"x", 100));
        u.hold(4, 1, Task::thread(1), seg(b"y", 100));
        assert_eq!(u.forget_process(3), 1);
        assert!(u.claim(3, 1, Some(0)).0.is_empty());
        assert_eq!(u.claim(4, 1, Some(0)).0.len(), 1);
    }

    #[test]
    fn an_object_claimed_and_held_again_keeps_its_own_age() {
        let mut u = Unowned::default();
        u.hold(1, 9, Task::thread(1), seg(b"first", 10));
        assert_eq!(u.claim(1, 9, Some(0)).0.len(), 1);
        u.hold(1, 9, Task::thread(1), seg(b"second", MAX_AGE_NS));
        assert_eq!(u.expire(MAX_AGE_NS + 20), 0);
        assert_eq!(u.claim(1, 9, Some(0)).0.len(), 1);
    }
}
