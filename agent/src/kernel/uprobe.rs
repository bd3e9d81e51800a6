//! Attaching uprobe programs to library functions, with the capabilities
//! the agent is deployed with.
//!
//! aya attaches through perf's `uprobe` PMU, which this kernel (6.18) grants
//! only to CAP_SYS_ADMIN, not to CAP_PERFMON. The older route needs only
//! CAP_PERFMON and a writable tracefs (the DaemonSet mounts the host's):
//! define the probe in tracefs's `uprobe_events`, open it as a tracepoint
//! with `perf_event_open`, and set the program on it. The agent tries the
//! PMU first and takes the tracefs route once the PMU refuses; if both are
//! refused it says so once, loudly, and counts every failed attach.
//!
//! Probes defined in tracefs outlive a killed agent, so each agent's live
//! in a group named by its pid, and the groups of agents that are gone are
//! removed at start.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::{self, Write as _},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::{
    uprobe::{UProbeAttachLocation, UProbeError, UProbeLink, UProbeScope},
    ProbeKind, ProgramError, UProbe,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// Where the agent finds tracefs (the preflight mounts it there if it can).
const TRACEFS: &str = "/sys/kernel/tracing";
/// The prefix of every tracefs group this agent's probes live in.
const GROUP_PREFIX: &str = "zerospan_";

/// One attached probe; dropping it detaches the program.
// The fields are held only to be dropped.
#[allow(dead_code)]
pub enum Link {
    Pmu(UProbeLink),
    Tracefs(TracefsLink),
}

/// A probe defined in tracefs: the perf event carrying the program, then
/// the definition, removed in that order (the kernel refuses to remove a
/// probe that is still open).
pub struct TracefsLink {
    perf: Option<OwnedFd>,
    /// `group/event`, as `uprobe_events` names it.
    name: String,
}

impl Drop for TracefsLink {
    fn drop(&mut self) {
        drop(self.perf.take());
        if let Err(e) = write_events(&format!("-:{}\n", self.name)) {
            log::debug!("removing uprobe {}: {e}", self.name);
        }
    }
}

/// Why an attach failed, for the caller's accounting.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Neither route is open to the agent's capabilities.
    #[error("{0}")]
    Refused(String),
    /// Anything else: this function in this file could not be probed.
    #[error("{0}")]
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Pmu,
    Tracefs,
    /// Both refused: nothing more is tried.
    None,
}

pub struct Uprobes {
    route: Route,
}

impl Uprobes {
    /// Starts with the PMU; first removes the tracefs probes that agents
    /// which are gone left behind.
    pub fn new() -> Self {
        remove_stale_groups();
        Uprobes { route: Route::Pmu }
    }
}

/// The offsets of the functions wanted in one file, read once (and only
/// on the tracefs route): one walk of its symbols for all of them.
pub struct Symbols<'a> {
    path: &'a Path,
    wanted: &'a [&'a str],
    offsets: Option<Result<HashMap<String, u64>, String>>,
}

impl<'a> Symbols<'a> {
    pub fn of(path: &'a Path, wanted: &'a [&'a str]) -> Self {
        Symbols {
            path,
            wanted,
            offsets: None,
        }
    }

    fn offset(&mut self, symbol: &str) -> Result<Option<u64>, String> {
        let (path, wanted) = (self.path, self.wanted);
        let offsets = self
            .offsets
            .get_or_insert_with(|| function_offsets(path, |name| wanted.contains(&name)));
        match offsets {
            Ok(map) => Ok(map.get(symbol).copied()),
            Err(e) => Err(e.clone()),
        }
    }
}

/// Whether the kernel (or tracefs) refuses the route itself, rather than
/// this one probe.
fn is_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
        || e.kind() == io::ErrorKind::PermissionDenied
}

impl Uprobes {
    /// Attaches `prog` to `symbol` in the file. `Ok(None)`: the file has no
    /// such function, which is expected (OpenSSL has no `gnutls_*`).
    pub fn attach(
        &mut self,
        prog: &mut UProbe,
        symbol: &str,
        file: &mut Symbols<'_>,
    ) -> Result<Option<Link>, AttachError> {
        let path = file.path;
        self.attach_with(prog, path, symbol.into(), || file.offset(symbol))
    }

    /// Attaches `prog` at file offset `offset` of `path` (an instruction
    /// the caller found, not a symbol).
    pub fn attach_at(
        &mut self,
        prog: &mut UProbe,
        path: &Path,
        offset: u64,
    ) -> Result<Link, AttachError> {
        self.attach_with(prog, path, offset.into(), || Ok(Some(offset)))?
            .ok_or_else(|| AttachError::Failed(format!("no offset {offset:#x}")))
    }

