//! Node.js's event loop: where the callback of a read starts and ends.
//!
//! libuv reads a socket, then calls `node::LibuvStreamWrap::OnUvRead` with
//! what it read. Everything JavaScript does about those bytes (the
//! handler, and the promise continuations and `nextTick`s it queues) runs
//! before that call returns. The entry probe names the socket the thread
//! has just read (`LAST_READ`) in a `LOOP_ENTER` event, the return probe
//! sends `LOOP_EXIT`, and the agent parents the calls the thread makes in
//! between (see `event_loop.rs` in the agent). Timers, immediates and
//! connect callbacks run outside any read callback: the agent knows no
//! cause for what they write.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use zerospan_common::kind;

use crate::{
    emit::output,
    helpers::{header, traced_tgid},
    maps::LAST_READ,
    tls::still_open,
};

/// The read callback each thread is in, if any.
#[map]
static IN_CALLBACK: LruHashMap<u64, Callback> = LruHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Callback {
    /// The stack pointer at the outermost entry: its return is the one
    /// whose stack pointer is a return address above it.
    sp: u64,
    /// Entries inside it (not expected of libuv; counted so that their
    /// returns are not taken for the outermost one's).
    nested: u32,
    /// A `LOOP_ENTER` was sent for it.
    reported: u32,
}

/// `OnUvRead(this, nread, buf)` starts.
#[uprobe]
pub fn node_read_cb(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, tgid, tid)) = traced_tgid() else {
        return 0;
    };
    // SAFETY: the context points at this probe's saved registers.
    let sp = unsafe { (*ctx.regs).rsp };
    if let Some(open) = IN_CALLBACK.get_ptr_mut(&pid_tgid) {
        // SAFETY: map values stay valid for the program's run.
        let open = unsafe { &mut *open };
        if sp < open.sp {
            open.nested += 1; // deeper on the stack: inside the open one
            return 0;
        }
        // Not deeper: the open one returned unseen. It ends here.
        if open.reported != 0 {
            exit_event(tgid, tid);
        }
    }
    // A read of no bytes (EAGAIN, end of stream, an error) names nothing.
    let nread = ctx.arg::<i64>(1).unwrap_or(0);
    // SAFETY: read-only copy of a plain value.
    let last = unsafe { LAST_READ.get(&pid_tgid) }.copied();
    let fd = if nread > 0 {
        still_open(tgid, last)
    } else {
        None
    };
    let reported = match (fd, last) {
        (Some(fd), Some(r)) => {
            let mut hdr = header(kind::LOOP_ENTER, 0, tgid, tid, fd, r.conn_id);
            // SAFETY: helper has no preconditions.
            hdr.ts_enter_ns = unsafe { bpf_ktime_get_ns() };
            hdr.ts_exit_ns = hdr.ts_enter_ns;
            output(&hdr);
            1
        }
        _ => 0,
    };
    let open = Callback {
        sp,
        nested: 0,
        reported,
    };
    let _ = IN_CALLBACK.insert(&pid_tgid, &open, 0);
    0
}

/// `OnUvRead` returns.
#[uretprobe]
pub fn node_read_cb_ret(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(open) = IN_CALLBACK.get_ptr_mut(&pid_tgid) else {
        return 0;
    };
    // SAFETY: map values stay valid for the program's run.
    let open = unsafe { &mut *open };
    // SAFETY: the context points at this probe's saved registers.
    let sp = unsafe { (*ctx.regs).rsp };
    if sp != open.sp.wrapping_add(8) {
        open.nested = open.nested.saturating_sub(1);
        return 0;
    }
    let reported = open.reported;
    let _ = IN_CALLBACK.remove(&pid_tgid);
    if reported != 0 {
        exit_event((pid_tgid >> 32) as u32, pid_tgid as u32);
    }
    0
}

fn exit_event(tgid: u32, tid: u32) {
    let mut hdr = header(kind::LOOP_EXIT, 0, tgid, tid, -1, 0);
    // SAFETY: helper has no preconditions.
    hdr.ts_enter_ns = unsafe { bpf_ktime_get_ns() };
    hdr.ts_exit_ns = hdr.ts_enter_ns;
    output(&hdr);
}

/// A thread exited: its callback, if one was open, is over (said, so
/// that a thread reusing its id is in no callback).
#[inline(always)]
pub fn thread_exited(pid_tgid: u64) {
    // SAFETY: read-only copy of a plain value.
    if let Some(open) = unsafe { IN_CALLBACK.get(&pid_tgid) }.copied() {
        let _ = IN_CALLBACK.remove(&pid_tgid);
        if open.reported != 0 {
            exit_event((pid_tgid >> 32) as u32, pid_tgid as u32);
        }
    }
}
