//! Arbitrary bytes, cut into arbitrary segments with arbitrary captured
//! prefixes, through both MySQL framers and every decoder: no panic, kept
//! payloads bounded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospan_fuzz::for_each_segment;
use zerospan_protocols::mysql::{self, Direction, Framer, MAX_KEEP};

fuzz_target!(|data: &[u8]| {
    for dir in [Direction::Client, Direction::Server] {
        let mut framer = Framer::new(dir);
        let mut packets = 0u64;
        let fed = for_each_segment(data, 61, 0x07, |steer, seg| {
            let _ = mysql::looks_like_greeting(seg.bytes);
            let _ = mysql::could_be_greeting_header(seg.bytes);
            let _ = mysql::last_packet(seg.bytes);
            let _ = mysql::looks_like_command(seg.bytes, seg.len);
            framer.feed(seg, &mut |p: zerospan_protocols::mysql::Packet<'_>| {
                packets += 1;
                assert!(p.body.len() <= MAX_KEEP, "kept payloads are bounded");
                let _ = mysql::greeting(p.body);
                let _ = mysql::login(p.body);
                let _ = mysql::error(p.body);
                let _ = mysql::ok_status(p.body);
                let _ = mysql::eof_status(p.body);
                let _ = mysql::prepare_ok(p.body);
                let _ = mysql::statement_id(p.body);
                let _ = mysql::lenenc(p.body);
                let _ = mysql::is_terminator(&p);
                let _ = mysql::is_eof(&p);
            });
            if framer.is_lost() && steer & 2 == 2 {
                framer.resync();
            }
        });
        assert!(packets <= fed / 4 + 1, "every packet has a 4-byte header");
    }
});
