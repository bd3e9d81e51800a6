//! Hooking TLS libraries: finding the OpenSSL or GnuTLS a traced process
//! uses, and attaching the probes' uprobes to its read and write
//! functions, once per library file (the kernel shares a uprobe among
//! every process that maps the file; the programs filter by traced tgid).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    programs::{
        uprobe::{UProbeLink, UProbeScope},
        UProbe,
    },
    Ebpf,
};

/// Each program, and the library functions it is attached to. OpenSSL's
/// `SSL_write(ssl, buf, num)` and GnuTLS's `gnutls_record_send(session,
/// data, size)` take the same arguments and return the bytes moved, so
/// they share programs; the `_ex` forms report the count through a pointer.
/// Return probes come first: attached to a live process, an entry probe
/// without its return probe would leave a call open.
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
    ("tls_set_fd", &["SSL_set_fd"]),
];

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

/// Loads the TLS programs into the kernel (they attach later, per file).
pub fn load(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    for (name, _) in HOOKS {
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
/// functions), and the traced processes that map it.
struct File {
    path: PathBuf,
    links: Vec<UProbeLink>,
    users: HashSet<u32>,
    /// A system library hooked at start: kept for processes that load it
    /// later, whoever maps it now.
    system: bool,
}

/// The files looked at so far, by (device, inode); what each traced
/// process maps. A file no traced process maps any more is released: its
/// probes detach, and a process that maps it later has it looked at again.
#[derive(Default)]
pub struct TlsHooks {
    files: HashMap<(u64, u64), File>,
    by_pid: HashMap<u32, HashSet<(u64, u64)>>,
}

impl TlsHooks {
    /// Hooks the TLS functions `path` holds, unless its file was looked at
    /// before; `pid` (if any) maps it. Returns the file's id.
    fn hook(&mut self, ebpf: &mut Ebpf, path: &Path, pid: Option<u32>) -> Option<(u64, u64)> {
        let meta = std::fs::metadata(path).ok()?;
        let id = (meta.dev(), meta.ino());
        if let Some(file) = self.files.get_mut(&id) {
            file.users.extend(pid);
            return Some(id);
        }
        let mut links = Vec::new();
        let mut hooked = 0;
        for (name, symbols) in HOOKS {
            let Some(Ok(prog)) = ebpf.program_mut(name).map(<&mut UProbe>::try_from) else {
                continue;
            };
            for symbol in *symbols {
                // A file without this function (OpenSSL has no gnutls_*)
                // fails here, which is expected.
                if let Ok(link) = prog.attach(*symbol, path, UProbeScope::AllProcesses) {
                    if let Ok(link) = prog.take_link(link) {
                        links.push(link);
                        // Functions, not probes: a return probe's entry
                        // twin counts for both.
                        hooked += usize::from(!name.ends_with("_ret"));
                    }
                }
            }
        }
        if hooked > 0 {
            log::info!("hooked {hooked} TLS functions in {}", path.display());
        }
        // Remembered even when empty: an executable without TLS functions
        // is not searched again while a traced process maps it.
        self.files.insert(
            id,
            File {
                path: path.to_owned(),
                links,
                users: pid.into_iter().collect(),
                system: pid.is_none(),
            },
        );
        Some(id)
    }

    pub fn hook_system_libraries(&mut self, ebpf: &mut Ebpf) {
        for path in SYSTEM_LIBRARIES {
            self.hook(ebpf, Path::new(path), None);
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
            }
        }
        self.by_pid.insert(child, ids);
    }

    /// A traced process is gone: the files only it mapped are released.
    /// Returns their probes, to be dropped (each detach waits for an RCU
    /// grace period: not on the event path).
    pub fn release_process(&mut self, pid: u32) -> Vec<UProbeLink> {
        let mut links = Vec::new();
        for id in self.by_pid.remove(&pid).unwrap_or_default() {
            let Some(file) = self.files.get_mut(&id) else {
                continue;
            };
            file.users.remove(&pid);
            if file.users.is_empty() && !file.system {
                let file = self.files.remove(&id).expect("present");
                if !file.links.is_empty() {
                    log::info!(
                        "released the TLS probes in {}: no traced process maps it",
                        file.path.display()
                    );
                }
                links.extend(file.links);
            }
        }
        links
    }

    /// Hooks what `pid` maps now: its TLS libraries, and its executable
    /// (Node.js links OpenSSL statically and exports its functions).
    /// Returns whether the executable itself holds TLS functions.
    pub fn hook_process(&mut self, ebpf: &mut Ebpf, pid: u32) -> bool {
        let mut exe_hooked = false;
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        for path in candidates(pid) {
            let Some(id) = self.hook(ebpf, &path, Some(pid)) else {
                continue;
            };
            self.by_pid.entry(pid).or_default().insert(id);
            if path == exe {
                exe_hooked = self.files.get(&id).is_some_and(|f| !f.links.is_empty());
            }
        }
        exe_hooked
    }

    /// Detaches everything (side by side, like the tracepoints).
    pub fn take_links(&mut self) -> Vec<UProbeLink> {
        self.by_pid.clear();
        self.files.drain().flat_map(|(_, f)| f.links).collect()
    }
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
