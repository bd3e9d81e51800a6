//! Any text through the SQL sanitizer: no panic, bounded output, and no
//! quoted string literal survives.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospan_protocols::sql::{operation_and_table, sanitize, MAX_SANITIZED};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let out = sanitize(text);
    assert!(out.len() <= MAX_SANITIZED + '…'.len_utf8());
    let _ = operation_and_table(text);
    // A plain, well-formed literal is always replaced.
    let probe = format!("SELECT 'zz{}zz'", text.replace('\'', "").replace('\\', ""));
    assert!(!sanitize(&probe).contains("zz"), "{probe:?}");
});
