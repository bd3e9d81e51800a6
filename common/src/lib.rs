//! The `#[repr(C)]` records that cross the kernel/userspace boundary.
//!
//! The probes write these into one ring buffer; the agent reads them back
//! byte for byte. Every field is fixed-size and explicitly padded so the two
//! sides agree without a serialisation step.
#![no_std]

/// Largest prefix of one syscall buffer (or one iovec segment) the probes
/// copy. The capture buffer is this size; the runtime limit is at most this.
pub const MAX_CAPTURE: usize = 4096;

/// How many iovec entries of one `readv`/`writev`/`recvmsg`/`sendmsg` get
/// their own captured segment. Bytes past them are reported as uncaptured.
pub const MAX_IOV_SEGMENTS: u32 = 8;

/// The same, on a connection captured deeply: gRPC writes each frame's
/// header and payload as iovecs of their own, a dozen or more per call.
pub const MAX_DEEP_IOV_SEGMENTS: u32 = 128;

/// Event kinds (first byte of every record).
pub mod kind {
    /// Bytes moved on a tracked socket ([`super::DataEvent`]).
    pub const DATA: u8 = 1;
    /// A socket became tracked after `accept`/`connect` ([`super::ConnEvent`]).
    pub const CONN_OPEN: u8 = 2;
    /// A tracked socket was closed ([`super::EventHeader`] only).
    pub const CONN_CLOSE: u8 = 3;
    /// A traced process forked ([`super::ProcEvent`]).
    pub const PROC_FORK: u8 = 4;
    /// A traced process exec'd a new image ([`super::ProcEvent`]).
    pub const PROC_EXEC: u8 = 5;
    /// A traced process (its thread-group leader) exited ([`super::ProcEvent`]).
    pub const PROC_EXIT: u8 = 6;
    /// The kernel chose the local address of a traced outgoing connection
    /// ([`super::ConnEvent`], the address in its `peer_*` fields; the
    /// header's `conn_id` is 0: the fd's current connection is meant).
    pub const CONN_LOCAL: u8 = 7;
    /// A process that is not traced exec'd a new image, reported only when
    /// the agent discovers processes by selectors ([`super::ProcEvent`]).
    pub const EXEC_SEEN: u8 = 8;
    /// Trace context the probes chose for a request ([`super::ContextEvent`]):
    /// egress, the `traceparent` they wrote into an outgoing request; ingress,
    /// the context of the server request that starts in the next data event
    /// of the same socket with the same `ts_exit_ns`.
    pub const CONTEXT: u8 = 9;
    /// A TLS library object whose writes were sent before its socket was
    /// known (data events with `fd` -1 and the object in `conn_id`) is the
    /// header's socket ([`super::OwnerEvent`]). Sent before the data event
    /// that made it known.
    pub const TLS_OWNER: u8 = 10;
    /// The peer of an accepted socket whose accept asked for no address,
    /// learnt in its first read ([`super::ConnEvent`], the peer in its
    /// `peer_*` fields). Sent before that read's data.
    pub const CONN_PEER: u8 = 11;
    /// A Go program started a goroutine ([`super::GoEvent`]: the header's
    /// `goroutine` made the `object` one).
    pub const GO_SPAWN: u8 = 12;
    /// A goroutine asked `net/http`'s transport for a round trip on a
    /// persistent connection ([`super::GoEvent`]: the `object` is the
    /// `*persistConn`); its request is written by that connection's
    /// writer goroutine, not by the asking one.
    pub const GO_ROUND_TRIP: u8 = 13;
    /// A goroutine became a `*persistConn`'s writer (its `writeLoop`;
    /// [`super::GoEvent`], the `object` is the connection).
    pub const GO_WRITE_LOOP: u8 = 14;
    /// A Node.js thread starts the callback of a read on the header's
    /// socket (libuv handed it the bytes the thread just read): what the
    /// thread writes until [`LOOP_EXIT`] is that callback's doing
    /// ([`super::EventHeader`] only).
    pub const LOOP_ENTER: u8 = 15;
    /// The thread's read callback returned, microtasks and all
    /// ([`super::EventHeader`] only; no socket).
    pub const LOOP_EXIT: u8 = 16;
}

/// Data direction, from the traced process's point of view.
pub mod direction {
    /// The process read these bytes from the socket.
    pub const INGRESS: u8 = 0;
    /// The process wrote these bytes to the socket.
    pub const EGRESS: u8 = 1;
}

