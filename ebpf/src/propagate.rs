//! Outgoing trace context: a `traceparent` header written into the
//! plaintext HTTP/1 requests of traced processes as they leave, so that the
//! next hop, on any host, joins the trace.
//!
//! - `inet_sock_set_state` marks a traced process's connection when it is
//!   established ([`connection_established`]); the `sock_ops` program, on
//!   the cgroup the agent was given, then puts that socket, and no other,
//!   into `TX_SOCKS`.
//! - The `sk_msg` program runs on every message sent on those sockets. It
//!   follows the HTTP/1 framing itself (heads, `Content-Length` bodies),
//!   and inserts the header after the request line of each head it sees
//!   whole. Anything it does not understand (not HTTP/1, a head split
//!   across writes, chunked or upgraded bodies) makes it leave the
//!   connection alone for good: a missed header is a broken trace, a wrong
//!   insertion would be a corrupted request.
//! - The ids must exist when the bytes leave, so the kernel chooses them.
//!   A server request read by a traced thread gets its ids here too
//!   ([`server_request_read`]), from its own valid `traceparent` or new;
//!   calls the thread then makes carry that trace. Both are reported as
//!   [`ContextEvent`]s, and the agent gives the spans those ids.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB},
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
    macros::{map, sk_msg, sock_ops},
    maps::{LruHashMap, PerCpuArray, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};
use zerospan_common::{context_origin, counter, direction, kind, sock_flags, traced, ContextEvent};

use crate::{
    emit::output,
    helpers::{bump, header, sock_key},
    maps::{SOCKS, TRACED},
};

/// Set by the agent when it writes `traceparent` headers
/// (`--context-propagation=headers`).
#[no_mangle]
static PROPAGATE: u8 = 0;

/// The agent's root sampler, for traces the probes start: sampled when the
/// last 8 bytes of the trace id, big-endian, are below this bound (the
/// agent's `traceidratio` rule); `u64::MAX` keeps every trace.
#[no_mangle]
static SAMPLE_BOUND: u64 = u64::MAX;

/// Bytes of a request head the probes look at. A longer head is not
/// followed (the connection is left alone).
const WINDOW: u32 = 4096;
const MASK: u32 = WINDOW - 1;

