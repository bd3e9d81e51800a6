//! HTTP/2 (RFC 9113): frames in, per-stream events out, with HPACK.

mod frame;
pub mod hpack;

pub use frame::{Framer, Sink, MAX_BLOCK, PREFACE};
mod huffman;

/// Octets from hex text, spaces ignored: the RFC's examples, for tests.
#[cfg(test)]
fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
