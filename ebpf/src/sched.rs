//! Process lifecycle: fork, exec and exit of traced processes.

use core::ptr;

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use zerospan_common::{kind, traced, ProcEvent};

use crate::{
    emit::output,
    helpers::{header, traced_tgid},
    maps::{
        DISCOVER, EXIT_GROUP_DEAD_OFFSET, FORK_CHILD_PID_OFFSET, LAST_READ, LATE, TLS_CALLS, TRACED,
    },
    node_loop, propagate,
};

fn proc_event(kind: u8, tgid: u32, tid: u32, pid: u32) {
    let mut hdr = header(kind, 0, tgid, tid, -1, 0);
    // SAFETY: helper has no preconditions.
    hdr.ts_enter_ns = unsafe { bpf_ktime_get_ns() };
    hdr.ts_exit_ns = hdr.ts_enter_ns;
    output(&ProcEvent {
        header: hdr,
        pid,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
}

/// Children of traced processes are traced. Thread creation fires this too;
/// the extra entry is keyed by the new tid and removed when that thread exits.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let Some((_, tgid, tid)) = traced_tgid() else {
        return 0;
    };
    // SAFETY: a load-time constant, then a checked read of the record.
    let offset = unsafe { ptr::read_volatile(&FORK_CHILD_PID_OFFSET) } as usize;
    let Ok(child) = (unsafe { ctx.read_at::<i32>(offset) }) else {
        return 0;
    };
    let child = child as u32;
    // The child runs its parent's image until it execs: what the parent's
    // flags say (a Go program, a memory-buffer TLS library) holds for it
    // from its first instruction, before the agent hears of the fork. (A
    // Go child's goroutines are read once the agent has given it its
    // `GO_PROCS` entry, and a uprobe has checked its TLS slot.)
    // SAFETY: read-only copy of a plain value.
    let flags = unsafe { TRACED.get(&tgid) }.copied().unwrap_or(traced::YES);
    let _ = TRACED.insert(&child, &flags, 0);
    proc_event(kind::PROC_FORK, tgid, tid, child);
    0
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let Some((_, tgid, tid)) = traced_tgid() else {
        // SAFETY: a load-time constant.
        if unsafe { ptr::read_volatile(&DISCOVER) } != 0 {
            let pid_tgid = bpf_get_current_pid_tgid();
            let tgid = (pid_tgid >> 32) as u32;
            proc_event(kind::EXEC_SEEN, tgid, pid_tgid as u32, tgid);
        }
        return 0;
    };
    proc_event(kind::PROC_EXEC, tgid, tid, tgid);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let Some((_, tgid, tid)) = traced_tgid() else {
        return 0;
    };
    if tid != tgid {
        let _ = TRACED.remove(&tid);
    }
    let _ = LATE.remove(&tid);
    let pid_tgid = ((tgid as u64) << 32) | tid as u64;
    let _ = TLS_CALLS.remove(&pid_tgid);
    let _ = LAST_READ.remove(&pid_tgid);
    node_loop::thread_exited(pid_tgid);
    propagate::thread_exited(tid);
    // SAFETY: a load-time constant, then a checked read of the record.
    let offset = unsafe { ptr::read_volatile(&EXIT_GROUP_DEAD_OFFSET) } as usize;
    // Kernels without `group_dead` fire this per thread: the leader's exit
    // stands for the process's.
    let group_dead = if offset == 0 {
        tid == tgid
    } else {
        unsafe { ctx.read_at::<u8>(offset) }.unwrap_or(0) != 0
    };
    if group_dead {
        let _ = TRACED.remove(&tgid);
        proc_event(kind::PROC_EXIT, tgid, tid, tgid);
    }
    0
}