/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n`
const TP_LEN: u32 = 70;

mod mode {
    /// Established; waiting for `sock_ops` to add it to `TX_SOCKS`.
    pub const READY: u8 = 1;
    /// In `TX_SOCKS`, framing requests.
    pub const FOLLOWING: u8 = 2;
    /// Left alone for good.
    pub const OFF: u8 = 3;
}

/// What the probes know of a traced outgoing connection's request stream.
#[repr(C)]
#[derive(Clone, Copy)]
struct TxState {
    tgid: u32,
    fd: i32,
    /// Body bytes of the last request still to come.
    body_left: u64,
    mode: u8,
    _pad: [u8; 7],
}

/// The server request a thread is serving, as the probes identified it.
#[repr(C)]
#[derive(Clone, Copy)]
struct ServerCtx {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    fd: i32,
    sampled: u8,
    /// Read while another request of the same thread was unanswered: which
    /// one a call serves cannot be known, so calls start new traces.
    ambiguous: u8,
    _pad: [u8; 2],
}

/// Traced outgoing connections, by kernel socket address.
#[map]
static TX: LruHashMap<u64, TxState> = LruHashMap::with_max_entries(65536, 0);

/// The sockets the `sk_msg` program runs on.
#[map]
static TX_SOCKS: SockHash<u64> = SockHash::with_max_entries(65536, 0);

/// The server request each traced thread is serving, by thread id.
#[map]
static SERVING: LruHashMap<u32, ServerCtx> = LruHashMap::with_max_entries(16384, 0);

/// The head being looked at, and what was found in it.
#[map]
static HEAD_BUF: PerCpuArray<Scan> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn enabled() -> bool {
    // SAFETY: a load-time constant.
    unsafe { ptr::read_volatile(&PROPAGATE) != 0 }
}

// ---- finding out which sockets to follow -----------------------------------

/// A traced process's `connect` of `fd` on `skaddr` completed.
#[inline(always)]
pub fn connection_established(skaddr: u64, tgid: u32, fd: i32) {
    if !enabled() {
        return;
    }
    let st = TxState {
        tgid,
        fd,
        body_left: 0,
        mode: mode::READY,
        _pad: [0; 7],
    };
    let _ = TX.insert(&skaddr, &st, 0);
}

/// A socket closed: forget it, so a new socket at the same address is not
/// taken for it.
#[inline(always)]
pub fn connection_closed(skaddr: u64) {
    if enabled() {
        let _ = TX.remove(&skaddr);
    }
}

#[sock_ops]
pub fn tx_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: the context's socket pointer, used as a key only.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk } as u64;
    let Some(st) = TX.get_ptr_mut(&sk) else {
        return 1;
    };
    // SAFETY: map values stay valid for the program's run.
    let st = unsafe { &mut *st };
    if st.mode != mode::READY {
        return 1;
    }
    // SAFETY: `ctx.ops` is this program's context.
    let added = unsafe { TX_SOCKS.update(sk, &mut *ctx.ops, 0) };
    st.mode = if added.is_ok() {
        mode::FOLLOWING
    } else {
        bump(counter::INJECT_FAILED);
        mode::OFF
    };
    1
}

// ---- looking at a request head ---------------------------------------------

mod seen {
    /// Not an HTTP/1 request line (or a `CONNECT`, which makes a tunnel).
    pub const NOT_REQUEST: u32 = 1;
    pub const TRANSFER_ENCODING: u32 = 2;
    pub const UPGRADE: u32 = 4;
    pub const CONTENT_LENGTH: u32 = 8;
    /// `Content-Length` malformed or repeated.
    pub const BAD: u32 = 16;
    /// A `traceparent` header is present...
    pub const TRACEPARENT: u32 = 32;
    /// ...and valid; its values are in the scan.
    pub const TRACEPARENT_VALID: u32 = 64;
}

/// A head copied out of a request, and what a scan found in it.
///
/// All byte-by-byte work happens in the `bpf_loop` callback, and all its
/// state lives here, in a map value rather than on the stack: the verifier
/// checks the callback as a loop and does not track what a map holds, so
/// its states converge at once, and the code after the loop is checked
/// once rather than once per way out of it.
#[repr(C)]
pub struct Scan {
    /// Who scans now: the slot is per CPU, and a program that is preempted
    /// mid-scan may find another's results here when it resumes.
    owner: u64,
    len: u32,
    line_start: u32,
    /// Just past the request line's `\n`; 0 until found.
    line_end: u32,
    /// Just past the blank line that ends the head; 0 until found.
    head_end: u32,
    /// [`seen`] bits.
    flags: u32,
    tp_sampled: u32,
    content_length: u64,
    tp_trace_id: [u8; 16],
    tp_parent_id: [u8; 8],
    data: [u8; WINDOW as usize],
}

#[inline(always)]
fn at(s: &Scan, i: u32) -> u8 {
    // Through the stack, so that LLVM cannot turn the masked index into a
    // running pointer the verifier would see as unbounded.
    let idx = (i & MASK) as u64;
    // SAFETY: reads a local.
    let idx = unsafe { ptr::read_volatile(&idx) } & MASK as u64;
    s.data[idx as usize]
}

/// Do the bytes at `from` spell `text`? `fold` is 0x20 to compare ASCII
/// letters case-insensitively (`text` in lowercase; ':' and '-' are
/// unchanged by it), 0 to compare exactly.
#[inline(always)]
fn spells(s: &Scan, from: u32, text: &[u8], fold: u8) -> bool {
    let mut k = 0;
    while k < text.len() {
        if at(s, from + k as u32) | fold != text[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// Does the line at `from` start with header `name` (lowercase)?
#[inline(always)]
fn is_name(s: &Scan, from: u32, name: &[u8]) -> bool {
    spells(s, from, name, 0x20)
}

/// The first 8 bytes at `from`, lowercased, as a big-endian number.
#[inline(always)]
fn prefix(s: &Scan, from: u32) -> u64 {
    let mut v = 0u64;
    for k in 0..8 {
        v = (v << 8) | (at(s, from + k) | 0x20) as u64;
    }
    v
}

const fn word(name: &[u8; 8]) -> u64 {
    u64::from_be_bytes(*name)
}

/// The request line ends at `p`: an uppercase method of 3 to 16 letters, a
/// space, the target, ` HTTP/1.x\r\n`.
#[inline(always)]
fn request_line(s: &mut Scan, p: u32) {
    let mut method = 0;
    for i in 0..17u32 {
        let c = at(s, i);
        if c == b' ' {
            method = i;
            break;
        }
        if !c.is_ascii_uppercase() {
            break;
        }
    }
    let ok = method >= 3
        && p >= method + 12
        && !spells(s, 0, b"CONNECT ", 0)
        && spells(s, p - 10, b" HTTP/1.", 0)
        && at(s, p - 2).is_ascii_digit()
        && at(s, p - 1) == b'\r';
    if !ok {
        s.flags |= seen::NOT_REQUEST;
    }
}

/// A `Content-Length` header on the line `ls..p`.
#[inline(always)]
fn content_length(s: &mut Scan, ls: u32, p: u32) {
    if !is_name(s, ls, b"content-length:") {
        return;
    }
    if s.flags & seen::CONTENT_LENGTH != 0 {
        s.flags |= seen::BAD;
        return;
    }
    s.flags |= seen::CONTENT_LENGTH;
    let mut i = ls + 15;
    let mut value: u64 = 0;
    let mut digits = 0;
    for _ in 0..24 {
        if i >= p {
            break;
        }
        let c = at(s, i);
        i += 1;
        if c.is_ascii_digit() {
            if digits == 15 {
                s.flags |= seen::BAD;
                return;
            }
            value = value * 10 + (c - b'0') as u64;
            digits += 1;
        } else if c == b'\r' || c == b' ' || c == b'\t' {
            if digits > 0 {
                break;
            }
        } else {
            s.flags |= seen::BAD;
            return;
        }
    }
    if digits == 0 {
        s.flags |= seen::BAD;
    }
    s.content_length = value;
}

/// A lowercase hex digit's value, plus 0x100 when `c` is not one.
/// Without branches: the verifier walks one path through a whole id, not
/// one per kind of digit in it (with a branch per digit, the exit programs
/// went past the verifier's limit of a million instructions).
#[inline(always)]
fn hex_value(c: u8) -> u32 {
    let c = i32::from(c);
    let d = c - i32::from(b'0');
    let l = c - i32::from(b'a');
    // 1 when out of 0..=9 (0..=5): the sign bit of d, or of 9 - d.
    let not_digit = ((d | (9 - d)) as u32) >> 31;
    let not_letter = ((l | (5 - l)) as u32) >> 31;
    let value =
        (d as u32 & not_digit.wrapping_sub(1)) | ((l + 10) as u32 & not_letter.wrapping_sub(1));
    (value & 0xf) | ((not_digit & not_letter) << 8)
}

/// The two hex digits at `from` as a byte, plus 0x100 when either is not a
/// lowercase hex digit.
#[inline(always)]
fn hex_pair(s: &Scan, from: u32) -> u32 {
    let hi = hex_value(at(s, from));
    let lo = hex_value(at(s, from + 1));
    ((hi & 0xf) << 4) | (lo & 0xf) | ((hi | lo) & 0x100)
}

#[inline(always)]
fn hex_byte(s: &Scan, from: u32) -> Option<u8> {
    let v = hex_pair(s, from);
    (v & 0x100 == 0).then_some(v as u8)
}

/// The first `traceparent` header, on the line at `ls`, by the agent's
/// rules: lowercase hex, version `ff` rejected, version `00` exactly 55
/// bytes, no all-zero ids.
#[inline(always)]
fn traceparent(s: &mut Scan, ls: u32) {
    if !is_name(s, ls, b"traceparent:") || s.flags & seen::TRACEPARENT != 0 {
        return;
    }
    s.flags |= seen::TRACEPARENT;
    if parse_traceparent(s, ls + 12).is_some() {
        s.flags |= seen::TRACEPARENT_VALID;
    }
}

/// Past up to 8 spaces and tabs from `from`.
#[inline(always)]
fn past_blanks(s: &Scan, from: u32) -> u32 {
    let mut i = from;
    for _ in 0..8 {
        let c = at(s, i);
        if c != b' ' && c != b'\t' {
            break;
        }
        i += 1;
    }
    i
}

/// `N` bytes of lowercase hex at `from`; `None` if malformed or all zero
/// (an invalid trace or span id).
#[inline(always)]
fn nonzero_id<const N: usize>(s: &Scan, from: u32) -> Option<[u8; N]> {
    let mut id = [0u8; N];
    let mut all = 0u32;
    for (i, byte) in id.iter_mut().enumerate() {
        let v = hex_pair(s, from + 2 * i as u32);
        all |= v;
        *byte = v as u8;
    }
    // Every pair hex (no 0x100), and some byte not zero.
    (all & 0x100 == 0 && all & 0xff != 0).then_some(id)
}

#[inline(always)]
fn parse_traceparent(s: &mut Scan, from: u32) -> Option<()> {
    let v = past_blanks(s, from);
    if at(s, v + 2) != b'-' || at(s, v + 35) != b'-' || at(s, v + 52) != b'-' {
        return None;
    }
    let version = hex_byte(s, v)?;
    // The value ends at the line's end, after optional whitespace; a later
    // version may append fields after a '-'.
    let ends = matches!(at(s, past_blanks(s, v + 55)), b'\r' | b'\n');
    if version == 0xff || (version == 0 && !ends) || (!ends && at(s, v + 55) != b'-') {
        return None;
    }
    s.tp_trace_id = nonzero_id::<16>(s, v + 3)?;
    s.tp_parent_id = nonzero_id::<8>(s, v + 36)?;
    s.tp_sampled = (hex_byte(s, v + 53)? & 1) as u32;
    Some(())
}

/// A line ended at `p`. A global function (exported, so its BTF says so):
/// the verifier checks it once, on its own, for any `Scan` and any `p`,
/// and at each call only that the arguments fit. As a static function it
/// was checked again for every state a caller reached it in: nearly a
/// million instructions for the read programs on Linux 6.18, past the
/// verifier's limit once TLS reads scan too.
#[no_mangle]
#[inline(never)]
pub extern "C" fn zerospan_newline(s: *mut Scan, p: u32) -> u32 {
    if s.is_null() {
        return 0;
    }
    // SAFETY: not null; the verifier checked its size against `Scan`.
    newline(unsafe { &mut *s }, p);
    0
}

#[inline(always)]
fn newline(s: &mut Scan, p: u32) {
    if s.line_end == 0 {
        s.line_end = p + 1;
        s.line_start = p + 1;
        request_line(s, p);
        return;
    }
    let ls = s.line_start;
    s.line_start = p + 1;
    if p == ls || (p == ls + 1 && at(s, ls) == b'\r') {
        s.head_end = p + 1;
        return;
    }
    let first = prefix(s, ls);
    if first == word(b"content-") {
        content_length(s, ls, p);
    } else if first == word(b"transfer") {
        if is_name(s, ls, b"transfer-encoding:") {
            s.flags |= seen::TRANSFER_ENCODING;
        }
    } else if first == word(b"tracepar") {
        traceparent(s, ls);
    } else if first == word(b"upgrade:") {
        s.flags |= seen::UPGRADE;
    }
}

/// One byte of the head per call. (Eight at a time, with every line end
/// in them handled, made the verifier's work grow past its limit.)
#[inline(never)]
unsafe extern "C" fn scan_byte(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` points at the map value pointer `scan_head` passed.
    let s = unsafe { &mut **(ctx as *mut *mut Scan) };
    let p = (index as u32) & MASK;
    if p >= s.len || s.head_end != 0 || s.flags & seen::NOT_REQUEST != 0 {
        return 1;
    }
    if s.data[p as usize] == b'\n' {
        zerospan_newline(s, p);
    }
    0
}

