//! First-bytes checks the kernel must make itself, before the agent has
//! seen anything: what a connection's first read or write says about how
//! deeply it must be captured. They run only on a connection's first
//! buffer (the agent's detector table, agent/src/conn/detect.rs, lists
//! them).

use aya_ebpf::helpers::{bpf_probe_read_user, generated};
use zerospan_common::PG_STARTUP_CODES;

/// Is the write at `ptr` a PostgreSQL startup packet (length, then a
/// startup code)? Decided here, at the first write, rather than by the
/// agent: the server's first reply can arrive before the agent has seen
/// the write, and it must already be captured deeply.
#[inline(always)]
pub(crate) fn is_pg_startup(ptr: u64, count: u64) -> bool {
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
pub(crate) fn is_mysql_greeting(ptr: u64, moved: u64) -> bool {
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

/// Does the buffer at `ptr` start with the HTTP/2 client preface? Its
/// first eight octets, `PRI * HT`, are no HTTP/1 method's and no TLS
/// record's; as few as three of them, `PRI` (the method RFC 9113 reserved
/// so that no HTTP/1 request starts so), are enough, for a client that
/// writes its preface in pieces (the `h2` package flushes whatever the
/// application writes) and a server that reads it so.
#[inline(always)]
pub(crate) fn is_h2_preface(ptr: u64, moved: u64) -> bool {
    const PRI: &[u8; 8] = b"PRI * HT";
    if moved < 3 {
        return false;
    }
    let n = if moved < 8 { moved as u32 } else { 8 };
    let mut head = [0u8; 8];
    // SAFETY: at most 8 octets into `head`; bpf_probe_read_user validates
    // the user pointer.
    let r = unsafe {
        generated::bpf_probe_read_user(
            head.as_mut_ptr().cast(),
            n & 15,
            ptr as *const core::ffi::c_void,
        )
    };
    if r != 0 {
        return false;
    }
    let mut i = 0;
    while i < 8 {
        if (i as u32) < n && head[i] != PRI[i] {
            return false;
        }
        i += 1;
    }
    true
}