/// Bits of a traced process's value in the probes' `TRACED` map.
pub mod traced {
    /// The process is traced.
    pub const YES: u8 = 1;
    /// Its TLS library works on memory buffers (Node.js, Python's
    /// asyncio): no syscall nests in a library call, so a read's plaintext
    /// belongs to the socket the thread last read from.
    pub const MEMORY_BIO: u8 = 2;
    /// A Go program: goroutines move between threads, so the thread that
    /// read a request says nothing about who makes the next call.
    pub const GO: u8 = 4;
    /// Node.js, its read callbacks hooked: its TLS calls (through its own
    /// OpenSSL or the system's) work on memory buffers, and a syscall
    /// inside one is a JavaScript callback's.
    pub const EVENT_LOOP: u8 = 8;
}

/// Where a data event's bytes were seen.
pub mod source {
    /// In a read/write syscall on the socket.
    pub const SYSCALL: u8 = 0;
    /// In a TLS library call (plaintext, before encryption or after
    /// decryption), attributed to the socket the library uses.
    pub const TLS: u8 = 1;
}

/// How a socket became tracked.
pub mod origin {
    /// Returned by `accept`/`accept4`: this process is the server.
    pub const ACCEPTED: u8 = 1;
    /// Passed to `connect`: this process is the client.
    pub const CONNECTED: u8 = 2;
    /// Existed before the agent attached; seeded from `/proc`.
    pub const PREEXISTING: u8 = 3;
}

/// Common prefix of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    pub kind: u8,
    pub direction: u8,
    /// For data events, one of [`source`].
    pub source: u8,
    pub _pad: u8,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// Distinguishes successive sockets that reuse one fd number.
    pub conn_id: u64,
    /// `bpf_ktime_get_ns` at syscall entry.
    pub ts_enter_ns: u64,
    /// `bpf_ktime_get_ns` at syscall exit.
    pub ts_exit_ns: u64,
    /// In a Go program, the goroutine (its `g`) that made the event
    /// happen: R14 in a uprobe in Go code; read from the thread's TLS in
    /// a syscall probe, once a uprobe has checked that slot against R14
    /// in that process. 0 otherwise.
    pub goroutine: u64,
}

/// Bytes one syscall (or one iovec segment of it) moved on a tracked socket.
///
/// Only `header.size() + captured` bytes are sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: EventHeader,
    /// Bytes this segment really moved.
    pub len: u64,
    /// How many of them follow in `data` (a prefix, `<= len`).
    pub captured: u32,
    pub _pad: u32,
    pub data: [u8; MAX_CAPTURE],
}

impl DataEvent {
    /// Size of the fixed part that precedes `data`.
    pub const HEADER_SIZE: usize = core::mem::size_of::<EventHeader>() + 16;
}

/// A socket that just became tracked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub header: EventHeader,
    /// One of [`origin`].
    pub origin: u8,
    pub _pad: u8,
    /// `AF_INET` or `AF_INET6`; 0 when the peer address was not given.
    pub family: u16,
    /// Peer port, host byte order.
    pub peer_port: u16,
    pub _pad2: u16,
    /// For accepted sockets: the listening fd they came from, else -1.
    pub listen_fd: i32,
    /// Peer address: 4 bytes for IPv4, 16 for IPv6.
    pub peer_addr: [u8; 16],
}

/// Where a [`ContextEvent`]'s trace came from.
pub mod context_origin {
    /// A new trace the probes started.
    pub const NEW: u8 = 0;
    /// The request's own valid `traceparent` header.
    pub const HEADER: u8 = 1;
    /// The server request the writing thread was serving.
    pub const THREAD: u8 = 2;
}

/// The trace context the probes gave a request (see [`kind::CONTEXT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ContextEvent {
    pub header: EventHeader,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero when the span is a root.
    pub parent_id: [u8; 8],
    pub sampled: u8,
    /// One of [`context_origin`].
    pub origin: u8,
    pub _pad: [u8; 6],
}

/// What a Go program's runtime or `net/http` did (see [`kind::GO_SPAWN`],
/// [`kind::GO_ROUND_TRIP`], [`kind::GO_WRITE_LOOP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GoEvent {
    pub header: EventHeader,
    /// The goroutine spawned, or the `*persistConn`.
    pub object: u64,
}

/// The socket of earlier unowned TLS writes (see [`kind::TLS_OWNER`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnerEvent {
    pub header: EventHeader,
    /// The library object (`SSL *`) the unowned writes named.
    pub ssl: u64,
}

