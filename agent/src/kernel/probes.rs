//! Loading, configuring and attaching the eBPF probes, and the agent's
//! handles on their maps.

use std::{
    io,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{trace_point::TracePointLink, TracePoint},
    Ebpf, EbpfLoader,
};
use zerospan_common::{counter, go_g, sock_flags, traced, GoProc, SockInfo, MAX_CAPTURE};

pub use crate::kernel::propagation::PropagationSettings;
use crate::{
    exchange::ConnKey,
    host::procfs,
    kernel::{
        tls_hooks::TlsHooks,
        {propagation, Deepen, Runtime},
    },
};

/// Every program in the object, with its tracepoint category.
const TRACEPOINTS: &[(&str, &str)] = &[
    ("syscalls", "sys_enter_read"),
    ("syscalls", "sys_exit_read"),
    ("syscalls", "sys_enter_recvfrom"),
    ("syscalls", "sys_exit_recvfrom"),
    ("syscalls", "sys_enter_readv"),
    ("syscalls", "sys_exit_readv"),
    ("syscalls", "sys_enter_recvmsg"),
    ("syscalls", "sys_exit_recvmsg"),
    ("syscalls", "sys_enter_write"),
    ("syscalls", "sys_exit_write"),
    ("syscalls", "sys_enter_sendto"),
    ("syscalls", "sys_exit_sendto"),
    ("syscalls", "sys_enter_writev"),
    ("syscalls", "sys_exit_writev"),
    ("syscalls", "sys_enter_sendmsg"),
    ("syscalls", "sys_exit_sendmsg"),
    ("syscalls", "sys_enter_sendfile64"),
    ("syscalls", "sys_exit_sendfile64"),
    ("syscalls", "sys_enter_accept"),
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_enter_accept4"),
    ("syscalls", "sys_exit_accept4"),
    ("syscalls", "sys_enter_connect"),
    ("syscalls", "sys_exit_connect"),
    ("syscalls", "sys_enter_close"),
    ("sock", "inet_sock_set_state"),
    ("tcp", "tcp_rcv_space_adjust"),
    ("sched", "sched_process_fork"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
];

#[derive(Clone, Debug)]
pub struct ProbeSettings {
    /// Report untraced processes' execs (discovery by selectors).
    pub discover: bool,
    pub capture_bytes: u32,
    pub max_connections: u32,
    pub max_processes: u32,
    pub ring_buffer_bytes: u32,
    /// `Some` to write `traceparent` into outgoing HTTP/1 requests.
    pub propagation: Option<PropagationSettings>,
}

pub struct Probes {
    ebpf: Ebpf,
    tls: TlsHooks,
    /// Owned here rather than by their programs so [`Drop`] can detach them
    /// all at once.
    links: Vec<TracePointLink>,
    traced: HashMap<MapData, u32, u8>,
    late: HashMap<MapData, u32, u8>,
    socks: HashMap<MapData, u64, SockInfo>,
    counters: PerCpuArray<MapData, u64>,
    /// Traced Go processes whose `crypto/tls` is hooked.
    go_procs: HashMap<MapData, u32, GoProc>,
}

static NEXT_SEEDED_ID: AtomicU64 = AtomicU64::new(1);

/// Ids for sockets seeded from `/proc` (see [`ConnKey::SEEDED`]).
fn seeded_conn_id() -> u64 {
    ConnKey::SEEDED | NEXT_SEEDED_ID.fetch_add(1, Ordering::Relaxed)
}

fn mount_if_missing(path: &str, fstype: &str) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path))
    {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, ty) = (c(fstype), c(path), c(fstype));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            ty.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        bail!("{path} is not mounted and mounting it failed ({err}); run: mount -t {fstype} {fstype} {path}");
    }
    log::info!("mounted {fstype} at {path}");
    Ok(())
}

