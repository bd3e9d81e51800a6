//! HTTP and HTTPS: wrk against nginx (one worker), without and then with
//! the agent tracing nginx, in alternating rounds. Over HTTPS the
//! plaintext comes from uprobes on OpenSSL, so the difference in nginx's
//! own CPU per request is what the probes cost it.

use std::{
    fs,
    net::TcpStream,
    path::Path,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    harness::{
        baseline, cpu_seconds, libc_kill, median, print_heading, print_row, stat_value,
        traced_with, AgentRun, Attached,
    },
    programs,
};

pub(super) const PORT: u16 = 18080;
const TLS_PORT: u16 = 18443;
pub(super) const DURATION_S: u32 = 10;
pub(super) use super::harness::ROUNDS;
pub(super) const CONNECTIONS: u32 = 16;

pub(super) struct Wrk {
    pub(super) rps: f64,
    pub(super) requests: u64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
}

pub(super) fn parse_latency_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * scale)
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut w = Wrk {
        rps: f64::NAN,
        requests: 0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
    };
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["50%", v] => w.p50_ms = parse_latency_ms(v).unwrap_or(f64::NAN),
            ["99%", v] => w.p99_ms = parse_latency_ms(v).unwrap_or(f64::NAN),
            ["Requests/sec:", v] => w.rps = v.parse().unwrap_or(f64::NAN),
            [n, "requests", "in", ..] => w.requests = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    if w.rps.is_nan() || w.requests == 0 {
        bail!("could not read wrk's output:\n{out}");
    }
    Ok(w)
}

pub(super) fn wrk(url: &str, seconds: u32) -> Result<Wrk> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .arg(url)
        .output()
        .context("running wrk")?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// CPU seconds process `pid` used while `f` ran, and `f`'s result.
fn with_cpu<T>(pid: u32, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let before = cpu_seconds(pid);
    let out = f()?;
    Ok((out, cpu_seconds(pid) - before))
}

