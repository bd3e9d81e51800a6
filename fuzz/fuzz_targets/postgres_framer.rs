//! Arbitrary bytes, cut into arbitrary segments with arbitrary captured
//! prefixes, through both PostgreSQL framers and every decoder: no panic,
//! kept bodies bounded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospan_fuzz::for_each_segment;
use zerospan_protocols::postgres::{self, Direction, Framer, Tag, MAX_KEEP};

fuzz_target!(|data: &[u8]| {
    for dir in [Direction::Frontend, Direction::Backend] {
        let mut framer = Framer::new(dir);
        let mut messages = 0u64;
        let fed = for_each_segment(data, 61, 0x07, |steer, seg| {
            if steer & 4 == 4 {
                framer.expect_encryption_answer();
            }
            let _ = postgres::starts_messages(dir, seg.bytes, seg.len);
            let _ = postgres::looks_like_query_start(seg.bytes, seg.len);
            let _ = postgres::is_startup(seg.bytes, seg.len);
            let _ = postgres::message_before_ready(seg.bytes);
            framer.feed(seg, &mut |m: zerospan_protocols::postgres::Message<'_>| {
                messages += 1;
                assert!(
                    m.body.len() <= MAX_KEEP.max(10_000),
                    "kept bodies are bounded"
                );
                match m.tag {
                    Tag::Startup => drop(postgres::startup(m.body)),
                    Tag::Typed(_) => {
                        let _ = postgres::query_text(m.body);
                        let _ = postgres::parse(m.body);
                        let _ = postgres::bind(m.body);
                        let _ = postgres::execute(m.body);
                        let _ = postgres::close(m.body);
                        let _ = postgres::error_code(m.body);
                    }
                    Tag::EncryptionAnswer(_) => {}
                }
            });
            if framer.is_lost() && steer & 2 == 2 {
                framer.resync();
            }
        });
        assert!(messages <= fed, "never more messages than bytes");
    }
});
