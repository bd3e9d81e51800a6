//! HTTP/2 connections followed frame by frame: a buffer of any size goes
//! out with every frame header and header block in it copied, and DATA
//! payloads left out where they would cost a copy of their own. The
//! agent's framer needs the first and goes without the second
//! (`protocols/src/h2/frame.rs`); capture by position (`emit_chunks`)
//! loses the framing as soon as a frame header falls past what it copies,
//! which many large responses in one write do.
//!
//! Each direction of a followed connection keeps its place between
//! buffers: the payload octets of the current frame still to come, whether
//! they may go uncaptured, and a frame header split across buffers. A
//! buffer becomes records of one copied prefix and an uncaptured rest:
//! frames copied together up to `MAX_CAPTURE` octets, and a DATA payload
//! that does not fit in the record being built left as its uncaptured
//! rest.
//!
//! A direction whose place is not known (a connection the agent
//! recognised mid-stream, a walk that gave up) is captured in chunks until
//! a buffer starts with a plausible chain of frames, which places it
//! (`adopt`).
//!
//! Nothing here can make the agent read a wrong header: the octets it gets
//! are the buffer's, in order, and those it does not get are marked
//! uncaptured. A walk that lost its place would cost the framing (the
//! agent counts `desyncs.http2`), never a wrong field.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use zerospan_common::{counter, EventHeader, MAX_CAPTURE};

use crate::{emit::emit_bytes, helpers::bump, maps::Iovec};

const FRAME_HEADER: u64 = 9;
const DATA: u8 = 0;
const PADDED: u8 = 0x8;
/// The client preface, followed as if it were a frame's payload.
const PREFACE: u32 = 24;
/// Steps one walk takes at most: each reads a frame header (or part of
/// one), a payload (or `MAX_CAPTURE` octets of one), or an iovec entry.
const MAX_STEPS: u32 = 8192;
/// Octets of the buffer copied at a time to read frame headers from (a
/// power of two: indices into it are masked).
const WINDOW: u64 = 4096;

/// How a payload's octets go out.
mod pay {
    /// Copied: a header block, a control frame, the preface.
    pub const COPY: u8 = 0;
    /// Uncaptured unless it fits in the record being built: DATA.
    pub const SKIP: u8 = 1;
    /// One octet copied (a padded DATA frame's pad length), then `SKIP`.
    pub const PAD_THEN_SKIP: u8 = 2;
}

/// Where one direction of a connection stands between buffers.
#[repr(C)]
#[derive(Clone, Copy)]
struct Place {
    /// Payload octets of the current frame still to come.
    left: u32,
    /// [`pay`]: how they go out.
    pay: u8,
    /// Octets of the next frame header already seen, kept in `head`.
    head_len: u8,
    /// Where the next frame starts is not known (a connection the agent
    /// recognised mid-stream, a walk that gave up): captured in chunks
    /// until a buffer starts with a plausible chain of frames, which then
    /// places it (see `adopt`).
    unplaced: u8,
    _pad: u8,
    head: [u8; 8],
}

/// A followed connection's two directions, by [`zerospan_common::direction`].
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Frames {
    conn_id: u64,
    dirs: [Place; 2],
}

/// Followed connections, keyed like `SOCKS`. The agent sizes it from
/// `--max-connections`; a connection pushed out is captured in chunks.
#[map]
pub(crate) static H2_FRAMES: LruHashMap<u64, Frames> = LruHashMap::with_max_entries(16384, 0);