/// nginx with one worker, plaintext on [`PORT`] and TLS on its own port,
/// with a certificate made for it in `dir` (`cert.pem`, `key.pem`).
pub(super) fn start_nginx(dir: &Path) -> Result<Child> {
    fs::write(
        dir.join("index.html"),
        "<html><body>zerospan bench</body></html>\n",
    )?;
    let d = dir.display().to_string();
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
        .args(["-subj", "/CN=localhost", "-days", "1"])
        .args([
            "-keyout",
            &format!("{d}/key.pem"),
            "-out",
            &format!("{d}/cert.pem"),
        ])
        .output()
        .context("making a certificate with openssl")?;
    if !out.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let conf = format!(
        "worker_processes 1;\nuser root;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           server {{ listen 127.0.0.1:{PORT}; root {d}; }}\n\
           server {{ listen 127.0.0.1:{TLS_PORT} ssl; ssl_certificate {d}/cert.pem;\n\
             ssl_certificate_key {d}/key.pem; root {d}; }} }}\n"
    );
    fs::write(dir.join("nginx.conf"), conf)?;
    let child = Command::new("nginx")
        .args(["-c", &dir.join("nginx.conf").display().to_string()])
        .spawn()
        .context("starting nginx")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in [PORT, TLS_PORT] {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start listening on {port}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(child)
}

pub fn run(root: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("zerospan-bench-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let mut nginx = start_nginx(&dir)?;
    let result = measure(root, &nginx, "http", PORT)
        .and_then(|()| measure(root, &nginx, "https", TLS_PORT))
        .and_then(|()| measure_injection(root));
    // SIGTERM, not SIGKILL: the master must take its worker down with it.
    // SAFETY: signalling our own child.
    unsafe { libc_kill(nginx.id() as i32, 15) };
    let _ = nginx.wait();
    let _ = fs::remove_dir_all(&dir);
    result
}

/// The worker nginx's master started.
fn worker_of(master: u32) -> Result<u32> {
    let children = fs::read_to_string(format!("/proc/{master}/task/{master}/children"))?;
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .context("nginx has no worker")
}

/// wrk's rounds against one server, without and with the agent.
pub(super) struct WrkRounds {
    pub(super) base: Vec<Wrk>,
    pub(super) traced: Vec<Wrk>,
    pub(super) runs: Vec<AgentRun>,
    /// CPU seconds the measured process used in all baseline rounds, and
    /// in all traced ones.
    pub(super) base_cpu: f64,
    pub(super) traced_cpu: f64,
}

impl WrkRounds {
    /// Requests wrk completed in all baseline rounds, and in all traced.
    pub(super) fn requests(&self) -> (u64, u64) {
        let total = |v: &[Wrk]| v.iter().map(|w| w.requests).sum::<u64>();
        (total(&self.base), total(&self.traced))
    }

    /// The measured process's CPU per request, in µs, baseline and
    /// traced: the probes run in its context, so their cost shows there.
    pub(super) fn cpu_per_request_us(&self) -> (f64, f64) {
        let (b, t) = self.requests();
        let per = |cpu: f64, n: u64| cpu / n as f64 * 1e6;
        (per(self.base_cpu, b), per(self.traced_cpu, t))
    }

    /// An agent counter, summed over the traced rounds.
    pub(super) fn stat(&self, key: &str) -> u64 {
        self.runs.iter().map(|r| stat_value(&r.stats, key)).sum()
    }

    /// Events and spans lost on the way: ring buffer, argument map, span
    /// queue, the exporter's buffer.
    pub(super) fn dropped(&self) -> u64 {
        [
            "kernel_ringbuf_full",
            "kernel_args_map_full",
            "spans_dropped_queue_full",
            "spans_dropped_export",
        ]
        .iter()
        .map(|k| self.stat(k))
        .sum()
    }

    /// Spans the collector received in the traced rounds.
    pub(super) fn received(&self) -> u64 {
        self.runs.iter().map(|r| r.received).sum()
    }

    /// The agent's CPU seconds in the traced rounds.
    pub(super) fn agent_cpu(&self) -> f64 {
        self.runs.iter().map(|r| r.cpu_s).sum()
    }
}

/// This machine's cores, for the benchmark's heading.
pub(super) fn cores() -> usize {
    thread::available_parallelism().map_or(0, |n| n.get())
}

/// After a warm-up, [`ROUNDS`] rounds of wrk against `url`, alone and
/// with the agent (given `options`) attached to `traced`, alternating so
/// that drift on a shared machine hits both sides alike; with the CPU
/// process `cpu_of` used in each (where the probes' cost shows).
pub(super) fn wrk_rounds(
    root: &Path,
    what: &str,
    url: &str,
    (traced, cpu_of): (u32, u32),
    options: &[&str],
) -> Result<WrkRounds> {
    eprintln!("bench: {what}: warming up");
    wrk(url, 2)?;
    let mut r = WrkRounds {
        base: Vec::new(),
        traced: Vec::new(),
        runs: Vec::new(),
        base_cpu: 0.0,
        traced_cpu: 0.0,
    };
    for round in 1..=ROUNDS {
        eprintln!("bench: {what} round {round}/{ROUNDS}: baseline, {DURATION_S}s");
        let (w, cpu) = with_cpu(cpu_of, || wrk(url, DURATION_S))?;
        r.base.push(w);
        r.base_cpu += cpu;
        eprintln!("bench: {what} round {round}/{ROUNDS}: traced by zerospan, {DURATION_S}s");
        let attached = Attached::start_with(root, traced, options)?;
        let (w, cpu) = with_cpu(cpu_of, || wrk(url, DURATION_S))?;
        r.traced.push(w);
        r.traced_cpu += cpu;
        r.runs.push(attached.finish()?);
    }
    Ok(r)
}

/// Prints requests/s and latency, baseline beside traced, with the ratio
/// and the spread.
pub(super) fn print_wrk_table(base: &[Wrk], traced: &[Wrk]) {
    print_heading();
    for (name, f) in [
        ("requests/s", (|w: &Wrk| w.rps) as fn(&Wrk) -> f64),
        ("latency p50 (ms)", |w: &Wrk| w.p50_ms),
        ("latency p99 (ms)", |w: &Wrk| w.p99_ms),
    ] {
        let of = |v: &[Wrk]| v.iter().map(f).collect::<Vec<_>>();
        print_row(name, &of(base), &of(traced));
    }
}

fn measure(root: &Path, nginx: &Child, scheme: &str, port: u16) -> Result<()> {
    let url = format!("{scheme}://127.0.0.1:{port}/index.html");
    let worker = worker_of(nginx.id())?;
    let rounds = wrk_rounds(root, scheme, &url, (nginx.id(), worker), &[])?;
    let (_, traced_requests) = rounds.requests();
    let rss = rounds
        .runs
        .iter()
        .map(|r| r.peak_rss_mib)
        .fold(0.0, f64::max);
    let events = rounds.stat("events_read");
    let spans = rounds.stat("spans_created");
    println!(
        "\nzerospan benchmark: wrk -t2 -c{CONNECTIONS} -d{DURATION_S}s against nginx (1 worker) \
         over {scheme}, {ROUNDS} alternating rounds, medians; {} cores",
        cores()
    );
    print_wrk_table(&rounds.base, &rounds.traced);
    println!(
        "agent CPU seconds per 100k requests: {:.3}",
        rounds.agent_cpu() / (traced_requests as f64 / 100_000.0)
    );
    let (b, t) = rounds.cpu_per_request_us();
    println!(
        "nginx worker CPU per request: {b:.2} µs baseline, {t:.2} µs traced: the probes cost {:.2} µs",
        t - b
    );
    println!("agent peak RSS: {rss:.1} MiB");
    println!(
        "events handled: {events} ({:.0}/s)",
        events as f64 / f64::from(DURATION_S * ROUNDS)
    );
    println!(
        "spans created: {spans}, received by the collector: {} (requests wrk completed: {traced_requests})",
        rounds.received()
    );
    println!("events and spans dropped: {}", rounds.dropped());
    for (i, r) in rounds.runs.iter().enumerate() {
        println!("agent stats, round {}: {}", i + 1, r.stats);
    }
    // The ablation: what the server side of header injection (on by
    // default: the look at each request head for its traceparent) costs.
    // A profile that cannot run (no bpftool) is said, and the figures
    // above stand.
    for options in [&[][..], &["--context-propagation=off"]] {
        if let Err(e) = profile(root, nginx.id(), &url, options) {
            println!("profile round {options:?} not run: {e:#}");
        }
    }
    Ok(())
}

/// One more traced round, with the kernel's per-program accounting on
/// (not in the rounds above: it slows every program a little): where the
/// probes' time goes, per request, with the agent given `options`.
fn profile(root: &Path, traced: u32, url: &str, options: &[&str]) -> Result<()> {
    eprintln!("bench: profile round {options:?}: per-program accounting on, {DURATION_S}s");
    let accounting = programs::Accounting::on()?;
    let attached = Attached::start_with(root, traced, options)?;
    let before = programs::of(attached.pid())?;
    let w = wrk(url, DURATION_S)?;
    let after = programs::of(attached.pid())?;
    attached.finish()?;
    drop(accounting);
    println!(
        "where the probes' time goes: one more traced round{}, the kernel's per-program \
         accounting on ({} requests; traps and the syscall slow path are not in it)",
        if options.is_empty() {
            String::new()
        } else {
            format!(" with {}", options.join(" "))
        },
        w.requests
    );
    programs::print(&programs::since(&before, &after), w.requests);
    Ok(())
}

/// What writing `traceparent` into requests costs the client: wrk is the
/// traced process here (nginx is not), with propagation off and on, and
/// without the agent, in alternating rounds.
fn measure_injection(root: &Path) -> Result<()> {
    let script = format!(
        "wrk -t2 -c{CONNECTIONS} -d{DURATION_S}s --latency http://127.0.0.1:{PORT}/index.html"
    );
    let (mut base, mut off, mut on) = (Vec::new(), Vec::new(), Vec::new());
    let mut injected = 0;
    for round in 1..=ROUNDS {
        eprintln!("bench: injection round {round}/{ROUNDS}: wrk alone, {DURATION_S}s");
        base.push(parse_wrk(&baseline(&script)?)?);
        eprintln!("bench: injection round {round}/{ROUNDS}: wrk traced, propagation off");
        let (out, _) = traced_with(root, &script, &["--context-propagation=off"])?;
        off.push(parse_wrk(&out)?);
        eprintln!("bench: injection round {round}/{ROUNDS}: wrk traced, propagation on");
        let (out, run) = traced_with(root, &script, &["--context-propagation=headers"])?;
        injected += stat_value(&run.stats, "kernel_context_injected");
        on.push(parse_wrk(&out)?);
    }
    let on_requests: u64 = on.iter().map(|w| w.requests).sum();
    let med = |v: &[Wrk], f: fn(&Wrk) -> f64| median(v.iter().map(f).collect());
    println!(
        "\nzerospan benchmark: traceparent injection, wrk (traced) -t2 -c{CONNECTIONS} \
         -d{DURATION_S}s against nginx over http, {ROUNDS} alternating rounds, medians"
    );
    println!(
        "{:<20}{:>12}{:>16}{:>15}{:>10}",
        "", "wrk alone", "propagation off", "propagation on", "on/off"
    );
    for (name, f) in [
        ("requests/s", (|w: &Wrk| w.rps) as fn(&Wrk) -> f64),
        ("latency p50 (ms)", |w: &Wrk| w.p50_ms),
        ("latency p99 (ms)", |w: &Wrk| w.p99_ms),
    ] {
        let (b, x, y) = (med(&base, f), med(&off, f), med(&on, f));
        println!("{name:<20}{b:>12.3}{x:>16.3}{y:>15.3}{:>10.3}", y / x);
    }
    println!(
        "headers written: {injected} (requests wrk completed with propagation on: {on_requests})"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_wrk_output() {
        let out = "Running 1s test\n  Latency Distribution\n     50%  120.00us\n     75%  1.00ms\n     99%    2.50ms\n  1234 requests in 1.00s, 1.00MB read\nRequests/sec:   1234.50\n";
        let w = super::parse_wrk(out).unwrap();
        assert_eq!(w.requests, 1234);
        assert!((w.rps - 1234.5).abs() < 1e-9);
        assert!((w.p50_ms - 0.12).abs() < 1e-9);
        assert!((w.p99_ms - 2.5).abs() < 1e-9);
    }
}
