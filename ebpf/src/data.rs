//! The data syscalls (read, recvfrom, readv, recvmsg, write, sendto,
//! writev, sendmsg, sendfile): the entry stashes the arguments of a call on
//! a tracked socket, the exit copies what was moved into the ring buffer.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use zerospan_common::{counter, direction, kind, sock_flags, traced};

use crate::{
    emit::{emit_chunks, emit_iovecs, emit_segment},
    go_runtime,
    h2_frames::{emit_frames, follow, unseen},
    helpers::{arg, bump, header, ret, sock_key},
    maps::{
        depth, Buf, Iovec, SockRef, SyscallArgs, ARGS, LAST_READ, LATE, SOCKS, TLS_CALLS, TRACED,
    },
    propagate,
    sniff::{is_h2_preface, is_mysql_greeting, is_pg_startup},
    tls::tls_nested_write,
};

#[inline(always)]
pub(crate) fn stash(pid_tgid: u64, args: &SyscallArgs) {
    if ARGS.insert(&pid_tgid, args, 0).is_err() {
        bump(counter::ARGS_MAP_FULL);
    }
}

/// The arguments of a data syscall on a tracked socket, or `None` when `fd`
/// is not one.
#[inline(always)]
fn data_args(
    tgid: u32,
    fd: i32,
    buf: Buf,
    dir: u8,
    ptr: u64,
    count: u64,
    ts: u64,
) -> Option<SyscallArgs> {
    let sock = SOCKS.get_ptr_mut(&sock_key(tgid, fd))?;
    // SAFETY: map values stay valid for the program's run; flag updates
    // race only with the agent's, and both only ever add bits.
    let sock = unsafe { &mut *sock };
    // A syscall inside a TLS library call moves ciphertext: it names the
    // call's socket, and from then on the socket's plaintext comes from
    // the library's probes.
    let pid_tgid = bpf_get_current_pid_tgid();
    // (A memory-buffer library's call names no socket: the syscall is a
    // callback's own, captured as any other.)
    let call = TLS_CALLS
        .get_ptr_mut(&pid_tgid)
        // SAFETY: as above.
        .filter(|&call| unsafe { (*call).memory } == 0);
    if let Some(call) = call {
        sock.flags |= sock_flags::TLS;
        // SAFETY: as above.
        let call = unsafe { &mut *call };
        if call.fd < 0 {
            call.fd = fd;
        }
        // The plaintext of a library write goes out when its first write
        // syscall returns, before the peer can have read it: the agent
        // then sees a request before the server reading it (the return
        // probe would come later). Reads wait for the return probe, when
        // the data is decrypted.
        if dir == direction::EGRESS && call.direction == direction::EGRESS && call.emitted == 0 {
            return Some(SyscallArgs {
                buf: Buf::Tls,
                direction: dir,
                family: 0,
                peer_port: 0,
                deep: depth::PREFIX,
                first_read: 0,
                fd,
                _pad: 0,
                ptr: 0,
                count: 0,
                conn_id: sock.conn_id,
                ts_enter: ts,
                peer_addr: [0; 16],
                goroutine: 0,
            });
        }
        return None;
    }
    if sock.flags & sock_flags::TLS != 0 {
        return None;
    }
    let mut buf = buf;
    let mut ptr = ptr;
    let mut count = count;
    if buf == Buf::Msg {
        // struct user_msghdr: msg_iov at offset 16, msg_iovlen at 24.
        // SAFETY: bpf_probe_read_user validates the user pointer.
        let iov = unsafe { bpf_probe_read_user((ptr + 16) as *const u64) }.unwrap_or(0);
        let len = unsafe { bpf_probe_read_user((ptr + 24) as *const u64) }.unwrap_or(0);
        buf = Buf::Iov;
        ptr = iov;
        count = len;
    }
    if dir == direction::EGRESS
        && matches!(buf, Buf::Plain | Buf::Iov)
        && sock.flags & (sock_flags::OUTGOING | sock_flags::FIRST_WRITE_SEEN)
            == sock_flags::OUTGOING
    {
        sock.flags |= sock_flags::FIRST_WRITE_SEEN;
        // Of writev/sendmsg, the first iovec entry, whole: h2load writes
        // its preface so.
        let whole = if buf == Buf::Iov { u64::MAX } else { count };
        let (first, first_len) = first_buffer(buf, ptr, whole);
        if is_pg_startup(first, first_len) {
            sock.flags |= sock_flags::DEEP_READS;
        } else if is_h2_preface(first, first_len) {
            sock.flags |= sock_flags::DEEP_READS | sock_flags::H2_FRAMES;
            follow(sock_key(tgid, fd), sock.conn_id, direction::EGRESS, false);
        }
    }
    // Marked seen at exit, once a read returns data: clients on
    // non-blocking sockets often try first and get EAGAIN. An outgoing
    // socket's first read counts before its first write (a greeting), an
    // accepted socket's at any time (a preface).
    let first_read = dir == direction::INGRESS
        && matches!(buf, Buf::Plain | Buf::Iov | Buf::Msg)
        && (sock.flags
            & (sock_flags::OUTGOING | sock_flags::FIRST_WRITE_SEEN | sock_flags::FIRST_READ_SEEN)
            == sock_flags::OUTGOING
            || sock.flags & (sock_flags::OUTGOING | sock_flags::FIRST_READ_SEEN) == 0);
    let deep = if dir == direction::EGRESS {
        sock.flags & (sock_flags::OUTGOING | sock_flags::DEEP_WRITES) != 0
    } else {
        sock.flags & sock_flags::DEEP_READS != 0
    };
    let deep = if !deep {
        depth::PREFIX
    } else if sock.flags & sock_flags::H2_FRAMES != 0 {
        depth::FRAMES
    } else {
        depth::CHUNKS
    };
    Some(SyscallArgs {
        buf,
        direction: dir,
        family: 0,
        peer_port: 0,
        deep,
        first_read: u8::from(first_read),
        fd,
        _pad: 0,
        ptr,
        count,
        conn_id: sock.conn_id,
        ts_enter: ts,
        peer_addr: [0; 16],
        goroutine: 0,
    })
}

