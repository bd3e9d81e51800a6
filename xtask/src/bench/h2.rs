//! HTTP/2 and gRPC: h2load against nghttpd (h2c, many streams per
//! connection), and grpcio unary calls against a grpcio server, each
//! without and then with the agent tracing the server, in alternating
//! rounds. The server's own CPU per request, baseline beside traced, is
//! what the probes cost it.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    harness::{self, cpu_seconds, libc_kill, stat_value, AgentRun, Attached, ROUNDS},
    http::parse_latency_ms,
};

const PORT: u16 = 18082;
const DURATION_S: u32 = 10;
/// h2load's connections, and streams in flight on each.
const CONNECTIONS: u32 = 4;
const STREAMS: u32 = 10;
/// Concurrent grpcio channels, one thread each.
const CHANNELS: u32 = 4;

/// One load round, in the units both workloads share.
struct Load {
    rps: f64,
    requests: u64,
    mean_ms: f64,
    /// h2load's slowest request; the gRPC client's 99th percentile.
    tail_ms: f64,
}

fn parse_h2load(out: &str) -> Result<Load> {
    let mut l = Load {
        rps: f64::NAN,
        requests: 0,
        mean_ms: f64::NAN,
        tail_ms: f64::NAN,
    };
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["finished", "in", _, rps, "req/s,", ..] => {
                l.rps = rps.parse().unwrap_or(f64::NAN);
            }
            ["requests:", ..] => {
                // "… 505960 succeeded, 0 failed …"
                l.requests = f
                    .windows(2)
                    .find(|w| w[1] == "succeeded,")
                    .and_then(|w| w[0].parse().ok())
                    .unwrap_or(0);
            }
            ["time", "for", "request:", _min, max, mean, ..] => {
                l.tail_ms = parse_latency_ms(max).unwrap_or(f64::NAN);
                l.mean_ms = parse_latency_ms(mean).unwrap_or(f64::NAN);
            }
            _ => {}
        }
    }
    if l.rps.is_nan() || l.requests == 0 || l.mean_ms.is_nan() {
        bail!("could not read h2load's output:\n{out}");
    }
    Ok(l)
}

fn parse_grpc_bench(out: &str, seconds: u32) -> Result<Load> {
    let f: Vec<&str> = out.split_whitespace().collect();
    match f.as_slice() {
        ["CALLS", n, "MEAN_US", mean, "P99_US", p99] => {
            let requests: u64 = n.parse()?;
            Ok(Load {
                rps: requests as f64 / f64::from(seconds),
                requests,
                mean_ms: mean.parse::<f64>()? / 1e3,
                tail_ms: p99.parse::<f64>()? / 1e3,
            })
        }
        _ => bail!("could not read the gRPC client's output: {out:?}"),
    }
}

fn h2load(url: &str, seconds: u32) -> Result<Load> {
    let out = Command::new("h2load")
        .args([
            "-D",
            &seconds.to_string(),
            "-c",
            &CONNECTIONS.to_string(),
            "-m",
            &STREAMS.to_string(),
        ])
        .arg(url)
        .output()
        .context("running h2load (nghttp2-client)")?;
    parse_h2load(&String::from_utf8_lossy(&out.stdout))
}

fn grpc_client(fixture: &Path, port: u16, seconds: u32) -> Result<Load> {
    let out = Command::new("python3")
        .arg(fixture)
        .args([
            "bench",
            &port.to_string(),
            &seconds.to_string(),
            &CHANNELS.to_string(),
        ])
        .output()
        .context("running the grpcio client")?;
    if !out.status.success() {
        bail!(
            "the grpcio client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_grpc_bench(&String::from_utf8_lossy(&out.stdout), seconds)
}

fn wait_for_port(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {port}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.0.id() as i32, 15) };
        let _ = self.0.wait();
    }
}

pub fn run(root: &Path) -> Result<()> {
    nghttpd(root)?;
    grpc(root)
}

fn nghttpd(root: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("zerospan-bench-h2-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    // Small bodies: many responses a write, the probes' frame walk at its
    // busiest (a step per frame, no DATA to leave out). Large bodies are
    // the http2 tests'.
    fs::write(dir.join("index.html"), "z".repeat(60))?;
    let server = Server(
        Command::new("nghttpd")
            .args(["--no-tls", "-d", &dir.display().to_string()])
            .arg(PORT.to_string())
            .stdout(Stdio::null())
            .spawn()
            .context("starting nghttpd (nghttp2-server)")?,
    );
    wait_for_port(PORT, "nghttpd")?;
    let url = format!("http://127.0.0.1:{PORT}/index.html");
    let result = measure(
        root,
        server.0.id(),
        &format!(
            "h2load -c{CONNECTIONS} -m{STREAMS} -D{DURATION_S} against nghttpd (h2c, 60-byte bodies)"
        ),
        || h2load(&url, DURATION_S),
    );
    drop(server);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn grpc(root: &Path) -> Result<()> {
    let fixture = root.join("tests/fixtures/grpc_service.py");
    let mut child = Command::new("python3")
        .arg(&fixture)
        .arg("server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the grpcio server")?;
    let mut ready = String::new();
    BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut ready)?;
    let server = Server(child);
    let port: u16 = ready
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("the grpcio server did not start: {ready:?}"))?;
    measure(
        root,
        server.0.id(),
        &format!("grpcio unary calls, {CHANNELS} channels back to back, against a grpcio server"),
        || grpc_client(&fixture, port, DURATION_S),
    )
}

