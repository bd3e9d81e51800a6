//! What the line-and-counted-block protocols (RESP, memcached) share: lines
//! read up to LF with a bounded buffer, and segments walked with their
//! uncaptured tail skipped inside a counted block, or losing sync outside
//! one.

use crate::stream::Segment;

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

/// Where a line-and-block framer is in its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Reading a line up to LF.
    Line,
    /// Skipping a counted block (a bulk string, a data block) and its CRLF.
    Block { remaining: u64 },
    /// Out of sync until the owner resynchronises.
    Lost,
}

/// A framer that reads visible bytes step by step and can skip uncaptured
/// bytes only inside a counted block.
pub(crate) trait CountedFramer<S: ?Sized> {
    fn state(&self) -> State;
    fn set_state(&mut self, state: State);
    /// Consumes a prefix of `bytes`; returns how many it took.
    fn step(&mut self, bytes: &[u8], seg: &Segment<'_>, sink: &mut S) -> usize;
    /// The counted block just ended.
    fn block_done(&mut self, seg: &Segment<'_>, sink: &mut S);
    fn lose(&mut self, sink: &mut S);
}

/// Walks one segment through `f`.
pub(crate) fn feed<S: ?Sized, F: CountedFramer<S>>(f: &mut F, seg: Segment<'_>, sink: &mut S) {
    let captured = seg.bytes.len().min(seg.len as usize);
    let bytes = &seg.bytes[..captured];
    let mut pos = 0;
    while pos < bytes.len() && f.state() != State::Lost {
        pos += f.step(&bytes[pos..], &seg, sink);
    }
    let unseen = seg.len - captured as u64;
    if unseen == 0 || f.state() == State::Lost {
        return;
    }
    match f.state() {
        State::Block { remaining } if unseen <= remaining => {
            f.set_state(State::Block {
                remaining: remaining - unseen,
            });
            if remaining == unseen {
                f.block_done(&seg, sink);
            }
        }
        _ => f.lose(sink),
    }
}
