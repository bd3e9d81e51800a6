//! Databases: redis-benchmark against Redis and pgbench against
//! PostgreSQL, each without and then with the agent tracing the client (the
//! process that makes the calls and so gets the client spans), in
//! alternating rounds.

use std::{
    fs,
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::harness::{self, stat_value, AgentRun, ROUNDS};
const REDIS_PORT: u16 = 18379;
const PG_PORT: u16 = 18432;
const REDIS_REQUESTS: u32 = 200_000;
const PGBENCH_SECONDS: u32 = 10;

/// `SET: 123456.79 requests per second, p50=0.103 msec` → per test.
fn parse_redis_benchmark(out: &str) -> Result<Vec<(String, f64)>> {
    let rates: Vec<(String, f64)> = out
        .split(['\n', '\r'])
        .filter_map(|l| {
            let (test, rest) = l.trim().split_once(": ")?;
            let rate = rest.split_whitespace().next()?.parse().ok()?;
            rest.contains("requests per second")
                .then(|| (test.to_owned(), rate))
        })
        .collect();
    if rates.is_empty() {
        bail!("could not read redis-benchmark's output:\n{out}");
    }
    Ok(rates)
}

/// pgbench's `tps = 1234.5 (without initial connection time)` and
/// `latency average = 0.81 ms`.
fn parse_pgbench(out: &str) -> Result<(f64, f64)> {
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    match (field("tps = "), field("latency average = ")) {
        (Some(tps), Some(lat)) => Ok((tps, lat)),
        _ => bail!("could not read pgbench's output:\n{out}"),
    }
}

fn wait_for_port(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {port}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Each row: a measure's value in every baseline round, and in every
/// traced round.
type Row<'a> = (&'a str, Vec<f64>, Vec<f64>);

fn report(title: &str, rows: &[Row<'_>], runs: &[AgentRun]) {
    println!("\n{title}");
    harness::print_heading();
    for (name, b, t) in rows {
        harness::print_row(name, b, t);
    }
    let sum = |key: &str| runs.iter().map(|r| stat_value(&r.stats, key)).sum::<u64>();
    let cpu: f64 = runs.iter().map(|r| r.cpu_s).sum();
    let rss = runs.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max);
    let dropped = sum("kernel_ringbuf_full")
        + sum("kernel_args_map_full")
        + sum("spans_dropped_queue_full")
        + sum("spans_dropped_export");
    let received: u64 = runs.iter().map(|r| r.received).sum();
    // Every call traced is one span: the spans are the count of calls.
    let spans = sum("spans_created");
    println!(
        "agent CPU seconds per 100k calls: {:.3}",
        cpu / (spans as f64 / 100_000.0)
    );
    println!("agent peak RSS: {rss:.1} MiB");
    println!(
        "spans created: {spans}, received by the collector: {received}; database desyncs: {}; events and spans dropped: {dropped}",
        ["redis", "memcached", "postgresql", "mysql"]
            .map(|p| sum(&format!("desyncs.{p}")))
            .iter()
            .sum::<u64>()
    );
}

pub fn redis(root: &Path) -> Result<()> {
    let mut server = Command::new("redis-server")
        .args(["--port", &REDIS_PORT.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let result = wait_for_port(REDIS_PORT, "redis-server").and_then(|()| measure_redis(root));
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn measure_redis(root: &Path) -> Result<()> {
    let script =
        format!("redis-benchmark -p {REDIS_PORT} -q -t set,get -c 16 -n {REDIS_REQUESTS} 2>&1");
    let mut base = Vec::new();
    let mut traced = Vec::new();
    let mut runs = Vec::new();
    for round in 1..=ROUNDS {
        eprintln!("bench: redis round {round}/{ROUNDS}: baseline");
        base.push(parse_redis_benchmark(&harness::baseline(&script)?)?);
        eprintln!("bench: redis round {round}/{ROUNDS}: traced by zerospan");
        let (out, run) = harness::traced(root, &script)?;
        traced.push(parse_redis_benchmark(&out)?);
        runs.push(run);
    }
    let rate = |v: &[Vec<(String, f64)>], test: &str| -> Vec<f64> {
        v.iter()
            .filter_map(|r| r.iter().find(|(t, _)| t == test).map(|(_, x)| *x))
            .collect()
    };
    let rows = [
        ("SET requests/s", rate(&base, "SET"), rate(&traced, "SET")),
        ("GET requests/s", rate(&base, "GET"), rate(&traced, "GET")),
    ];
    report(
        &format!(
            "redis-benchmark -t set,get -c 16 -n {REDIS_REQUESTS} against redis-server, \
             {ROUNDS} alternating rounds, medians"
        ),
        &rows,
        &runs,
    );
    Ok(())
}

/// A throwaway PostgreSQL cluster, run as the `postgres` user (the server
/// refuses root).
struct Cluster {
    server: Child,
    dir: std::path::PathBuf,
    bindir: String,
}

fn as_postgres(cmd: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", "sh", "-c", cmd]);
    c
}

fn start_cluster() -> Result<Cluster> {
    let bindir = String::from_utf8(Command::new("pg_config").arg("--bindir").output()?.stdout)?;
    let bindir = bindir.trim();
    let dir = std::env::temp_dir().join(format!("zerospan-bench-pg-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let status = Command::new("chown")
        .args(["postgres:postgres", &dir.display().to_string()])
        .status()?;
    if !status.success() {
        bail!("cannot hand {} to the postgres user", dir.display());
    }
    let d = dir.display();
    let out = as_postgres(&format!(
        "{bindir}/initdb -A trust -U postgres --no-sync -D {d}/data"
    ))
    .output()?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let server = as_postgres(&format!(
        "exec {bindir}/postgres -D {d}/data -p {PG_PORT} -k {d} \
         -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    ))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .context("starting postgres")?;
    let cluster = Cluster {
        server,
        dir,
        bindir: bindir.to_owned(),
    };
    wait_for_port(PG_PORT, "postgres")?;
    let out = Command::new("pgbench")
        .args(["-i", "-q", "-s", "2", "-h", "127.0.0.1", "-p"])
        .arg(PG_PORT.to_string())
        .args(["-U", "postgres", "postgres"])
        .output()?;
    if !out.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(cluster)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&format!(
            "{}/pg_ctl -D {}/data stop -m fast",
            self.bindir,
            self.dir.display()
        ))
        .output();
        let _ = self.server.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn postgres(root: &Path) -> Result<()> {
    let _cluster = start_cluster()?;
    let script = format!(
        "pgbench -n -M extended -c 4 -j 2 -T {PGBENCH_SECONDS} -h 127.0.0.1 -p {PG_PORT} \
         -U postgres postgres 2>&1"
    );
    let mut base = Vec::new();
    let mut traced = Vec::new();
    let mut runs = Vec::new();
    for round in 1..=ROUNDS {
        eprintln!("bench: pgbench round {round}/{ROUNDS}: baseline, {PGBENCH_SECONDS}s");
        base.push(parse_pgbench(&harness::baseline(&script)?)?);
        eprintln!("bench: pgbench round {round}/{ROUNDS}: traced by zerospan, {PGBENCH_SECONDS}s");
        let (out, run) = harness::traced(root, &script)?;
        traced.push(parse_pgbench(&out)?);
        runs.push(run);
    }
    let med = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).collect::<Vec<_>>();
    let tps = |r: &(f64, f64)| r.0;
    let lat = |r: &(f64, f64)| r.1;
    let rows = [
        ("transactions/s", med(&base, tps), med(&traced, tps)),
        ("latency average (ms)", med(&base, lat), med(&traced, lat)),
    ];
    report(
        &format!(
            "pgbench -M extended -c 4 -T {PGBENCH_SECONDS} (TPC-B-like, scale 2) against \
             PostgreSQL, {ROUNDS} alternating rounds, medians"
        ),
        &rows,
        &runs,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_redis_benchmark_and_pgbench_output() {
        let out = "SET: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\r\
                   SET: 98765.43 requests per second, p50=0.111 msec\n\
                   GET: 123456.79 requests per second, p50=0.103 msec\n";
        let r = super::parse_redis_benchmark(out).unwrap();
        assert_eq!(r, vec![("SET".into(), 98765.43), ("GET".into(), 123456.79)]);
        let pg = "latency average = 0.812 ms\ninitial connection time = 3.2 ms\n\
                  tps = 1234.567890 (without initial connection time)\n";
        assert_eq!(super::parse_pgbench(pg).unwrap(), (1234.56789, 0.812));
    }
}
