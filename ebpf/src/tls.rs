//! TLS libraries: the plaintext of OpenSSL's and GnuTLS's reads and
//! writes, through uprobes, attributed to the socket a nested syscall or
//! `SSL_set_fd` names.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use zerospan_common::{counter, direction, kind, sock_flags, source, traced, OwnerEvent};

use crate::{
    emit::{emit_chunks, emit_segment, output},
    h2_frames::{emit_frames, follow},
    helpers::{bump, header, sock_key, traced_tgid},
    maps::{
        unowned, SockRef, SslKey, TlsCall, LAST_READ, SOCKS, SSL_FDS, TLS_CALLS, TLS_CREDIT,
        TRACED, UNOWNED,
    },
    propagate,
    sniff::{is_h2_preface, is_pg_startup},
};

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
pub(crate) fn still_open(tgid: u32, r: Option<SockRef>) -> Option<i32> {
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
        let deep = if is_pg_startup(call.buf, moved) {
            unowned::DEEP_READS
        } else if is_h2_preface(call.buf, moved) {
            unowned::H2
        } else {
            unowned::PLAIN
        };
        let _ = UNOWNED.insert(key, &deep, 0);
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
    if deep != unowned::PLAIN && sock.flags & sock_flags::OUTGOING != 0 {
        sock.flags |= sock_flags::DEEP_READS;
        if deep == unowned::H2 {
            // Its reads are followed from this, the first; its writes
            // so far went out held, so they are not.
            sock.flags |= sock_flags::H2_FRAMES;
            follow(sock_key(tgid, fd), sock.conn_id, direction::EGRESS, true);
        }
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
pub(crate) fn tls_nested_write(pid_tgid: u64, tgid: u32, fd: i32) {
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
pub(crate) fn emit_plaintext(
    pid_tgid: u64,
    tgid: u32,
    fd: i32,
    call: &TlsCall,
    skip: u64,
    moved: u64,
) {
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
            sock.flags |= sock_flags::DEEP_READS | sock_flags::H2_FRAMES;
            follow(sock_key(tgid, fd), sock.conn_id, direction::EGRESS, false);
        }
    }
    // HTTP/2 inside TLS (ALPN h2): the preface is the first plaintext an
    // accepted socket reads.
    if call.direction == direction::INGRESS
        && sock.flags & (sock_flags::OUTGOING | sock_flags::FIRST_TLS_READ_SEEN) == 0
    {
        sock.flags |= sock_flags::FIRST_TLS_READ_SEEN;
        if is_h2_preface(call.buf + skip, moved) {
            sock.flags |= sock_flags::DEEP_READS | sock_flags::DEEP_WRITES | sock_flags::H2_FRAMES;
            follow(sock_key(tgid, fd), sock.conn_id, direction::INGRESS, false);
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
    let frames = sock.flags & sock_flags::H2_FRAMES != 0;
    if deep && frames && emit_frames(&hdr, sock_key(tgid, fd), call.buf + skip, 0, 0, moved) {
        // Sent frame by frame.
    } else if deep {
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