/// One walk's state. In a map value, not on the stack: the verifier checks
/// the step callback as a loop and does not track what a map holds, so its
/// states converge at once (as `propagate::Scan`'s do).
#[repr(C)]
pub struct Walk {
    /// A walk is in progress on this CPU: a program that preempted it (or
    /// runs nested in it) finds this set and captures in chunks rather
    /// than take the slot.
    busy: u64,
    /// Who walks now: checked at each step, for a preemption between the
    /// look at `busy` and setting it.
    owner: u64,
    hdr: EventHeader,
    key: u64,
    /// The iovec array and its next entry (a single buffer: none).
    iov: u64,
    iovcnt: u64,
    next: u64,
    /// The entry being walked, and the offset in it.
    base: u64,
    len: u64,
    off: u64,
    /// Octets of the buffer still to walk.
    remaining: u64,
    /// The record being built: `cap` octets copied from `src`, then
    /// `rec_len - cap` uncaptured.
    src: u64,
    cap: u64,
    rec_len: u64,
    /// The direction's [`Place`], while walking.
    left: u64,
    pay: u64,
    head_len: u64,
    /// An iovec entry or a frame header could not be read.
    failed: u64,
    /// `adopt`'s check: the next header's offset, headers seen, verdict,
    /// and the header read (in its first nine octets).
    chk_at: u64,
    chk_frames: u64,
    chk_ok: u64,
    chk_head: [u8; 16],
    /// The frame header being read, at offsets masked to 15.
    head: [u8; 32],
    /// A copy of the buffer's octets from the user address `win_at`, of
    /// which `win_len` are valid: frame headers are read from it, so that
    /// a buffer of many small frames costs one read of user memory per
    /// `WINDOW` octets, not one per frame.
    win_at: u64,
    win_len: u64,
    win: [u8; WINDOW as usize],
}

#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// Where a new `H2_FRAMES` entry is built: not on the stack, since the
/// programs that start following a connection (`go_tls_return` with the
/// injection scan above all) are near the 512-octet bound already.
#[map]
static FRESH: PerCpuArray<Frames> = PerCpuArray::with_max_entries(1, 0);

/// Enters a new entry for `key`: `conn_id`'s, both directions unplaced
/// but for `placed`, which starts `left` octets before a frame (2: none).
#[inline(always)]
fn enter(key: u64, conn_id: u64, placed: u8, left: u32) {
    let Some(f) = FRESH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot. A program that preempts this one here and
    // enters its own connection leaves that one's `conn_id` in the slot;
    // entered under `key`, it matches no buffer of `key`, which the walk
    // then treats as no entry at all (unplaced), never misplaced.
    unsafe {
        (*f).conn_id = conn_id;
        (*f).dirs = [UNPLACED; 2];
        if placed < 2 {
            let d = &mut (*f).dirs[(placed & 1) as usize];
            d.unplaced = 0;
            d.left = left;
        }
        let _ = H2_FRAMES.insert(&key, &*f, 0);
    }
}

/// Starts following the connection `key`: the direction `preface` from the
/// client preface on. The other starts unplaced, found at its next buffer
/// that starts with frames: it may have moved octets already (a server's
/// SETTINGS sent on accept, a client's read of them before its preface).
/// `preface_held`: the preface's direction so far went out with no socket
/// (TLS writes held until their socket was known, see
/// `tls::send_unowned`), so it starts unplaced too.
#[inline(always)]
pub(crate) fn follow(key: u64, conn_id: u64, preface: u8, preface_held: bool) {
    let placed = if preface_held { 2 } else { preface };
    enter(key, conn_id, placed, PREFACE);
}

/// The connection `key` closed.
#[inline(always)]
pub(crate) fn forget(key: u64) {
    let _ = H2_FRAMES.remove(&key);
}