    /// Through the PMU while it is open, else through tracefs, at the
    /// file offset `offset` gives.
    fn attach_with(
        &mut self,
        prog: &mut UProbe,
        path: &Path,
        location: UProbeAttachLocation<'_>,
        offset: impl FnOnce() -> Result<Option<u64>, String>,
    ) -> Result<Option<Link>, AttachError> {
        if self.route == Route::Pmu {
            match prog.attach(location, path, UProbeScope::AllProcesses) {
                Ok(id) => {
                    return prog
                        .take_link(id)
                        .map(|l| Some(Link::Pmu(l)))
                        .map_err(|e| AttachError::Failed(e.to_string()))
                }
                Err(ProgramError::UProbeError(UProbeError::SymbolError { .. })) => return Ok(None),
                Err(ProgramError::SyscallError(e)) if is_refusal(&e.io_error) => {
                    log::info!(
                        "perf's uprobe PMU is refused ({}): TLS probes attach through \
                         {TRACEFS}/uprobe_events instead (CAP_PERFMON and a writable tracefs)",
                        e.io_error
                    );
                    self.route = Route::Tracefs;
                }
                Err(e) => return Err(AttachError::Failed(format!("{e}"))),
            }
        }
        if self.route == Route::None {
            return Err(AttachError::Refused("no uprobe route is open".into()));
        }
        let Some(offset) = offset().map_err(AttachError::Failed)? else {
            return Ok(None);
        };
        let ret = matches!(prog.kind(), ProbeKind::Return);
        match attach_tracefs(prog, path, offset, ret) {
            Ok(link) => Ok(Some(Link::Tracefs(link))),
            Err(e) if is_refusal(&e) => {
                self.route = Route::None;
                Err(AttachError::Refused(format!(
                    "perf's uprobe PMU needs CAP_SYS_ADMIN, and the tracefs route was refused \
                     too ({e})"
                )))
            }
            Err(e) => Err(AttachError::Failed(e.to_string())),
        }
    }
}

static NEXT_EVENT: AtomicU32 = AtomicU32::new(0);

fn group() -> String {
    format!("{GROUP_PREFIX}{}", std::process::id())
}

fn write_events(line: &str) -> io::Result<()> {
    // Append only: opening uprobe_events with O_TRUNC would remove every
    // probe on the host.
    let mut events = OpenOptions::new()
        .append(true)
        .open(format!("{TRACEFS}/uprobe_events"))
        // However it fails (read-only, absent, not ours), the route is shut.
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    events.write_all(line.as_bytes())
}

/// Defines the probe in tracefs, opens it, and sets the program on it.
fn attach_tracefs(prog: &UProbe, path: &Path, offset: u64, ret: bool) -> io::Result<TracefsLink> {
    let event = format!("p{}", NEXT_EVENT.fetch_add(1, Ordering::Relaxed));
    let name = format!("{}/{event}", group());
    // tracefs splits the definition at spaces.
    let target = path.to_str().filter(|p| !p.contains(char::is_whitespace));
    let Some(target) = target else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} cannot be named in uprobe_events", path.display()),
        ));
    };
    let kind = if ret { 'r' } else { 'p' };
    write_events(&format!("{kind}:{name} {target}:{offset:#x}\n"))?;
    // From here the definition exists: dropping the link removes it.
    let mut link = TracefsLink { perf: None, name };
    let id: u64 = std::fs::read_to_string(format!("{TRACEFS}/events/{}/id", link.name))?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("event id: {e}")))?;
    let perf = perf_event_open_tracepoint(id)?;
    let prog_fd = prog
        .fd()
        .map_err(|e| io::Error::other(e.to_string()))?
        .as_fd()
        .as_raw_fd();
    // SAFETY: ioctls on a perf event fd we own, with a program fd argument.
    unsafe {
        if libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog_fd) != 0
            || libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    link.perf = Some(perf);
    Ok(link)
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER5` (Linux 4.1): the
/// fields this route sets, and zeros for the rest.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved: u16,
}

/// The tracepoint `id` on every CPU's tasks (cpu 0 only names the buffer;
/// a program set on the event runs wherever the probe fires).
fn perf_event_open_tracepoint(id: u64) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        wakeup_events: 1,
        ..Default::default()
    };
    open_event(&attr)
}

/// `perf_event_open` for every task, its buffer on cpu 0.
fn open_event(attr: &PerfEventAttr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` (and any path it points to) outlives the call; pid -1
    // with cpu 0.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            -1i32,
            0i32,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The file offsets of the functions an ELF file defines that `keep`