/// A fresh owner tag for a scan.
#[inline(always)]
fn new_owner() -> u64 {
    // SAFETY: helpers with no preconditions.
    unsafe {
        ((generated::bpf_get_prandom_u32() as u64) << 32) | generated::bpf_get_prandom_u32() as u64
    }
}

/// Scans the first `len` bytes of `s.data`.
#[inline(always)]
fn scan_head(s: *mut Scan, len: u32) {
    // SAFETY: `s` is this CPU's map value.
    unsafe {
        (*s).len = len;
        (*s).line_start = 0;
        (*s).line_end = 0;
        (*s).head_end = 0;
        (*s).flags = 0;
        (*s).content_length = 0;
    }
    let mut p = s;
    // SAFETY: the callback only touches `*s`, for the duration of the call.
    unsafe {
        generated::bpf_loop(
            len,
            scan_byte as *mut c_void,
            &mut p as *mut *mut Scan as *mut c_void,
            0,
        );
    }
}

/// Is the scanned head an HTTP/1 request's?
#[inline(always)]
fn is_request(s: &Scan) -> bool {
    s.line_end != 0 && s.flags & seen::NOT_REQUEST == 0
}

// ---- trace ids ---------------------------------------------------------------

struct Ids {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: [u8; 8],
    sampled: u8,
    origin: u8,
}

