//! Arbitrary bytes, cut into arbitrary segments with arbitrary captured
//! prefixes, through both framers. The framer must not panic, and what it
//! reports must be consistent with what it was fed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospan_protocols::http1::{Desync, Framer, Head, Kind, Segment, Sink, Stamp, MAX_HEAD};

#[derive(Default)]
struct Check {
    open: bool,
    heads: usize,
}

impl Sink for Check {
    fn on_head(&mut self, head: Head, _at: Stamp) {
        // Every head fits the bound the framer promises to buffer.
        assert!(head.method.len() + head.target.len() <= MAX_HEAD + 8);
        self.open = true;
        self.heads += 1;
    }
    fn on_end(&mut self, _body_bytes: Option<u64>, _at: Stamp) {
        assert!(self.open, "a message ended that never began");
        self.open = false;
    }
    fn on_desync(&mut self, _why: Desync) {}
}

fuzz_target!(|data: &[u8]| {
    // The first bytes steer the cuts: each pair gives a segment's captured
    // length and how many bytes beyond it went uncaptured.
    let Some((&steer, rest)) = data.split_first() else {
        return;
    };
    for kind in [Kind::Request, Kind::Response] {
        let mut framer = Framer::new(kind);
        let mut check = Check::default();
        let mut pos = 0usize;
        let mut t = 0u64;
        let mut fed = 0u64;
        while pos < rest.len() {
            t += 1;
            let step = 1 + (rest[pos] as usize ^ steer as usize) % 97;
            let end = (pos + step).min(rest.len());
            let unseen = if steer & 1 == 1 {
                u64::from(rest[pos] & 0x0f)
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
            framer.feed(seg, &mut check);
            pos = end;
        }
        framer.finish_open(&mut check);
        // Never more messages than bytes.
        assert!(check.heads as u64 <= fed);
    }
});
