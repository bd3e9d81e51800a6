//! Arbitrary bytes, cut into arbitrary segments with arbitrary captured
//! prefixes, through both framers. The framer must not panic, and what it
//! reports must be consistent with what it was fed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospan_fuzz::for_each_segment;
use zerospan_protocols::http1::{Desync, Framer, Head, Kind, Sink, MAX_HEAD};
use zerospan_protocols::stream::Stamp;

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
    for kind in [Kind::Request, Kind::Response] {
        let mut framer = Framer::new(kind);
        let mut check = Check::default();
        let fed = for_each_segment(data, 97, 0x0f, |_, seg| framer.feed(seg, &mut check));
        framer.finish_open(&mut check);
        // Never more messages than bytes.
        assert!(check.heads as u64 <= fed);
    }
});
