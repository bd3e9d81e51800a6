//! TCP's own tracepoints: the local address of outgoing connections
//! (`sock:inet_sock_set_state`), and an accepted socket's peer when accept
//! gave none (`tcp:tcp_rcv_space_adjust`).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use zerospan_common::{direction, kind, origin, sock_flags, ConnEvent};

use crate::{
    emit::output,
    helpers::{header, sock_key, traced_tgid},
    maps::{Buf, AF_INET, AF_INET6, ARGS, CONNECTING, SOCKS},
    propagate,
};

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
