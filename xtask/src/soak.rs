//! `cargo xtask soak [OUTAGE_SECS]`: faults survived, with figures.
//!
//! Neither a test nor part of CI: it runs for about OUTAGE_SECS plus three
//! minutes (the collector's outage is 600 s unless told), asserts no
//! figure against a target, and prints what it measured, for README.md.
//! Everything runs on loopback: nginx traced by the agent, which exports
//! over OTLP/gRPC to `otlp-sink`, and load from `hey` and from raw
//! sockets.
//!
//! 1. The collector down for OUTAGE_SECS under steady load (5,000 req/s):
//!    the agent's RSS over the outage, the app's throughput before, during
//!    and after, spans dropped, and how soon export resumes.
//! 2. `kill -9` of the agent under load: what the load saw, what the agent
//!    left in the kernel, and whether a new agent traces the keep-alive
//!    connections already open.
//! 3. The agent stopped (SIGSTOP) under load, so the ring buffer overflows:
//!    drops counted, and every span after is checked against its request.
//! 4. Bad input at full rate on the traced port, valid requests between.
//! 5. 10,000 idle connections opened and closed: RSS and the socket map.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::bench::harness::{libc_kill, stat_value};

const PORT: u16 = 18480;
const SINK_PORT: u16 = 18431;
/// Paths `/p/0` … `/p/1999`: the even ones exist (200), the odd ones not
/// (404), so a response paired with the wrong request shows.
const PATHS: u64 = 2000;
const SIGKILL: i32 = 9;
const SIGINT: i32 = 2;
const SIGUSR1: i32 = 10;
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;
const SIGTERM: i32 = 15;

/// The parts, by the names `soak OUTAGE_SECS NAME…` runs alone.
const PARTS: &[&str] = &["outage", "kill", "overflow", "bad-input", "idle"];

pub fn run(root: &Path, outage_secs: u64, only: &[String]) -> Result<()> {
    if let Some(unknown) = only.iter().find(|p| !PARTS.contains(&p.as_str())) {
        bail!("no soak part {unknown:?}: the parts are {PARTS:?}");
    }
    let part = |name: &str| only.is_empty() || only.iter().any(|p| p == name);
    let dir = std::env::temp_dir().join(format!("zerospan-soak-{}", std::process::id()));
    fs::create_dir_all(dir.join("p"))?;
    let nginx = Nginx::start(&dir)?;
    let pid = nginx.pid();
    let result = (|| {
        if part("outage") {
            collector_down(root, &dir, pid, outage_secs)?;
        }
        if part("kill") {
            killed(root, &dir, pid)?;
        }
        if part("overflow") {
            overflow(root, &dir, pid)?;
        }
        if part("bad-input") {
            bad_input(root, &dir, pid)?;
        }
        if part("idle") {
            idle_connections(root, &dir, pid)?;
        }
        Ok(())
    })();
    drop(nginx);
    if result.is_ok() {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

struct Nginx(Child);

impl Nginx {
    fn start(dir: &Path) -> Result<Nginx> {
        fs::write(dir.join("index.html"), "soak\n")?;
        for i in (0..PATHS).step_by(2) {
            fs::write(dir.join(format!("p/{i}")), format!("path {i}\n"))?;
        }
        let d = dir.display();
        // Keep-alive connections that never end on the server's account
        // (a new agent must trace the ones already open), and room for
        // 10,000 idle ones.
        let conf = format!(
            "worker_processes 1;\nworker_rlimit_nofile 30000;\nuser root;\ndaemon off;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 16384; }}\n\
             http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 600s;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{PORT} backlog=16384; root {d}; }} }}\n"
        );
        fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .args(["-c", &dir.join("nginx.conf").display().to_string()])
            .spawn()
            .context("starting nginx")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", PORT)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start listening on {PORT}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Nginx(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master takes its worker down with it.
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.0.id() as i32, SIGTERM) };
        let _ = self.0.wait();
    }
}

