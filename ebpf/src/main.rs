//! zerospan's kernel side: syscall and sched tracepoints.
//!
//! The probes stay small on purpose. They filter by traced tgid, keep track of
//! which fds are sockets, copy a bounded prefix of every buffer moved on a
//! tracked socket, and hand everything to userspace through one ring buffer.
//! All protocol parsing happens in the agent, in safe Rust.
//!
//! Tracepoint records: 8 bytes of common fields, then (for `syscalls/`) the
//! syscall number padded to 8 bytes, then one 8-byte slot per argument. The
//! `sched/` offsets below were read from this kernel's `format` files.
#![no_std]
#![no_main]

mod go_runtime;
mod go_tls;
mod node_loop;
mod propagate;

use core::{mem::size_of, ptr};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, generated,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use zerospan_common::{
    counter, direction, kind, origin, sock_flags, source, traced, ConnEvent, DataEvent,
    EventHeader, OwnerEvent, ProcEvent, SockInfo, MAX_CAPTURE, MAX_DEEP_IOV_SEGMENTS,
    MAX_IOV_SEGMENTS, PG_STARTUP_CODES, REQUEST_CAPTURE_CHUNKS,
};

/// Unread bytes in the ring buffer past which a write wakes the agent up.
/// Below it, writes do not wake anyone and the agent drains on its own
/// timer: one wake-up per event would cost more than the event itself.
/// The agent sets it at load time, from the ring buffer's size.
#[no_mangle]
static WAKEUP_BYTES: u64 = 1 << 20;

/// Where `child_pid` sits in the `sched_process_fork` record, and
/// `group_dead` in `sched_process_exit` (0: the field does not exist). The
/// layouts moved between kernels, so the agent reads them from tracefs at
/// load time; the defaults are Linux 6.x's.
#[no_mangle]
static FORK_CHILD_PID_OFFSET: u32 = 20;
#[no_mangle]
static EXIT_GROUP_DEAD_OFFSET: u32 = 32;

/// Report the execs of processes that are not traced, for the agent to
/// match against its selectors (set at load time when it has any). Execs
/// are rare; each costs one ring-buffer record.
#[no_mangle]
static DISCOVER: u8 = 0;

/// Bytes of each buffer to copy; the agent overrides it at load time.
#[no_mangle]
static CAPTURE_BYTES: u32 = 1024;

/// Traced thread-group ids. Fork tracking adds children.
#[map]
static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Tracked sockets, keyed by `(tgid << 32) | fd`.
#[map]
static SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(65536, 0);

/// Threads that existed when the agent attached, until their first data
/// syscall exit: only they can be inside a syscall that entered before the
/// probes did (see `late_args`). Keyed by tid, filled by the agent.
#[map]
static LATE: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Sockets of traced processes in the middle of `connect`, by kernel
/// `struct sock` address, to the `(tgid << 32) | fd` that owns them.
#[map]
static CONNECTING: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// TLS library calls in progress (`SSL_read`, `SSL_write`…), by pid_tgid:
/// what the return probe needs, and the socket a nested syscall names.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// The socket each thread of a `MEMORY_BIO` process last read from.
#[map]
static LAST_READ: LruHashMap<u64, SockRef> = LruHashMap::with_max_entries(16384, 0);

/// The socket each TLS library object was last seen with, for calls that
/// make no syscall (data already decrypted in the library's buffer).
#[map]
static SSL_FDS: LruHashMap<SslKey, SockRef> = LruHashMap::with_max_entries(65536, 0);

/// TLS library objects whose writes were sent with no socket (see
/// `send_unowned`); the value is 1 when the first of them asks for the
/// socket's reads to be captured deeply.
#[map]
static UNOWNED: LruHashMap<SslKey, u8> = LruHashMap::with_max_entries(16384, 0);

