//! Hooking TLS libraries: finding the OpenSSL or GnuTLS a traced process
//! uses, and attaching the probes' uprobes to its read and write
//! functions, once per library file (the kernel shares a uprobe among
//! every process that maps the file; the programs filter by traced tgid).
//! A Go executable is hooked the same way, per file: its own `crypto/tls`,
//! and the functions that tell which goroutine works for which request.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{programs::UProbe, Ebpf};

use zerospan_common::GoProc;

use crate::kernel::{
    golang::{self, GoBinary},
    openssl,
    uprobe::{self, AttachError, Symbols, Uprobes},
};

/// Each program, and the library functions it is attached to. OpenSSL's
/// `SSL_write(ssl, buf, num)` and GnuTLS's `gnutls_record_send(session,
/// data, size)` take the same arguments and return the bytes moved, so
/// they share programs; the `_ex` forms report the count through a pointer.
/// Return probes come first: attached to a live process, an entry probe
/// without its return probe would leave a call open. OpenSSL's four go on
/// its internal functions instead where those are found
/// ([`TlsHooks::hook_openssl_internals`]), for one trap a call.
const HOOKS: &[(&str, &[&str])] = &[
    ("tls_write_ret", &["SSL_write", "gnutls_record_send"]),
    ("tls_write", &["SSL_write", "gnutls_record_send"]),
    ("tls_read_ret", &["SSL_read", "gnutls_record_recv"]),
    ("tls_read", &["SSL_read", "gnutls_record_recv"]),
    ("tls_write_ex_ret", &["SSL_write_ex"]),
    ("tls_write_ex", &["SSL_write_ex"]),
    ("tls_read_ex_ret", &["SSL_read_ex"]),
    ("tls_read_ex", &["SSL_read_ex"]),
    // Entry only: where a connection's plaintext goes before its first
    // read or write names it.
    ("tls_set_fd", &["SSL_set_fd", "gnutls_transport_set_int2"]),
];

/// OpenSSL's public read and write functions, left unprobed when the
/// internal ones they call are probed instead.
const OPENSSL_READS: &[&str] = &["SSL_read", "SSL_read_ex"];
const OPENSSL_WRITES: &[&str] = &["SSL_write", "SSL_write_ex"];
const OPENSSL_READ_WRITE: &[&str] = &["SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"];

/// Node.js's read callback, `node::LibuvStreamWrap::OnUvRead(ssize_t,
/// const uv_buf_t*)`: where JavaScript handles what a socket read gave
/// (see `node_loop.rs` in the probes). Its return probe comes first.
const NODE_READ_CB: &str = "_ZN4node15LibuvStreamWrap8OnUvReadElPK8uv_buf_t";
const NODE_LOOP: [&str; 2] = ["node_read_cb_ret", "node_read_cb"];

/// Where distributions keep the libraries, hooked at start so that a
/// process that loads one later (Python imports `ssl` lazily, through
/// dlopen) is covered from its first call.
const SYSTEM_LIBRARIES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libgnutls.so.30",
    "/usr/lib64/libssl.so.3",
    "/usr/lib64/libgnutls.so.30",
    "/usr/lib/libssl.so.3",
];

/// The programs on Go's `crypto/tls` (see `go_tls.rs` in the probes),
/// attached at offsets found in each Go binary.
const GO_READ: &str = "go_tls_read";
const GO_WRITE: &str = "go_tls_write";
const GO_RETURN: &str = "go_tls_return";
/// The programs on Go's runtime and `net/http` (see `go_runtime.rs`).
const GO_NEWPROC1: &str = "go_newproc1";
const GO_NEWPROC1_RETURN: &str = "go_newproc1_return";
const GO_ROUND_TRIP: &str = "go_round_trip";
const GO_WRITE_LOOP: &str = "go_write_loop";

