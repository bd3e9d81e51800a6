//! What the line-and-counted-block protocols (RESP, memcached) share: lines
//! read up to LF with a bounded buffer, and segments walked with their
//! uncaptured tail skipped inside a counted block, or losing sync outside
//! one.

use crate::http1::Segment;

/// Appends `bytes` up to and including the first LF to `buf` (keeping at
/// most `max` bytes of the line). Returns how many bytes it consumed and,
/// when the line is complete, the line without its CRLF.
pub(crate) fn take_line(buf: &mut Vec<u8>, bytes: &[u8], max: usize) -> (usize, Option<Vec<u8>>) {
    let room = max.saturating_sub(buf.len());
    match bytes.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            buf.extend_from_slice(&bytes[..lf.min(room)]);
            let mut line = std::mem::take(buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            (lf + 1, Some(line))
        }
        None => {
            buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
            (bytes.len(), None)
        }
    }
}

/// A framer that reads visible bytes step by step and can skip uncaptured
/// bytes only inside a counted block.
pub(crate) trait CountedFramer<S: ?Sized> {
    fn lost(&self) -> bool;
    /// Consumes a prefix of `bytes`; returns how many it took.
    fn step(&mut self, bytes: &[u8], seg: &Segment<'_>, sink: &mut S) -> usize;
    /// Bytes left in the counted block being skipped, if in one.
    fn block_left(&self) -> Option<u64>;
    /// Skips `n` uncaptured bytes of the block (`n` ≤ what is left).
    fn skip_block(&mut self, n: u64, seg: &Segment<'_>, sink: &mut S);
    fn lose(&mut self, sink: &mut S);
}

/// Walks one segment through `f`.
pub(crate) fn feed<S: ?Sized, F: CountedFramer<S>>(f: &mut F, seg: Segment<'_>, sink: &mut S) {
    let captured = seg.bytes.len().min(seg.len as usize);
    let bytes = &seg.bytes[..captured];
    let mut pos = 0;
    while pos < bytes.len() && !f.lost() {
        pos += f.step(&bytes[pos..], &seg, sink);
    }
    let unseen = seg.len - captured as u64;
    if unseen == 0 || f.lost() {
        return;
    }
    match f.block_left() {
        Some(left) if unseen <= left => f.skip_block(unseen, &seg, sink),
        _ => f.lose(sink),
    }
}
