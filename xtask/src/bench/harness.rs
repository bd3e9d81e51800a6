//! What every benchmark shares: the agent attached to a process for one
//! round, exporting over OTLP/gRPC to a receiver that decodes every request
//! and counts the spans, and what that round cost the agent.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, ChildStderr, ChildStdout, Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// What one traced round cost the agent.
pub struct AgentRun {
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
    pub stats: String,
    pub received: u64,
}

/// The agent tracing one process, and the receiver it exports to.
pub struct Attached {
    sink: Child,
    sink_out: BufReader<ChildStdout>,
    agent: Child,
    stderr: BufReader<ChildStderr>,
    cpu_before: f64,
}

impl Attached {
    /// Starts the receiver and the agent on `pid`; returns once tracing.
    pub fn start(root: &Path, pid: u32) -> Result<Attached> {
        Self::start_with(root, pid, &[])
    }

    /// As [`Attached::start`], with more agent options.
    pub fn start_with(root: &Path, pid: u32, options: &[&str]) -> Result<Attached> {
        let mut sink = Command::new(root.join("target/release/otlp-sink"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the OTLP receiver")?;
        let mut sink_out = BufReader::new(sink.stdout.take().context("receiver stdout")?);
        let mut ready = String::new();
        sink_out.read_line(&mut ready)?;
        let endpoint = ready
            .trim()
            .strip_prefix("READY ")
            .with_context(|| format!("the OTLP receiver did not start: {ready:?}"))?
            .to_owned();
        let bin = root.join("target/release/zerospan");
        let mut agent = Command::new(&bin)
            .args(["--pid", &pid.to_string()])
            .args(["--otlp-endpoint", &endpoint])
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut stderr = BufReader::new(agent.stderr.take().context("agent stderr")?);
        let mut line = String::new();
        loop {
            line.clear();
            if stderr.read_line(&mut line)? == 0 {
                bail!("the agent exited before it attached");
            }
            if line.contains("tracing ") {
                break;
            }
        }
        let cpu_before = cpu_seconds(agent.id());
        Ok(Attached {
            sink,
            sink_out,
            agent,
            stderr,
            cpu_before,
        })
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.agent.id()
    }

    /// Lets the agent drain and export, stops it, and reports the round.
    pub fn finish(mut self) -> Result<AgentRun> {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let pid = self.agent.id();
        let cpu_s = cpu_seconds(pid) - self.cpu_before;
        let peak_rss_mib = peak_rss_mib(pid);
        // SIGINT: the agent flushes and prints its stats.
        // SAFETY: signalling our own child.
        unsafe { libc_kill(pid as i32, 2) };
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest)?;
        let _ = self.agent.wait();
        let stats = rest
            .lines()
            .rev()
            .find_map(|l| l.split_once("stats: ").map(|(_, s)| s.to_owned()))
            .unwrap_or_default();
        drop(self.sink.stdin.take());
        let mut received = String::new();
        self.sink_out.read_line(&mut received)?;
        let _ = self.sink.wait();
        let received = received
            .trim()
            .strip_prefix("SPANS ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("the OTLP receiver did not report: {received:?}"))?;
        Ok(AgentRun {
            cpu_s,
            peak_rss_mib,
            stats,
            received,
        })
    }
}

/// An early return (a failed round) stops the agent and the receiver
/// rather than leave them running, the agent's probes still attached.
impl Drop for Attached {
    fn drop(&mut self) {
        // Both are reaped already after `finish`: then these do nothing.
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        let _ = self.sink.kill();
        let _ = self.sink.wait();
    }
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after comm.
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A counter from the agent's stats line, which shows only those that are
/// not zero; a name the agent does not declare panics rather than read 0.
pub fn stat_value(stats: &str, key: &str) -> u64 {
    let shown = stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok());
    // `name.protocol`: a counter kept by protocol, by a protocol the
    // detector table names.
    let (counter, protocol) = key.split_once('.').unwrap_or((key, ""));
    let protocols = include_str!("../../../agent/src/conn/detect.rs");
    assert!(
        protocol.is_empty() || protocols.contains(&format!("protocol: \"{protocol}\"")),
        "the agent has no protocol {protocol:?}"
    );
    let declared = include_str!("../../../agent/src/stats.rs")
        .lines()
        .filter_map(|l| l.trim().strip_suffix(','))
        .any(|l| {
            l.split_once(' ').is_some_and(|(kind, name)| {
                ["total", "loss", "gauge"].contains(&kind) && name == counter
            })
        });
    assert!(
        shown.is_some() || declared,
        "the agent has no counter {key:?}"
    );
    shown.unwrap_or(0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rounds per side, alternating baseline and traced: enough for a median
/// and a spread that say how far one run can be trusted.
pub const ROUNDS: u32 = 5;

/// The smallest and largest of `v`.
fn spread(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// The heading of a table [`print_row`] fills.
pub fn print_heading() {
    println!(
        "{:<28}{:>14}{:>14}{:>10}   spread over the rounds (baseline; traced)",
        "", "baseline", "traced", "ratio"
    );
}

/// One measure's medians, baseline and traced, their ratio, and each
/// side's lowest and highest round.
pub fn print_row(name: &str, base: &[f64], traced: &[f64]) {
    let (b, t) = (median(base.to_vec()), median(traced.to_vec()));
    let ((b0, b1), (t0, t1)) = (spread(base), spread(traced));
    println!(
        "{name:<28}{b:>14.3}{t:>14.3}{:>10.3}   {b0:.3}–{b1:.3}; {t0:.3}–{t1:.3}",
        t / b
    );
}

/// A load generator run as a child of a shell that waits for a line on
/// stdin before it starts and another before it exits: the agent attaches
/// to the shell (and follows its fork) before any load, and can be
/// stopped and measured while the shell still lives.
pub struct Gated {
    shell: Child,
    out: BufReader<ChildStdout>,
}

const DONE: &str = "ZEROSPAN-BENCH-DONE";

impl Gated {
    pub fn spawn(script: &str) -> Result<Gated> {
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(format!("read go; {script}; echo {DONE}; read done"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the load generator's shell")?;
        let out = BufReader::new(shell.stdout.take().context("shell stdout")?);
        Ok(Gated { shell, out })
    }

    pub fn pid(&self) -> u32 {
        self.shell.id()
    }

    /// Starts the load and returns its output once it finished.
    pub fn run(&mut self) -> Result<String> {
        use std::io::Write as _;
        let stdin = self.shell.stdin.as_mut().context("shell stdin")?;
        writeln!(stdin, "go")?;
        let mut out = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.out.read_line(&mut line)? == 0 {
                bail!("the load generator stopped early:\n{out}");
            }
            if line.trim() == DONE {
                return Ok(out);
            }
            out.push_str(&line);
        }
    }

    pub fn end(mut self) {
        drop(self.shell.stdin.take());
        let _ = self.shell.wait();
    }
}

/// Runs `script` under a gate, without the agent.
pub fn baseline(script: &str) -> Result<String> {
    let mut g = Gated::spawn(script)?;
    let out = g.run();
    g.end();
    out
}

/// Runs `script` under a gate, traced by the agent.
pub fn traced(root: &Path, script: &str) -> Result<(String, AgentRun)> {
    traced_with(root, script, &[])
}

/// As [`traced`], with more agent options.
pub fn traced_with(root: &Path, script: &str, options: &[&str]) -> Result<(String, AgentRun)> {
    let mut g = Gated::spawn(script)?;
    let attached = Attached::start_with(root, g.pid(), options)?;
    let out = g.run()?;
    let run = attached.finish()?;
    g.end();
    Ok((out, run))
}

extern "C" {
    #[link_name = "kill"]
    pub fn libc_kill(pid: i32, sig: i32) -> i32;
}