/// Every uprobe program this module loads.
pub fn programs() -> impl Iterator<Item = &'static str> {
    let go = [
        GO_READ,
        GO_WRITE,
        GO_RETURN,
        GO_NEWPROC1,
        GO_NEWPROC1_RETURN,
        GO_ROUND_TRIP,
        GO_WRITE_LOOP,
    ];
    HOOKS
        .iter()
        .map(|(name, _)| *name)
        .chain(go)
        .chain(NODE_LOOP)
}

/// Loads the TLS programs into the kernel (they attach later, per file).
pub fn load(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    for name in programs() {
        let prog: &mut UProbe = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("the kernel verifier rejected {name}"))?;
    }
    Ok(())
}

/// A file looked at for TLS functions: its probes (none if it has no such
/// functions), and the traced processes known to map it.
struct File {
    path: PathBuf,
    links: Vec<uprobe::Link>,
    users: HashSet<u32>,
    /// A system library hooked at start: kept for processes that load it
    /// later, whoever maps it now.
    system: bool,
    /// Since when no known user maps it.
    unused_since: Option<Instant>,
    /// A Go executable with probes (its `crypto/tls`, its goroutines).
    go: Option<GoBinary>,
    /// A Go executable, hooked or not.
    go_runtime: bool,
    /// Node.js, its read callbacks hooked.
    event_loop: bool,
}

/// What hooking a process found in it.
#[derive(Default)]
pub struct Hooked {
    /// Its executable holds OpenSSL's functions (Node.js).
    pub openssl_in_exe: bool,
    /// It runs a Go executable with probes: what they need to read it in
    /// this process.
    pub go: Option<GoProc>,
    /// It runs a Go executable: its goroutines move between threads.
    pub go_runtime: bool,
    /// It runs Node.js with its read callbacks hooked: its threads are
    /// event loops, and the probes say which read each callback is for.
    pub event_loop: bool,
}

/// Totals for the stats.
pub struct Counts {
    pub files_hooked: usize,
    pub processes_known: usize,
    pub attach_failed: u64,
    pub go_binaries_hooked: usize,
    pub go_binaries_unsupported: u64,
}

/// How long a hooked file stays hooked with no traced process mapping it:
/// the next process that runs the same program, or `dlopen`s the same
/// library, finds it still hooked.
pub const RELEASE_AFTER: Duration = Duration::from_secs(10);

/// Files without TLS functions remembered (so that an executable run again
/// and again is not searched again); past it they are forgotten.
const MAX_FILES: usize = 4096;

/// Traced processes whose maps are read to make sure nobody uses a file
/// before its probes go; with more, files stay hooked.
const MAX_CHECKED: usize = 512;

/// The files looked at so far, by (device, inode); what each traced
/// process maps. A hooked file no traced process has mapped for
/// [`RELEASE_AFTER`] is released: its probes detach, and a process that
/// maps it later has it looked at again.
pub struct TlsHooks {
    files: HashMap<(u64, u64), File>,
    by_pid: HashMap<u32, HashSet<(u64, u64)>>,
    uprobes: Uprobes,
    /// Attaches that failed for a reason other than a missing function.
    failed: u64,
    /// Whether the agent said that TLS capture is off.
    warned_off: bool,
    /// Go binaries left alone, wholly or in part.
    go_unsupported: u64,
}

impl TlsHooks {
    pub fn new() -> Self {
        TlsHooks {
            files: HashMap::new(),
            by_pid: HashMap::new(),
            uprobes: Uprobes::new(),
            failed: 0,
            warned_off: false,
            go_unsupported: 0,
        }
    }