/// The counting OTLP receiver, on [`SINK_PORT`].
struct Sink {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Sink {
    fn start(root: &Path) -> Result<Sink> {
        let mut child = Command::new(root.join("target/release/otlp-sink"))
            .arg(SINK_PORT.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting otlp-sink")?;
        let stdin = child.stdin.take().context("sink stdin")?;
        let mut out = BufReader::new(child.stdout.take().context("sink stdout")?);
        let mut ready = String::new();
        out.read_line(&mut ready)?;
        if !ready.starts_with("READY ") {
            bail!("otlp-sink did not start: {ready:?}");
        }
        Ok(Sink { child, stdin, out })
    }

    /// Spans received so far.
    fn count(&mut self) -> Result<u64> {
        writeln!(self.stdin, "COUNT")?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        line.trim()
            .strip_prefix("SPANS ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("otlp-sink said {line:?}"))
    }

    /// Takes the collector down, as a crash would.
    fn kill(self) {
        drop(self);
    }
}

impl Drop for Sink {
    /// Also on an early return: the next run needs the port.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent on nginx, its log in a file.
struct Agent {
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Drop for Agent {
    /// Also on an early return: no agent is left attached to nginx.
    fn drop(&mut self) {
        if !self.stopped {
            self.signal(SIGINT);
            let _ = self.child.wait();
        }
    }
}

impl Agent {
    fn start(root: &Path, dir: &Path, pid: u32, more: &[&str]) -> Result<Agent> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let log = dir.join(format!(
            "agent-{}.log",
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(root.join("target/release/zerospan"))
            .args(["--pid", &pid.to_string()])
            .args(["--otlp-endpoint", &format!("http://127.0.0.1:{SINK_PORT}")])
            .args(more)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("starting the agent")?;
        let agent = Agent {
            child,
            log,
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !agent.log().contains("zerospan INFO  tracing ") {
            if Instant::now() > deadline {
                bail!("the agent did not attach:\n{}", agent.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.child.id() as i32, sig) };
    }

    /// Its counters now (SIGUSR1 prints them).
    fn stats(&self) -> String {
        let before = self.log().matches("stats: ").count();
        self.signal(SIGUSR1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.log().matches("stats: ").count() == before && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        last_stats(&self.log())
    }

    fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    /// SIGINT: flush, then the final counters.
    fn stop(mut self) -> Result<String> {
        self.signal(SIGINT);
        let status = self.child.wait()?;
        self.stopped = true;
        let log = self.log();
        if !status.success() {
            bail!("the agent exited with {status}:\n{log}");
        }
        Ok(last_stats(&log))
    }
}

fn last_stats(log: &str) -> String {
    log.lines()
        .rev()
        .find_map(|l| l.split_once("stats: ").map(|(_, s)| s.to_owned()))
        .unwrap_or_default()
}

fn rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// `hey` for `secs` at `conns` × `qps_each` requests a second, keep-alive.
fn hey(secs: u64, conns: u32, qps_each: u32) -> Result<Child> {
    Command::new("hey")
        .args(["-z", &format!("{secs}s"), "-c", &conns.to_string()])
        .args(["-q", &qps_each.to_string()])
        .arg(format!("http://127.0.0.1:{PORT}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("hey (Debian's hey; cargo xtask soak installs it)")
}

/// Requests a second, and whether any request failed, from hey's report.
fn hey_report(child: Child) -> Result<(f64, Option<String>)> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in hey's report:\n{text}"))?;
    let non_200 = text
        .lines()
        .any(|l| l.trim().starts_with('[') && !l.trim().starts_with("[200]"));
    let errors = text
        .split_once("Error distribution:")
        .map(|(_, e)| e.trim().to_owned())
        .or_else(|| non_200.then(|| "responses other than 200".to_owned()));
    Ok((rps, errors))
}

fn collector_down(root: &Path, dir: &Path, pid: u32, outage_secs: u64) -> Result<()> {
    const RATE: (u32, u32) = (8, 625);
    println!("\n## 1. The collector down for {outage_secs} s under 5,000 req/s");
    let mut sink = Sink::start(root)?;
    let agent = Agent::start(root, dir, pid, &[])?;
    let (before, errors_before) = hey_report(hey(30, RATE.0, RATE.1)?)?;
    thread::sleep(Duration::from_secs(2));
    let delivered = sink.count()?;
    sink.kill();
    let rss_start = agent.rss_mib();
    let load = hey(outage_secs, RATE.0, RATE.1)?;
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(outage_secs) {
        thread::sleep(Duration::from_secs(10));
        samples.push((started.elapsed().as_secs(), agent.rss_mib()));
    }
    let (during, errors_during) = hey_report(load)?;
    let rss_end = agent.rss_mib();
    let dropped = stat_value(&agent.stats(), "spans_dropped_export");
    let mut sink = Sink::start(root)?;
    let back = Instant::now();
    let load = hey(30, RATE.0, RATE.1)?;
    let resumed = loop {
        if sink.count()? > 0 {
            break Some(back.elapsed());
        }
        if back.elapsed() > Duration::from_secs(30) {
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let (after, errors_after) = hey_report(load)?;
    let stats = agent.stop()?;
    let max = samples.iter().map(|s| s.1).fold(rss_start, f64::max);
    println!("nginx throughput (hey): before {before:.0} req/s, collector down {during:.0}, after {after:.0}");
    for (phase, e) in [
        ("before", errors_before),
        ("down", errors_during),
        ("after", errors_after),
    ] {
        if let Some(e) = e {
            println!("hey saw errors {phase}: {e}");
        }
    }
    println!("spans delivered before the outage: {delivered}");
    println!(
        "agent RSS: {rss_start:.1} MiB as the collector went down, at most {max:.1} MiB during \
         the outage (growth {:.1} MiB), {rss_end:.1} MiB at its end",
        max - rss_start
    );
    let series: Vec<String> = samples
        .iter()
        .map(|(t, r)| format!("{t}s {r:.1}"))
        .collect();
    println!("RSS every 10 s (MiB): {}", series.join(", "));
    println!("spans dropped in the outage, counted (spans_dropped_export): {dropped}");
    match resumed {
        Some(t) => println!(
            "export resumed {:.2} s after the collector came back",
            t.as_secs_f64()
        ),
        None => println!("export did NOT resume within 30 s of the collector's return"),
    }
    println!(
        "over the whole run: spans_exported={} spans_dropped_export={} kernel_ringbuf_full={}",
        stat_value(&stats, "spans_exported"),
        stat_value(&stats, "spans_dropped_export"),
        stat_value(&stats, "kernel_ringbuf_full"),
    );
    sink.kill();
    Ok(())
}

fn bpftool(args: &[&str]) -> String {
    Command::new("bpftool")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Program ids the kernel lists now.
fn program_ids() -> Vec<u64> {
    bpftool(&["prog", "show"])
        .lines()
        .filter_map(|l| l.split_once(':')?.0.trim().parse().ok())
        .collect()
}

fn killed(root: &Path, dir: &Path, pid: u32) -> Result<()> {
    println!("\n## 2. kill -9 of the agent under load, then a new agent");
    let programs_before = program_ids();
    let cgroups_before = bpftool(&["cgroup", "tree"]).lines().count();
    let pins_before = fs::read_dir("/sys/fs/bpf").map_or(0, |d| d.count());
    let mut sink = Sink::start(root)?;
    let agent = Agent::start(root, dir, pid, &[])?;
    let ours: Vec<u64> = program_ids()
        .into_iter()
        .filter(|id| !programs_before.contains(id))
        .collect();
    // Eight keep-alive connections for 25 s; nginx never closes them.
    let load = hey(25, 8, 250)?;
    thread::sleep(Duration::from_secs(5));
    let mut agent = agent;
    agent.signal(SIGKILL);
    let _ = agent.child.wait();
    agent.stopped = true;
    thread::sleep(Duration::from_secs(2));
    let now = program_ids();
    let left = ours.iter().filter(|id| now.contains(id)).count();
    let cgroups_after = bpftool(&["cgroup", "tree"]).lines().count();
    let pins_after = fs::read_dir("/sys/fs/bpf").map_or(0, |d| d.count());
    println!(
        "the agent had {} programs loaded; 2 s after kill -9: {left} of those \
         programs left, cgroup attachments {cgroups_before} lines before → {cgroups_after} after, \
         pins in /sys/fs/bpf {pins_before} → {pins_after}",
        ours.len()
    );
    let before = sink.count()?;
    let agent = Agent::start(root, dir, pid, &[])?;
    thread::sleep(Duration::from_secs(5));
    let picked = sink.count()? - before;
    let (rps, errors) = hey_report(load)?;
    let stats = agent.stop()?;
    println!(
        "hey over the kill and the restart: {rps:.0} req/s, {}",
        errors.map_or("no errors".into(), |e| format!("errors: {e}"))
    );
    println!(
        "a new agent, started while hey's 8 connections stayed open: {picked} spans from them \
         in the 5 s after it attached (its desyncs.http={})",
        stat_value(&stats, "desyncs.http"),
    );
    sink.kill();
    Ok(())
}

/// The status nginx gives `/p/n`.
fn status_of(n: u64) -> u16 {
    if n.is_multiple_of(2) {
        200
    } else {
        404
    }
}

/// Raw keep-alive clients asking for `/p/N`, N counting up: each response's
/// status must match N's parity. Stops when `stop` is set.
struct Clients {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    mismatched: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Clients {
    fn start(n: u64) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mismatched = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|k| {
                let (stop, sent, mismatched) = (stop.clone(), sent.clone(), mismatched.clone());
                thread::spawn(move || {
                    let mut i = k;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = TcpStream::connect(("127.0.0.1", PORT)) else {
                            thread::sleep(Duration::from_millis(10));
                            continue;
                        };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        while !stop.load(Ordering::Relaxed) {
                            let path = i % PATHS;
                            i += n;
                            let req = format!("GET /p/{path} HTTP/1.1\r\nHost: soak\r\n\r\n");
                            if s.write_all(req.as_bytes()).is_err() {
                                break;
                            }
                            match read_status(&mut s) {
                                Some(status) => {
                                    sent.fetch_add(1, Ordering::Relaxed);
                                    if status != status_of(path) {
                                        mismatched.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                None => break,
                            }
                        }
                    }
                })
            })
            .collect();
        Clients {
            stop,
            sent,
            mismatched,
            threads,
        }
    }

    /// Requests answered, and answers with the wrong status.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.mismatched.load(Ordering::Relaxed),
        )
    }
}

/// One response's status, its body read by Content-Length.
fn read_status(s: &mut TcpStream) -> Option<u16> {
    let mut head = Vec::with_capacity(512);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 || head.len() > 16384 {
            return None;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).ok()?;
    Some(status)
}

/// What a traces file says of the `/p/N` requests.
struct Checked {
    spans: u64,
    /// With a status that is not N's: a response paired with another
    /// request.
    wrong: u64,
    /// Without a status, marked `zerospan.incomplete` (its response was in
    /// lost events): honest, not wrong.
    incomplete: u64,
}

fn check_traces(file: &Path) -> Result<Checked> {
    let text = fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let (mut spans, mut wrong, mut incomplete) = (0, 0, 0);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let attr = |k: &str| {
                        span["attributes"]
                            .as_array()?
                            .iter()
                            .find(|a| a["key"] == k)
                            .map(|a| a["value"].clone())
                    };
                    let Some(path) =
                        attr("url.path").and_then(|p| p["stringValue"].as_str().map(str::to_owned))
                    else {
                        continue;
                    };
                    let Some(n) = path.strip_prefix("/p/").and_then(|n| n.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    spans += 1;
                    let status = attr("http.response.status_code").and_then(|s| {
                        s["intValue"]
                            .as_str()
                            .and_then(|v| v.parse::<u64>().ok())
                            .or_else(|| s["intValue"].as_u64())
                    });
                    if status.is_none() && attr("zerospan.incomplete").is_some() {
                        incomplete += 1;
                    } else if status != Some(status_of(n).into()) {
                        wrong += 1;
                        if wrong <= 5 {
                            println!("  not its request's: {span}");
                        }
                    }
                }
            }
        }
    }
    Ok(Checked {
        spans,
        wrong,
        incomplete,
    })
}

fn overflow(root: &Path, dir: &Path, pid: u32) -> Result<()> {
    println!("\n## 3. The ring buffer overflowing: the agent stopped (SIGSTOP) for 5 s under load");
    let traces = dir.join("overflow.jsonl");
    let sink = Sink::start(root)?;
    let agent = Agent::start(
        root,
        dir,
        pid,
        &["--traces-file", &traces.display().to_string()],
    )?;
    let clients = Clients::start(8);
    thread::sleep(Duration::from_secs(3));
    agent.signal(SIGSTOP);
    thread::sleep(Duration::from_secs(5));
    agent.signal(SIGCONT);
    thread::sleep(Duration::from_secs(5));
    let (sent, answered_wrong) = clients.stop();
    let stats = agent.stop()?;
    let c = check_traces(&traces)?;
    println!(
        "{sent} requests answered ({answered_wrong} with a status nginx should not have given); \
         {} spans: {} with a status that is not their request's, {} marked incomplete (no \
         response seen)",
        c.spans, c.wrong, c.incomplete
    );
    println!(
        "drops counted: kernel_ringbuf_full={} (events lost), desyncs.http={}, \
         http_responses_lost={}",
        stat_value(&stats, "kernel_ringbuf_full"),
        stat_value(&stats, "desyncs.http"),
        stat_value(&stats, "http_responses_lost"),
    );
    sink.kill();
    Ok(())
}

/// Each bad shape, sent on its own connection.
fn bad_shapes() -> Vec<Vec<u8>> {
    let mut random = vec![0u8; 4096];
    let mut x: u32 = 0x9e37_79b9;
    for b in &mut random {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut long_line = b"GET /bad HTTP/1.1\r\nHost: soak\r\nX-Long: ".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', 1 << 20));
    long_line.extend(b"\r\n\r\n");
    let mut many = b"GET /bad HTTP/1.1\r\nHost: soak\r\n".to_vec();
    for i in 0..10_000 {
        many.extend(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    vec![
        random,
        long_line,
        many,
        b"POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc".to_vec(),
        b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec(),
        // A TLS 1.2 ClientHello's record header and the start of its body.
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x5b\x90\x9d\x9b\x72\x0b\xbc\x0c\xbc\x2b\x92\xa8\x48\x97\xcf\xbd".to_vec(),
    ]
}

fn bad_input(root: &Path, dir: &Path, pid: u32) -> Result<()> {
    println!("\n## 4. Bad input at full rate for 20 s, valid requests between");
    let traces = dir.join("bad.jsonl");
    let sink = Sink::start(root)?;
    let agent = Agent::start(
        root,
        dir,
        pid,
        &["--traces-file", &traces.display().to_string()],
    )?;
    let rss_start = agent.rss_mib();
    let stop = Arc::new(AtomicBool::new(false));
    let bad_sent = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..4)
        .map(|k| {
            let (stop, bad_sent) = (stop.clone(), bad_sent.clone());
            thread::spawn(move || {
                let shapes = bad_shapes();
                let mut i = k;
                while !stop.load(Ordering::Relaxed) {
                    let shape = &shapes[i % shapes.len()];
                    i += 1;
                    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", PORT)) {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                        let _ = s.write_all(shape);
                        let mut sink = [0u8; 4096];
                        let _ = s.read(&mut sink);
                        bad_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Slowloris: a few connections sending a head one byte at a time.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let head = b"GET /p/0 HTTP/1.1\r\nHost: soak\r\nX-Slow: ";
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", PORT)) {
                    for b in head.iter().chain(std::iter::repeat(&b'z')) {
                        if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                            break;
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        })
        .collect();
    let clients = Clients::start(2);
    let mut rss_max = rss_start;
    for _ in 0..20 {
        thread::sleep(Duration::from_secs(1));
        rss_max = rss_max.max(agent.rss_mib());
    }
    let (sent, answered_wrong) = clients.stop();
    stop.store(true, Ordering::Relaxed);
    for t in attackers.into_iter().chain(slow) {
        let _ = t.join();
    }
    let alive = agent.child.id();
    let rss_end = rss_mib(alive);
    let log = agent.log();
    let stats = agent.stop()?;
    let c = check_traces(&traces)?;
    println!(
        "{} bad connections; {sent} valid requests answered ({answered_wrong} wrongly), \
         {} spans of them: {} not their request's, {} marked incomplete",
        bad_sent.load(Ordering::Relaxed),
        c.spans,
        c.wrong,
        c.incomplete
    );
    println!(
        "agent: {}, RSS {rss_start:.1} MiB at the start, at most {rss_max:.1}, {rss_end:.1} at the end; \
         unknown protocols skipped: {}, desyncs.http={}, kernel_ringbuf_full={}",
        if log.contains("panicked") { "PANICKED" } else { "no panic" },
        stat_value(&stats, "connections_unknown_protocol"),
        stat_value(&stats, "desyncs.http"),
        stat_value(&stats, "kernel_ringbuf_full"),
    );
    sink.kill();
    Ok(())
}

/// Raises this process's soft limit on open files to `want`, within its
/// hard limit.
fn raise_open_files(want: u64) -> Result<()> {
    const RLIMIT_NOFILE: i32 = 7;
    let mut limit = [0u64; 2];
    // SAFETY: `limit` is the two-word struct rlimit.
    if unsafe { getrlimit(RLIMIT_NOFILE, limit.as_mut_ptr()) } != 0 {
        bail!("getrlimit failed");
    }
    if limit[0] >= want {
        return Ok(());
    }
    if limit[1] < want {
        bail!(
            "open files are limited to {} here; 10,000 connections need {want}",
            limit[1]
        );
    }
    limit[0] = want;
    // SAFETY: as above.
    if unsafe { setrlimit(RLIMIT_NOFILE, limit.as_ptr()) } != 0 {
        bail!("setrlimit failed");
    }
    Ok(())
}

extern "C" {
    fn getrlimit(resource: i32, limit: *mut u64) -> i32;
    fn setrlimit(resource: i32, limit: *const u64) -> i32;
}

/// Entries in the probes' socket map now.
fn socket_map_entries() -> usize {
    // With BTF bpftool prints JSON-like entries, without it `key:` lines.
    let dump = bpftool(&["map", "dump", "name", "SOCKS"]);
    dump.matches("\"key\"")
        .count()
        .max(dump.matches("key:").count())
}

fn idle_connections(root: &Path, dir: &Path, pid: u32) -> Result<()> {
    println!("\n## 5. 10,000 idle connections opened and closed");
    raise_open_files(12_000)?;
    let sink = Sink::start(root)?;
    let agent = Agent::start(root, dir, pid, &[])?;
    thread::sleep(Duration::from_secs(2));
    let (rss0, map0) = (agent.rss_mib(), socket_map_entries());
    let mut conns = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        conns.push(TcpStream::connect(("127.0.0.1", PORT)).context("an idle connection")?);
    }
    thread::sleep(Duration::from_secs(5));
    let (rss1, map1) = (agent.rss_mib(), socket_map_entries());
    drop(conns);
    thread::sleep(Duration::from_secs(10));
    let (rss2, map2) = (agent.rss_mib(), socket_map_entries());
    let stats = agent.stop()?;
    println!(
        "agent RSS {rss0:.1} MiB → {rss1:.1} with 10,000 open → {rss2:.1} after they closed; \
         socket map entries {map0} → {map1} → {map2}; connections_table_full={}",
        stat_value(&stats, "connections_table_full"),
    );
    sink.kill();
    Ok(())
}