#[inline(always)]
fn random_into(out: &mut [u8]) {
    let mut i = 0;
    while i + 4 <= out.len() {
        // SAFETY: helper has no preconditions.
        let r = unsafe { generated::bpf_get_prandom_u32() };
        out[i..i + 4].copy_from_slice(&r.to_ne_bytes());
        i += 4;
    }
}

#[inline(always)]
fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    random_into(&mut id);
    id[0] |= 1; // never all zero
    id
}

#[inline(always)]
fn new_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    random_into(&mut id);
    id[0] |= 1;
    id
}

/// The agent's root sampling decision for a trace the probes start.
#[inline(always)]
fn sampled(trace_id: &[u8; 16]) -> u8 {
    // SAFETY: a load-time constant.
    let bound = unsafe { ptr::read_volatile(&SAMPLE_BOUND) };
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    u8::from(bound == u64::MAX || u64::from_be_bytes(low) < bound)
}

#[inline(always)]
fn report(dir: u8, tgid: u32, tid: u32, fd: i32, conn_id: u64, ts: u64, ids: &Ids) {
    let mut hdr = header(kind::CONTEXT, dir, tgid, tid, fd, conn_id);
    hdr.ts_enter_ns = ts;
    hdr.ts_exit_ns = ts;
    output(&ContextEvent {
        header: hdr,
        trace_id: ids.trace_id,
        span_id: ids.span_id,
        parent_id: ids.parent_id,
        sampled: ids.sampled,
        origin: ids.origin,
        _pad: [0; 6],
    });
}