    /// Hooks the TLS functions `path` holds, unless its file was looked at
    /// before; `pid` (if any) maps it, as its executable if `exe`. Returns
    /// the file's id.
    fn hook(
        &mut self,
        ebpf: &mut Ebpf,
        path: &Path,
        pid: Option<u32>,
        exe: bool,
    ) -> Option<(u64, u64)> {
        let meta = std::fs::metadata(path).ok()?;
        let id = (meta.dev(), meta.ino());
        if let Some(file) = self.files.get_mut(&id) {
            if let Some(pid) = pid {
                file.users.insert(pid);
                file.unused_since = None;
            }
            return Some(id);
        }
        let mut links = Vec::new();
        let mut hooked = 0;
        let mut wanted: Vec<&str> = HOOKS.iter().flat_map(|(_, f)| f.iter().copied()).collect();
        if exe {
            wanted.push(NODE_READ_CB);
        }
        let mut symbols = Symbols::of(path, &wanted);
        // OpenSSL's reads and writes, at its internal functions where it
        // can: then its public functions are not probed as well.
        let public = self.hook_openssl_internals(ebpf, path, &mut links);
        let internal = |f: &str| OPENSSL_READ_WRITE.contains(&f) && !public.contains(&f);
        hooked += usize::from(!public.contains(&"SSL_read"))
            + usize::from(!public.contains(&"SSL_write"));
        for &(name, functions) in HOOKS {
            let Some(Ok(prog)) = ebpf.program_mut(name).map(<&mut UProbe>::try_from) else {
                continue;
            };
            for function in functions {
                if internal(function) {
                    continue;
                }
                match self.uprobes.attach(prog, function, &mut symbols) {
                    Ok(Some(link)) => {
                        links.push(link);
                        // Functions, not probes: a return probe's entry
                        // twin counts for both.
                        hooked += usize::from(!name.ends_with("_ret"));
                    }
                    Ok(None) => {}
                    Err(e) => self.attach_failed(path, function, &e),
                }
            }
        }
        if hooked > 0 {
            log::info!("hooked {hooked} TLS functions in {}", path.display());
        }
        // Node.js: its process gets the `EVENT_LOOP` flag, by which the
        // probes also take its TLS calls (through its own OpenSSL or the
        // system's) to work on memory buffers alone.
        let event_loop = exe && self.hook_node_loop(ebpf, path, &mut symbols, &mut links);
        let (go_runtime, go) = match pid {
            Some(_) => self.hook_go(ebpf, path, &mut links),
            None => (false, None),
        };
        // Remembered even when empty: an executable without TLS functions
        // is not searched again while a traced process maps it.
        self.files.insert(
            id,
            File {
                path: path.to_owned(),
                links,
                users: pid.into_iter().collect(),
                system: pid.is_none(),
                unused_since: None,
                go,
                go_runtime,
                event_loop,
            },
        );
        Some(id)
    }