/// Sends the `moved` octets of a buffer (`iov` 0: at `src`) or an iovec
/// array of the followed connection `key` as records, frame by frame.
/// False when this direction's place is not known and the buffer does
/// not give it: the caller captures as it would any deep buffer.
#[inline(always)]
pub(crate) fn emit_frames(
    hdr: &EventHeader,
    key: u64,
    src: u64,
    iov: u64,
    iovcnt: u64,
    moved: u64,
) -> bool {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: `w` is this CPU's slot.
    if unsafe { (*w).busy } != 0 {
        unplace(key, hdr.conn_id, hdr.direction);
        return false;
    }
    // SAFETY: as above.
    unsafe { (*w).busy = 1 };
    // SAFETY: helpers with no preconditions.
    let owner = unsafe {
        ((generated::bpf_get_prandom_u32() as u64) << 32) | generated::bpf_get_prandom_u32() as u64
    };
    // SAFETY: `w` is this CPU's slot.
    unsafe {
        (*w).owner = owner;
        (*w).hdr = *hdr;
        (*w).key = key;
        (*w).iov = iov;
        (*w).iovcnt = if iov == 0 { 0 } else { iovcnt };
        (*w).next = 0;
        (*w).base = src;
        (*w).len = if iov == 0 { moved } else { 0 };
        (*w).off = 0;
        (*w).remaining = moved;
    }
    let walked = zerospan_h2_walk(w, owner) != 0;
    // SAFETY: as above.
    unsafe { (*w).busy = 0 };
    walked
}

/// The place of direction `dir` of `key` is lost: octets went by that the
/// walk did not see (a walk already running on this CPU).
#[inline(always)]
fn unplace(key: u64, conn_id: u64, dir: u8) {
    if let Some(frames) = H2_FRAMES.get_ptr_mut(&key) {
        // SAFETY: map values stay valid for the program's run.
        let frames = unsafe { &mut *frames };
        if frames.conn_id == conn_id {
            frames.dirs[(dir & 1) as usize].unplaced = 1;
            bump(counter::H2_UNFOLLOWED);
        }
    }
}

/// `moved` octets of `key` went by that no program can read (`sendfile`):
/// inside a DATA payload the place moves past them, else it is lost.
#[inline(always)]
pub(crate) fn unseen(key: u64, conn_id: u64, dir: u8, moved: u64) {
    let Some(frames) = H2_FRAMES.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: map values stay valid for the program's run.
    let frames = unsafe { &mut *frames };
    if frames.conn_id != conn_id {
        return;
    }
    let place = &mut frames.dirs[(dir & 1) as usize];
    if place.unplaced != 0 {
        return;
    }
    if place.pay == pay::SKIP && place.head_len == 0 && place.left as u64 >= moved {
        place.left -= moved as u32;
    } else {
        place.unplaced = 1;
        bump(counter::H2_UNFOLLOWED);
    }
}

/// The walk. A global function (exported, so its BTF says so): the
/// verifier checks it once, on its own, not again in every data program
/// and every state it is called in (see `propagate::zerospan_newline`).
#[no_mangle]
#[inline(never)]
pub extern "C" fn zerospan_h2_walk(w: *mut Walk, owner: u64) -> u32 {
    if w.is_null() {
        return 0;
    }
    // SAFETY: not null; the verifier checked its size against `Walk`.
    let w = unsafe { &mut *w };
    // SAFETY: read-only look at a plain value.
    let known = unsafe { H2_FRAMES.get(&w.key) }.is_some_and(|f| f.conn_id == w.hdr.conn_id);
    if !known {
        // Followed on the agent's word (`sock_flags::H2_FRAMES` set for a
        // connection it recognised mid-stream): both directions unplaced.
        enter(w.key, w.hdr.conn_id, 2, 0);
    }
    let Some(frames) = H2_FRAMES.get_ptr_mut(&w.key) else {
        return 0;
    };
    // SAFETY: map values stay valid for the program's run.
    let frames = unsafe { &mut *frames };
    if frames.conn_id != w.hdr.conn_id {
        return 0;
    }
    let place = &mut frames.dirs[(w.hdr.direction & 1) as usize];
    w.win_at = 0;
    w.win_len = 0;
    if place.unplaced != 0 {
        if !adopt(w, owner) {
            return 0;
        }
        *place = Place {
            unplaced: 0,
            ..UNPLACED
        };
    }
    w.left = place.left as u64;
    w.pay = place.pay as u64;
    w.head_len = place.head_len as u64;
    w.head[..8].copy_from_slice(&place.head);
    w.src = 0;
    w.cap = 0;
    w.rec_len = 0;
    w.failed = 0;
    steps(w, owner, h2_step);
    if w.owner != owner {
        // Another program took the slot in the few instructions between
        // the look at `busy` and setting it: this walk's place, and what
        // it sent, are unknown. (A window of a few instructions, where a
        // preemption must also run a walk of its own on this CPU.)
        place.unplaced = 1;
        bump(counter::H2_UNFOLLOWED);
        return 1;
    }
    flush(w);
    if w.remaining > 0 || w.failed != 0 {
        // Too many frames for one walk, or unreadable: the rest goes out
        // uncaptured, and the framing with it.
        if w.remaining > 0 {
            emit_bytes(&w.hdr, 0, w.remaining, 0);
        }
        place.unplaced = 1;
        bump(counter::H2_UNFOLLOWED);
        return 1;
    }
    place.left = w.left as u32;
    place.pay = w.pay as u8;
    place.head_len = w.head_len as u8;
    place.head.copy_from_slice(&w.head[..8]);
    1
}