/// Alternating baseline and traced rounds of `load` against `server`,
/// medians side by side.
fn measure(root: &Path, server: u32, title: &str, load: impl Fn() -> Result<Load>) -> Result<()> {
    eprintln!("bench: {title}: warming up");
    let warm = load()?;
    if warm.requests == 0 {
        bail!("{title}: no request succeeded");
    }
    let mut base = Vec::new();
    let mut traced = Vec::new();
    let mut runs: Vec<AgentRun> = Vec::new();
    let (mut base_cpu, mut traced_cpu) = (0.0, 0.0);
    for round in 1..=ROUNDS {
        eprintln!("bench: {title}: round {round}/{ROUNDS}, baseline");
        let before = cpu_seconds(server);
        base.push(load()?);
        base_cpu += cpu_seconds(server) - before;
        eprintln!("bench: {title}: round {round}/{ROUNDS}, traced by zerospan");
        let attached = Attached::start(root, server)?;
        let before = cpu_seconds(server);
        traced.push(load()?);
        traced_cpu += cpu_seconds(server) - before;
        runs.push(attached.finish()?);
    }
    let sum = |key: &str| runs.iter().map(|r| stat_value(&r.stats, key)).sum::<u64>();
    let base_requests: u64 = base.iter().map(|l| l.requests).sum();
    let traced_requests: u64 = traced.iter().map(|l| l.requests).sum();
    let cpu: f64 = runs.iter().map(|r| r.cpu_s).sum();
    let spans = sum("spans_created");
    let received: u64 = runs.iter().map(|r| r.received).sum();
    let kernel_dropped = sum("kernel_ringbuf_full") + sum("kernel_args_map_full");
    println!(
        "\nzerospan benchmark: {title}, {ROUNDS} alternating rounds of {DURATION_S}s, medians"
    );
    harness::print_heading();
    for (name, f) in [
        ("requests/s", (|l: &Load| l.rps) as fn(&Load) -> f64),
        ("latency mean (ms)", |l: &Load| l.mean_ms),
        ("latency tail (ms)", |l: &Load| l.tail_ms),
    ] {
        let of = |v: &[Load]| v.iter().map(f).collect::<Vec<_>>();
        harness::print_row(name, &of(&base), &of(&traced));
    }
    let per_request_us = |cpu: f64, n: u64| cpu / n as f64 * 1e6;
    let (b, t) = (
        per_request_us(base_cpu, base_requests),
        per_request_us(traced_cpu, traced_requests),
    );
    println!(
        "server CPU per request: {b:.2} µs baseline, {t:.2} µs traced: the probes cost {:.2} µs",
        t - b
    );
    println!(
        "agent CPU per span: {:.2} µs ({spans} spans in {cpu:.2} s)",
        if spans > 0 {
            cpu / spans as f64 * 1e6
        } else {
            f64::NAN
        }
    );
    println!(
        "spans created: {spans}, received by the collector: {received} (requests completed: {traced_requests})"
    );
    println!(
        "kernel events dropped: {kernel_dropped}; spans dropped: {} (export queue full), {} \
         (export failed); HTTP/2 framing lost: {}",
        sum("spans_dropped_queue_full"),
        sum("spans_dropped_export"),
        sum("desyncs.http2")
    );
    for (i, r) in runs.iter().enumerate() {
        println!("agent stats, round {}: {}", i + 1, r.stats);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2load_and_grpc_client_output() {
        let out = "finished in 2.00s, 252980.00 req/s, 21.47MB/s\n\
            requests: 505960 total, 506000 started, 505960 done, 505960 succeeded, 0 failed, 0 errored, 0 timeout\n\
            status codes: 505960 2xx, 0 3xx, 0 4xx, 0 5xx\n\
            \x20                    min         max         mean         sd        +/- sd\n\
            time for request:       33us      1.72ms       152us        44us    92.50%\n";
        let l = parse_h2load(out).unwrap();
        assert_eq!(l.rps, 252980.0);
        assert_eq!(l.requests, 505960);
        assert!((l.mean_ms - 0.152).abs() < 1e-9);
        assert!((l.tail_ms - 1.72).abs() < 1e-9);
        let g = parse_grpc_bench("CALLS 2000 MEAN_US 1500.0 P99_US 4000.5\n", 10).unwrap();
        assert_eq!((g.requests, g.rps), (2000, 200.0));
        assert!((g.mean_ms - 1.5).abs() < 1e-9 && (g.tail_ms - 4.0005).abs() < 1e-9);
        assert!(parse_h2load("nothing").is_err());
    }
}
