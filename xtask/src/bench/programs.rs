//! Per-program eBPF cost: the kernel's own accounting
//! (`kernel.bpf_stats_enabled`: each program's run count and run time),
//! for the programs one agent loaded.
//!
//! The accounting adds two clock reads to every program run, so it is on
//! only in a profile round of its own, never in the rounds whose figures
//! the tables compare. What it cannot see: the traps a uprobe takes, and
//! the syscall slow path a tracepoint forces; the difference between the
//! traced process's extra CPU and the programs' sum is those.

use std::{collections::HashSet, fs};

use anyhow::{Context as _, Result};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The accounting, on while this lives; restored to what it was on drop.
pub struct Accounting {
    before: String,
}

impl Accounting {
    pub fn on() -> Result<Accounting> {
        let before = fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
        fs::write(SYSCTL, "1").with_context(|| format!("writing {SYSCTL} (run as root)"))?;
        Ok(Accounting { before })
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        let _ = fs::write(SYSCTL, self.before.trim());
    }
}

/// One program's totals.
#[derive(Debug, Clone)]
pub struct Program {
    pub id: u64,
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

/// The totals of every program the process `pid` holds open.
pub fn of(pid: u32) -> Result<Vec<Program>> {
    let ids = program_ids(pid)?;
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        anyhow::bail!("bpftool: {}", String::from_utf8_lossy(&out.stderr));
    }
    let all: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(all
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|p| Program {
            id: p["id"].as_u64().unwrap_or(0),
            name: p["name"].as_str().unwrap_or("?").to_owned(),
            runs: p["run_cnt"].as_u64().unwrap_or(0),
            ns: p["run_time_ns"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// The ids of the BPF programs among `pid`'s open files.
fn program_ids(pid: u32) -> Result<HashSet<u64>> {
    let mut ids = HashSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// The difference of two readings of the same programs (the kernel's
/// totals run from when the accounting went on), for those that ran, the
/// dearest first.
pub fn since(before: &[Program], after: &[Program]) -> Vec<Program> {
    let mut out: Vec<Program> = after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            Program {
                id: a.id,
                name: a.name.clone(),
                runs: a.runs - b.map_or(0, |b| b.runs.min(a.runs)),
                ns: a.ns - b.map_or(0, |b| b.ns.min(a.ns)),
            }
        })
        .filter(|p| p.runs > 0)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.ns));
    out
}

/// Prints each program's runs and time per request, and their sum.
pub fn print(programs: &[Program], requests: u64) {
    println!(
        "{:<28}{:>14}{:>14}{:>16}",
        "eBPF program", "runs/request", "ns per run", "ns per request"
    );
    let per = |v: u64| v as f64 / requests.max(1) as f64;
    for p in programs {
        println!(
            "{:<28}{:>14.2}{:>14.0}{:>16.0}",
            p.name,
            per(p.runs),
            p.ns as f64 / p.runs.max(1) as f64,
            per(p.ns)
        );
    }
    let total: u64 = programs.iter().map(|p| p.ns).sum();
    println!(
        "{:<28}{:>14}{:>14}{:>16.0}",
        "all programs",
        "",
        "",
        per(total)
    );
}
