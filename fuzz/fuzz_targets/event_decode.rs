//! Arbitrary ring-buffer records through the agent's decoder: no panic,
//! and a data record never hands out more bytes than it carries or than
//! its syscall moved, and those are the record's own.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospan::fuzzing::{decode, Event};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Event::Data { bytes, len, .. }) | Ok(Event::Unowned { bytes, len, .. }) => {
            assert!(
                bytes.len() <= zerospan_common::MAX_CAPTURE,
                "captures are bounded"
            );
            assert!(bytes.len() as u64 <= len, "never more bytes than moved");
            let at = zerospan_common::DataEvent::HEADER_SIZE;
            assert_eq!(bytes, &data[at..at + bytes.len()], "bytes are the record's");
        }
        Ok(_) | Err(_) => {}
    }
});
