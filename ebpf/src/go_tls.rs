//! Go's `crypto/tls`: plaintext from `(*tls.Conn).Read` and `Write`.
//!
//! Go links its own TLS, so the library probes never see it. These are
//! uprobes on the two methods, in Go's register ABI (Go 1.17+ on amd64:
//! arguments in RAX, RBX, RCX…, results in RAX…, the current goroutine's
//! `g` in R14 at all times).
//!
//! - Return probes are plain uprobes on each `RET` instruction of the
//!   method, found by the agent by decoding it. A uretprobe rewrites the
//!   return address on the goroutine's stack, and Go moves stacks: the
//!   program would crash.
//! - A call is keyed by its goroutine, not its thread: a goroutine that
//!   blocks in the call may resume on another thread.
//! - A read's plaintext is sent when it returns; a write's when it starts,
//!   since its peer's answer can be read by another goroutine before the
//!   writer returns.
//! - The socket comes from the connection itself: `tls.Conn.conn` (a
//!   `net.Conn`) → `*net.TCPConn` → `netFD` → `poll.FD.Sysfd`. The probes
//!   follow that chain only through an itab whose type is named
//!   `*net.TCPConn`; any other `net.Conn` is counted and left alone, as the
//!   fd read through it could name an unrelated socket.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use zerospan_common::{counter, direction, GoProc};

use crate::{
    go_runtime::{regs, GO_PROCS},
    helpers::{bump, traced_tgid},
    maps::{SockRef, SslKey, TlsCall, SOCKS},
    tls::{emit_plaintext, still_open},
};

/// Calls in progress, by (tgid, goroutine).
#[map]
static GO_CALLS: LruHashMap<SslKey, GoCall> = LruHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct GoCall {
    buf: u64,
    len: u64,
    ts_enter: u64,
    /// The socket, as it was at the call's entry.
    sock: SockRef,
    direction: u8,
    _pad: [u8; 7],
}

