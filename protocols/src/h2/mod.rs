//! HTTP/2 (RFC 9113): frames in, per-stream events out, with HPACK.

mod frame;
pub mod hpack;

pub use frame::{Framer, Sink, MAX_BLOCK, PREFACE};
mod huffman;