/// Plaintext bytes of each TLS library object already sent ahead of what
/// its writes reported done: a write that failed or moved less after its
/// nested syscall had sent it all is retried with the same bytes, which
/// must not be sent twice.
#[map]
static TLS_CREDIT: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// Syscall arguments stashed at entry for the matching exit, keyed by pid_tgid.
#[map]
static ARGS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(16384, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Scratch space for one data event: far too big for the 512-byte stack.
#[map]
static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// Loss counters, indexed by [`zerospan_common::counter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = -115;

/// What kind of buffer the stashed syscall moves.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Buf {
    /// One contiguous buffer: read/write/recvfrom/sendto.
    Plain = 1,
    /// An iovec array: readv/writev, and recvmsg/sendmsg after unpacking.
    Iov = 2,
    /// Bytes we count but cannot see: sendfile.
    Opaque = 3,
    /// recvmsg/sendmsg: `ptr` is a msghdr, unpacked into `Iov` at entry.
    Msg = 6,
    /// accept/accept4: `ptr` is the peer sockaddr.
    Accept = 4,
    /// connect: the peer was read at entry and tracked on success.
    Connect = 5,
    /// A write nested in a TLS library write: at its exit the library
    /// call's plaintext is sent (see `tls_nested_write`).
    Tls = 7,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SyscallArgs {
    buf: Buf,
    direction: u8,
    family: u16,
    peer_port: u16,
    /// Capture these bytes in chunks (an outgoing socket's request, or a
    /// database response).
    deep: u8,
    /// The first read of an outgoing socket that has not written yet:
    /// look at it for a MySQL/MariaDB greeting.
    first_read: u8,
    fd: i32,
    _pad: u32,
    ptr: u64,
    count: u64,
    conn_id: u64,
    ts_enter: u64,
    peer_addr: [u8; 16],
    /// In a Go program, the goroutine making the syscall. Read at entry:
    /// a syscall keeps its goroutine on its thread until it returns, and
    /// the exit programs, the verifier's largest, gain no branch.
    goroutine: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TlsCall {
    /// The library's connection object (`SSL *`, `gnutls_session_t`).
    ssl: u64,
    buf: u64,
    /// Bytes asked for.
    num: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the byte count is written.
    count_ptr: u64,
    ts_enter: u64,
    /// The socket of the first syscall nested in the call, else -1.
    fd: i32,
    direction: u8,
    /// A write's plaintext was already sent, from its nested syscall.
    emitted: u8,
    /// A data syscall nested in the call, on a socket tracked or not: the
    /// library works on the socket itself, not on memory buffers.
    nested: u8,
    /// The library works only on memory buffers (Node.js's OpenSSL): a
    /// syscall inside one of its calls is a callback's (JavaScript run on
    /// the handshake's end, a wake-up of the event loop), never the call's
    /// own I/O, so it names no socket.
    memory: u8,
    /// The goroutine making the call, in a Go program; 0 otherwise.
    goroutine: u64,
    /// The stack pointer at entry: the return probe whose stack pointer is
    /// one return address above it is this call's, and no other's.
    sp: u64,
}

/// A socket as it was when seen: the fd alone could since name another.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockRef {
    fd: i32,
    _pad: u32,
    conn_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SslKey {
    tgid: u32,
    _pad: u32,
    ssl: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: syscall tracepoint records always hold six argument slots.
    unsafe { ctx.read_at::<u64>(16 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: `ret` sits at offset 16 of every sys_exit record.
    unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1)
}

#[inline(always)]
fn traced_tgid() -> Option<(u64, u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: read-only lookup of a plain value.
    unsafe { TRACED.get(&tgid) }?;
    Some((pid_tgid, tgid, pid_tgid as u32))
}

#[inline(always)]
fn sock_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | (fd as u32 as u64)
}

#[inline(always)]
fn header(kind: u8, dir: u8, tgid: u32, tid: u32, fd: i32, conn_id: u64) -> EventHeader {
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

#[inline(always)]
fn stash(pid_tgid: u64, args: &SyscallArgs) {
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
                deep: 0,
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
    if dir == direction::EGRESS
        && buf == Buf::Plain
        && sock.flags & (sock_flags::OUTGOING | sock_flags::FIRST_WRITE_SEEN)
            == sock_flags::OUTGOING
    {
        sock.flags |= sock_flags::FIRST_WRITE_SEEN;
        if is_pg_startup(ptr, count) {
            sock.flags |= sock_flags::DEEP_READS;
        } else if is_h2_preface(ptr, count) {
            sock.flags |= sock_flags::DEEP_READS;
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
    Some(SyscallArgs {
        buf,
        direction: dir,
        family: 0,
        peer_port: 0,
        deep: u8::from(deep),
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

/// Is the write at `ptr` a PostgreSQL startup packet (length, then a
/// startup code)? Decided here, at the first write, rather than by the
/// agent: the server's first reply can arrive before the agent has seen
/// the write, and it must already be captured deeply.
#[inline(always)]
fn is_pg_startup(ptr: u64, count: u64) -> bool {
    if !(8..=10_000).contains(&count) {
        return false;
    }
    // SAFETY: bpf_probe_read_user validates the user pointer.
    let Ok(head) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }) else {
        return false;
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as u64;
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    len == count
        && (code == PG_STARTUP_CODES[0]
            || code == PG_STARTUP_CODES[1]
            || code == PG_STARTUP_CODES[2])
}

/// Is the read at `ptr` a MySQL/MariaDB server greeting (a packet with
/// sequence number 0, protocol version 10, then a version string)? Some
/// clients read the 4-byte header alone first; its length and sequence
/// number must then do.
#[inline(always)]
fn is_mysql_greeting(ptr: u64, moved: u64) -> bool {
    // SAFETY: bpf_probe_read_user validates the user pointer.
    let Ok(head) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 4]) }) else {
        return false;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as u64;
    if !(20..=1024).contains(&len) || head[3] != 0 {
        return false;
    }
    if moved == 4 {
        return true;
    }
    // SAFETY: as above.
    let Ok(rest) = (unsafe { bpf_probe_read_user((ptr + 4) as *const [u8; 2]) }) else {
        return false;
    };
    len + 4 <= moved && rest[0] == 10 && rest[1].is_ascii_digit()
}

/// Does the read at `ptr` start with the HTTP/2 client preface? Its first
/// eight octets, `PRI * HT`, are no HTTP/1 method's and no TLS record's.
#[inline(always)]
fn is_h2_preface(ptr: u64, moved: u64) -> bool {
    if moved < 8 {
        return false;
    }
    // SAFETY: bpf_probe_read_user validates the user pointer.
    matches!(
        unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) },
        Ok(head) if &head == b"PRI * HT"
    )
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
    let mut deep = args.deep != 0;
    if args.first_read != 0 {
        // The first buffer the read filled: of readv/recvmsg, the first
        // iovec entry's.
        let (first, first_len) = match stashed {
            Buf::Iov => {
                // SAFETY: bpf_probe_read_user validates the user pointer.
                match unsafe { bpf_probe_read_user(args.ptr as *const Iovec) } {
                    Ok(v) => (v.base, if v.len < moved { v.len } else { moved }),
                    Err(_) => (0, 0),
                }
            }
            _ => (args.ptr, moved),
        };
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
                deep = true;
                sock_flags::DEEP_READS | sock_flags::DEEP_WRITES
            } else {
                0
            };
            // SAFETY: as above.
            unsafe { (*sock).flags |= sock_flags::FIRST_READ_SEEN | more };
        }
    }
    if stashed == Buf::Plain && dir == direction::INGRESS {
        propagate::server_request_read(pid_tgid, args.fd, args.conn_id, args.ptr, moved, now);
    } else if dir == direction::EGRESS && args.deep == 0 {
        propagate::server_response_written(pid_tgid as u32, args.fd);
    }
    if nested_tls {
        tls_nested_write(pid_tgid, tgid, args.fd);
        return;
    }
    match stashed {
        Buf::Plain if deep => emit_chunks(&hdr, args.ptr, moved),
        Buf::Plain => emit_segment(&hdr, args.ptr, moved),
        Buf::Iov => emit_iovecs(&hdr, args.ptr, args.count, moved, deep),
        _ => emit_segment(&hdr, 0, moved),
    }
}