fn preflight() -> anyhow::Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        log::warn!(
            "/sys/kernel/btf/vmlinux is missing: this kernel has no BTF; probes may not load"
        );
    }
    // bpffs is not needed: nothing is pinned.
    mount_if_missing("/sys/kernel/tracing", "tracefs")?;
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    Ok(())
}

fn explain(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    // SAFETY: no preconditions.
    if text.contains("Operation not permitted") || unsafe { libc::geteuid() } != 0 {
        e.context(
            "zerospan needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH, \
             to load its probes",
        )
    } else {
        e
    }
}

/// The offset of `field` in tracepoint `event`'s record, from its `format`
/// file (tracefs is mounted by the preflight).
fn field_offset(event: &str, field: &str) -> Option<u32> {
    let text =
        std::fs::read_to_string(format!("/sys/kernel/tracing/events/{event}/format")).ok()?;
    parse_field_offset(&text, field)
}

/// Finds `field:<type> <field>;\toffset:<n>;` in a tracepoint format file.
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .parse()
            .ok()
    })
}

impl Drop for Probes {
    /// Each detach waits for an RCU grace period (about 40 ms here), so one
    /// after the other they took over a second; side by side the waits
    /// overlap.
    fn drop(&mut self) {
        let uprobes = self.tls.take_links();
        std::thread::scope(|scope| {
            for link in self.links.drain(..) {
                // If no thread can be made, the failed spawn drops its
                // closure, and with it the link: detached here instead.
                let _ = std::thread::Builder::new().spawn_scoped(scope, move || drop(link));
            }
            for link in uprobes {
                let _ = std::thread::Builder::new().spawn_scoped(scope, move || drop(link));
            }
        });
    }
}

impl Probes {
    /// Loads and attaches every probe. Nothing is traced until [`Probes::trace`].
    pub fn load(s: &ProbeSettings) -> anyhow::Result<(Self, RingBuf<MapData>)> {
        Self::load_inner(s).map_err(explain)
    }