// ---- the server side: a traced thread reads a request ----------------------

/// A traced thread read `moved` bytes at `ptr` from accepted socket `fd`.
/// If they start an HTTP/1 request head, choose its server span's ids (its
/// own `traceparent`'s trace, or a new one) and remember them as what the
/// thread serves. Reported with the read's exit time, `ts`.
#[inline(always)]
pub fn server_request_read(pid_tgid: u64, fd: i32, conn_id: u64, ptr: u64, moved: u64, ts: u64) {
    if !enabled() || moved < 16 {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: read-only lookup of a plain value.
    match unsafe { SOCKS.get(&sock_key(tgid, fd)) } {
        Some(sock) if sock.flags & sock_flags::OUTGOING == 0 => {}
        _ => return,
    }
    // A cheap look first: most reads are not request heads.
    // SAFETY: bpf_probe_read_user validates the user pointer.
    let Ok(first) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 2]) }) else {
        return;
    };
    if !first[0].is_ascii_uppercase() || !first[1].is_ascii_uppercase() {
        return;
    }
    let Some(scan) = HEAD_BUF.get_ptr_mut(0) else {
        return;
    };
    let len = if moved < WINDOW as u64 {
        moved as u32
    } else {
        WINDOW
    };
    let owner = new_owner();
    // SAFETY: `scan` is this CPU's slot; `len <= WINDOW`.
    let r = unsafe {
        (*scan).owner = owner;
        generated::bpf_probe_read_user((*scan).data.as_mut_ptr().cast(), len, ptr as *const c_void)
    };
    if r != 0 {
        return;
    }
    scan_head(scan, len);
    // SAFETY: as above.
    let s = unsafe { &*scan };
    if s.owner != owner || !is_request(s) {
        return;
    }
    let from_header = if s.flags & seen::TRACEPARENT_VALID != 0 {
        Some(Ids {
            trace_id: s.tp_trace_id,
            span_id: new_span_id(),
            parent_id: s.tp_parent_id,
            sampled: s.tp_sampled as u8,
            origin: context_origin::HEADER,
        })
    } else if s.flags & seen::TRACEPARENT == 0 && s.head_end == 0 {
        // The header may still come, in a read we do not look at.
        return;
    } else {
        None
    };
    let ids = from_header.unwrap_or_else(new_root);
    let tid = pid_tgid as u32;
    // A Go program's calls are made by other goroutines, on any thread:
    // its threads serve nothing the probes could name.
    // SAFETY: read-only lookup of a plain value.
    if unsafe { TRACED.get(&tgid) }.is_some_and(|f| f & traced::GO != 0) {
        report(direction::INGRESS, tgid, tid, fd, conn_id, ts, &ids);
        return;
    }
    // SAFETY: read-only copy of a plain value.
    let busy = unsafe { SERVING.get(&tid) }.is_some_and(|c| c.fd != fd);
    let ctx = ServerCtx {
        trace_id: ids.trace_id,
        span_id: ids.span_id,
        fd,
        sampled: ids.sampled,
        ambiguous: u8::from(busy),
        _pad: [0; 2],
    };
    let _ = SERVING.insert(&tid, &ctx, 0);
    report(direction::INGRESS, tgid, tid, fd, conn_id, ts, &ids);
}

