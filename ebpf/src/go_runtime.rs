//! Go programs: which goroutine made each event, where goroutines come
//! from, and whom `net/http`'s writer goroutines write for.
//!
//! Goroutines move between threads, so in a Go program the thread says
//! nothing about whose work a read or write is. The running goroutine's
//! `g` is always in R14 inside Go code (the register ABI, Go 1.17+), and
//! in the thread's TLS slot at the fs base plus an offset the agent finds
//! in the binary. A syscall probe reads the slot; a uprobe in a Go
//! function has R14. Each process's slot is checked against R14 at the
//! first Go uprobe that runs in it ([`check_g`]); until it matched, and
//! for good if it did not, syscall events carry no goroutine.
//!
//! The uprobes here are entry probes, and `RET` probes found by the agent
//! by decoding the function: never a uretprobe, which would rewrite a
//! return address on a stack Go moves.
//!
//! - `runtime.newproc1(fn, callergp, callerpc, …) *g` makes every
//!   goroutine: `callergp` in RBX at entry, the new `g` in RAX at its
//!   `RET`s. It runs on the thread's system stack (`g0`), which does not
//!   change threads, so the pair is matched by thread.
//! - `net/http.(*persistConn).roundTrip(pc, req)` runs on the goroutine
//!   that asks for a request (RAX is `pc`); `(*persistConn).writeLoop(pc)`
//!   is the goroutine that will write it. The agent pairs the two.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use zerospan_common::{counter, go_g, kind, GoEvent, GoProc};

use crate::{
    emit::output,
    helpers::{bump, header, traced_tgid},
};

/// Where `struct task_struct` keeps the thread's fs base
/// (`thread.fsbase`), from the kernel's BTF; 0 when unknown, and then no
/// event carries a goroutine. Set by the agent at load time.
#[no_mangle]
static TASK_FSBASE: u64 = 0;

/// Traced Go processes and where their fields are (set by the agent).
#[map]
pub(crate) static GO_PROCS: HashMap<u32, GoProc> = HashMap::with_max_entries(4096, 0);

/// `runtime.newproc1` calls in progress: the creating goroutine, by
/// thread.
#[map]
static GO_SPAWNING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// The registers a uprobe in Go code stopped with.
#[inline(always)]
pub fn regs(ctx: &ProbeContext) -> pt_regs {
    // SAFETY: the context points at this probe's saved registers.
    unsafe { *ctx.regs }
}

/// The `g` in the current thread's TLS slot at `offset` from its fs base.
#[inline(always)]
fn slot_g(offset: i64) -> Option<u64> {
    // SAFETY: TASK_FSBASE is a load-time constant.
    let fsbase_at = unsafe { core::ptr::read_volatile(&TASK_FSBASE) };
    if fsbase_at == 0 || offset == 0 {
        return None;
    }
    // SAFETY: the helper has no preconditions; the kernel read is checked
    // by bpf_probe_read_kernel, the user one by bpf_probe_read_user.
    unsafe {
        let task = bpf_get_current_task();
        let fsbase = bpf_probe_read_kernel((task + fsbase_at) as *const u64).ok()?;
        if fsbase == 0 {
            return None;
        }
        bpf_probe_read_user(fsbase.wrapping_add(offset as u64) as *const u64).ok()
    }
}

/// The goroutine running on this thread of Go process `tgid`, once its
/// slot was checked; 0 if unknown.
#[inline(always)]
pub fn current_g(tgid: u32) -> u64 {
    // SAFETY: read-only copy of a plain value.
    let Some(p) = (unsafe { GO_PROCS.get(&tgid) }).copied() else {
        return 0;
    };
    if p.g_state != go_g::GOOD {
        return 0;
    }
    slot_g(p.tls_g).unwrap_or(0)
}

/// Checks, once per process, that the TLS slot holds `r14`, the `g` a Go
/// function runs with. Returns whether the process's goroutines are
/// known.
#[inline(always)]
fn check_g(p: *mut GoProc, r14: u64) -> bool {
    // SAFETY: map values stay valid for the program's run; two CPUs
    // checking at once write the same verdict.
    let p = unsafe { &mut *p };
    if p.g_state == go_g::UNCHECKED && p.tls_g != 0 {
        match slot_g(p.tls_g) {
            Some(g) if g == r14 && g != 0 => p.g_state = go_g::GOOD,
            Some(_) => {
                p.g_state = go_g::BAD;
                bump(counter::GO_G_MISMATCH);
            }
            // Not readable now (the page not faulted in): try again.
            None => {}
        }
    }
    p.g_state == go_g::GOOD
}

/// Sends what a goroutine did: `kind` by `g`, on `object`.
#[inline(always)]
fn report(kind: u8, tgid: u32, tid: u32, g: u64, object: u64) {
    let mut header = header(kind, 0, tgid, tid, -1, 0);
    header.goroutine = g;
    // SAFETY: helper has no preconditions.
    header.ts_enter_ns = unsafe { bpf_ktime_get_ns() };
    header.ts_exit_ns = header.ts_enter_ns;
    output(&GoEvent { header, object });
}

/// The Go process this probe runs in, if traced and known, with its
/// goroutines checked.
#[inline(always)]
fn go_process(r14: u64) -> Option<(u64, u32)> {
    let (pid_tgid, tgid, _) = traced_tgid()?;
    let p = GO_PROCS.get_ptr_mut(&tgid)?;
    check_g(p, r14).then_some((pid_tgid, tgid))
}

/// Entry of `runtime.newproc1`: remember the creating goroutine.
#[uprobe]
pub fn go_newproc1(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    if let Some((pid_tgid, _)) = go_process(r.r14) {
        let _ = GO_SPAWNING.insert(&pid_tgid, &r.rbx, 0);
    }
    0
}

/// Each `RET` of `runtime.newproc1`: the new goroutine is in RAX.
#[uprobe]
pub fn go_newproc1_return(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, tgid, tid)) = traced_tgid() else {
        return 0;
    };
    // SAFETY: read-only copy of a plain value.
    let Some(parent) = (unsafe { GO_SPAWNING.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = GO_SPAWNING.remove(&pid_tgid);
    let child = regs(&ctx).rax;
    if parent != 0 && child != 0 {
        report(kind::GO_SPAWN, tgid, tid, parent, child);
    }
    0
}

/// Entry of `net/http.(*persistConn).roundTrip`: this goroutine's request
/// goes out on the connection in RAX.
#[uprobe]
pub fn go_round_trip(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    if let Some((pid_tgid, tgid)) = go_process(r.r14) {
        report(kind::GO_ROUND_TRIP, tgid, pid_tgid as u32, r.r14, r.rax);
    }
    0
}

/// Entry of `net/http.(*persistConn).writeLoop`: this goroutine writes the
/// requests of the connection in RAX.
#[uprobe]
pub fn go_write_loop(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    if let Some((pid_tgid, tgid)) = go_process(r.r14) {
        report(kind::GO_WRITE_LOOP, tgid, pid_tgid as u32, r.r14, r.rax);
    }
    0
}