/// The first buffer a syscall moves: its own (`len` octets), or its iovec
/// array's first entry (at most `len` octets of it).
#[inline(always)]
fn first_buffer(buf: Buf, ptr: u64, len: u64) -> (u64, u64) {
    if buf != Buf::Iov {
        return (ptr, len);
    }
    // SAFETY: bpf_probe_read_user validates the user pointer.
    match unsafe { bpf_probe_read_user(ptr as *const Iovec) } {
        Ok(v) => (v.base, if v.len < len { v.len } else { len }),
        Err(_) => (0, 0),
    }
}

/// Entry of a data syscall: remember its arguments if `fd` is a tracked socket.
#[inline(always)]
fn enter_data(ctx: &TracePointContext, buf: Buf, dir: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: read-only copy of a plain value.
    let Some(flags) = (unsafe { TRACED.get(&tgid) }).copied() else {
        return;
    };
    if dir == direction::INGRESS && flags & traced::MEMORY_BIO != 0 {
        let fd = arg(ctx, 0) as i32;
        // SAFETY: read-only lookup of a plain value.
        if let Some(sock) = unsafe { SOCKS.get(&sock_key(tgid, fd)) } {
            let r = SockRef {
                fd,
                _pad: 0,
                conn_id: sock.conn_id,
            };
            let _ = LAST_READ.insert(&pid_tgid, &r, 0);
        } else {
            // A socket not tracked (ignored, or no socket at all): what
            // the library decrypts next is not the last tracked one's.
            let _ = LAST_READ.remove(&pid_tgid);
        }
    }
    // A TLS call with a syscall inside works on a socket: even when that
    // socket is not tracked, its plaintext must not be attributed by the
    // memory-buffer rules (see `tls_exit`). Not a memory-buffer library's
    // call: what runs inside it is a callback's.
    if let Some(call) = TLS_CALLS.get_ptr_mut(&pid_tgid) {
        // SAFETY: map values stay valid for the program's run.
        let call = unsafe { &mut *call };
        if call.memory == 0 {
            call.nested = 1;
        }
    }
    // SAFETY: helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(mut args) = data_args(
        tgid,
        arg(ctx, 0) as i32,
        buf,
        dir,
        arg(ctx, 1),
        arg(ctx, 2),
        now,
    ) {
        if flags & traced::GO != 0 {
            args.goroutine = go_runtime::current_g(tgid);
        }
        stash(pid_tgid, &args);
    }
}

