//! Process churn must not grow the agent: 10 000 short-lived processes
//! forked and exec'd by a traced process leave its RSS and the probes'
//! traced-process map where they were after the first thousand.

use std::{process::Command, time::Duration};

use zerospan_tests::{procs::fixture, require_root, Agent, Collector, Fixture};

/// The agent's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Gauges from the stats line the agent logs on SIGUSR1 (as of its last
/// tick, so wait for one first): processes traced, entries in the probes'
/// traced map, processes the TLS hooks know.
fn gauges(agent: &Agent) -> (u64, u64, u64) {
    std::thread::sleep(Duration::from_millis(1500));
    let before = agent.stderr().matches("stats: ").count();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGUSR1) };
    for _ in 0..100 {
        if agent.stderr().matches("stats: ").count() > before {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let gauge = |key: &str| agent.stat(key).unwrap_or_else(|| panic!("no {key}"));
    (
        gauge("traced_processes"),
        gauge("kernel_traced_entries"),
        gauge("tls_processes_known"),
    )
}

fn churn(f: &mut Fixture, n: u32) {
    f.send_line(&n.to_string());
    assert_eq!(f.read_line().trim(), "DONE");
}

#[test]
fn ten_thousand_short_lived_processes_leave_memory_flat() {
    require_root();
    let collector = Collector::start();
    let mut churner = Fixture::start(Command::new("python3").arg(fixture("churn.py")));
    let agent = Agent::for_pids(&[churner.pid()], &collector, &[]);

    churn(&mut churner, 1000);
    let gauges_warm = gauges(&agent);
    let rss_warm = rss_kib(agent.pid());
    // Only the churner is left: every child was forgotten on exit.
    assert_eq!(gauges_warm, (1, 1, 1), "{}", agent.stderr());

    churn(&mut churner, 10_000);
    let gauges_after = gauges(&agent);
    let rss_after = rss_kib(agent.pid());
    assert_eq!(gauges_after, (1, 1, 1), "{}", agent.stderr());
    // They were traced, each of them, and then let go.
    assert_eq!(agent.stat("processes_forked"), Some(11_000));
    assert!(
        rss_after <= rss_warm + 2048,
        "agent RSS grew from {rss_warm} KiB to {rss_after} KiB over 10 000 processes"
    );
    eprintln!("agent RSS after 1 000 processes: {rss_warm} KiB; after 11 000: {rss_after} KiB");
}