const UNPLACED: Place = Place {
    left: 0,
    pay: pay::COPY,
    head_len: 0,
    unplaced: 1,
    _pad: 0,
    head: [0; 8],
};

/// Whether the buffer (of an iovec array, its first entry) starts with a
/// plausible chain of frame headers: one that ends exactly at its end, or
/// two or more, each well-formed for its type (`plausible`). Bytes from
/// the middle of a frame pass this by chance about once in 10^8, and even
/// then the agent's framer, which checks every frame, would only lose the
/// framing: the walk sends octets, never meanings.
#[inline(always)]
fn adopt(w: &mut Walk, owner: u64) -> bool {
    if w.iov != 0 {
        // SAFETY: bpf_probe_read_user validates the user pointer.
        let Ok(v) = (unsafe { bpf_probe_read_user(w.iov as *const Iovec) }) else {
            return false;
        };
        w.base = v.base;
        w.len = v.len;
        w.next = 1;
    }
    w.chk_at = 0;
    w.chk_frames = 0;
    w.chk_ok = 0;
    steps(w, owner, check_step);
    w.owner == owner && w.chk_ok != 0
}

/// One frame header of `adopt`'s check.
#[inline(never)]
unsafe extern "C" fn check_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: as in `h2_step`.
    let cx = unsafe { &*(ctx as *const StepCx) };
    let w = unsafe { &mut *cx.w };
    if w.owner != cx.owner {
        return 1;
    }
    let end = if w.len < w.remaining {
        w.len
    } else {
        w.remaining
    };
    if w.chk_at == end {
        w.chk_ok = u64::from(w.chk_frames > 0);
        return 1;
    }
    if w.chk_at + FRAME_HEADER > end {
        w.chk_ok = u64::from(w.chk_frames >= 2);
        return 1;
    }
    if !window(w, w.chk_at, FRAME_HEADER, end - w.chk_at) {
        return 1;
    }
    let rel = w.base + w.chk_at - w.win_at;
    let mut i = 0;
    while i < FRAME_HEADER {
        w.chk_head[i as usize] = w.win[((rel + i) & (WINDOW - 1)) as usize];
        i += 1;
    }
    if !plausible(&w.chk_head) {
        return 1;
    }
    w.chk_frames += 1;
    let h = &w.chk_head;
    let len = ((h[0] as u64) << 16) | ((h[1] as u64) << 8) | h[2] as u64;
    w.chk_at += FRAME_HEADER + len;
    if w.chk_at > end {
        // The last frame goes on past the buffer.
        w.chk_ok = u64::from(w.chk_frames >= 2);
        return 1;
    }
    0
}

/// A frame header as a sender following RFC 9113 writes it: a known type
/// on the kind of stream it belongs to, with the length its type allows,
/// no larger than the default maximum frame size.
#[inline(always)]
fn plausible(h: &[u8; 16]) -> bool {
    let len = ((h[0] as u32) << 16) | ((h[1] as u32) << 8) | h[2] as u32;
    len <= 16_384 && well_formed(h)
}