/// A process lifecycle change of a traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcEvent {
    pub header: EventHeader,
    /// For forks: the new child's pid. Otherwise equal to `header.tgid`.
    pub pid: u32,
    pub _pad: u32,
    /// The task's `comm` when the event fired: a name for processes that are
    /// gone before the agent can read `/proc`.
    pub comm: [u8; 16],
}

/// Value of the kernel's tracked-socket map, keyed by `(tgid << 32) | fd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockInfo {
    pub conn_id: u64,
    /// [`sock_flags`] bits.
    pub flags: u32,
    pub _pad: u32,
}

/// What the probes know of a tracked socket.
pub mod sock_flags {
    /// Opened by `connect`: what it writes are requests (HTTP requests,
    /// database commands), captured deeper than responses so that a
    /// pipeline of commands in one write is seen whole.
    pub const OUTGOING: u32 = 1;
    /// What it reads is captured like a request (see
    /// [`super::REQUEST_CAPTURE_CHUNKS`]): a database connection, whose
    /// responses are streams of small length-prefixed messages that a
    /// prefix would lose track of. Set by the probes when an outgoing
    /// socket's first write is a PostgreSQL startup packet or its first
    /// read a MySQL/MariaDB greeting, and by the agent when it recognises
    /// a database on a pre-existing socket.
    pub const DEEP_READS: u32 = 2;
    /// The probes have looked at this outgoing socket's first write.
    pub const FIRST_WRITE_SEEN: u32 = 4;
    /// The probes have looked at this socket's first read: an outgoing
    /// one's for a MySQL greeting, an accepted one's for the HTTP/2 client
    /// preface.
    pub const FIRST_READ_SEEN: u32 = 8;
    /// A TLS library works on this socket: its syscalls carry ciphertext,
    /// not copied; the plaintext comes from the library's probes.
    pub const TLS: u32 = 16;
    /// The probes have looked at this outgoing socket's first TLS
    /// plaintext write (for a PostgreSQL startup inside TLS).
    pub const FIRST_TLS_WRITE_SEEN: u32 = 32;
    /// What it writes is captured like a request, in chunks: HTTP/2, whose
    /// header blocks (and trailers) follow DATA in the same write. Set with
    /// `DEEP_READS` by the probes when an accepted socket's first read (or
    /// TLS plaintext read) is the HTTP/2 client preface, and by the agent
    /// when it recognises HTTP/2 otherwise.
    pub const DEEP_WRITES: u32 = 64;
    /// The probes have looked at this accepted socket's first TLS
    /// plaintext read (for the HTTP/2 preface over TLS).
    pub const FIRST_TLS_READ_SEEN: u32 = 128;
    /// Accepted with no address buffer (libuv, nghttpd): the peer is
    /// learnt in the socket's first read (see `tcp_rcv_space_adjust` in
    /// the probes).
    pub const PEER_UNKNOWN: u32 = 256;
    /// That peer was reported.
    pub const PEER_SEEN: u32 = 512;
    /// HTTP/2: the probes follow its frames in both directions, copying
    /// every frame but DATA payloads (see `h2_frames` in the probes). Set
    /// by the probes when they see the client preface, and by the agent
    /// when it recognises HTTP/2 otherwise (the probes then find where
    /// the frames start).
    pub const H2_FRAMES: u32 = 1024;
}

/// PostgreSQL's startup-phase request codes (the second 32-bit word of an
/// untyped startup packet): protocol 3.0, SSLRequest, GSSENCRequest.
pub const PG_STARTUP_CODES: [u32; 3] = [0x0003_0000, 80_877_103, 80_877_104];

/// Requests written on an outgoing socket (and database responses) are
/// captured in up to this many chunks of [`MAX_CAPTURE`] bytes per syscall
/// (16 KiB): the first ones from the start of the buffer, the last from its
/// end, with the bytes between reported as an uncaptured segment. The tail
/// is where a database response says it is done.
pub const REQUEST_CAPTURE_CHUNKS: u32 = 4;

