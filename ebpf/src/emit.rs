//! Copying bytes into the ring buffer: one buffer, its chunks (deep
//! capture), or an iovec's entries; and when a record wakes the agent.

use core::{mem::size_of, ptr};

use aya_ebpf::helpers::{bpf_probe_read_user, generated};
use zerospan_common::{
    counter, DataEvent, EventHeader, MAX_CAPTURE, MAX_DEEP_IOV_SEGMENTS, MAX_IOV_SEGMENTS,
    REQUEST_CAPTURE_CHUNKS,
};

use crate::{
    helpers::bump,
    maps::{Iovec, CAPTURE_BYTES, EVENTS, SCRATCH, WAKEUP_BYTES},
};

#[inline(always)]
pub(crate) fn emit_iovecs(hdr: &EventHeader, iov: u64, iovcnt: u64, moved: u64, deep: bool) {
    // How many entries get a segment, and how much of each is copied,
    // fixed before the walk: a branch on `deep` at each entry would give
    // the verifier two ways through every one of them. Deeply, one
    // segment per entry still, with up to MAX_CAPTURE of it copied (the
    // entries that matter, frame headers and header blocks, are small).
    let (bound, limit) = if deep {
        (MAX_DEEP_IOV_SEGMENTS, MAX_CAPTURE as u64)
    } else {
        // SAFETY: CAPTURE_BYTES is a load-time constant.
        (
            MAX_IOV_SEGMENTS,
            unsafe { ptr::read_volatile(&CAPTURE_BYTES) } as u64,
        )
    };
    let mut remaining = moved;
    let mut i: u32 = 0;
    while i < MAX_DEEP_IOV_SEGMENTS {
        if remaining == 0 || i >= bound || i as u64 >= iovcnt {
            break;
        }
        let at = iov + (i as u64) * size_of::<Iovec>() as u64;
        // SAFETY: bpf_probe_read_user validates the user pointer.
        let Ok(v) = (unsafe { bpf_probe_read_user(at as *const Iovec) }) else {
            break;
        };
        let seg = if v.len < remaining { v.len } else { remaining };
        if seg > 0 {
            emit_bytes(hdr, v.base, seg, limit);
        }
        remaining -= seg;
        i += 1;
    }
    if remaining > 0 {
        // Segments past the bound: counted, not captured.
        emit_segment(hdr, 0, remaining);
    }
}

/// Sends a request written on an outgoing socket (or a database response)
/// as consecutive segments of up to MAX_CAPTURE bytes each, all captured,
/// for up to REQUEST_CAPTURE_CHUNKS of them. Past that, the middle goes as
/// one uncaptured segment and the last MAX_CAPTURE bytes as the final one:
/// a pipeline of database commands in one write is seen whole, and a long
/// database response still shows how it ended.
#[inline(always)]
pub(crate) fn emit_chunks(hdr: &EventHeader, src: u64, len: u64) {
    let mut off: u64 = 0;
    let mut i: u32 = 0;
    while i < REQUEST_CAPTURE_CHUNKS {
        if off >= len {
            break;
        }
        let rest = len - off;
        let last = i + 1 == REQUEST_CAPTURE_CHUNKS;
        if last && rest > MAX_CAPTURE as u64 {
            let gap = rest - MAX_CAPTURE as u64;
            emit_bytes(hdr, 0, gap, 0);
            emit_bytes(hdr, src + off + gap, MAX_CAPTURE as u64, MAX_CAPTURE as u64);
            break;
        }
        let chunk = if rest <= MAX_CAPTURE as u64 {
            rest
        } else {
            MAX_CAPTURE as u64
        };
        emit_bytes(hdr, src + off, chunk, MAX_CAPTURE as u64);
        off += chunk;
        i += 1;
    }
}

/// Sends one segment: its true length and a prefix of its bytes.
#[inline(always)]
pub(crate) fn emit_segment(hdr: &EventHeader, src: u64, len: u64) {
    // SAFETY: CAPTURE_BYTES is a load-time constant.
    let limit = unsafe { ptr::read_volatile(&CAPTURE_BYTES) } as u64;
    emit_bytes(hdr, src, len, limit);
}

/// Sends `len` bytes at `src` as one segment, at most `limit` of them copied.
#[inline(always)]
pub(crate) fn emit_bytes(hdr: &EventHeader, src: u64, len: u64, limit: u64) {
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let mut want = if len < limit { len } else { limit };
    if src == 0 {
        want = 0;
    }
    // Keep the bound visible to the verifier.
    let mut n = (want as usize) & (2 * MAX_CAPTURE - 1);
    if n > MAX_CAPTURE {
        n = MAX_CAPTURE;
    }
    // SAFETY: `ev` is this CPU's scratch slot; `n <= MAX_CAPTURE` keeps the
    // copy and the output inside it.
    unsafe {
        (*ev).header = *hdr;
        (*ev).len = len;
        if n > 0 {
            let r = generated::bpf_probe_read_user(
                (*ev).data.as_mut_ptr().cast(),
                n as u32,
                src as *const core::ffi::c_void,
            );
            if r != 0 {
                bump(counter::READ_USER_FAILED);
                n = 0;
            }
        }
        (*ev).captured = n as u32;
        let total = DataEvent::HEADER_SIZE + n;
        let bytes = core::slice::from_raw_parts(ev as *const u8, total);
        if EVENTS.output::<[u8]>(bytes, wakeup_flag()).is_err() {
            bump(counter::RINGBUF_FULL);
        }
    }
}

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

#[inline(always)]
fn wakeup_flag() -> u64 {
    // SAFETY: WAKEUP_BYTES is a load-time constant.
    let threshold = unsafe { ptr::read_volatile(&WAKEUP_BYTES) };
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub(crate) fn output<T>(value: &T) {
    if EVENTS.output::<T>(value, wakeup_flag()).is_err() {
        bump(counter::RINGBUF_FULL);
    }
}