/// A known type on the kind of stream it belongs to, with the length its
/// type allows (a peer may have raised the maximum frame size). `h` holds
/// the header in its first nine octets.
#[inline(always)]
fn well_formed(h: &[u8; 16]) -> bool {
    let len = ((h[0] as u32) << 16) | ((h[1] as u32) << 8) | h[2] as u32;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    if stream & 0x8000_0000 != 0 {
        return false;
    }
    let on_stream = stream != 0;
    match h[3] {
        0 | 1 | 9 => on_stream,
        2 => on_stream && len == 5,
        3 => on_stream && len == 4,
        4 => !on_stream && len % 6 == 0 && (h[4] & 1 == 0 || len == 0),
        5 => on_stream && len >= 4,
        6 => !on_stream && len == 8,
        7 => !on_stream && len >= 8,
        8 => len == 4,
        _ => false,
    }
}

/// Makes the window hold `n` octets at offset `at` of the current entry,
/// copying up to `WINDOW` of the `span` octets from there if it does not.
#[inline(always)]
fn window(w: &mut Walk, at: u64, n: u64, span: u64) -> bool {
    let addr = w.base + at;
    if addr >= w.win_at && addr + n <= w.win_at + w.win_len {
        return true;
    }
    let size = if span < WINDOW { span } else { WINDOW };
    // SAFETY: `size <= WINDOW`, the window's size (the mask only keeps
    // that bound plain to the verifier); bpf_probe_read_user validates
    // the user pointer.
    let r = unsafe {
        generated::bpf_probe_read_user(
            w.win.as_mut_ptr().cast(),
            (size as u32) & (2 * WINDOW as u32 - 1),
            addr as *const c_void,
        )
    };
    if r != 0 || size < n {
        return false;
    }
    w.win_at = addr;
    w.win_len = size;
    true
}

/// Runs `step` up to `MAX_STEPS` times over `w`, until it says stop.
#[inline(always)]
fn steps(w: &mut Walk, owner: u64, step: unsafe extern "C" fn(u64, *mut c_void) -> i64) {
    let mut cx = StepCx { w, owner };
    // SAFETY: the callback only touches `*w`, for the duration of the call.
    unsafe {
        generated::bpf_loop(
            MAX_STEPS,
            step as *mut c_void,
            &mut cx as *mut StepCx as *mut c_void,
            0,
        );
    }
}

#[repr(C)]
struct StepCx {
    w: *mut Walk,
    owner: u64,
}

/// One step of the walk.
#[inline(never)]
unsafe extern "C" fn h2_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `StepCx` `zerospan_h2_walk` passed, whose `w`
    // is a checked, non-null `Walk`.
    let cx = unsafe { &*(ctx as *const StepCx) };
    let w = unsafe { &mut *cx.w };
    if w.owner != cx.owner || w.remaining == 0 || w.failed != 0 {
        return 1;
    }
    if w.off >= w.len {
        // The next iovec entry.
        if w.next >= w.iovcnt {
            w.failed = 1;
            return 1;
        }
        let at = w.iov + w.next * core::mem::size_of::<Iovec>() as u64;
        // SAFETY: bpf_probe_read_user validates the user pointer.
        match unsafe { bpf_probe_read_user(at as *const Iovec) } {
            Ok(v) => {
                w.base = v.base;
                w.len = v.len;
                w.off = 0;
                w.next += 1;
                return 0;
            }
            Err(_) => {
                w.failed = 1;
                return 1;
            }
        }
    }
    let mut avail = w.len - w.off;
    if avail > w.remaining {
        avail = w.remaining;
    }
    if w.left == 0 {
        let Some(n) = header(w, avail) else {
            w.failed = 1;
            return 1;
        };
        w.off += n;
        w.remaining -= n;
        avail -= n;
        // The payload in the same step: a step less per frame.
        if avail == 0 || w.left == 0 {
            return 0;
        }
    }
    let n = payload(w, avail);
    w.off += n;
    w.remaining -= n;
    0
}