/// A traced thread wrote on accepted socket `fd`: if that answers the
/// request it serves, it serves nothing now.
#[inline(always)]
pub fn server_response_written(tid: u32, fd: i32) {
    if !enabled() {
        return;
    }
    // SAFETY: read-only copy of a plain value.
    if unsafe { SERVING.get(&tid) }.is_some_and(|c| c.fd == fd) {
        let _ = SERVING.remove(&tid);
    }
}

/// A traced thread exited: its id may be reused by a thread that serves
/// nothing.
#[inline(always)]
pub fn thread_exited(tid: u32) {
    if enabled() {
        let _ = SERVING.remove(&tid);
    }
}

// ---- the client side: inserting the header ---------------------------------

/// The context of a request written now by thread `tid`: a child of the
/// server request it serves, or a new trace.
#[inline(always)]
fn client_ids(tid: u32) -> Ids {
    // SAFETY: read-only copy of a plain value.
    if let Some(c) = unsafe { SERVING.get(&tid) }.copied() {
        if c.ambiguous == 0 {
            return Ids {
                trace_id: c.trace_id,
                span_id: new_span_id(),
                parent_id: c.span_id,
                sampled: c.sampled,
                origin: context_origin::THREAD,
            };
        }
    }
    new_root()
}

/// A new trace, sampled as the agent's root sampler would.
#[inline(always)]
fn new_root() -> Ids {
    let trace_id = new_trace_id();
    Ids {
        sampled: sampled(&trace_id),
        trace_id,
        span_id: new_span_id(),
        parent_id: [0; 8],
        origin: context_origin::NEW,
    }
}