    fn load_inner(s: &ProbeSettings) -> anyhow::Result<(Self, RingBuf<MapData>)> {
        preflight()?;
        let capture = s.capture_bytes.clamp(1, MAX_CAPTURE as u32);
        // Wake the agent early once a quarter of the ring is used; below
        // that it drains on its own timer (see `agent::DRAIN_INTERVAL`).
        let wakeup = u64::from(s.ring_buffer_bytes / 4);
        let fork_child = field_offset("sched/sched_process_fork", "child_pid")
            .context("reading the sched_process_fork record layout from tracefs")?;
        // Absent on older kernels: the probe then uses the leader's exit.
        let exit_group_dead = field_offset("sched/sched_process_exit", "group_dead").unwrap_or(0);
        // Checked before loading: the probes must know whether to choose ids.
        let propagation = match &s.propagation {
            None => None,
            Some(p) => match propagation::cgroup_dir(p.cgroup.as_ref()) {
                Ok(dir) => Some((dir, p.sample_bound)),
                Err(e) if p.cgroup.is_none() => {
                    log::warn!("context propagation is off: {e:#}");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let (propagate, sample_bound) = match &propagation {
            Some((_, bound)) => (1u8, *bound),
            None => (0u8, u64::MAX),
        };
        // Go programs' goroutines are read from the thread's TLS, at its fs
        // base; without it, their calls stay roots.
        let task_fsbase = crate::kernel::btf::task_fsbase().unwrap_or_else(|e| {
            log::warn!(
                "Go goroutines are not followed: where the kernel keeps a thread's fs base \
                 is not known ({e:#}); calls made by Go programs stay roots"
            );
            0
        });
        let mut ebpf = EbpfLoader::new()
            .override_global("PROPAGATE", &propagate, true)
            .override_global("SAMPLE_BOUND", &sample_bound, true)
            .override_global("CAPTURE_BYTES", &capture, true)
            .override_global("DISCOVER", &u8::from(s.discover), true)
            .override_global("WAKEUP_BYTES", &wakeup, true)
            .override_global("TASK_FSBASE", &task_fsbase, true)
            .override_global("FORK_CHILD_PID_OFFSET", &fork_child, true)
            .override_global("EXIT_GROUP_DEAD_OFFSET", &exit_group_dead, true)
            .map_max_entries("SOCKS", s.max_connections)
            // HTTP/2 connections followed frame by frame: a quarter of the
            // connections (40 octets of value each).
            .map_max_entries("H2_FRAMES", (s.max_connections / 4).max(64))
            .map_max_entries("TRACED", s.max_processes)
            .map_max_entries("LATE", s.max_processes)
            .map_max_entries("CONNECTING", s.max_processes)
            .map_max_entries("ARGS", s.max_processes)
            .map_max_entries("EVENTS", s.ring_buffer_bytes)
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/zerospan"
            )))
            .context("loading the eBPF object")?;
        let mut links = Vec::with_capacity(TRACEPOINTS.len());
        for (category, name) in TRACEPOINTS {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel verifier rejected {name}"))?;
            let link = prog.attach(category, name).with_context(|| {
                format!("attaching to tracepoint {category}/{name} (does this kernel have CONFIG_FTRACE_SYSCALLS?)")
            })?;
            links.push(prog.take_link(link)?);
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
        let traced = HashMap::try_from(take(&mut ebpf, "TRACED")?)?;
        let late = HashMap::try_from(take(&mut ebpf, "LATE")?)?;
        let socks = HashMap::try_from(take(&mut ebpf, "SOCKS")?)?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)?;
        let go_procs = HashMap::try_from(take(&mut ebpf, "GO_PROCS")?)?;
        log::info!("attached {} tracepoints", TRACEPOINTS.len());
        if let Some((dir, _)) = &propagation {
            propagation::attach(&mut ebpf, dir)
                .context("context propagation (--context-propagation=off runs without it)")?;
        }
        crate::kernel::tls_hooks::load(&mut ebpf)?;
        let mut tls = TlsHooks::new();
        tls.hook_system_libraries(&mut ebpf);
        Ok((
            Probes {
                ebpf,
                tls,
                links,
                traced,
                late,
                socks,
                counters,
                go_procs,
            },
            ring,
        ))
    }

    /// Hooks the TLS libraries `pid` maps (and its executable, for a
    /// statically linked OpenSSL, Go's own TLS, Node.js's event loop) that
    /// are not hooked yet. Returns what runs in it.
    pub fn hook_tls(&mut self, pid: u32) -> Runtime {
        let hooked = self.tls.hook_process(&mut self.ebpf, pid);
        // A statically linked OpenSSL is Node.js's, on memory buffers:
        // the probes attribute its reads by the thread's last read, which
        // also names the socket of each read callback.
        let mut flags = if hooked.openssl_in_exe || hooked.event_loop {
            traced::MEMORY_BIO
        } else {
            0
        };
        if let Some(go) = hooked.go {
            if let Err(e) = self.go_procs.insert(pid, go, 0) {
                log::warn!("pid {pid}: Go's TLS is not traced: the probes' Go map: {e}");
            }
        }
        if hooked.go_runtime {
            flags |= traced::GO;
        }
        if hooked.event_loop {
            flags |= traced::EVENT_LOOP;
        }
        if flags != 0 {
            if let Ok(old) = self.traced.get(&pid, 0) {
                let _ = self.traced.insert(pid, old | flags, 0);
            }
        }
        Runtime {
            go: hooked.go_runtime,
            event_loop: hooked.event_loop,
        }
    }

    /// A traced process exec'd: it maps its new image's files now.
    /// Returns what runs in the new image.
    pub fn exec(&mut self, pid: u32) -> Runtime {
        self.tls.forget_process(pid);
        let _ = self.go_procs.remove(&pid);
        if let Ok(old) = self.traced.get(&pid, 0) {
            let _ = self.traced.insert(
                pid,
                old & !(traced::GO | traced::MEMORY_BIO | traced::EVENT_LOOP),
                0,
            );
        }
        self.hook_tls(pid)
    }

