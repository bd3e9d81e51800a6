//! Converting the probes' `bpf_ktime_get_ns` (CLOCK_MONOTONIC) to Unix time.

/// Offset between the monotonic clock the probes stamp with and wall time,
/// measured once at start-up.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real - mono,
        }
    }

    /// A clock whose monotonic and Unix times coincide: for tests.
    #[cfg(test)]
    pub fn identity() -> Self {
        Clock { offset_ns: 0 }
    }

    pub fn to_unix_ns(self, ktime_ns: u64) -> u64 {
        (ktime_ns as i128 + self.offset_ns).max(0) as u64
    }

    /// Wall time now, in Unix nanoseconds.
    pub fn unix_now_ns() -> u64 {
        clock_ns(libc::CLOCK_REALTIME).max(0) as u64
    }

    /// Current CLOCK_MONOTONIC, comparable with the probes' stamps.
    pub fn now_ktime_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
}
