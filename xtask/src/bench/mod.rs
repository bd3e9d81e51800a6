//! `cargo xtask bench`: each workload without and then with the agent, in
//! alternating rounds on this machine, medians reported side by side.

mod db;
mod go;
mod h2;
pub(crate) mod harness;
mod http;
mod programs;
mod rate;
mod uprobe;

use std::path::Path;

use anyhow::{bail, Result};

/// One workload: runs its rounds and prints its table.
type Workload = fn(&Path) -> Result<()>;

/// The workloads, by the name `cargo xtask bench NAME` runs alone.
const WORKLOADS: &[(&str, Workload)] = &[
    ("http", http::run),
    ("rate", rate::run),
    ("h2", h2::run),
    ("go", go::run),
    ("redis", db::redis),
    ("postgres", db::postgres),
    ("uprobe", uprobe::run),
];

/// Runs every workload, or only the one named.
pub fn run(root: &Path, only: Option<&str>) -> Result<()> {
    let chosen: Vec<_> = WORKLOADS
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == *name))
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = WORKLOADS.iter().map(|(n, _)| *n).collect();
        bail!(
            "no workload {:?}: one of {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    for (_, workload) in chosen {
        workload(root)?;
    }
    Ok(())
}