    /// Detaches the TLS probes of files no traced process maps any more.
    pub fn release_unused_tls(&mut self) {
        let traced: Vec<u32> = self.traced.keys().filter_map(Result::ok).collect();
        let links = self.tls.release_unused(&traced);
        if !links.is_empty() {
            // Each detach waits for an RCU grace period: not here.
            let _ = std::thread::Builder::new().spawn(move || drop(links));
        }
    }

    pub fn tls_counts(&self) -> crate::kernel::tls_hooks::Counts {
        self.tls.counts()
    }

    /// Starts tracing a process.
    pub fn trace(&mut self, pid: u32) -> anyhow::Result<()> {
        self.traced.insert(pid, traced::YES, 0).with_context(|| {
            format!("adding pid {pid} to the traced set (is --max-processes too small?)")
        })
    }

    /// Marks the threads `pid` has now as older than the probes: each may
    /// be blocked in a read that entered before they existed, whose bytes
    /// the exit probe then recovers (see `late_args` in the probes).
    pub fn mark_existing_threads(&mut self, pid: u32) {
        for tid in procfs::threads(pid) {
            // Best effort: a full map only costs that thread's first read.
            let _ = self.late.insert(tid, 1, 0);
        }
    }

    /// Tracks the TCP sockets `pid` already holds. Call after [`Probes::trace`],
    /// so a socket accepted in between is tracked by the probes instead.
    pub fn seed_sockets(&mut self, pid: u32) -> Vec<(ConnKey, procfs::TcpRow)> {
        let table = procfs::tcp_sockets(pid);
        let mut seeded = Vec::new();
        for (fd, inode) in procfs::socket_fds(pid) {
            let Some(row) = table.get(&inode) else {
                continue; // not TCP
            };
            if row.state == procfs::TCP_LISTEN {
                continue;
            }
            let conn_id = seeded_conn_id();
            let key = ((pid as u64) << 32) | fd as u32 as u64;
            // BPF_NOEXIST: never clobber an entry the probes just made.
            // Role unknown until the first bytes: default capture.
            let info = SockInfo {
                conn_id,
                flags: 0,
                _pad: 0,
            };
            if self.socks.insert(key, info, 1).is_ok() {
                seeded.push((
                    ConnKey {
                        tgid: pid,
                        fd,
                        conn_id,
                    },
                    *row,
                ));
            }
        }
        seeded
    }

    /// Stops capturing a connection (not HTTP/1, or gone).
    pub fn forget_socket(&mut self, key: ConnKey) {
        let k = ((key.tgid as u64) << 32) | key.fd as u32 as u64;
        if let Ok(info) = self.socks.get(&k, 0) {
            if info.conn_id == key.conn_id {
                let _ = self.socks.remove(&k);
            }
        }
    }

    /// Captures a connection deeply, as its protocol needs (see
    /// `sock_flags::DEEP_READS` and `DEEP_WRITES`).
    pub fn capture_deeply(&mut self, key: ConnKey, how: Deepen) {
        let k = ((key.tgid as u64) << 32) | key.fd as u32 as u64;
        if let Ok(mut info) = self.socks.get(&k, 0) {
            if info.conn_id == key.conn_id {
                info.flags |= match how {
                    // A database on a socket that predates the agent: its
                    // writes are requests, as on sockets the probes saw
                    // connect.
                    Deepen::Database => sock_flags::DEEP_READS | sock_flags::OUTGOING,
                    // Followed frame by frame once the probes find a
                    // buffer that starts with frames (`h2_frames::adopt`).
                    Deepen::Http2 => {
                        sock_flags::DEEP_READS | sock_flags::DEEP_WRITES | sock_flags::H2_FRAMES
                    }
                };
                // BPF_EXIST: never resurrect an entry closed meanwhile.
                let _ = self.socks.insert(k, info, 2);
            }
        }
    }

