//! Starting the command given after `--`, traced from its first
//! instruction: it waits on a pipe until its pid is attached.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::Context as _;

use super::EventPath;
use crate::host::procfs::ProcessMeta;

/// A pipe whose ends close on exec.
pub(super) fn cloexec_pipe(what: &str) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid out-array; O_CLOEXEC keeps the pipe out of the exec'd program.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("creating the {what}"));
    }
    // SAFETY: fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `argv` held at a gate until its pid is traced, so not one of its
/// syscalls goes unseen.
///
/// `spawn` only returns once the child has exec'd, so the child reports its
/// own pid through a second pipe before it waits at the gate, and the spawn
/// runs on a helper thread while this one traces the pid and opens the gate.
pub(super) fn spawn_gated(
    argv: &[String],
    path: &mut EventPath,
) -> anyhow::Result<tokio::process::Child> {
    let (gate_r, gate_w) = cloexec_pipe("start gate")?;
    let (pid_r, pid_w) = cloexec_pipe("pid pipe")?;
    let (gr, gw, pw) = (gate_r.as_raw_fd(), gate_w.as_raw_fd(), pid_w.as_raw_fd());
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            libc::close(gw);
            let pid = libc::getpid();
            libc::write(pw, (&pid as *const i32).cast(), 4);
            libc::close(pw);
            let mut b = 0u8;
            // EOF (the agent died before opening the gate) aborts the exec.
            if libc::read(gr, (&mut b as *mut u8).cast(), 1) != 1 {
                // No allocation after fork: a bare errno, reported by spawn.
                return Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
            }
            Ok(())
        });
    }
    let runtime = tokio::runtime::Handle::current();
    std::thread::scope(|scope| {
        let spawner = scope.spawn(move || {
            let _in_runtime = runtime.enter();
            let spawned = cmd.spawn();
            // Only now: if fork itself failed, this EOF ends the pid read.
            drop(pid_w);
            spawned
        });
        let mut pid = [0u8; 4];
        let mut file = std::fs::File::from(pid_r);
        let got = std::io::Read::read_exact(&mut file, &mut pid);
        let opened = got.map_err(anyhow::Error::from).and_then(|()| {
            let pid = i32::from_ne_bytes(pid) as u32;
            path.probes.trace(pid)?;
            path.registry.add_with(pid, command_meta(argv));
            // SAFETY: writing one byte to our own pipe.
            unsafe { libc::write(gate_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
            Ok(())
        });
        // Closing the gate unopened makes the child abort before exec.
        drop(gate_w);
        let spawned = spawner
            .join()
            .map_err(|_| anyhow::anyhow!("the spawning thread panicked"))?;
        // If tracing failed, the child gave up at the gate: that is the
        // error worth reporting, not the spawn's.
        opened.context("tracing the command before it starts")?;
        spawned.with_context(|| format!("cannot start {:?}", argv[0]))
    })
}

/// What we know of a command we start before it execs.
pub(super) fn command_meta(argv: &[String]) -> ProcessMeta {
    let exe = std::path::Path::new(&argv[0])
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| argv[0].clone());
    ProcessMeta {
        executable_name: exe,
        executable_path: None,
        command_line: argv.join(" "),
        container: Default::default(),
        service_name: std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty()),
    }
}