#[inline(always)]
fn hex_digit(n: u8) -> u8 {
    // '0'..'9', then 'a'..'f' (39 = 'a' - '0' - 10), without a branch.
    n + b'0' + ((n + 6) >> 4) * 39
}

/// The header line for `ids`.
#[inline(always)]
fn header_line(ids: &Ids) -> [u8; TP_LEN as usize] {
    let mut line = [0u8; TP_LEN as usize];
    line[..16].copy_from_slice(b"traceparent: 00-");
    for i in 0..16 {
        line[16 + 2 * i] = hex_digit(ids.trace_id[i] >> 4);
        line[17 + 2 * i] = hex_digit(ids.trace_id[i] & 15);
    }
    line[48] = b'-';
    for i in 0..8 {
        line[49 + 2 * i] = hex_digit(ids.span_id[i] >> 4);
        line[50 + 2 * i] = hex_digit(ids.span_id[i] & 15);
    }
    line[65] = b'-';
    line[66] = b'0';
    line[67] = b'0' + (ids.sampled & 1);
    line[68] = b'\r';
    line[69] = b'\n';
    line
}

/// Inserts `line` at `off` of the message, which must follow the request
/// line's `\r\n` (checked in the message itself, not only in the copy).
#[inline(always)]
fn insert(ctx: &SkMsgContext, off: u32, line: &[u8; TP_LEN as usize]) -> Result<(), ()> {
    // SAFETY: helper on this program's own context.
    if unsafe { generated::bpf_msg_pull_data(ctx.msg, off - 2, off, 0) } != 0 {
        return Err(());
    }
    let data = ctx.data() as *const u8;
    // SAFETY: checked against data_end, as the verifier demands.
    unsafe {
        if data.add(2) > ctx.data_end() as *const u8 || *data != b'\r' || *data.add(1) != b'\n' {
            return Err(());
        }
    }
    ctx.push_data(off, TP_LEN, 0).map_err(|_| ())?;
    // SAFETY: helper on this program's own context.
    let r = unsafe { generated::bpf_msg_pull_data(ctx.msg, off, off + TP_LEN, 0) };
    if r != 0 {
        return Err(());
    }
    let data = ctx.data() as *mut u8;
    let end = ctx.data_end() as *mut u8;
    // SAFETY: checked against data_end, as the verifier demands.
    unsafe {
        if data.add(TP_LEN as usize) > end {
            return Err(());
        }
        ptr::copy_nonoverlapping(line.as_ptr(), data, TP_LEN as usize);
    }
    Ok(())
}

#[sk_msg]
pub fn tx_inject(ctx: SkMsgContext) -> u32 {
    follow(&ctx);
    SK_PASS
}

