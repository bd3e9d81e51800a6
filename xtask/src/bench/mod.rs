//! `cargo xtask bench`: each workload without and then with the agent, in
//! alternating rounds on this machine, medians reported side by side.

mod db;
mod harness;
mod http;

use std::path::Path;

use anyhow::Result;

pub fn run(root: &Path) -> Result<()> {
    http::run(root)?;
    db::redis(root)?;
    db::postgres(root)
}