/// accepts (only those are copied out: Node.js's executable has tens of
/// thousands), as uprobes want them: each symbol's address translated
/// through its section.
fn function_offsets(
    path: &Path,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<HashMap<String, u64>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let map = Mapped::of(&file).map_err(|e| format!("{}: {e}", path.display()))?;
    let obj = object::File::parse(map.bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    let translate = matches!(
        obj.kind(),
        object::ObjectKind::Dynamic | object::ObjectKind::Executable
    );
    let mut out = HashMap::new();
    for sym in obj.dynamic_symbols().chain(obj.symbols()) {
        let (Ok(name), Some(index)) = (sym.name(), sym.section_index()) else {
            continue;
        };
        if sym.kind() != object::SymbolKind::Text || out.contains_key(name) || !keep(name) {
            continue;
        }
        let offset = if translate {
            let Ok(section) = obj.section_by_index(index) else {
                continue;
            };
            let Some((file_offset, _)) = section.file_range() else {
                continue;
            };
            let Some(into) = sym.address().checked_sub(section.address()) else {
                continue;
            };
            file_offset + into
        } else {
            sym.address()
        };
        out.insert(name.to_owned(), offset);
    }
    Ok(out)
}

/// A read-only mapping of a whole file (Node.js's executable is ~100 MB:
/// mapped, not read).
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    pub fn of(file: &std::fs::File) -> io::Result<Mapped> {
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty file"));
        }
        // SAFETY: a private read-only mapping of a file we hold open.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping lives as long as self and is `len` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `of` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Removes the tracefs probes of agents that are gone (killed before they
/// could remove their own).
fn remove_stale_groups() {
    let Ok(defined) = std::fs::read_to_string(format!("{TRACEFS}/uprobe_events")) else {
        return;
    };
    let mut removed = 0;
    for name in stale(&defined, |pid| Path::new(&format!("/proc/{pid}")).exists()) {
        if write_events(&format!("-:{name}\n")).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        log::info!("removed {removed} uprobes left in tracefs by agents that are gone");
    }
}

/// The `group/event` names in `uprobe_events` text whose agent pid is not
/// alive.
fn stale(defined: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    defined
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.split_once(':'))
        .map(|(_, name)| name)
        .filter(|name| {
            let pid = name
                .strip_prefix(GROUP_PREFIX)
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(pid, _)| pid.parse().ok());
            pid.is_some_and(|pid| !alive(pid))
        })
        .map(str::to_owned)
        .collect()
}

/// Can this process attach uprobes at all, and how? For `doctor`: tries
/// the PMU on its own executable (an event opened and closed, no program,
/// nothing left behind), else checks that `uprobe_events` is writable.
pub fn route_report() -> Result<&'static str, String> {
    let exe = PathBuf::from("/proc/self/exe");
    let pmu = pmu_open(&exe);
    match pmu {
        Ok(()) => Ok("perf's uprobe PMU"),
        Err(e) if !is_refusal(&e) => Err(format!("perf's uprobe PMU: {e}")),
        Err(_) => {
            let events = std::ffi::CString::new(format!("{TRACEFS}/uprobe_events"))
                .expect("no NUL in the path");
            // SAFETY: a valid path; access(2) changes nothing.
            if unsafe { libc::access(events.as_ptr(), libc::W_OK) } == 0 {
                Ok("tracefs uprobe_events (perf's uprobe PMU needs CAP_SYS_ADMIN)")
            } else {
                Err(format!(
                    "perf's uprobe PMU needs CAP_SYS_ADMIN, and {TRACEFS}/uprobe_events is not \
                     writable ({})",
                    io::Error::last_os_error()
                ))
            }
        }
    }
}

/// Opens (and closes) a uprobe PMU event on the start of `exe`'s text.
fn pmu_open(exe: &Path) -> io::Result<()> {
    let ty: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}")))?;
    // Any one function will do: the first the walk finds.
    let mut first = true;
    let offset = function_offsets(exe, |_| std::mem::take(&mut first))
        .map_err(io::Error::other)?
        .into_values()
        .next()
        .ok_or_else(|| io::Error::other("no function to probe"))?;
    let path = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = PerfEventAttr {
        type_: ty,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        // config1: the path; config2: the offset (the uprobe PMU's format).
        config1: path.as_ptr() as u64,
        config2: offset,
        ..Default::default()
    };
    // Opened and closed at once: only whether the kernel allows it counts.
    open_event(&attr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gone_agents_probes_are_stale() {
        let defined = "p:zerospan_100/p0 /usr/lib/libssl.so.3:0x0000000000031a40\n\
                       r:zerospan_100/p1 /usr/lib/libssl.so.3:0x0000000000031a40\n\
                       p:zerospan_200/p0 /usr/lib/libssl.so.3:0x0000000000031a40\n\
                       p:someone_else/x /bin/true:0x10\n";
        assert_eq!(
            stale(defined, |pid| pid == 200),
            ["zerospan_100/p0", "zerospan_100/p1"]
        );
    }

    /// An offset is where the function really is: mapped into this very
    /// process, the file offset of libc's `write` lands on `libc::write`.
    #[test]
    fn function_offsets_are_where_the_functions_are_mapped() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc_lines: Vec<Vec<&str>> = maps
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() == 6 && f[5].contains("libc.so"))
            .collect();
        let path = PathBuf::from(libc_lines[0][5]);
        let offset = function_offsets(&path, |name| name == "write").unwrap()["write"];
        let mapped = libc_lines.iter().find_map(|f| {
            let (start, end) = f[0].split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            let file_start = u64::from_str_radix(f[2], 16).ok()?;
            let into = offset.checked_sub(file_start)?;
            (into < end - start).then_some(start + into)
        });
        let write: unsafe extern "C" fn(i32, *const libc::c_void, usize) -> isize = libc::write;
        assert_eq!(mapped, Some(write as usize as u64));
    }
}
