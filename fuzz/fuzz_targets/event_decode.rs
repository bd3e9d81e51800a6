//! Arbitrary ring-buffer records through the agent's decoder: no panic,
//! and a data record never hands out more bytes than it carries or than
//! its syscall moved.

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
            assert!(bytes.len() < data.len(), "bytes come from the record");
        }
        Ok(_) | Err(_) => {}
    }
});
