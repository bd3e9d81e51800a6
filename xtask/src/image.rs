//! The agent's container image, built here: a Docker engine, a Debian base
//! made with debootstrap (no registry can be reached), and
//! `deploy/Dockerfile`'s `prebuilt` stage around the binary `build` made.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{root, run, succeeds};

/// Debian's client, which speaks to Debian's daemon (a newer client on
/// PATH may not).
pub const DOCKER: &str = "/usr/bin/docker";
/// The local stand-in for `debian:bookworm-slim`.
pub const BASE: &str = "zerospan-base/debian:bookworm";
/// Where the image `cargo xtask image` builds is tagged.
pub const TAG: &str = "zerospan:dev";

fn docker() -> Command {
    Command::new(DOCKER)
}

/// Starts dockerd if it is not running: no bridge and no iptables rules
/// (containers use the host's network), so nothing routes anywhere new.
pub fn ensure_daemon() -> Result<()> {
    if succeeds(docker().arg("info")) {
        return Ok(());
    }
    let log =
        std::fs::File::create("/var/log/zerospan-dockerd.log").context("dockerd's log file")?;
    eprintln!("xtask: starting dockerd (log: /var/log/zerospan-dockerd.log)");
    Command::new("dockerd")
        .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("dockerd (Debian's docker.io)")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !succeeds(docker().arg("info")) {
        if Instant::now() > deadline {
            bail!("dockerd did not answer within 60 s: see /var/log/zerospan-dockerd.log");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// Makes [`BASE`] from Debian's packages if it does not exist, with the
/// runtime stage's packages already in it.
pub fn ensure_base() -> Result<()> {
    if succeeds(docker().args(["image", "inspect", BASE])) {
        return Ok(());
    }
    let dir = std::env::temp_dir().join("zerospan-rootfs");
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("debootstrap").args([
        "--variant=minbase",
        "--include=libssl3,ca-certificates",
        "bookworm",
        &dir.to_string_lossy(),
    ]))?;
    eprintln!("xtask: importing {} as {BASE}", dir.display());
    let mut tar = Command::new("tar")
        .args(["-C", &dir.to_string_lossy(), "-c", "."])
        .stdout(Stdio::piped())
        .spawn()?;
    let imported = docker()
        .args(["import", "-", BASE])
        .stdin(tar.stdout.take().expect("piped"))
        .status()?;
    let tarred = tar.wait()?;
    let _ = std::fs::remove_dir_all(&dir);
    if !(imported.success() && tarred.success()) {
        bail!("docker import of the debootstrap tree failed ({imported}, tar {tarred})");
    }
    Ok(())
}

/// `docker build` of `deploy/Dockerfile`'s `target` stage on [`BASE`].
pub fn build(target: &str, tag: &str) -> Result<()> {
    run(docker()
        .current_dir(root())
        // Only the stages the target needs (the classic builder would
        // build the Rust stage too).
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "--network", "host", "-f", "deploy/Dockerfile"])
        .args(["--target", target, "--build-arg", &format!("BASE={BASE}")])
        .args(["-t", tag, "."]))
}

/// Everything the image test needs: the engine, the base, and the runtime
/// stage in the build cache (its `apt-get` needs Debian's mirror; the test
/// then builds from the cache).
pub fn setup() -> Result<()> {
    ensure_daemon()?;
    ensure_base()?;
    build("runtime", "zerospan-runtime:cache")
}
