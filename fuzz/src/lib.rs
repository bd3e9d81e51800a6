//! What the fuzz targets share: cutting the fuzzer's bytes into segments.

use zerospan_protocols::stream::{Segment, Stamp};

/// Cuts `data` into segments, steered by its first byte: each segment's
/// length comes from the data itself, and when `steer` is odd a few bytes
/// beyond each segment's captured part go uncaptured, as when a buffer is
/// longer than the probes copy. Returns the total length fed.
pub fn for_each_segment(
    data: &[u8],
    max_step: usize,
    max_unseen: u8,
    mut feed: impl FnMut(u8, Segment<'_>),
) -> u64 {
    let Some((&steer, rest)) = data.split_first() else {
        return 0;
    };
    let mut fed = 0u64;
    let mut pos = 0usize;
    let mut t = 0u64;
    while pos < rest.len() {
        t += 1;
        let step = 1 + (rest[pos] as usize ^ steer as usize) % max_step;
        let end = (pos + step).min(rest.len());
        let unseen = if steer & 1 == 1 {
            u64::from(rest[pos] & max_unseen)
        } else {
            0
        };
        let seg = Segment {
            bytes: &rest[pos..end],
            len: (end - pos) as u64 + unseen,
            stamp: Stamp {
                enter_ns: t,
                exit_ns: t,
            },
        };
        fed += seg.len;
        feed(steer, seg);
        pos = end;
    }
    fed
}
