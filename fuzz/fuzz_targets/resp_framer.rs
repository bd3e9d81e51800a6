//! Arbitrary bytes, cut into arbitrary segments with arbitrary captured
//! prefixes, through both RESP framers: no panic, bounded state.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospan_fuzz::for_each_segment;
use zerospan_protocols::resp::{Command, Direction, Framer, Reply, Sink};
use zerospan_protocols::stream::Stamp;

struct Count(u64);

impl Sink for Count {
    fn on_command(&mut self, cmd: Command, _at: Stamp) {
        assert!(cmd.name.len() <= 32 * 4, "names are bounded");
        self.0 += 1;
    }
    fn on_reply(&mut self, _reply: Reply, _at: Stamp) {
        self.0 += 1;
    }
}

fuzz_target!(|data: &[u8]| {
    for dir in [Direction::Commands, Direction::Replies] {
        let mut framer = Framer::new(dir);
        let mut count = Count(0);
        let fed = for_each_segment(data, 61, 0x07, |steer, seg| {
            framer.feed(seg, &mut count);
            if framer.is_lost() && steer & 2 == 2 {
                framer.resync();
            }
        });
        assert!(count.0 <= fed, "never more messages than bytes");
    }
});
