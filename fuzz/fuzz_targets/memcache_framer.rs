//! Arbitrary bytes, cut into arbitrary segments with arbitrary captured
//! prefixes, through both memcached framers: no panic, bounded state.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospan_protocols::http1::{Segment, Stamp};
use zerospan_protocols::memcache::{Direction, Framer, MemcacheSink};
use zerospan_protocols::resp::{Command, Reply};

struct Count(u64);

impl MemcacheSink for Count {
    fn on_command(&mut self, _cmd: Command, _noreply: bool, _at: Stamp) {
        self.0 += 1;
    }
    fn on_reply(&mut self, _reply: Reply, _at: Stamp) {
        self.0 += 1;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&steer, rest)) = data.split_first() else {
        return;
    };
    for dir in [Direction::Commands, Direction::Replies] {
        let mut framer = Framer::new(dir);
        let mut count = Count(0);
        let mut fed = 0u64;
        let mut pos = 0usize;
        let mut t = 0u64;
        while pos < rest.len() {
            t += 1;
            let step = 1 + (rest[pos] as usize ^ steer as usize) % 61;
            let end = (pos + step).min(rest.len());
            let unseen = if steer & 1 == 1 {
                u64::from(rest[pos] & 0x07)
            } else {
                0
            };
            let seg = Segment {
                bytes: &rest[pos..end],
                len: (end - pos) as u64 + unseen,
                stamp: Stamp {
                    enter_ns: t,
                    exit_ns: t,
                },
            };
            fed += seg.len;
            framer.feed(seg, &mut count);
            if framer.is_lost() && steer & 2 == 2 {
                framer.resync();
            }
            pos = end;
        }
        assert!(count.0 <= fed, "never more messages than bytes");
    }
});
