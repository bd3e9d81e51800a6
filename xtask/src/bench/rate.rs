//! A fixed rate, as users feel the agent: hey (Debian) holding 20,000
//! requests/s (32 workers × 625: hey's rate limiter holds no more than
//! some 1,300 requests/s a worker here) against nginx over plaintext
//! keep-alive, a rate the baseline holds on this machine, without
//! and then with the agent tracing nginx, in alternating rounds. Not
//! throughput but latency: p50, p99 and p99.9 of every request's service
//! time, from hey's CSV of them (which gives each to 0.1 ms). hey times a
//! request from its send, so a request held back behind a slow one is not
//! counted as waiting: the tails understate an open-loop client's.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use super::{
    harness::{libc_kill, median, print_heading, print_row, stat_value, Attached, ROUNDS},
    http::{start_nginx, DURATION_S, PORT},
};

const WORKERS: u32 = 32;
const RATE: u32 = 20_000;

/// One hey round.
struct Hey {
    /// Requests answered 200, and others (errors are not in the CSV).
    ok: u64,
    other: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

/// The `p`th quantile of sorted `v` (nearest rank).
fn quantile(v: &[f64], p: f64) -> f64 {
    let rank = (p * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Reads hey's CSV (`response-time,DNS+dialup,DNS,Request-write,
/// Response-delay,Response-read,status-code,offset`, times in seconds).
fn parse_csv(out: &str, seconds: u32) -> Result<Hey> {
    let (mut times, mut other) = (Vec::new(), 0);
    for line in out.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let [time, .., status, _offset] = f[..] else {
            bail!("not a line of hey's CSV: {line:?}");
        };
        times.push(time.parse::<f64>().context("hey's response time")? * 1e3);
        if status != "200" {
            other += 1;
        }
    }
    if times.is_empty() {
        bail!("hey answered no request:\n{out}");
    }
    times.sort_by(f64::total_cmp);
    Ok(Hey {
        ok: times.len() as u64 - other,
        other,
        rate: times.len() as f64 / f64::from(seconds),
        p50_ms: quantile(&times, 0.5),
        p99_ms: quantile(&times, 0.99),
        p999_ms: quantile(&times, 0.999),
    })
}

fn hey(url: &str, seconds: u32) -> Result<Hey> {
    let out = Command::new("hey")
        .args(["-z", &format!("{seconds}s")])
        .args(["-c", &WORKERS.to_string()])
        .args(["-q", &(RATE / WORKERS).to_string()])
        .args(["-o", "csv", url])
        .output()
        .context("running hey (Debian's hey package; `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!("hey failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_csv(&String::from_utf8_lossy(&out.stdout), seconds)
}

pub fn run(root: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("zerospan-bench-rate-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let mut nginx = start_nginx(&dir)?;
    let result = measure(root, nginx.id());
    // SAFETY: signalling our own child.
    unsafe { libc_kill(nginx.id() as i32, 15) };
    let _ = nginx.wait();
    let _ = fs::remove_dir_all(&dir);
    result
}

fn measure(root: &Path, nginx: u32) -> Result<()> {
    let url = format!("http://127.0.0.1:{PORT}/index.html");
    eprintln!("bench: rate: warming up");
    hey(&url, 2)?;
    let (mut base, mut traced, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        eprintln!("bench: rate round {round}/{ROUNDS}: baseline, {DURATION_S}s at {RATE}/s");
        base.push(hey(&url, DURATION_S)?);
        eprintln!("bench: rate round {round}/{ROUNDS}: traced by zerospan");
        let attached = Attached::start(root, nginx)?;
        traced.push(hey(&url, DURATION_S)?);
        runs.push(attached.finish()?);
    }
    println!(
        "\nzerospan benchmark: hey -c{WORKERS} -q{} -z{DURATION_S}s (a fixed {RATE} requests/s) \
         against nginx (1 worker) over http, keep-alive, {ROUNDS} alternating rounds, medians; \
         latencies to hey's 0.1 ms",
        RATE / WORKERS
    );
    print_heading();
    for (name, f) in [
        ("requests/s held", (|h: &Hey| h.rate) as fn(&Hey) -> f64),
        ("latency p50 (ms)", |h: &Hey| h.p50_ms),
        ("latency p99 (ms)", |h: &Hey| h.p99_ms),
        ("latency p99.9 (ms)", |h: &Hey| h.p999_ms),
    ] {
        let of = |v: &[Hey]| v.iter().map(f).collect::<Vec<_>>();
        print_row(name, &of(&base), &of(&traced));
    }
    let held = median(base.iter().map(|h| h.rate).collect());
    if held < 0.95 * f64::from(RATE) {
        println!(
            "the baseline held only {held:.0} requests/s of the {RATE} asked: the load \
             generator or the machine, not the agent, set the rate"
        );
    }
    let answered = |v: &[Hey]| v.iter().map(|h| h.ok).sum::<u64>();
    let other = |v: &[Hey]| v.iter().map(|h| h.other).sum::<u64>();
    let stat = |k: &str| runs.iter().map(|r| stat_value(&r.stats, k)).sum::<u64>();
    let dropped: u64 = [
        "kernel_ringbuf_full",
        "kernel_args_map_full",
        "spans_dropped_queue_full",
        "spans_dropped_export",
    ]
    .iter()
    .map(|k| stat(k))
    .sum();
    println!(
        "answered 200: {} baseline, {} traced; other statuses: {}, {}",
        answered(&base),
        answered(&traced),
        other(&base),
        other(&traced)
    );
    println!(
        "spans created: {}, received by the collector: {}; events and spans dropped: {dropped}",
        stat("spans_created"),
        runs.iter().map(|r| r.received).sum::<u64>()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_heys_csv_and_takes_nearest_rank_quantiles() {
        let mut csv = String::from(
            "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n",
        );
        for i in 1..=1000 {
            let status = if i == 7 { 503 } else { 200 };
            csv.push_str(&format!(
                "{:.4},0.0000,0.0000,0.0000,0.0001,0.0000,{status},{:.4}\n",
                f64::from(i) / 1e4,
                f64::from(i) / 1e3
            ));
        }
        let h = parse_csv(&csv, 2).unwrap();
        assert_eq!((h.ok, h.other), (999, 1));
        assert!((h.rate - 500.0).abs() < 1e-9);
        assert!((h.p50_ms - 50.0).abs() < 1e-9);
        assert!((h.p99_ms - 99.0).abs() < 1e-9);
        assert!((h.p999_ms - 99.9).abs() < 1e-9);
        assert!(parse_csv("response-time\n", 1).is_err());
    }
}
