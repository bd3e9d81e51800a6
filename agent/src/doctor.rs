//! `zerospan doctor`: can this host run the agent, and if not, what exactly
//! to do. Each check says what it found and, when something is missing,
//! the fix. Nothing is changed on the host.

use std::{fmt, fs, path::Path};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};

use crate::host::procfs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, with a limitation worth knowing.
    Warn,
    /// The agent cannot run (or a feature cannot work) until fixed.
    Fail,
    /// Reported for information; not needed.
    Info,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
            Verdict::Info => "info",
        })
    }
}

#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub found: String,
    /// What to do, when not ok.
    pub fix: Option<&'static str>,
}

fn check(
    name: &'static str,
    verdict: Verdict,
    found: impl Into<String>,
    fix: Option<&'static str>,
) -> Check {
    Check {
        name,
        verdict,
        found: found.into(),
        fix: if verdict == Verdict::Ok { None } else { fix },
    }
}

/// `6.18.0-foo` → (6, 18).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_NET_ADMIN: u32 = 12;

/// Capabilities the agent needs, by number, with what each is for, and
/// whether CAP_SYS_ADMIN stands in for it (as on kernels before CAP_BPF).
const CAPABILITIES: [(u32, &str, &str, bool); 4] = [
    (39, "CAP_BPF", "load programs and maps", true),
    (
        38,
        "CAP_PERFMON",
        "attach tracepoints and read kernel memory",
        true,
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        "read other processes' /proc entries",
        false,
    ),
    (
        2,
        "CAP_DAC_READ_SEARCH",
        "read /proc/PID/fd and environ of any user",
        false,
    ),
];

