//! Small helpers every program uses: the current traced process, a
//! socket's map key, tracepoint arguments, event headers, counters.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};
use zerospan_common::{source, EventHeader};

use crate::maps::{COUNTERS, TRACED};

#[inline(always)]
pub(crate) fn bump(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Argument `n` of a `syscalls/` tracepoint record: 8 bytes of common
/// fields, then the syscall number padded to 8 bytes, then one 8-byte slot
/// per argument.
#[inline(always)]
pub(crate) fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: syscall tracepoint records always hold six argument slots.
    unsafe { ctx.read_at::<u64>(16 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
pub(crate) fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: `ret` sits at offset 16 of every sys_exit record.
    unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1)
}

#[inline(always)]
pub(crate) fn traced_tgid() -> Option<(u64, u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: read-only lookup of a plain value.
    unsafe { TRACED.get(&tgid) }?;
    Some((pid_tgid, tgid, pid_tgid as u32))
}

#[inline(always)]
pub(crate) fn sock_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | (fd as u32 as u64)
}

#[inline(always)]
pub(crate) fn header(kind: u8, dir: u8, tgid: u32, tid: u32, fd: i32, conn_id: u64) -> EventHeader {
    EventHeader {
        kind,
        direction: dir,
        source: source::SYSCALL,
        _pad: 0,
        tgid,
        tid,
        fd,
        conn_id,
        ts_enter_ns: 0,
        ts_exit_ns: 0,
        goroutine: 0,
    }
}