/// Offsets in x86_64's `struct pt_regs` of the first three syscall arguments.
const PT_REGS_DI: u64 = 112;
const PT_REGS_SI: u64 = 104;
const PT_REGS_DX: u64 = 96;

/// The arguments of a syscall that entered before the probes were attached
/// (a server thread already blocked in `read` on an idle keep-alive
/// connection), recovered from the registers the task saved on entry, which
/// still hold them at exit. Without this, the first request on every
/// pre-existing connection would be lost.
#[inline(always)]
fn late_args(tgid: u32, buf: Buf, dir: u8, ts: u64) -> Option<SyscallArgs> {
    if buf == Buf::Opaque {
        return None;
    }
    // SAFETY: helpers with no preconditions; the register block is read
    // with bpf_probe_read_kernel, which validates the address.
    unsafe {
        let task = generated::bpf_get_current_task_btf();
        let regs = generated::bpf_task_pt_regs(task) as u64;
        if regs == 0 {
            return None;
        }
        let fd = bpf_probe_read_kernel((regs + PT_REGS_DI) as *const u64).ok()?;
        let ptr = bpf_probe_read_kernel((regs + PT_REGS_SI) as *const u64).ok()?;
        let count = bpf_probe_read_kernel((regs + PT_REGS_DX) as *const u64).ok()?;
        data_args(tgid, fd as i32, buf, dir, ptr, count, ts)
    }
}