#[inline(always)]
fn follow(ctx: &SkMsgContext) {
    // SAFETY: the context's socket pointer, used as a key only.
    let sk = unsafe { (*ctx.msg).__bindgen_anon_3.sk } as u64;
    let Some(st) = TX.get_ptr_mut(&sk) else {
        return;
    };
    // SAFETY: map values stay valid for the program's run.
    let st = unsafe { &mut *st };
    if st.mode != mode::FOLLOWING {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 != st.tgid {
        // Another process writes on it (an inherited socket): its bytes
        // are not ours to change.
        give_up(st, counter::INJECT_GAVE_UP);
        return;
    }
    let mut size = ctx.size();
    let mut pos: u32 = 0;
    // The rest of a body begun in earlier messages.
    if !past_body(st, &mut pos, size) {
        return;
    }
    let Some(head) = look_at_head(ctx, pos, size) else {
        give_up(st, counter::INJECT_GAVE_UP);
        return;
    };
    let mut grown = 0;
    if head.has_traceparent {
        bump(counter::INJECT_HAD_HEADER);
    } else {
        let ids = client_ids(pid_tgid as u32);
        if insert(ctx, pos + head.line_end, &header_line(&ids)).is_err() {
            give_up(st, counter::INJECT_FAILED);
            return;
        }
        grown = TP_LEN;
        size += TP_LEN;
        bump(counter::INJECTED);
        // SAFETY: helper has no preconditions.
        let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
        // Looked up now: on loopback a connection is established before
        // `connect` returns and the probes track it.
        // SAFETY: read-only lookup of a plain value.
        let conn_id = unsafe { SOCKS.get(&sock_key(st.tgid, st.fd)) }.map_or(0, |s| s.conn_id);
        report(
            direction::EGRESS,
            st.tgid,
            pid_tgid as u32,
            st.fd,
            conn_id,
            now,
            &ids,
        );
    }
    if head.open_ended {
        // Chunked or upgraded: where the next request starts is not known
        // from here.
        give_up(st, counter::INJECT_GAVE_UP);
        return;
    }
    st.body_left = head.content_length;
    pos += head.head_end + grown;
    // The body, whole or begun, in the same message (a head and a small
    // body are often written together).
    if past_body(st, &mut pos, size) && pos < size {
        // A second request in the same message: one head per message is
        // what the verifier lets us follow.
        give_up(st, counter::INJECT_GAVE_UP);
    }
}

/// Moves `pos` past the body bytes still owed. False when the message
/// ends inside the body.
#[inline(always)]
fn past_body(st: &mut TxState, pos: &mut u32, size: u32) -> bool {
    if *pos >= size {
        return false;
    }
    let rest = (size - *pos) as u64;
    if st.body_left >= rest {
        st.body_left -= rest;
        return false;
    }
    *pos += st.body_left as u32;
    st.body_left = 0;
    *pos < size
}

#[inline(always)]
fn give_up(st: &mut TxState, why: u32) {
    st.mode = mode::OFF;
    bump(why);
}

/// What the `sk_msg` program needs of a request head.
struct Head {
    line_end: u32,
    head_end: u32,
    content_length: u64,
    has_traceparent: bool,
    /// Chunked or upgraded: where the next request starts is not known.
    open_ended: bool,
}

/// Copies the request head that starts at `pos` of the message and scans
/// it. `None` unless it is an HTTP/1 request head, whole, with sane
/// framing headers.
#[inline(always)]
fn look_at_head(ctx: &SkMsgContext, pos: u32, size: u32) -> Option<Head> {
    let avail = if size - pos < WINDOW {
        size - pos
    } else {
        WINDOW
    };
    // SAFETY: helper on this program's own context.
    if unsafe { generated::bpf_msg_pull_data(ctx.msg, pos, pos + avail, 0) } != 0 {
        return None;
    }
    let data = ctx.data();
    let end = ctx.data_end();
    if data + (avail as usize) > end || avail > WINDOW {
        return None;
    }
    let scan = HEAD_BUF.get_ptr_mut(0)?;
    let owner = new_owner();
    // SAFETY: `scan` is this CPU's slot; `avail <= WINDOW`.
    let r = unsafe {
        (*scan).owner = owner;
        generated::bpf_probe_read_kernel(
            (*scan).data.as_mut_ptr().cast(),
            avail,
            data as *const c_void,
        )
    };
    if r != 0 {
        return None;
    }
    scan_head(scan, avail);
    // SAFETY: as above.
    let s = unsafe { &*scan };
    if s.owner != owner || !is_request(s) || s.head_end == 0 || s.flags & seen::BAD != 0 {
        return None;
    }
    Some(Head {
        line_end: s.line_end,
        head_end: s.head_end,
        content_length: s.content_length,
        has_traceparent: s.flags & seen::TRACEPARENT != 0,
        open_ended: s.flags & (seen::TRANSFER_ENCODING | seen::UPGRADE) != 0,
    })
}