/// Reads up to `avail` octets of the next frame header, the rest of one
/// split across buffers: how many, or `None` if unreadable.
#[inline(always)]
fn header(w: &mut Walk, avail: u64) -> Option<u64> {
    let need = FRAME_HEADER - w.head_len;
    let want = if need < avail { need } else { avail };
    // Readable first: a failed read must leave the record as it was.
    if !window(w, w.off, want, avail) {
        return None;
    }
    let n = capture(w, want);
    let at = w.base + w.off;
    let rel = at - w.win_at;
    let mut i = 0;
    while i < FRAME_HEADER {
        if i < n {
            let b = w.win[((rel + i) & (WINDOW - 1)) as usize];
            w.head[((w.head_len + i) & 15) as usize] = b;
        }
        i += 1;
    }
    w.head_len += n;
    if w.head_len >= FRAME_HEADER {
        // A header no sender writes: the place was wrong (bytes the walk
        // did not see, a chance adoption). Given up, never walked on.
        // SAFETY: `head` is 32 octets; its first 16 are read.
        let head = unsafe { &*(w.head.as_ptr() as *const [u8; 16]) };
        if !well_formed(head) {
            return None;
        }
        begin(w);
    }
    Some(n)
}

/// Takes up to `avail` octets of the current frame's payload: copied, or
/// added to the record's uncaptured rest. Returns how many.
#[inline(always)]
fn payload(w: &mut Walk, avail: u64) -> u64 {
    let n = if w.left < avail { w.left } else { avail };
    // A payload that fits whole in the record being built is copied
    // with it: one record less costs more than the copy.
    let fits = w.left <= avail
        && w.rec_len == w.cap
        && w.cap + w.left <= MAX_CAPTURE as u64
        && (w.rec_len == 0 || w.src + w.cap == w.base + w.off);
    let n = if w.pay == pay::COPY as u64 || fits {
        capture(w, n)
    } else if w.pay == pay::PAD_THEN_SKIP as u64 {
        w.pay = pay::SKIP as u64;
        capture(w, 1)
    } else {
        if w.rec_len == 0 {
            w.src = 0;
        }
        w.rec_len += n;
        n
    };
    w.left -= n;
    n
}

/// A frame header was read whole: its payload comes next.
#[inline(always)]
fn begin(w: &mut Walk) {
    let h = &w.head;
    w.left = ((h[0] as u64) << 16) | ((h[1] as u64) << 8) | h[2] as u64;
    w.pay = if h[3] != DATA {
        pay::COPY
    } else if h[4] & PADDED != 0 && w.left > 0 {
        pay::PAD_THEN_SKIP
    } else {
        pay::SKIP
    } as u64;
    w.head_len = 0;
}

/// Adds up to `n` octets at the walk's position to the record as copied,
/// first sending the record when they cannot join it (it has an
/// uncaptured rest, is full, or ends elsewhere in memory). Returns how
/// many were added: at least one when `n` is.
#[inline(always)]
fn capture(w: &mut Walk, n: u64) -> u64 {
    let at = w.base + w.off;
    if w.rec_len > 0 && (w.rec_len != w.cap || w.cap >= MAX_CAPTURE as u64 || w.src + w.cap != at) {
        flush(w);
    }
    if w.rec_len == 0 {
        w.src = at;
    }
    let room = MAX_CAPTURE as u64 - w.cap;
    let n = if n < room { n } else { room };
    w.cap += n;
    w.rec_len += n;
    n
}

/// Sends the record built so far.
#[inline(always)]
fn flush(w: &mut Walk) {
    if w.rec_len > 0 {
        emit_bytes(&w.hdr, w.src, w.rec_len, w.cap);
        w.rec_len = 0;
        w.cap = 0;
    }
}
