//! Attaching the probes that write `traceparent` into outgoing requests
//! (`--context-propagation=headers`): a `sock_ops` program on a cgroup v2,
//! which hands the traced processes' connections to an `sk_msg` program.
//! What they do is in the probes' `propagate` module and ARCHITECTURE.md.

use std::{fs::File, path::PathBuf};

use anyhow::{bail, Context as _};
use aya::{
    maps::SockHash,
    programs::{CgroupAttachMode, SkMsg, SockOps},
    Ebpf,
};

use crate::host::procfs;

/// Where the header may be written.
#[derive(Clone, Debug)]
pub struct PropagationSettings {
    /// A cgroup v2 directory; `None`: the hierarchy's root.
    pub cgroup: Option<PathBuf>,
    /// The root sampler's bound, for the traces the probes start.
    pub sample_bound: u64,
}

/// The cgroup to attach to: the one asked for, checked to be a cgroup v2
/// directory, or the root of the cgroup v2 hierarchy.
pub fn cgroup_dir(asked: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let root = procfs::mounted("cgroup2", &mounts).map(PathBuf::from);
    match (asked, root) {
        (Some(dir), Some(root)) => {
            let dir = dir
                .canonicalize()
                .with_context(|| format!("--propagation-cgroup {}", dir.display()))?;
            if !dir.starts_with(&root) {
                bail!(
                    "--propagation-cgroup {} is not inside the cgroup v2 hierarchy ({})",
                    dir.display(),
                    root.display()
                );
            }
            Ok(dir)
        }
        (None, Some(root)) => Ok(root),
        (_, None) => bail!("no cgroup v2 hierarchy is mounted"),
    }
}

/// The two programs: the sk_msg that writes the header, and the sock_ops
/// that puts sockets in its map.
pub const PROGRAMS: [&str; 2] = ["tx_inject", "tx_sockops"];

/// Loads and attaches both programs. Dropping the `Ebpf` detaches them.
pub fn attach(ebpf: &mut Ebpf, cgroup: &PathBuf) -> anyhow::Result<()> {
    let socks: SockHash<_, u64> = SockHash::try_from(
        ebpf.map("TX_SOCKS")
            .context("map TX_SOCKS missing from the eBPF object")?,
    )?;
    let socks_fd = socks.fd().try_clone()?;
    let msg: &mut SkMsg = ebpf
        .program_mut(PROGRAMS[0])
        .context("program tx_inject missing from the eBPF object")?
        .try_into()?;
    msg.load()
        .context("the kernel verifier rejected tx_inject (sk_msg)")?;
    msg.attach(&socks_fd)
        .context("attaching tx_inject to its socket map")?;
    let ops: &mut SockOps = ebpf
        .program_mut(PROGRAMS[1])
        .context("program tx_sockops missing from the eBPF object")?
        .try_into()?;
    ops.load()
        .context("the kernel verifier rejected tx_sockops (sock_ops)")?;
    let dir = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    // A bpf_link: other programs on the same cgroup keep running (the
    // kernel refuses attach flags on links; they are all "multi").
    ops.attach(dir, CgroupAttachMode::Single)
        .with_context(|| format!("attaching tx_sockops to cgroup {}", cgroup.display()))?;
    log::info!(
        "writing traceparent into the HTTP/1 requests of traced processes in cgroup {}",
        cgroup.display()
    );
    Ok(())
}
