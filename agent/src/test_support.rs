//! What the agent's unit tests share.

use zerospan_protocols::stream::{Segment, Stamp};

use crate::conn::db::SqlOptions;

/// `bytes`, all captured, as one syscall that entered at `t` and returned
/// a nanosecond later.
pub fn seg(bytes: &[u8], t: u64) -> Segment<'_> {
    Segment {
        bytes,
        len: bytes.len() as u64,
        stamp: Stamp {
            enter_ns: t,
            exit_ns: t + 1,
        },
    }
}

/// `len` octets the probes did not copy, moved by one syscall at `t`.
pub fn uncopied(len: u64, t: u64) -> Segment<'static> {
    Segment {
        bytes: &[],
        len,
        stamp: Stamp {
            enter_ns: t,
            exit_ns: t + 1,
        },
    }
}

/// SQL options for a connection's tests: the user exported, literals
/// sanitised or not.
pub fn opts(sanitize: bool) -> SqlOptions {
    SqlOptions {
        sanitize,
        user: true,
    }
}