/// Where a traced Go program keeps what the `crypto/tls` probes read,
/// written by the agent for each Go process it hooks (the probes' `GO_PROCS`
/// map, keyed by tgid). Field offsets come from the agent's table for the
/// binary's Go version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GoProc {
    /// Where the binary's type data (`runtime.types`) is in the process:
    /// type names are offsets from it.
    pub types: u64,
    /// The `net.Conn` itab of `*net.TCPConn`, once the probes have checked
    /// one by its type's name (0 until then).
    pub tcp_conn_itab: u64,
    /// `crypto/tls.Conn.conn` (a `net.Conn`) in a `tls.Conn`.
    pub conn: u16,
    /// `net.TCPConn`'s `fd` (a `*net.netFD`, through the embedded `conn`).
    pub netfd: u16,
    /// `poll.FD.Sysfd`, from the start of a `netFD` (through `pfd`).
    pub sysfd: u16,
    /// `abi.Type.Str`, `.TFlag` and `.Kind_` in a type descriptor.
    pub type_str: u16,
    pub type_tflag: u16,
    pub type_kind: u16,
    pub _pad: u32,
    /// Where the running goroutine's `g` is kept, from the thread's fs
    /// base (Go's TLS slot; -8 when Go links the binary itself); 0 when
    /// not known.
    pub tls_g: i64,
    /// One of [`go_g`]: whether reading `g` there was checked against a
    /// Go function's R14, which always holds it.
    pub g_state: u8,
    pub _pad2: [u8; 7],
}

/// States of [`GoProc::g_state`].
pub mod go_g {
    /// Not checked yet: events carry no goroutine.
    pub const UNCHECKED: u8 = 0;
    /// The slot held R14's `g`: events carry their goroutine.
    pub const GOOD: u8 = 1;
    /// It did not: this process's events never carry one.
    pub const BAD: u8 = 2;
}

/// Runtime settings the agent writes into the probes' config map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// Bytes of each buffer to copy, `1..=MAX_CAPTURE`.
    pub capture_bytes: u32,
    pub _pad: u32,
}

/// Indexes into the per-CPU counter array the probes increment.
pub mod counter {
    /// Ring buffer was full: the event was lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// Syscall-argument stash was full: the syscall went unseen.
    pub const ARGS_MAP_FULL: u32 = 1;
    /// Tracked-socket map was full: the connection went unseen.
    pub const SOCK_MAP_FULL: u32 = 2;
    /// User memory could not be read; the segment is sent uncaptured.
    pub const READ_USER_FAILED: u32 = 3;
    /// Plaintext from a TLS library call whose socket was not known (no
    /// syscall nested in it, and the library object never seen with one).
    pub const TLS_UNATTRIBUTED: u32 = 4;
    /// A `traceparent` header was written into an outgoing request.
    pub const INJECTED: u32 = 5;
    /// An outgoing request already carried a `traceparent` (an
    /// instrumented application): left as it was.
    pub const INJECT_HAD_HEADER: u32 = 6;
    /// A traced connection's bytes stopped being understood as HTTP/1
    /// requests (not HTTP, a head split across writes, chunked or upgraded
    /// bodies, more pipelined requests than followed): it is left alone
    /// from then on.
    pub const INJECT_GAVE_UP: u32 = 7;
    /// The kernel refused to grow a message for the header: sent unchanged,
    /// and the connection left alone from then on.
    pub const INJECT_FAILED: u32 = 8;
    /// A library object first seen with a socket that already had another
    /// object's plaintext: the socket named is in doubt, so the object's
    /// held writes were not given to it.
    pub const TLS_CLAIM_REFUSED: u32 = 9;
    /// A Go `crypto/tls` call on a connection that is not a
    /// `*net.TCPConn` (a wrapper, a pipe): its socket cannot be named for
    /// sure, so its plaintext is not sent.
    pub const GO_CONN_UNKNOWN: u32 = 10;
    /// A Go process whose TLS slot did not hold the running goroutine
    /// where R14 said it was: its goroutines are not reported.
    pub const GO_G_MISMATCH: u32 = 11;
    /// A memory-buffer library call made inside another on the same
    /// thread (a Node.js callback writing on one connection while a read
    /// on another runs): its plaintext is not sent.
    pub const TLS_CALL_NESTED: u32 = 12;
    /// The probes lost their place in an HTTP/2 connection's frames in
    /// one direction (a buffer with more frames than one walk takes,
    /// unreadable octets, a header not well formed, a walk already running
    /// on the CPU, `sendfile` outside a DATA payload): captured in chunks
    /// until a read or write starts with frames again.
    pub const H2_UNFOLLOWED: u32 = 13;
    pub const COUNT: u32 = 14;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding fields.
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::GoProc {}
}
