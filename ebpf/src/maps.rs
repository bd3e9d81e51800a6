//! The maps every program family shares, the values they hold, and the
//! settings the agent writes into the object at load time.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use zerospan_common::{counter, DataEvent, SockInfo};

/// Unread bytes in the ring buffer past which a write wakes the agent up.
/// Below it, writes do not wake anyone and the agent drains on its own
/// timer: one wake-up per event would cost more than the event itself.
/// The agent sets it at load time, from the ring buffer's size.
#[no_mangle]
pub(crate) static WAKEUP_BYTES: u64 = 1 << 20;

/// Where `child_pid` sits in the `sched_process_fork` record, and
/// `group_dead` in `sched_process_exit` (0: the field does not exist). The
/// layouts moved between kernels, so the agent reads them from tracefs at
/// load time; the defaults are Linux 6.x's.
#[no_mangle]
pub(crate) static FORK_CHILD_PID_OFFSET: u32 = 20;
#[no_mangle]
pub(crate) static EXIT_GROUP_DEAD_OFFSET: u32 = 32;

/// Report the execs of processes that are not traced, for the agent to
/// match against its selectors (set at load time when it has any). Execs
/// are rare; each costs one ring-buffer record.
#[no_mangle]
pub(crate) static DISCOVER: u8 = 0;

/// Bytes of each buffer to copy; the agent overrides it at load time.
#[no_mangle]
pub(crate) static CAPTURE_BYTES: u32 = 1024;

/// Traced thread-group ids. Fork tracking adds children.
#[map]
pub(crate) static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Tracked sockets, keyed by `(tgid << 32) | fd`.
#[map]
pub(crate) static SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(65536, 0);

/// Threads that existed when the agent attached, until their first data
/// syscall exit: only they can be inside a syscall that entered before the
/// probes did (see `late_args`). Keyed by tid, filled by the agent.
#[map]
pub(crate) static LATE: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Sockets of traced processes in the middle of `connect`, by kernel
/// `struct sock` address, to the `(tgid << 32) | fd` that owns them.
#[map]
pub(crate) static CONNECTING: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// TLS library calls in progress (`SSL_read`, `SSL_write`…), by pid_tgid:
/// what the return probe needs, and the socket a nested syscall names.
#[map]
pub(crate) static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// The socket each thread of a `MEMORY_BIO` process last read from.
#[map]
pub(crate) static LAST_READ: LruHashMap<u64, SockRef> = LruHashMap::with_max_entries(16384, 0);

/// The socket each TLS library object was last seen with, for calls that
/// make no syscall (data already decrypted in the library's buffer).
#[map]
pub(crate) static SSL_FDS: LruHashMap<SslKey, SockRef> = LruHashMap::with_max_entries(65536, 0);

/// TLS library objects whose writes were sent with no socket (see
/// `send_unowned`); the value, one of [`unowned`], is what the first of
/// them asks of the socket's reads.
#[map]
pub(crate) static UNOWNED: LruHashMap<SslKey, u8> = LruHashMap::with_max_entries(16384, 0);

/// What a held first write asks of its socket's reads.
pub(crate) mod unowned {
    /// Nothing.
    pub(crate) const PLAIN: u8 = 0;
    /// Deep capture: a PostgreSQL startup.
    pub(crate) const DEEP_READS: u8 = 1;
    /// Followed frame by frame: the HTTP/2 client preface.
    pub(crate) const H2: u8 = 2;
}

/// Plaintext bytes of each TLS library object already sent ahead of what
/// its writes reported done: a write that failed or moved less after its
/// nested syscall had sent it all is retried with the same bytes, which
/// must not be sent twice.
#[map]
pub(crate) static TLS_CREDIT: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// Syscall arguments stashed at entry for the matching exit, keyed by pid_tgid.
#[map]
pub(crate) static ARGS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(16384, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Scratch space for one data event: far too big for the 512-byte stack.
#[map]
pub(crate) static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// Loss counters, indexed by [`zerospan_common::counter`].
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;
pub(crate) const EINPROGRESS: i64 = -115;

/// What kind of buffer the stashed syscall moves.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Buf {
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

/// How deeply a data syscall's bytes are captured.
pub(crate) mod depth {
    /// A prefix of the buffer (of each iovec entry).
    pub(crate) const PREFIX: u8 = 0;
    /// In chunks (an outgoing socket's request, a database response).
    pub(crate) const CHUNKS: u8 = 1;
    /// Frame by frame: HTTP/2 followed from its first octet (see
    /// `h2_frames`).
    pub(crate) const FRAMES: u8 = 2;
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SyscallArgs {
    pub(crate) buf: Buf,
    pub(crate) direction: u8,
    pub(crate) family: u16,
    pub(crate) peer_port: u16,
    /// How deeply to capture these bytes: [`depth`].
    pub(crate) deep: u8,
    /// The first read of an outgoing socket that has not written yet:
    /// look at it for a MySQL/MariaDB greeting.
    pub(crate) first_read: u8,
    pub(crate) fd: i32,
    pub(crate) _pad: u32,
    pub(crate) ptr: u64,
    pub(crate) count: u64,
    pub(crate) conn_id: u64,
    pub(crate) ts_enter: u64,
    pub(crate) peer_addr: [u8; 16],
    /// In a Go program, the goroutine making the syscall. Read at entry:
    /// a syscall keeps its goroutine on its thread until it returns, and
    /// the exit programs, the verifier's largest, gain no branch.
    pub(crate) goroutine: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct TlsCall {
    /// The library's connection object (`SSL *`, `gnutls_session_t`).
    pub(crate) ssl: u64,
    pub(crate) buf: u64,
    /// Bytes asked for.
    pub(crate) num: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the byte count is written.
    pub(crate) count_ptr: u64,
    pub(crate) ts_enter: u64,
    /// The socket of the first syscall nested in the call, else -1.
    pub(crate) fd: i32,
    pub(crate) direction: u8,
    /// A write's plaintext was already sent, from its nested syscall.
    pub(crate) emitted: u8,
    /// A data syscall nested in the call, on a socket tracked or not: the
    /// library works on the socket itself, not on memory buffers.
    pub(crate) nested: u8,
    /// The library works only on memory buffers (Node.js's OpenSSL): a
    /// syscall inside one of its calls is a callback's (JavaScript run on
    /// the handshake's end, a wake-up of the event loop), never the call's
    /// own I/O, so it names no socket.
    pub(crate) memory: u8,
    /// The goroutine making the call, in a Go program; 0 otherwise.
    pub(crate) goroutine: u64,
    /// The stack pointer at entry: the return probe whose stack pointer is
    /// one return address above it is this call's, and no other's.
    pub(crate) sp: u64,
}

/// A socket as it was when seen: the fd alone could since name another.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SockRef {
    pub(crate) fd: i32,
    pub(crate) _pad: u32,
    pub(crate) conn_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SslKey {
    pub(crate) tgid: u32,
    pub(crate) _pad: u32,
    pub(crate) ssl: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Iovec {
    pub(crate) base: u64,
    pub(crate) len: u64,
}