    /// A traced process forked: its child maps the same TLS libraries.
    pub fn fork(&mut self, parent: u32, child: u32) {
        self.tls.inherit(parent, child);
    }

    /// A traced Go process forked a process (not a thread) that runs the
    /// same image: the probes read its goroutines and TLS as its parent's.
    /// (Its `TRACED` flags the fork probe copied already.)
    pub fn fork_go(&mut self, parent: u32, child: u32) {
        if let Ok(mut info) = self.go_procs.get(&parent, 0) {
            // Checked again in the child: it may have exec'd another image
            // already, whose TLS slot is elsewhere.
            info.g_state = go_g::UNCHECKED;
            let _ = self.go_procs.insert(child, info, 0);
        }
    }

    /// Drops a dead process's sockets (exit closes fds without close(2));
    /// the TLS libraries only it mapped become candidates for release.
    pub fn forget_process(&mut self, tgid: u32) {
        self.tls.forget_process(tgid);
        let _ = self.go_procs.remove(&tgid);
        let keys: Vec<u64> = self
            .socks
            .keys()
            .filter_map(Result::ok)
            .filter(|k| (k >> 32) as u32 == tgid)
            .collect();
        for k in keys {
            let _ = self.socks.remove(&k);
        }
        let _ = self.traced.remove(&tgid);
    }

    /// Processes and threads in the probes' traced map.
    pub fn traced_entries(&self) -> usize {
        self.traced.keys().filter(Result::is_ok).count()
    }

    /// Totals of the probes' loss counters, indexed by [`counter`].
    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_field_offset, TRACEPOINTS};
    use crate::kernel::{propagation, tls_hooks};

    /// Architecture invariant: the programs in the eBPF object are the
    /// ones the agent loads, no more and no fewer. A program the agent
    /// does not name would never run; one it names that the object lacks
    /// stops it at start.
    #[test]
    fn the_objects_programs_are_the_ones_the_agent_loads() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};
        let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/zerospan"));
        let file = object::File::parse(&bytes[..]).unwrap();
        let section_of = |s: &object::Symbol<'_, '_>| -> String {
            s.section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .and_then(|sec| sec.name().ok().map(str::to_owned))
                .unwrap_or_default()
        };
        // Programs live in their own sections (`tracepoint/…`, `uprobe/…`,
        // `sk_msg`); helpers not inlined stay in .text.
        let mut in_object: Vec<&str> = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.is_global())
            .filter(|s| !matches!(section_of(s).as_str(), "" | ".text"))
            .filter_map(|s| s.name().ok())
            .collect();
        in_object.sort_unstable();
        let mut loaded: Vec<&str> = TRACEPOINTS
            .iter()
            .map(|(_, name)| *name)
            .chain(tls_hooks::programs())
            .chain(propagation::PROGRAMS)
            .collect();
        loaded.sort_unstable();
        assert!(in_object.len() > 20, "{in_object:?}");
        assert_eq!(in_object, loaded);
        // No uretprobe on a Go function (ARCHITECTURE.md, "Go"): Go's
        // return probes are entry uprobes at its RET instructions.
        let go: Vec<_> = file
            .symbols()
            .filter(|s| s.name().is_ok_and(|n| n.starts_with("go_")))
            .collect();
        assert!(go.len() >= 4, "{} Go programs", go.len());
        for s in go {
            let section = section_of(&s);
            assert!(
                section.starts_with("uprobe"),
                "{:?} is in {section}",
                s.name()
            );
        }
    }

    #[test]
    fn reads_offsets_from_tracepoint_formats() {
        // Linux 6.18's sched_process_fork, and an older layout.
        let new = "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
                   \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
                   \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(new, "child_pid"), Some(20));
        let old = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                   \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
                   \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
                   \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(old, "child_pid"), Some(44));
        assert_eq!(parse_field_offset(old, "child_comm"), Some(28));
        assert_eq!(parse_field_offset(old, "group_dead"), None);
    }
}
