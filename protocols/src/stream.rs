//! What every framer is fed: one direction of a connection as the probes
//! saw it, a syscall (or TLS library call) at a time, with only a prefix
//! of each copied.

/// When the bytes of one segment moved: syscall entry and exit, in ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub enter_ns: u64,
    pub exit_ns: u64,
}

/// One syscall's (or iovec entry's) worth of stream.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// Captured prefix of the segment.
    pub bytes: &'a [u8],
    /// True length; `len - bytes.len()` bytes follow unseen.
    pub len: u64,
    pub stamp: Stamp,
}