    /// Attaches the `_ex` programs to the internal functions OpenSSL's
    /// reads and writes go through, if `path` is an OpenSSL whose internals
    /// can be found (see [`openssl`]): one trap a call instead of two.
    /// Returns the public functions left for [`HOOKS`] to probe.
    fn hook_openssl_internals(
        &mut self,
        ebpf: &mut Ebpf,
        path: &Path,
        links: &mut Vec<uprobe::Link>,
    ) -> &'static [&'static str] {
        let found = std::fs::File::open(path)
            .ok()
            .and_then(|f| uprobe::Mapped::of(&f).ok())
            .and_then(|map| {
                let obj = object::File::parse(map.bytes()).ok()?;
                openssl::internals(&obj).ok()
            });
        let Some(found) = found else {
            return OPENSSL_READ_WRITE;
        };
        let pairs = [
            ("read", found.read, ["tls_read_ex_ret", "tls_read_ex"]),
            ("write", found.write, ["tls_write_ex_ret", "tls_write_ex"]),
        ];
        let mut internal = [false; 2];
        for (i, (what, at, programs)) in pairs.into_iter().enumerate() {
            let described = format!("OpenSSL's internal {what} function");
            match at {
                // Returns first, as everywhere.
                Ok(at) => {
                    let points = programs.map(|p| (p, at));
                    internal[i] = self
                        .attach_all(ebpf, path, &described, points, links)
                        .is_some();
                    if internal[i] {
                        log::info!(
                            "OpenSSL in {} is probed at its internal {what} function (offset \
                             {at:#x}), where the kernel needs no single step",
                            path.display()
                        );
                    } else {
                        log::info!(
                            "OpenSSL in {}: its public {what} functions are probed instead",
                            path.display()
                        );
                    }
                }
                Err(e) if e.is_dear() => log::info!(
                    "OpenSSL in {}: its internal {what} function is not used ({e}); its public \
                     {what} functions are probed, whose first instruction the kernel \
                     single-steps on every call",
                    path.display()
                ),
                Err(_) => {}
            }
        }
        match internal {
            [true, true] => &[],
            [true, false] => OPENSSL_WRITES,
            [false, true] => OPENSSL_READS,
            [false, false] => OPENSSL_READ_WRITE,
        }
    }

    /// Hooks Node.js's read callback in executable `path`, if it has one:
    /// both probes, or neither.
    fn hook_node_loop(
        &mut self,
        ebpf: &mut Ebpf,
        path: &Path,
        symbols: &mut Symbols<'_>,
        links: &mut Vec<uprobe::Link>,
    ) -> bool {
        let mut got = Vec::new();
        for name in NODE_LOOP {
            let Some(Ok(prog)) = ebpf.program_mut(name).map(<&mut UProbe>::try_from) else {
                return false;
            };
            match self.uprobes.attach(prog, NODE_READ_CB, symbols) {
                Ok(Some(link)) => got.push(link),
                Ok(None) => return false,
                Err(e) => {
                    self.attach_failed(path, NODE_READ_CB, &e);
                    return false;
                }
            }
        }
        log::info!(
            "following Node.js's event loop in {}: its read callbacks hooked",
            path.display()
        );
        links.extend(got);
        true
    }

    /// Whether `path` is a Go executable, and, if the probes know its
    /// layout, hooks it; otherwise says why, once per file, and counts it.
    fn hook_go(
        &mut self,
        ebpf: &mut Ebpf,
        path: &Path,
        links: &mut Vec<uprobe::Link>,
    ) -> (bool, Option<GoBinary>) {
        let Some(map) = std::fs::File::open(path)
            .ok()
            .and_then(|f| uprobe::Mapped::of(&f).ok())
        else {
            return (false, None);
        };
        let go = match golang::inspect(map.bytes()) {
            Ok(Some(go)) => go,
            Ok(None) => return (false, None),
            Err(e) => {
                self.go_unsupported += 1;
                log::warn!(
                    "Go program {} is not hooked ({}): {e}. Its TLS gives no spans, \
                     and its calls stay roots",
                    exe_name(path),
                    e.reason()
                );
                return (true, None);
            }
        };
        let from = match &go.offsets_from {
            golang::OffsetsFrom::Dwarf => "offsets from its DWARF".to_owned(),
            golang::OffsetsFrom::Table(None) => "offsets from the table".to_owned(),
            golang::OffsetsFrom::Table(Some(why)) => {
                format!("offsets from the table: {why}")
            }
        };
        let tls = go.tls.as_ref().is_some_and(|tls| {
            let release_and_offsets = format!("{}, {from}", go.version);
            self.hook_go_tls(ebpf, path, &release_and_offsets, tls, links)
        });
        let goroutines = match &go.goroutines {
            Ok(g) => self.hook_goroutines(ebpf, path, &go.version, g, links),
            Err(e) => {
                self.go_unsupported += 1;
                log::warn!(
                    "goroutines in {} are not followed ({}): {e}. Its calls stay roots",
                    exe_name(path),
                    e.reason()
                );
                false
            }
        };
        (true, (tls || goroutines).then_some(go))
    }

    /// Attaches `points` (program, file offset) to `path`, all or none: a
    /// half-hooked function would lose its calls. Returns whether it did;
    /// a failure is said of `what`, the functions the points are in.
    fn attach_all(
        &mut self,
        ebpf: &mut Ebpf,
        path: &Path,
        what: &str,
        points: impl IntoIterator<Item = (&'static str, u64)>,
        links: &mut Vec<uprobe::Link>,
    ) -> Option<usize> {
        let mut mine = Vec::new();
        for (name, at) in points {
            let Some(Ok(prog)) = ebpf.program_mut(name).map(<&mut UProbe>::try_from) else {
                return None;
            };
            match self.uprobes.attach_at(prog, path, at) {
                Ok(link) => mine.push(link),
                Err(e) => {
                    self.attach_failed(path, what, &e);
                    return None;
                }
            }
        }
        let n = mine.len();
        links.extend(mine);
        Some(n)
    }

    fn hook_go_tls(
        &mut self,
        ebpf: &mut Ebpf,
        path: &Path,
        // The release, and where the field offsets came from.
        about: &str,
        tls: &golang::TlsMethods,
        links: &mut Vec<uprobe::Link>,
    ) -> bool {
        // Returns first: an entry probe without them would leave calls
        // open.
        let points: Vec<_> = tls
            .read
            .returns
            .iter()
            .chain(&tls.write.returns)
            .map(|&at| (GO_RETURN, at))
            .chain([(GO_READ, tls.read.entry), (GO_WRITE, tls.write.entry)])
            .collect();
        let Some(n) = self.attach_all(ebpf, path, "Go's crypto/tls", points, links) else {
            return false;
        };
        log::info!(
            "hooked Go's crypto/tls in {} ({about}): {n} probes",
            exe_name(path)
        );
        true
    }

    fn hook_goroutines(
        &mut self,
        ebpf: &mut Ebpf,
        path: &Path,
        version: &str,
        g: &golang::Runtime,
        links: &mut Vec<uprobe::Link>,
    ) -> bool {
        // Returns first, as for TLS; and the writer goroutines before the
        // round trips they will write.
        let mut points: Vec<_> = g
            .newproc1
            .returns
            .iter()
            .map(|&at| (GO_NEWPROC1_RETURN, at))
            .chain([(GO_NEWPROC1, g.newproc1.entry)])
            .collect();
        if let Some((round_trip, write_loop)) = g.http_handoff {
            points.extend([(GO_WRITE_LOOP, write_loop), (GO_ROUND_TRIP, round_trip)]);
        }
        let what = "Go's goroutine creation and net/http hand-offs";
        let Some(n) = self.attach_all(ebpf, path, what, points, links) else {
            return false;
        };
        log::info!(
            "following goroutines in {} ({version}{}): {n} probes",
            exe_name(path),
            if g.http_handoff.is_some() {
                ", net/http client hand-offs"
            } else {
                ""
            }
        );
        true
    }

    /// Counts a failed attach; the first refusal says, loudly, that TLS
    /// capture is off and what would turn it on.
    fn attach_failed(&mut self, path: &Path, function: &str, e: &AttachError) {
        self.failed += 1;
        match e {
            AttachError::Refused(why) if !self.warned_off => {
                self.warned_off = true;
                log::warn!(
                    "TLS capture is OFF: cannot attach uprobes to {function} in {}: {why}. \
                     HTTPS and other TLS traffic gives no spans. Fix: grant CAP_SYS_ADMIN, or \
                     mount tracefs read-write at /sys/kernel/tracing (the DaemonSet does) and \
                     grant CAP_PERFMON",
                    path.display()
                );
            }
            AttachError::Refused(_) => {}
            AttachError::Failed(why) => {
                log::warn!(
                    "cannot attach a TLS probe to {function} in {}: {why}",
                    path.display()
                )
            }
        }
    }

    pub fn hook_system_libraries(&mut self, ebpf: &mut Ebpf) {
        for path in SYSTEM_LIBRARIES {
            self.hook(ebpf, Path::new(path), None, false);
        }
    }

    /// A traced process forked: its child maps what it maps.
    pub fn inherit(&mut self, parent: u32, child: u32) {
        let Some(ids) = self.by_pid.get(&parent).cloned() else {
            return;
        };
        for id in &ids {
            if let Some(file) = self.files.get_mut(id) {
                file.users.insert(child);
                file.unused_since = None;
            }
        }
        self.by_pid.insert(child, ids);
    }

    /// A traced process is gone, or replaced its image (exec): it no
    /// longer maps what it did.
    pub fn forget_process(&mut self, pid: u32) {
        for id in self.by_pid.remove(&pid).unwrap_or_default() {
            if let Some(file) = self.files.get_mut(&id) {
                file.users.remove(&pid);
                if file.users.is_empty() {
                    file.unused_since = Some(Instant::now());
                }
            }
        }
    }

    /// Detaches the probes of files no traced process has mapped for
    /// [`RELEASE_AFTER`]. Before that, `traced` (every traced pid, from the
    /// probes' own map) is checked through `/proc`: a process whose fork
    /// the agent missed still counts. Returns the probes, to be dropped
    /// off the event path (each detach waits for an RCU grace period).
    pub fn release_unused(&mut self, traced: &[u32]) -> Vec<uprobe::Link> {
        let due: Vec<(u64, u64)> = self
            .files
            .iter()
            .filter(|(_, f)| {
                !f.system
                    && !f.links.is_empty()
                    && f.unused_since.is_some_and(|t| t.elapsed() >= RELEASE_AFTER)
            })
            .map(|(id, _)| *id)
            .collect();
        let mut links = Vec::new();
        for id in due {
            if traced.len() > MAX_CHECKED {
                break;
            }
            if let Some(&pid) = traced.iter().find(|&&pid| maps_file(pid, id)) {
                let file = self.files.get_mut(&id).expect("present");
                file.users.insert(pid);
                file.unused_since = None;
                self.by_pid.entry(pid).or_default().insert(id);
                continue;
            }
            let file = self.files.remove(&id).expect("present");
            log::info!(
                "released the TLS probes in {}: no traced process maps it",
                file.path.display()
            );
            links.extend(file.links);
        }
        if self.files.len() > MAX_FILES {
            self.files
                .retain(|_, f| f.system || !f.links.is_empty() || !f.users.is_empty());
        }
        links
    }

    pub fn counts(&self) -> Counts {
        Counts {
            files_hooked: self.files.values().filter(|f| !f.links.is_empty()).count(),
            processes_known: self.by_pid.len(),
            attach_failed: self.failed,
            go_binaries_hooked: self.files.values().filter(|f| f.go.is_some()).count(),
            go_binaries_unsupported: self.go_unsupported,
        }
    }

    /// Hooks what `pid` maps now: its TLS libraries, and its executable
    /// (Node.js links OpenSSL statically and exports its functions; Go has
    /// its own TLS).
    pub fn hook_process(&mut self, ebpf: &mut Ebpf, pid: u32) -> Hooked {
        let mut out = Hooked::default();
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        for path in candidates(pid) {
            let Some(id) = self.hook(ebpf, &path, Some(pid), path == exe) else {
                continue;
            };
            self.by_pid.entry(pid).or_default().insert(id);
            if path != exe {
                continue;
            }
            let Some(file) = self.files.get(&id) else {
                continue;
            };
            out.go_runtime = file.go_runtime;
            out.event_loop = file.event_loop;
            match &file.go {
                Some(go) => {
                    let load = if go.is_pie() {
                        load_address(pid, id)
                    } else {
                        None
                    };
                    out.go = go.proc_info(load);
                    if out.go.is_none() {
                        log::warn!("pid {pid}: where its Go executable is loaded is not known");
                    }
                }
                None => out.openssl_in_exe = !file.links.is_empty(),
            }
        }
        out
    }

    /// Detaches everything (side by side, like the tracepoints).
    pub fn take_links(&mut self) -> Vec<uprobe::Link> {
        self.by_pid.clear();
        self.files.drain().flat_map(|(_, f)| f.links).collect()
    }
}