#[inline(always)]
fn emit_iovecs(hdr: &EventHeader, iov: u64, iovcnt: u64, moved: u64, deep: bool) {
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
fn emit_chunks(hdr: &EventHeader, src: u64, len: u64) {
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
fn emit_segment(hdr: &EventHeader, src: u64, len: u64) {
    // SAFETY: CAPTURE_BYTES is a load-time constant.
    let limit = unsafe { ptr::read_volatile(&CAPTURE_BYTES) } as u64;
    emit_bytes(hdr, src, len, limit);
}

/// Sends `len` bytes at `src` as one segment, at most `limit` of them copied.
#[inline(always)]
fn emit_bytes(hdr: &EventHeader, src: u64, len: u64, limit: u64) {
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
fn output<T>(value: &T) {
    if EVENTS.output::<T>(value, wakeup_flag()).is_err() {
        bump(counter::RINGBUF_FULL);
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

// ---- TLS libraries ----------------------------------------------------------
//
// uprobes on OpenSSL's SSL_read/SSL_write (and their _ex forms, or, where
// the agent finds them, the internal functions all four call: see
// agent/src/kernel/openssl.rs) and GnuTLS's gnutls_record_recv/send see the
// plaintext. The entry probe remembers the
// buffer; a syscall nested in the call names the socket (see `data_args`);
// the return probe sends what was moved, as data of that socket.

#[inline(always)]
fn tls_enter(ctx: &ProbeContext, dir: u8, ex: bool) {
    let Some((pid_tgid, tgid, _)) = traced_tgid() else {
        return;
    };
    // Node.js (its own OpenSSL, or the system's): memory buffers only.
    // SAFETY: read-only copy of a plain value.
    let memory = unsafe { TRACED.get(&tgid) }.is_some_and(|f| f & traced::EVENT_LOOP != 0);
    let call = TlsCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        // An int for SSL_read/SSL_write: the register's upper half is not
        // part of it. A size_t for the _ex forms.
        num: if ex {
            ctx.arg::<u64>(2).unwrap_or(0)
        } else {
            ctx.arg::<u64>(2).unwrap_or(0) & 0xffff_ffff
        },
        count_ptr: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        // SAFETY: helper has no preconditions.
        ts_enter: unsafe { bpf_ktime_get_ns() },
        fd: -1,
        direction: dir,
        emitted: 0,
        nested: 0,
        memory: u8::from(memory),
        goroutine: 0,
        // SAFETY: the context points at this probe's saved registers.
        sp: unsafe { (*ctx.regs).rsp },
    };
    // A call already open on this thread is one this call runs inside:
    // TLS through a TLS proxy (this call moves the open one's ciphertext),
    // or a callback of a memory-buffer library (JavaScript run at a
    // handshake's end, writing on another connection). The open call is
    // kept, unless it is stale (its return probe never ran), and this one
    // is not sent: counted when it carried a callback's plaintext.
    // SAFETY: read-only copy of a plain value.
    if let Some(open) = unsafe { TLS_CALLS.get(&pid_tgid) } {
        if call.ts_enter.saturating_sub(open.ts_enter) < STALE_TLS_CALL_NS {
            if open.memory != 0 {
                bump(counter::TLS_CALL_NESTED);
            }
            return;
        }
    }
    let _ = TLS_CALLS.insert(&pid_tgid, &call, 0);
}

/// A TLS call open longer than this lost its return probe.
const STALE_TLS_CALL_NS: u64 = 30_000_000_000;

/// The socket `r` names, if it still is that connection.
#[inline(always)]
fn still_open(tgid: u32, r: Option<SockRef>) -> Option<i32> {
    let r = r?;
    // SAFETY: read-only lookup of a plain value.
    let sock = unsafe { SOCKS.get(&sock_key(tgid, r.fd)) }?;
    (sock.conn_id == r.conn_id).then_some(r.fd)
}

/// The return of a library read (`dir` INGRESS) or write.
#[inline(always)]
fn tls_exit(ctx: &RetProbeContext, dir: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: read-only copy of a plain value.
    let Some(mut call) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else {
        return;
    };
    // The call this return ends: its direction, and its stack pointer one
    // return address below this one's. A call nested in it (see
    // `tls_enter`) returns first and leaves it for its own return.
    // SAFETY: the context points at this probe's saved registers.
    let sp = unsafe { (*ctx.regs).rsp };
    if call.direction != dir || call.sp.wrapping_add(8) != sp {
        return;
    }
    let _ = TLS_CALLS.remove(&pid_tgid);
    // A constant from here on: each return program holds only its own
    // direction's code, which keeps the verifier's walk of it short.
    call.direction = dir;
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    // OpenSSL returns an int: the upper half of the register is not part
    // of it (-1 arrives as 0xffffffff). GnuTLS returns a ssize_t, but
    // never more than a record, so its low half is the whole value.
    let ret = i64::from(ctx.ret::<i32>());
    let moved = if call.count_ptr != 0 {
        if ret == 1 {
            // SAFETY: bpf_probe_read_user validates the user pointer.
            unsafe { bpf_probe_read_user(call.count_ptr as *const u64) }.unwrap_or(0)
        } else {
            0
        }
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    if call.direction == direction::EGRESS && call.emitted != 0 {
        // Sent from its nested write, all `num` bytes of it; what the call
        // did not report done will be written again.
        if call.num > moved {
            // SAFETY: read-only copy of a plain value.
            let owed = unsafe { TLS_CREDIT.get(&key) }.copied().unwrap_or(0);
            let _ = TLS_CREDIT.insert(&key, &(owed + (call.num - moved)), 0);
        }
        if call.fd >= 0 {
            remember_socket(tgid, &key, call.fd);
        }
        return;
    }
    if moved == 0 || call.buf == 0 {
        return;
    }
    if call.fd < 0 && call.nested != 0 {
        // On a socket the probes do not track (the agent gave it up):
        // nothing to send, and no guess from the thread's other sockets.
        return;
    }
    // SAFETY: read-only copies of plain values.
    let known = still_open(tgid, unsafe { SSL_FDS.get(&key) }.copied());
    let last_read = if call.direction == direction::INGRESS {
        still_open(tgid, unsafe { LAST_READ.get(&pid_tgid) }.copied())
    } else {
        None
    };
    let fd = if call.fd >= 0 {
        call.fd
    } else if let Some(fd) = known {
        fd
    } else if let Some(fd) = last_read {
        // A memory-buffer library: the data came from the socket the
        // thread just read.
        fd
    } else {
        // No syscall nests in this process's TLS calls: from now on its
        // threads' reads are remembered (see `enter_data`).
        if let Some(flags) = TRACED.get_ptr_mut(&tgid) {
            // SAFETY: map values stay valid for the program's run.
            unsafe { *flags |= traced::MEMORY_BIO };
        }
        if call.direction == direction::EGRESS {
            send_unowned(pid_tgid, tgid, &key, &call, moved);
        } else {
            bump(counter::TLS_UNATTRIBUTED);
        }
        return;
    };
    if known != Some(fd) {
        remember_socket(tgid, &key, fd);
        if known.is_none() {
            claim_unowned(pid_tgid, tgid, &key, fd);
        }
    }
    emit_plaintext(pid_tgid, tgid, fd, &call, 0, moved);
}

/// A write on a memory-buffer library object not yet seen with a socket
/// (a Node.js client sends its request, or its HTTP/2 preface, before it
/// has read anything): its plaintext is sent now, while its buffer is
/// alive, with no socket (`fd` -1, the object in `conn_id`); the agent
/// holds it until the object's first read names the socket
/// (`claim_unowned`). Guessing the socket from the thread's other calls
/// could name the wrong one (an event loop serves many).
#[inline(always)]
fn send_unowned(pid_tgid: u64, tgid: u32, key: &SslKey, call: &TlsCall, moved: u64) {
    // SAFETY: read-only lookup of a plain value.
    if unsafe { UNOWNED.get(key) }.is_none() {
        // The first write decides what the socket's reads need, as
        // `emit_plaintext` does for a socket it knows.
        let deep = is_pg_startup(call.buf, moved) || is_h2_preface(call.buf, moved);
        let _ = UNOWNED.insert(key, &u8::from(deep), 0);
    }
    let mut hdr = header(
        kind::DATA,
        direction::EGRESS,
        tgid,
        pid_tgid as u32,
        -1,
        call.ssl,
    );
    hdr.source = source::TLS;
    hdr.goroutine = call.goroutine;
    hdr.ts_enter_ns = call.ts_enter;
    // SAFETY: helper has no preconditions.
    hdr.ts_exit_ns = unsafe { bpf_ktime_get_ns() };
    emit_chunks(&hdr, call.buf, moved);
}

/// The library object `key`, first seen with socket `fd`: if writes were
/// sent for it with no socket, tell the agent whose they are, before the
/// data that made it known.
#[inline(always)]
fn claim_unowned(pid_tgid: u64, tgid: u32, key: &SslKey, fd: i32) {
    // SAFETY: read-only copy of a plain value.
    let Some(deep) = (unsafe { UNOWNED.get(key) }).copied() else {
        return;
    };
    let _ = UNOWNED.remove(key);
    let Some(sock) = SOCKS.get_ptr_mut(&sock_key(tgid, fd)) else {
        return;
    };
    // SAFETY: map values stay valid for the program's run.
    let sock = unsafe { &mut *sock };
    if sock.flags & sock_flags::TLS != 0 {
        // The socket already has another library object's plaintext: the
        // read that named it here is in doubt, so the held writes are not
        // given to it (the agent drops them, counted, when they age).
        bump(counter::TLS_CLAIM_REFUSED);
        return;
    }
    sock.flags |= sock_flags::TLS | sock_flags::FIRST_TLS_WRITE_SEEN;
    if deep != 0 && sock.flags & sock_flags::OUTGOING != 0 {
        sock.flags |= sock_flags::DEEP_READS;
    }
    output(&OwnerEvent {
        header: header(
            kind::TLS_OWNER,
            direction::EGRESS,
            tgid,
            pid_tgid as u32,
            fd,
            sock.conn_id,
        ),
        ssl: key.ssl,
    });
}

/// Remembers that the library object `key` works on socket `fd`.
#[inline(always)]
fn remember_socket(tgid: u32, key: &SslKey, fd: i32) {
    // SAFETY: read-only lookup of a plain value.
    if let Some(sock) = unsafe { SOCKS.get(&sock_key(tgid, fd)) } {
        let r = SockRef {
            fd,
            _pad: 0,
            conn_id: sock.conn_id,
        };
        let _ = SSL_FDS.insert(key, &r, 0);
    }
}

/// The first write syscall nested in a TLS library write returned: send
/// the library call's plaintext now (see `data_args`).
#[inline(always)]
fn tls_nested_write(pid_tgid: u64, tgid: u32, fd: i32) {
    let Some(call) = TLS_CALLS.get_ptr_mut(&pid_tgid) else {
        return;
    };
    // SAFETY: map values stay valid for the program's run.
    let call = unsafe { &mut *call };
    if call.emitted != 0 || call.num == 0 {
        return;
    }
    call.emitted = 1;
    let mut copy = *call;
    // Only a write's plaintext is sent from here (see `data_args`). Said
    // as a constant, it keeps the read side of `emit_plaintext` (the
    // server-request scan) out of the write programs the verifier walks.
    copy.direction = direction::EGRESS;
    // A library write moves all it was asked to, or fails and is retried
    // with the same bytes (OpenSSL without partial writes, GnuTLS): the
    // bytes a failed or short attempt already sent are skipped.
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: copy.ssl,
    };
    let mut skip = 0;
    // SAFETY: read-only copy of a plain value.
    if let Some(owed) = unsafe { TLS_CREDIT.get(&key) }.copied() {
        skip = if owed < copy.num { owed } else { copy.num };
        if owed > skip {
            let _ = TLS_CREDIT.insert(&key, &(owed - skip), 0);
        } else {
            let _ = TLS_CREDIT.remove(&key);
        }
    }
    if skip < copy.num {
        emit_plaintext(pid_tgid, tgid, fd, &copy, skip, copy.num - skip);
    }
}

/// Sends `moved` plaintext bytes of a TLS library call as data of socket
/// `fd`.
#[inline(always)]
fn emit_plaintext(pid_tgid: u64, tgid: u32, fd: i32, call: &TlsCall, skip: u64, moved: u64) {
    let Some(sock) = SOCKS.get_ptr_mut(&sock_key(tgid, fd)) else {
        bump(counter::TLS_UNATTRIBUTED);
        return;
    };
    // SAFETY: map values stay valid for the program's run.
    let sock = unsafe { &mut *sock };
    sock.flags |= sock_flags::TLS;
    // A PostgreSQL startup inside TLS (sslmode=require): deep reads, as in
    // `data_args` for plaintext.
    if call.direction == direction::EGRESS
        && sock.flags
            & (sock_flags::OUTGOING | sock_flags::DEEP_READS | sock_flags::FIRST_TLS_WRITE_SEEN)
            == sock_flags::OUTGOING
    {
        sock.flags |= sock_flags::FIRST_TLS_WRITE_SEEN;
        if is_pg_startup(call.buf + skip, moved) {
            sock.flags |= sock_flags::DEEP_READS;
        } else if is_h2_preface(call.buf + skip, moved) {
            sock.flags |= sock_flags::DEEP_READS;
        }
    }
    // HTTP/2 inside TLS (ALPN h2): the preface is the first plaintext an
    // accepted socket reads.
    if call.direction == direction::INGRESS
        && sock.flags & (sock_flags::OUTGOING | sock_flags::FIRST_TLS_READ_SEEN) == 0
    {
        sock.flags |= sock_flags::FIRST_TLS_READ_SEEN;
        if is_h2_preface(call.buf + skip, moved) {
            sock.flags |= sock_flags::DEEP_READS | sock_flags::DEEP_WRITES;
        }
    }
    let deep = if call.direction == direction::EGRESS {
        sock.flags & (sock_flags::OUTGOING | sock_flags::DEEP_WRITES) != 0
    } else {
        sock.flags & sock_flags::DEEP_READS != 0
    };
    let mut hdr = header(
        kind::DATA,
        call.direction,
        tgid,
        pid_tgid as u32,
        fd,
        sock.conn_id,
    );
    hdr.source = source::TLS;
    hdr.goroutine = call.goroutine;
    hdr.ts_enter_ns = call.ts_enter;
    // SAFETY: helper has no preconditions.
    hdr.ts_exit_ns = unsafe { bpf_ktime_get_ns() };
    if sock.flags & sock_flags::OUTGOING == 0 {
        if call.direction == direction::INGRESS {
            let conn_id = sock.conn_id;
            propagate::server_request_read(
                pid_tgid,
                fd,
                conn_id,
                call.buf + skip,
                moved,
                hdr.ts_exit_ns,
            );
        } else {
            propagate::server_response_written(pid_tgid as u32, fd);
        }
    }
    if deep {
        emit_chunks(&hdr, call.buf + skip, moved);
    } else {
        emit_segment(&hdr, call.buf + skip, moved);
    }
}

macro_rules! tls_probe {
    ($enter:ident, $exit:ident, $dir:expr, $ex:expr) => {
        #[uprobe]
        pub fn $enter(ctx: ProbeContext) -> u32 {
            tls_enter(&ctx, $dir, $ex);
            0
        }
        #[uretprobe]
        pub fn $exit(ctx: RetProbeContext) -> u32 {
            tls_exit(&ctx, $dir);
            0
        }
    };
}

// SSL_write and gnutls_record_send share a signature (object, buffer,
// length → bytes moved), as do SSL_read and gnutls_record_recv.
tls_probe!(tls_write, tls_write_ret, direction::EGRESS, false);
tls_probe!(tls_read, tls_read_ret, direction::INGRESS, false);
tls_probe!(tls_write_ex, tls_write_ex_ret, direction::EGRESS, true);
tls_probe!(tls_read_ex, tls_read_ex_ret, direction::INGRESS, true);

/// `SSL_set_fd(ssl, fd)` (and GnuTLS's `gnutls_transport_set_int2(session,
/// recv_fd, send_fd)`): the socket a library object will work on, known
/// before its first read. A TLS 1.3 server's first `SSL_read` can find the
/// request already buffered, read along with the handshake, so that no
/// syscall nests in it to name the socket.
#[uprobe]
pub fn tls_set_fd(ctx: ProbeContext) -> u32 {
    let Some((_, tgid, _)) = traced_tgid() else {
        return 0;
    };
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
    };
    let fd = ctx.arg::<u64>(1).unwrap_or(u64::MAX) as i32;
    if key.ssl == 0 {
        return 0;
    }
    // SAFETY: read-only lookup of a plain value.
    if fd >= 0 && unsafe { SOCKS.get(&sock_key(tgid, fd)) }.is_some() {
        remember_socket(tgid, &key, fd);
    } else {
        // Not a socket we track: whatever an earlier object at this
        // address used is not this one's.
        let _ = SSL_FDS.remove(&key);
    }
    0
}

// ---- connection lifecycle ---------------------------------------------------

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
    let mut hdr = header(kind::CONN_CLOSE, 0, tgid, tid, fd, info.conn_id);
    // SAFETY: helper has no preconditions.
    hdr.ts_enter_ns = unsafe { bpf_ktime_get_ns() };
    hdr.ts_exit_ns = hdr.ts_enter_ns;
    output(&hdr);
    0
}

// ---- process lifecycle ------------------------------------------------------

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

// ---- the local address of outgoing connections ------------------------------

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

/// Learns the source address the kernel picked for a traced `connect`, so
/// that the server end of the same connection, if it is traced too, can be
/// matched by 4-tuple (same-host parent/child linking). The source port is
/// not chosen yet when the state becomes SYN_SENT (in the connecting
/// thread), so the socket is remembered then and reported at ESTABLISHED
/// (often in softirq context). Offsets: this tracepoint's record, stable
/// since Linux 4.16.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: fixed offsets in the sock:inet_sock_set_state record.
    let (skaddr, oldstate, newstate) = unsafe {
        (
            ctx.read_at::<u64>(8).unwrap_or(0),
            ctx.read_at::<i32>(16).unwrap_or(0),
            ctx.read_at::<i32>(20).unwrap_or(0),
        )
    };
    if newstate == TCP_SYN_SENT {
        let Some((pid_tgid, tgid, _)) = traced_tgid() else {
            return 0;
        };
        // The connect stash says which fd this socket is.
        // SAFETY: read-only copy of a plain value.
        let Some(args) = (unsafe { ARGS.get(&pid_tgid) }).copied() else {
            return 0;
        };
        if args.buf == Buf::Connect {
            let _ = CONNECTING.insert(&skaddr, &sock_key(tgid, args.fd), 0);
        }
        return 0;
    }
    if newstate == TCP_CLOSE {
        propagate::connection_closed(skaddr);
    }
    if oldstate != TCP_SYN_SENT {
        return 0;
    }
    // SAFETY: read-only copy of a plain value.
    let Some(owner) = (unsafe { CONNECTING.get(&skaddr) }).copied() else {
        return 0;
    };
    let _ = CONNECTING.remove(&skaddr);
    if newstate != TCP_ESTABLISHED {
        return 0;
    }
    // SAFETY: fixed offsets in the sock:inet_sock_set_state record.
    let (sport, family) = unsafe {
        (
            ctx.read_at::<u16>(24).unwrap_or(0),
            ctx.read_at::<u16>(28).unwrap_or(0),
        )
    };
    let mut addr = [0u8; 16];
    if family == AF_INET {
        // SAFETY: as above.
        let v4 = unsafe { ctx.read_at::<[u8; 4]>(32) }.unwrap_or([0; 4]);
        addr[..4].copy_from_slice(&v4);
    } else {
        // SAFETY: as above.
        addr = unsafe { ctx.read_at::<[u8; 16]>(40) }.unwrap_or([0; 16]);
    }
    let tgid = (owner >> 32) as u32;
    propagate::connection_established(skaddr, tgid, owner as u32 as i32);
    let mut hdr = header(kind::CONN_LOCAL, 0, tgid, 0, owner as u32 as i32, 0);
    // SAFETY: helper has no preconditions.
    hdr.ts_exit_ns = unsafe { bpf_ktime_get_ns() };
    output(&ConnEvent {
        header: hdr,
        origin: 0,
        _pad: 0,
        family,
        peer_port: sport,
        _pad2: 0,
        listen_fd: -1,
        peer_addr: addr,
    });
    0
}

/// The peer of an accepted socket whose accept passed no address buffer
/// (libuv, so Node.js; nghttpd), from inside its first read: TCP adjusts
/// the receive space of the socket being read as it copies, in the
/// reading thread, and this record names the socket's addresses. The
/// thread's stashed read says which fd that is. A record about another
/// socket in the same syscall (kTLS or a sockmap parser in softirq on top
/// of the thread) would need the listener's local port too: the agent
/// checks it.
/// Offsets: this tracepoint's record as Linux 5.15 to 6.18 lay it out.
#[tracepoint]
pub fn tcp_rcv_space_adjust(ctx: TracePointContext) -> u32 {
    let Some((pid_tgid, tgid, tid)) = traced_tgid() else {
        return 0;
    };
    // SAFETY: read-only copy of a plain value.
    let Some(args) = (unsafe { ARGS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    if args.direction != direction::INGRESS || !matches!(args.buf, Buf::Plain | Buf::Iov) {
        return 0;
    }
    let Some(sock) = SOCKS.get_ptr_mut(&sock_key(tgid, args.fd)) else {
        return 0;
    };
    // SAFETY: map values stay valid for the program's run; flags only
    // ever gain bits.
    let sock = unsafe { &mut *sock };
    let want = sock_flags::PEER_UNKNOWN | sock_flags::PEER_SEEN;
    if sock.flags & want != sock_flags::PEER_UNKNOWN || sock.conn_id != args.conn_id {
        return 0;
    }
    sock.flags |= sock_flags::PEER_SEEN;
    // SAFETY: fixed offsets in the tcp:tcp_rcv_space_adjust record.
    let (sport, dport, family) = unsafe {
        (
            ctx.read_at::<u16>(16).unwrap_or(0),
            ctx.read_at::<u16>(18).unwrap_or(0),
            ctx.read_at::<u16>(20).unwrap_or(0),
        )
    };
    let mut addr = [0u8; 16];
    if family == AF_INET {
        // SAFETY: as above.
        let v4 = unsafe { ctx.read_at::<[u8; 4]>(26) }.unwrap_or([0; 4]);
        addr[..4].copy_from_slice(&v4);
    } else if family == AF_INET6 {
        // SAFETY: as above.
        addr = unsafe { ctx.read_at::<[u8; 16]>(46) }.unwrap_or([0; 16]);
    } else {
        return 0;
    }
    let mut hdr = header(kind::CONN_PEER, 0, tgid, tid, args.fd, sock.conn_id);
    // SAFETY: helper has no preconditions.
    hdr.ts_exit_ns = unsafe { bpf_ktime_get_ns() };
    output(&ConnEvent {
        header: hdr,
        origin: origin::ACCEPTED,
        _pad: 0,
        family,
        peer_port: dport,
        _pad2: 0,
        // The record's local port, for the agent to check against the
        // listener's: a record about another socket cannot pass for it.
        listen_fd: i32::from(sport),
        peer_addr: addr,
    });
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