/// The capability numbers set in a `CapEff:` hex mask from /proc/PID/status.
pub fn effective_caps(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

fn supported(r: Result<bool, impl fmt::Debug>) -> (bool, String) {
    match r {
        Ok(true) => (true, "supported".into()),
        Ok(false) => (false, "not supported".into()),
        Err(e) => (false, format!("could not probe: {e:?}")),
    }
}

pub fn run_checks() -> Vec<Check> {
    let mut out = Vec::new();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let version = parse_release(release);
    out.push(match version {
        Some(v) if v >= (5, 15) => check("kernel", Verdict::Ok, release, None),
        _ => check(
            "kernel",
            Verdict::Fail,
            release,
            Some("zerospan needs Linux 5.15 or later (ring buffer, bpf_task_pt_regs)"),
        ),
    });
    out.push(if exists("/sys/kernel/btf/vmlinux") {
        check("btf", Verdict::Ok, "/sys/kernel/btf/vmlinux", None)
    } else {
        check(
            "btf",
            Verdict::Fail,
            "no /sys/kernel/btf/vmlinux",
            Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        )
    });
    // Go programs' goroutines are read at each thread's fs base, which
    // BTF says where to find in the task.
    out.push(match crate::kernel::btf::task_fsbase() {
        Ok(at) => check(
            "go goroutines",
            Verdict::Ok,
            format!("a task's fs base is at offset {at} (BTF)"),
            None,
        ),
        Err(e) => check(
            "go goroutines",
            Verdict::Warn,
            format!("not followed: {e:#}"),
            Some("calls made by Go programs stay roots; use an x86_64 kernel with BTF"),
        ),
    });
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    out.push(match procfs::mounted("tracefs", &mounts) {
        Some(at) => check("tracefs", Verdict::Ok, format!("mounted at {at}"), None),
        None => check(
            "tracefs",
            Verdict::Warn,
            "not mounted",
            Some("the agent mounts it at start (needs CAP_SYS_ADMIN), or: mount -t tracefs tracefs /sys/kernel/tracing"),
        ),
    });
    out.push(match procfs::mounted("bpf", &mounts) {
        Some(at) => check(
            "bpffs",
            Verdict::Ok,
            format!("mounted at {at} (not needed)"),
            None,
        ),
        None => check(
            "bpffs",
            Verdict::Info,
            "not mounted (not needed: nothing is pinned)",
            None,
        ),
    });
    out.push(match procfs::mounted("tracefs", &mounts) {
        None => check(
            "syscall tracepoints",
            Verdict::Warn,
            "tracefs not mounted: cannot tell",
            Some("mount tracefs, then run doctor again"),
        ),
        Some(tracing) if exists(&format!("{tracing}/events/syscalls/sys_enter_read")) => {
            check("syscall tracepoints", Verdict::Ok, "present", None)
        }
        Some(tracing) if fs::read_dir(format!("{tracing}/events")).is_err() => check(
            "syscall tracepoints",
            Verdict::Warn,
            format!("cannot read {tracing}/events"),
            Some("run doctor as root to check them"),
        ),
        Some(_) => check(
            "syscall tracepoints",
            Verdict::Fail,
            "absent",
            Some("use a kernel built with CONFIG_FTRACE_SYSCALLS=y"),
        ),
    });
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = effective_caps(&status).unwrap_or(0);
    let has = |bit: u32| caps & (1 << bit) != 0;
    let missing: Vec<String> = CAPABILITIES
        .iter()
        .filter(|(bit, _, _, admin_will_do)| !(has(*bit) || *admin_will_do && has(CAP_SYS_ADMIN)))
        .map(|(_, name, why, _)| format!("{name} ({why})"))
        .collect();
    let mounts_missing = procfs::mounted("tracefs", &mounts).is_none();
    out.push(if !missing.is_empty() {
        check(
            "capabilities",
            Verdict::Fail,
            format!("missing: {}", missing.join(", ")),
            Some("run as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"),
        )
    } else if mounts_missing && !has(CAP_SYS_ADMIN) {
        check(
            "capabilities",
            Verdict::Warn,
            "no CAP_SYS_ADMIN to mount tracefs, and it is not mounted",
            Some("mount it on the host (see above), or grant CAP_SYS_ADMIN"),
        )
    } else if has(CAP_NET_ADMIN) {
        check("capabilities", Verdict::Ok, "all the agent needs", None)
    } else {
        check(
            "capabilities",
            Verdict::Ok,
            "all the agent needs (CAP_NET_ADMIN, for header injection later, is absent)",
            None,
        )
    });
    let (ok, found) = supported(is_map_supported(MapType::RingBuf));
    out.push(check(
        "ring buffer",
        if ok { Verdict::Ok } else { Verdict::Fail },
        found,
        Some("BPF ring buffers need Linux 5.8+ (zerospan: 5.15+) and the capabilities above"),
    ));
    let (ok, found) = supported(is_program_supported(ProgramType::TracePoint));
    out.push(check(
        "tracepoint programs",
        if ok { Verdict::Ok } else { Verdict::Fail },
        found,
        Some("needs CAP_BPF and CAP_PERFMON (or root)"),
    ));
    let uprobes = exists("/sys/bus/event_source/devices/uprobe");
    out.push(if !uprobes {
        check(
            "uprobes",
            Verdict::Warn,
            "uprobes not available: TLS capture is off",
            Some("TLS capture (uprobes on libssl) needs CONFIG_UPROBE_EVENTS=y"),
        )
    } else {
        // Tried for real: a capability count cannot tell (the uprobe PMU
        // wants CAP_SYS_ADMIN, the tracefs route CAP_PERFMON and a
        // writable tracefs).
        match crate::kernel::uprobe::route_report() {
            Ok(route) => check(
                "uprobes",
                Verdict::Ok,
                format!("TLS probes attach through {route}"),
                None,
            ),
            Err(why) => check(
                "uprobes",
                Verdict::Fail,
                format!("TLS capture would be off: {why}"),
                Some("grant CAP_SYS_ADMIN, or CAP_PERFMON with tracefs mounted read-write at /sys/kernel/tracing (the DaemonSet mounts the host's)"),
            ),
        }
    });
    // SAFETY: getrlimit writes into the struct we pass.
    let memlock = unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) == 0).then_some(r.rlim_cur)
    };
    let memlock_text = match memlock {
        Some(libc::RLIM_INFINITY) => "unlimited".to_owned(),
        Some(n) => format!("{} KiB", n / 1024),
        None => "unknown".to_owned(),
    };
    // Since 5.11 BPF memory is charged to the cgroup, not to memlock.
    let memlock_ok = memlock == Some(libc::RLIM_INFINITY) || version.is_some_and(|v| v >= (5, 11));
    out.push(check(
        "memlock limit",
        if memlock_ok {
            Verdict::Ok
        } else {
            Verdict::Warn
        },
        memlock_text,
        Some("before Linux 5.11 BPF maps count against it: raise it (ulimit -l unlimited)"),
    ));
    let kprobes = exists("/sys/bus/event_source/devices/kprobe");
    out.push(check(
        "kprobes",
        Verdict::Info,
        if kprobes {
            "present (not needed)"
        } else {
            "absent (not needed: zerospan uses tracepoints)"
        },
        None,
    ));
    let cgroup2 = procfs::mounted("cgroup2", &mounts);
    let (skmsg, skmsg_found) = supported(is_program_supported(ProgramType::SkMsg));
    let (sockops, _) = supported(is_program_supported(ProgramType::SockOps));
    out.push(match cgroup2 {
        Some(at) if skmsg && sockops => check(
            "cgroup v2 + sk_msg",
            Verdict::Ok,
            format!("cgroup2 at {at}; sockops and sk_msg supported"),
            None,
        ),
        Some(at) => check(
            "cgroup v2 + sk_msg",
            Verdict::Warn,
            format!("cgroup2 at {at}; sk_msg {skmsg_found}"),
            Some("outgoing traceparent injection (--context-propagation=headers) needs sockops and sk_msg programs"),
        ),
        None => check(
            "cgroup v2 + sk_msg",
            Verdict::Warn,
            "no cgroup2 mount",
            Some("outgoing traceparent injection (--context-propagation=headers) needs cgroup v2"),
        ),
    });
    out
}

/// Prints the report; returns whether the agent can run here.
pub fn report(checks: &[Check]) -> bool {
    println!("zerospan doctor: can this host run the agent?\n");
    for c in checks {
        println!("{:<22} {:<5} {}", c.name, c.verdict, c.found);
        if let Some(fix) = c.fix {
            println!("{:<22}       fix: {fix}", "");
        }
    }
    let fails = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    if fails == 0 {
        println!("\nresult: ready");
    } else {
        println!("\nresult: {fails} problem(s) to fix before the agent can run");
    }
    fails == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_and_capability_parsing() {
        assert_eq!(parse_release("6.18.0-zerospan"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
        let status = "Name:\tzerospan\nCapEff:\t000001ffffffffff\n";
        let caps = effective_caps(status).unwrap();
        assert!(CAPABILITIES.iter().all(|(bit, ..)| caps & (1 << bit) != 0));
        assert!(caps & (1 << CAP_SYS_ADMIN) != 0);
        assert_eq!(effective_caps("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(effective_caps("nothing"), None);
        let mounts = "tracefs /sys/kernel/tracing tracefs rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n";
        assert_eq!(
            procfs::mounted("tracefs", mounts).as_deref(),
            Some("/sys/kernel/tracing")
        );
        assert_eq!(procfs::mounted("cgroup2", mounts), None);
    }
}
