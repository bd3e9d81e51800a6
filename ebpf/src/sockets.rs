//! Connection lifecycle: accept, connect and close decide which fds are
//! tracked sockets, and tell the agent of each.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use zerospan_common::{counter, kind, origin, sock_flags, ConnEvent, SockInfo};

use crate::{
    data::stash,
    emit::output,
    h2_frames,
    helpers::{arg, bump, header, ret, sock_key, traced_tgid},
    maps::{Buf, SyscallArgs, AF_INET, AF_INET6, ARGS, EINPROGRESS, SOCKS},
};

/// Reads an inet sockaddr: (family, port in host order, address bytes).
#[inline(always)]
fn read_sockaddr(addr: u64) -> Option<(u16, u16, [u8; 16])> {
    if addr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user validates the user pointer.
    let family = unsafe { bpf_probe_read_user(addr as *const u16) }.ok()?;
    let port = unsafe { bpf_probe_read_user((addr + 2) as *const u16) }.ok()?;
    let mut out = [0u8; 16];
    match family {
        AF_INET => out[..4]
            .copy_from_slice(&unsafe { bpf_probe_read_user((addr + 4) as *const [u8; 4]) }.ok()?),
        AF_INET6 => {
            out = unsafe { bpf_probe_read_user((addr + 8) as *const [u8; 16]) }.ok()?;
        }
        _ => return Some((family, 0, out)),
    }
    Some((family, u16::from_be(port), out))
}

#[inline(always)]
fn enter_accept(ctx: &TracePointContext) {
    let Some((pid_tgid, _, _)) = traced_tgid() else {
        return;
    };
    let args = SyscallArgs {
        buf: Buf::Accept,
        direction: 0,
        family: 0,
        peer_port: 0,
        deep: 0,
        first_read: 0,
        fd: arg(ctx, 0) as i32,
        _pad: 0,
        ptr: arg(ctx, 1),
        count: 0,
        conn_id: 0,
        ts_enter: 0,
        peer_addr: [0; 16],
        goroutine: 0,
    };
    stash(pid_tgid, &args);
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx);
    0
}

#[inline(always)]
fn exit_accept(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: read-only copy of a plain value.
    let Some(args) = (unsafe { ARGS.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = ARGS.remove(&pid_tgid);
    let fd = ret(ctx);
    if fd < 0 {
        return;
    }
    let (family, port, addr) = read_sockaddr(args.ptr).unwrap_or((0, 0, [0; 16]));
    if family != 0 && family != AF_INET && family != AF_INET6 {
        return; // a unix or other non-IP socket
    }
    track(
        pid_tgid,
        fd as i32,
        origin::ACCEPTED,
        args.fd,
        family,
        port,
        addr,
    );
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let Some((pid_tgid, _, _)) = traced_tgid() else {
        return 0;
    };
    let Some((family, port, addr)) = read_sockaddr(arg(&ctx, 1)) else {
        return 0;
    };
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let args = SyscallArgs {
        buf: Buf::Connect,
        direction: 0,
        family,
        peer_port: port,
        deep: 0,
        first_read: 0,
        fd: arg(&ctx, 0) as i32,
        _pad: 0,
        ptr: 0,
        count: 0,
        conn_id: 0,
        ts_enter: 0,
        peer_addr: addr,
        goroutine: 0,
    };
    stash(pid_tgid, &args);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: read-only copy of a plain value.
    let Some(args) = (unsafe { ARGS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = ARGS.remove(&pid_tgid);
    let r = ret(&ctx);
    if r != 0 && r != EINPROGRESS {
        return 0;
    }
    track(
        pid_tgid,
        args.fd,
        origin::CONNECTED,
        -1,
        args.family,
        args.peer_port,
        args.peer_addr,
    );
    0
}

#[inline(always)]
fn track(pid_tgid: u64, fd: i32, how: u8, listen_fd: i32, family: u16, port: u16, addr: [u8; 16]) {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let flags = if how == origin::CONNECTED {
        sock_flags::OUTGOING
    } else if family == 0 {
        sock_flags::PEER_UNKNOWN
    } else {
        0
    };
    let info = SockInfo {
        conn_id: now,
        flags,
        _pad: 0,
    };
    if SOCKS.insert(&sock_key(tgid, fd), &info, 0).is_err() {
        bump(counter::SOCK_MAP_FULL);
        return;
    }
    let mut hdr = header(kind::CONN_OPEN, 0, tgid, pid_tgid as u32, fd, now);
    hdr.ts_enter_ns = now;
    hdr.ts_exit_ns = now;
    output(&ConnEvent {
        header: hdr,
        origin: how,
        _pad: 0,
        family,
        peer_port: port,
        _pad2: 0,
        listen_fd,
        peer_addr: addr,
    });
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let Some((_, tgid, tid)) = traced_tgid() else {
        return 0;
    };
    let fd = arg(&ctx, 0) as i32;
    let key = sock_key(tgid, fd);
    // SAFETY: read-only copy of a plain value.
    let Some(info) = (unsafe { SOCKS.get(&key) }).copied() else {
        return 0;
    };
    let _ = SOCKS.remove(&key);
    if info.flags & sock_flags::H2_FRAMES != 0 {
        h2_frames::forget(key);
    }
    let mut hdr = header(kind::CONN_CLOSE, 0, tgid, tid, fd, info.conn_id);
    // SAFETY: helper has no preconditions.
    hdr.ts_enter_ns = unsafe { bpf_ktime_get_ns() };
    hdr.ts_exit_ns = hdr.ts_enter_ns;
    output(&hdr);
    0
}