/// Exit of a data syscall: emit what it moved.
#[inline(always)]
fn exit_data(ctx: &TracePointContext, buf: Buf, dir: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: read-only copy of a plain value.
    let args = match unsafe { ARGS.get(&pid_tgid) }.copied() {
        Some(args) => {
            let _ = ARGS.remove(&pid_tgid);
            args
        }
        None => {
            // Not stashed: a syscall on something other than a tracked
            // socket, or one that entered before the probes existed. Only a
            // thread that predates the agent, at its first such exit, can be
            // the latter; everyone else pays this one lookup and no more.
            let tid = pid_tgid as u32;
            // SAFETY: read-only lookup of a plain value.
            if unsafe { LATE.get(&tid) }.is_none() {
                return;
            }
            let _ = LATE.remove(&tid);
            if ret(ctx) <= 0 {
                return;
            }
            match late_args(tgid, buf, dir, now) {
                Some(args) => args,
                None => return,
            }
        }
    };
    let moved = ret(ctx);
    if moved <= 0 {
        return;
    }
    // What the buffer is comes from which syscall this is, a constant in
    // each program, not from the stash: the verifier then walks only this
    // syscall's way of emitting (the iovec walk is no read's), where a
    // value from the map would make it walk every way, past its limit.
    // The stash adds only whether a TLS library's write is nested in it;
    // anything else there is left over from another syscall.
    let stashed = match buf {
        Buf::Msg => Buf::Iov,
        b => b,
    };
    let nested_tls = dir == direction::EGRESS && args.buf == Buf::Tls;
    if args.buf != stashed && !nested_tls {
        return;
    }
    let mut hdr = header(
        kind::DATA,
        args.direction,
        tgid,
        pid_tgid as u32,
        args.fd,
        args.conn_id,
    );
    hdr.ts_enter_ns = args.ts_enter;
    hdr.ts_exit_ns = now;
    hdr.goroutine = args.goroutine;
    let moved = moved as u64;
    let mut deep = args.deep;
    if args.first_read != 0 {
        // The first buffer the read filled: of readv/recvmsg, the first
        // iovec entry's.
        let (first, first_len) = first_buffer(stashed, args.ptr, moved);
        if let Some(sock) = SOCKS.get_ptr_mut(&sock_key(tgid, args.fd)) {
            // SAFETY: map values stay valid for the program's run.
            let flags = unsafe { (*sock).flags };
            // Set now, before the peer answers: a database server's
            // replies to its first queries, and an HTTP/2 server's header
            // blocks, must already be captured deeply.
            let more = if flags & sock_flags::OUTGOING != 0 {
                if is_mysql_greeting(first, first_len) {
                    sock_flags::DEEP_READS
                } else {
                    0
                }
            } else if is_h2_preface(first, first_len) {
                // This read too: the preface's first HEADERS may be in it.
                deep = depth::FRAMES;
                // SAFETY: as above.
                let conn_id = unsafe { (*sock).conn_id };
                follow(sock_key(tgid, args.fd), conn_id, direction::INGRESS, false);
                sock_flags::DEEP_READS | sock_flags::DEEP_WRITES | sock_flags::H2_FRAMES
            } else {
                0
            };
            // SAFETY: as above.
            unsafe { (*sock).flags |= sock_flags::FIRST_READ_SEEN | more };
        }
    }
    if stashed == Buf::Plain && dir == direction::INGRESS {
        propagate::server_request_read(pid_tgid, args.fd, args.conn_id, args.ptr, moved, now);
    } else if dir == direction::EGRESS && args.deep == depth::PREFIX {
        propagate::server_response_written(pid_tgid as u32, args.fd);
    }
    if nested_tls {
        tls_nested_write(pid_tgid, tgid, args.fd);
        return;
    }
    if deep == depth::FRAMES {
        let key = sock_key(tgid, args.fd);
        let followed = match stashed {
            Buf::Plain => emit_frames(&hdr, key, args.ptr, 0, 0, moved),
            Buf::Iov => emit_frames(&hdr, key, 0, args.ptr, args.count, moved),
            _ => {
                unseen(key, args.conn_id, args.direction, moved);
                false
            }
        };
        if followed {
            return;
        }
    }
    let deep = deep != depth::PREFIX;
    match stashed {
        Buf::Plain if deep => emit_chunks(&hdr, args.ptr, moved),
        Buf::Plain => emit_segment(&hdr, args.ptr, moved),
        Buf::Iov => emit_iovecs(&hdr, args.ptr, args.count, moved, deep),
        _ => emit_segment(&hdr, 0, moved),
    }
}
// ---- data syscalls ----------------------------------------------------------

macro_rules! data_probe {
    ($enter:ident, $exit:ident, $buf:expr, $dir:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_data(&ctx, $buf, $dir);
            0
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit_data(&ctx, $buf, $dir);
            0
        }
    };
}

data_probe!(
    sys_enter_read,
    sys_exit_read,
    Buf::Plain,
    direction::INGRESS
);
data_probe!(
    sys_enter_recvfrom,
    sys_exit_recvfrom,
    Buf::Plain,
    direction::INGRESS
);
data_probe!(
    sys_enter_readv,
    sys_exit_readv,
    Buf::Iov,
    direction::INGRESS
);
data_probe!(
    sys_enter_recvmsg,
    sys_exit_recvmsg,
    Buf::Msg,
    direction::INGRESS
);
data_probe!(
    sys_enter_write,
    sys_exit_write,
    Buf::Plain,
    direction::EGRESS
);
data_probe!(
    sys_enter_sendto,
    sys_exit_sendto,
    Buf::Plain,
    direction::EGRESS
);
data_probe!(
    sys_enter_writev,
    sys_exit_writev,
    Buf::Iov,
    direction::EGRESS
);
data_probe!(
    sys_enter_sendmsg,
    sys_exit_sendmsg,
    Buf::Msg,
    direction::EGRESS
);
data_probe!(
    sys_enter_sendfile64,
    sys_exit_sendfile64,
    Buf::Opaque,
    direction::EGRESS
);
