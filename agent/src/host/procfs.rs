//! Reading what the kernel tells us about processes and sockets in `/proc`.
//!
//! The parsing functions are pure and tested on recorded text; the thin
//! readers around them do the I/O and treat a vanished process as `None`.

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

/// TCP state `LISTEN` in `/proc/net/tcp`.
pub const TCP_LISTEN: u8 = 0x0A;

/// One row of `/proc/PID/net/tcp{,6}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            // Four 32-bit words, each printed in host (little-endian) order.
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses the text of `/proc/net/tcp` or `/proc/net/tcp6`, skipping bad rows.
pub fn parse_tcp_table(text: &str) -> Vec<TcpRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(TcpRow {
                local: parse_hex_addr(f.get(1)?)?,
                remote: parse_hex_addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The TCP sockets visible in `pid`'s network namespace, by inode.
pub fn tcp_sockets(pid: u32) -> HashMap<u64, TcpRow> {
    let mut out = HashMap::new();
    for file in ["tcp", "tcp6"] {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
            for row in parse_tcp_table(&text) {
                out.insert(row.inode, row);
            }
        }
    }
    out
}

/// The socket inode behind `pid`'s `fd`, if it is a socket.
pub fn socket_inode(pid: u32, fd: i32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    parse_socket_link(link.to_str()?)
}

fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The thread ids of `pid`.
pub fn threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every socket fd `pid` holds, with its inode.
pub fn socket_fds(pid: u32) -> Vec<(i32, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: i32 = e.file_name().to_str()?.parse().ok()?;
        let inode = parse_socket_link(fs::read_link(e.path()).ok()?.to_str()?)?;
        Some((fd, inode))
    })
    .collect()
}

/// Looks up the local address of `pid`'s socket `fd`.
pub fn local_addr(pid: u32, fd: i32) -> Option<SocketAddr> {
    let inode = socket_inode(pid, fd)?;
    tcp_sockets(pid).get(&inode).map(|r| r.local)
}

/// What spans' resources need to know about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessMeta {
    pub executable_name: String,
    pub executable_path: Option<String>,
    pub command_line: String,
    /// `OTEL_SERVICE_NAME` from the process's own environment.
    pub service_name: Option<String>,
    /// Its container, from `/proc/PID/cgroup`.
    pub container: crate::host::container::Container,
}

/// Joins a NUL-separated `/proc/PID/cmdline` into one line.
pub fn parse_cmdline(raw: &[u8]) -> String {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Finds `name` in a NUL-separated `/proc/PID/environ`.
pub fn env_value(raw: &[u8], name: &str) -> Option<String> {
    raw.split(|&b| b == 0).find_map(|kv| {
        let rest = kv.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        (!rest.is_empty()).then(|| String::from_utf8_lossy(rest).into_owned())
    })
}

/// Reads a live process's metadata; `None` once it has exited.
pub fn process_meta(pid: u32) -> Option<ProcessMeta> {
    let base = format!("/proc/{pid}");
    let cmdline = fs::read(format!("{base}/cmdline")).ok()?;
    let exe = fs::read_link(format!("{base}/exe")).ok();
    let comm = fs::read_to_string(format!("{base}/comm")).ok()?;
    let executable_name = exe
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(" (deleted)").to_owned())
        .unwrap_or_else(|| comm.trim().to_owned());
    let environ = fs::read(format!("{base}/environ")).unwrap_or_default();
    Some(ProcessMeta {
        executable_name,
        executable_path: exe.map(|p| p.display().to_string()),
        command_line: parse_cmdline(&cmdline),
        service_name: env_value(&environ, "OTEL_SERVICE_NAME"),
        container: crate::host::container::parse(
            &fs::read_to_string(format!("{base}/cgroup")).unwrap_or_default(),
        ),
    })
}

/// Parent pid from the text of `/proc/PID/stat` (comm may hold spaces and parens).
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and every process descended from them, as of now.
pub fn with_descendants(roots: &[u32]) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| parse_stat_ppid(&s))
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for &(pid, ppid) in &parent_of {
            if ppid == p && !out.contains(&pid) {
                out.push(pid);
            }
        }
        i += 1;
    }
    out
}

/// Every process now, by its `/proc` entry.
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The process (thread group) task `pid` belongs to: itself for a
/// process, another for a thread.
pub fn tgid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_tgid(&status)
}

fn parse_status_tgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

pub fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The host's name, as `uname -n` reports it.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Where a filesystem of `fs_type` is mounted, from `/proc/mounts` text.
pub fn mounted(fs_type: &str, mounts: &str) -> Option<String> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&fs_type)).then(|| f.get(1).map(|s| s.to_string()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D43A 01 00000000:00000000 00:00000000 00000000     0        0 31338 1 0000000000000000 20 4 30 10 -1
   2: garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 0 10 -1
   1: 0000000000000000FFFF00000100007F:1F92 0000000000000000FFFF00000100007F:C351 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 0 10 -1
";

    #[test]
    fn parses_ipv4_rows_and_skips_garbage() {
        let rows = parse_tcp_table(TCP);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(rows[0].state, TCP_LISTEN);
        assert_eq!(rows[1].remote, "127.0.0.1:54330".parse().unwrap());
        assert_eq!(rows[1].inode, 31338);
    }

    #[test]
    fn parses_ipv6_and_mapped_rows() {
        let rows = parse_tcp_table(TCP6);
        assert_eq!(rows[0].local, "[::1]:8081".parse().unwrap());
        assert_eq!(rows[0].remote, "[::1]:50000".parse().unwrap());
        assert_eq!(rows[1].local, "127.0.0.1:8082".parse().unwrap());
    }

    #[test]
    fn stat_ppid_survives_odd_comms() {
        assert_eq!(parse_stat_ppid("42 (my (odd) name) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[123]"), Some(123));
        assert_eq!(parse_socket_link("pipe:[123]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    #[test]
    fn cmdline_and_environ() {
        assert_eq!(
            parse_cmdline(b"python3\0-m\0http.server\0"),
            "python3 -m http.server"
        );
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0OTEL_SERVICE_NAME_X=no\0";
        assert_eq!(
            env_value(env, "OTEL_SERVICE_NAME").as_deref(),
            Some("checkout")
        );
        assert_eq!(
            env_value(b"OTEL_SERVICE_NAME=\0", "OTEL_SERVICE_NAME"),
            None
        );
        assert_eq!(env_value(b"", "OTEL_SERVICE_NAME"), None);
    }

    #[test]
    fn a_task_names_its_thread_group() {
        assert_eq!(
            parse_status_tgid("Name:\tgo\nTgid:\t41\nPid:\t43\n"),
            Some(41)
        );
        assert_eq!(parse_status_tgid("Name:\tgo\n"), None);
        assert_eq!(tgid_of(std::process::id()), Some(std::process::id()));
    }
}