/// `abi.Kind` of a pointer type.
const KIND_PTR: u8 = 22;
/// `abi.TFlagExtraStar`: the name carries a `*` the type's own name lacks.
const TFLAG_EXTRA_STAR: u8 = 2;
/// A type name as Go lays it out: a flags byte, a varint length (one byte
/// here), the bytes.
const TCP_CONN_NAME: &[u8; 12] = b"*net.TCPConn";

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user validates the user pointer.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Whether `itab` is `*net.TCPConn`'s, by the name of its type.
#[inline(always)]
fn is_tcp_conn(proc_: &GoProc, itab: u64) -> bool {
    let Some(typ) = read::<u64>(itab + 8) else {
        return false;
    };
    let (Some(str_off), Some(tflag), Some(kind)) = (
        read::<i32>(typ + u64::from(proc_.type_str)),
        read::<u8>(typ + u64::from(proc_.type_tflag)),
        read::<u8>(typ + u64::from(proc_.type_kind)),
    ) else {
        return false;
    };
    if kind & 0x1f != KIND_PTR || tflag & TFLAG_EXTRA_STAR != 0 || str_off <= 0 {
        return false;
    }
    let Some(name) = read::<[u8; 14]>(proc_.types + str_off as u64) else {
        return false;
    };
    if name[1] != TCP_CONN_NAME.len() as u8 {
        return false;
    }
    let mut i = 0;
    while i < TCP_CONN_NAME.len() {
        if name[i + 2] != TCP_CONN_NAME[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The socket under the `*tls.Conn` at `conn`, if it is a `*net.TCPConn`.
#[inline(always)]
fn socket_of(proc_: *mut GoProc, conn: u64) -> Option<i32> {
    // SAFETY: map values stay valid for the program's run.
    let p = unsafe { &mut *proc_ };
    let iface = conn + u64::from(p.conn);
    let itab = read::<u64>(iface)?;
    if itab == 0 {
        return None;
    }
    if itab != p.tcp_conn_itab {
        if !is_tcp_conn(p, itab) {
            bump(counter::GO_CONN_UNKNOWN);
            return None;
        }
        p.tcp_conn_itab = itab;
    }
    let tcp = read::<u64>(iface + 8)?;
    let netfd = read::<u64>(tcp + u64::from(p.netfd))?;
    let fd = read::<i64>(netfd + u64::from(p.sysfd))?;
    (0..=i32::MAX as i64).contains(&fd).then_some(fd as i32)
}

#[inline(always)]
fn go_enter(ctx: &ProbeContext, dir: u8) {
    let Some((pid_tgid, tgid, _)) = traced_tgid() else {
        return;
    };
    let Some(proc_) = GO_PROCS.get_ptr_mut(&tgid) else {
        return;
    };
    let r = regs(ctx);
    // (c *Conn, b []byte): c in RAX, b's pointer and length in RBX, RCX.
    let Some(fd) = socket_of(proc_, r.rax) else {
        return;
    };
    // SAFETY: read-only lookup of a plain value.
    let Some(sock) = (unsafe { SOCKS.get(&crate::helpers::sock_key(tgid, fd)) }) else {
        return;
    };
    // SAFETY: helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = key(tgid, r.r14);
    let call = GoCall {
        buf: r.rbx,
        len: r.rcx,
        ts_enter: now,
        sock: SockRef {
            fd,
            _pad: 0,
            conn_id: sock.conn_id,
        },
        direction: dir,
        _pad: [0; 7],
    };
    if dir == direction::EGRESS {
        // A call that grows its stack runs its entry again, after the
        // stack check: the same write, not another.
        // SAFETY: read-only copy of a plain value.
        if let Some(open) = unsafe { GO_CALLS.get(&key) }.copied() {
            if open.direction == dir
                && open.len == call.len
                && open.sock.conn_id == call.sock.conn_id
                && now.saturating_sub(open.ts_enter) < REENTRY_NS
            {
                return;
            }
        }
    }
    let _ = GO_CALLS.insert(&key, &call, 0);
    if dir == direction::EGRESS && call.len > 0 {
        // A write is sent as it starts: `Write` sends all of `b` or fails
        // the connection, and its peer may answer, and another goroutine
        // read the answer, before this one returns.
        emit(pid_tgid, tgid, &call, call.len, r.r14);
    }
}

/// How soon after a write's entry its entry may run again for stack growth.
const REENTRY_NS: u64 = 100_000_000;

/// Sends `moved` bytes of `call`'s buffer as plaintext of its socket,
/// made by goroutine `g`.
#[inline(always)]
fn emit(pid_tgid: u64, tgid: u32, call: &GoCall, moved: u64, g: u64) {
    // The fd may have been closed and reused while the call blocked.
    let Some(fd) = still_open(tgid, Some(call.sock)) else {
        bump(counter::TLS_UNATTRIBUTED);
        return;
    };
    let tls = TlsCall {
        ssl: 0,
        buf: call.buf,
        num: call.len,
        count_ptr: 0,
        ts_enter: call.ts_enter,
        fd,
        direction: call.direction,
        emitted: 0,
        nested: 0,
        memory: 0,
        goroutine: g,
        sp: 0,
    };
    emit_plaintext(pid_tgid, tgid, fd, &tls, 0, moved);
}

#[inline(always)]
fn key(tgid: u32, g: u64) -> SslKey {
    SslKey {
        tgid,
        _pad: 0,
        ssl: g,
    }
}

#[inline(always)]
fn go_return(ctx: &ProbeContext) {
    let Some((pid_tgid, tgid, _)) = traced_tgid() else {
        return;
    };
    let r = regs(ctx);
    let key = key(tgid, r.r14);
    // SAFETY: read-only copy of a plain value.
    let Some(call) = (unsafe { GO_CALLS.get(&key) }).copied() else {
        return;
    };
    let _ = GO_CALLS.remove(&key);
    if call.direction != direction::INGRESS {
        return; // sent at its entry
    }
    // (n int, err error): n in RAX.
    let n = r.rax as i64;
    if n <= 0 || call.buf == 0 {
        return;
    }
    let moved = if (n as u64) < call.len {
        n as u64
    } else {
        call.len
    };
    emit(pid_tgid, tgid, &call, moved, r.r14);
}

#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, direction::INGRESS);
    0
}

#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, direction::EGRESS);
    0
}

/// On each `RET` of both methods: the goroutine's open call says which.
#[uprobe]
pub fn go_tls_return(ctx: ProbeContext) -> u32 {
    go_return(&ctx);
    0
}