/// Where `pid` maps the start of the file `(dev, ino)`: its first mapping
/// at file offset 0.
fn load_address(pid: u32, (dev, ino): (u64, u64)) -> Option<u64> {
    let wanted = format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev));
    let ino = ino.to_string();
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let offset = f.nth(1)?;
            let (device, inode) = (f.next()?, f.next()?);
            (offset.trim_start_matches('0').is_empty() && device == wanted && inode == ino)
                .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())
                .flatten()
        })
}

/// A file's name for the log: the program's, through `/proc/PID/exe`.
fn exe_name(path: &Path) -> String {
    std::fs::read_link(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// Does `pid` map the file `(dev, ino)`, as its executable or a mapping?
fn maps_file(pid: u32, (dev, ino): (u64, u64)) -> bool {
    if std::fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| (m.dev(), m.ino()) == (dev, ino))
    {
        return true;
    }
    // /proc/PID/maps names the device as major:minor in hex.
    let wanted = format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev));
    let ino = ino.to_string();
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split_whitespace().skip(3);
            f.next() == Some(wanted.as_str()) && f.next() == Some(ino.as_str())
        })
}

/// The files in `pid`'s memory that may hold TLS functions, as paths this
/// agent can open: through `/proc/PID/root` (containers' files too), or
/// `/proc/PID/map_files` for a library replaced on disk since it was
/// loaded (an upgrade), whose old file only the mapping still reaches.
fn candidates(pid: u32) -> Vec<PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut out: Vec<PathBuf> = maps.lines().filter_map(|l| tls_library(pid, l)).collect();
    out.push(PathBuf::from(format!("/proc/{pid}/exe")));
    out.sort();
    out.dedup();
    out
}

