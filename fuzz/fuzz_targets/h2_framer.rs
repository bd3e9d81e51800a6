//! Arbitrary bytes, cut into arbitrary segments with arbitrary captured
//! prefixes, through the HTTP/2 framer and its HPACK decoder, from the
//! start and joined mid-stream: no panic, bounded state, and never a
//! field from a dynamic entry the decoder cannot know.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospan_fuzz::for_each_segment;
use zerospan_protocols::h2::hpack::{Fields, MAX_FIELDS};
use zerospan_protocols::h2::{Framer, Sink};
use zerospan_protocols::stream::Stamp;

struct Count(u64);

impl Sink for Count {
    fn on_headers(&mut self, _stream: u32, fields: Option<&Fields>, _end: bool, _at: Stamp) {
        if let Some(f) = fields {
            assert!(f.len() <= MAX_FIELDS, "fields are bounded");
        }
        self.0 += 1;
    }
    fn on_data(&mut self, _stream: u32, len: u64, _end: bool, _at: Stamp) {
        assert!(len < 1 << 24, "a frame's length is 24 bits");
        self.0 += 1;
    }
    fn on_reset(&mut self, _stream: u32, _code: Option<u32>, _at: Stamp) {
        self.0 += 1;
    }
    fn on_goaway(&mut self, _last: u32, _code: Option<u32>, _at: Stamp) {
        self.0 += 1;
    }
}

fuzz_target!(|data: &[u8]| {
    for start in 0..3 {
        let mut framer = match start {
            0 => Framer::client_from_start(),
            1 => Framer::server_from_start(),
            _ => Framer::joined(),
        };
        let mut count = Count(0);
        let fed = for_each_segment(data, 97, 0x3f, |_, seg| framer.feed(seg, &mut count));
        // Every event needs a 9-octet frame header.
        assert!(count.0 <= fed / 9 + 1, "never more events than frames");
    }
});