/// The path to hook for one line of `/proc/PID/maps`, if it maps a TLS
/// library (`libssl.so.3`, a wheel's `libssl-1a2b3c.so.3`, `libgnutls.so.30`).
fn tls_library(pid: u32, line: &str) -> Option<PathBuf> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let path = fields.nth(4)?.trim_start();
    let name = path.rsplit('/').next()?;
    if !(name.starts_with("libssl") || name.starts_with("libgnutls")) || !name.contains(".so") {
        return None;
    }
    Some(match path.strip_suffix(" (deleted)") {
        Some(_) => PathBuf::from(format!("/proc/{pid}/map_files/{range}")),
        None => PathBuf::from(format!("/proc/{pid}/root{path}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_maps_its_executable_and_libraries_and_nothing_else() {
        let me = std::process::id();
        let id = |p: &str| {
            let m = std::fs::metadata(p).unwrap();
            (m.dev(), m.ino())
        };
        assert!(maps_file(me, id("/proc/self/exe")));
        // A library this test binary maps, found through /proc/PID/maps.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .expect("libc is mapped");
        assert!(maps_file(me, id(libc)));
        assert!(!maps_file(me, id("/etc/hostname")));
    }

    #[test]
    fn maps_lines_name_the_libraries_to_hook() {
        let line =
            |path: &str| format!("7f3a549c6000-7f3a549e0000 r-xp 00000000 08:01 1234    {path}");
        assert_eq!(
            tls_library(7, &line("/usr/lib/x86_64-linux-gnu/libssl.so.3")),
            Some(PathBuf::from(
                "/proc/7/root/usr/lib/x86_64-linux-gnu/libssl.so.3"
            ))
        );
        assert_eq!(
            tls_library(
                7,
                &line("/venv/lib/python3.11/site-packages/x.libs/libssl-1a2b.so.3")
            ),
            Some(PathBuf::from(
                "/proc/7/root/venv/lib/python3.11/site-packages/x.libs/libssl-1a2b.so.3"
            ))
        );
        assert_eq!(
            tls_library(7, &line("/usr/lib/libgnutls.so.30.34.3 (deleted)")),
            Some(PathBuf::from("/proc/7/map_files/7f3a549c6000-7f3a549e0000"))
        );
        assert_eq!(tls_library(7, &line("/usr/lib/libcrypto.so.3")), None);
        assert_eq!(tls_library(7, &line("/usr/bin/libssl-notes.txt")), None);
        assert_eq!(
            tls_library(7, "7f3a549c6000-7f3a549e0000 rw-p 00000000 00:00 0"),
            None
        );
    }
}
