//! Processes traced by what they are: a command-line regex with an
//! exclusion that wins, and a listening port, for processes that start
//! after the agent (found at exec, through the probes).

use std::{process::Command, time::Duration};

use zerospan_tests::{
    curl, procs::free_port, require_root, Agent, Collector, Fixture, FlatSpan, TempDir,
};

fn servers_of(spans: &[FlatSpan], pid: u32) -> usize {
    spans
        .iter()
        .filter(|s| s.is_server() && s.res_int("process.pid") == Some(i64::from(pid)))
        .count()
}

/// Waits until the agent says it traces `pid`.
fn wait_traced(agent: &Agent, pid: u32) {
    agent.wait_for_log(&format!("tracing pid {pid} "), Duration::from_secs(10));
}

#[test]
fn command_line_selector_with_an_exclusion_that_wins() {
    require_root();
    let dir = TempDir::new("discovery");
    std::fs::write(dir.0.join("index.html"), "found\n").unwrap();
    let collector = Collector::start();
    let mut agent = Agent::start(
        &[
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--cmdline",
            r"http_server\.py",
            "--exclude-cmdline",
            "keep-out",
        ],
        &[],
    );
    // Both start after the agent; both match the selector, one is excluded.
    let wanted = Fixture::http_server("127.0.0.1", &dir.0, &[]);
    let excluded = Fixture::start(
        Command::new("python3")
            .arg(zerospan_tests::procs::fixture("http_server.py"))
            .args(["127.0.0.1", &dir.0.display().to_string(), "keep-out"]),
    );
    wait_traced(&agent, wanted.pid());
    for f in [&wanted, &excluded] {
        curl(&["-s", "-o", "/dev/null", &f.index_url()]);
    }
    collector.wait_for(1, Duration::from_secs(10), |s| s.is_server());
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.stop().success());
    let spans = collector.spans();
    assert_eq!(servers_of(&spans, wanted.pid()), 1, "{}", agent.stderr());
    assert_eq!(servers_of(&spans, excluded.pid()), 0, "{}", agent.stderr());
    assert!(!agent
        .stderr()
        .contains(&format!("tracing pid {} ", excluded.pid())));
}

#[test]
fn port_selector_picks_up_a_server_once_it_listens() {
    require_root();
    let dir = TempDir::new("discovery-port");
    std::fs::write(dir.0.join("index.html"), "by port\n").unwrap();
    let port = free_port();
    let other = free_port();
    let collector = Collector::start();
    let mut agent = Agent::start(
        &[
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--port",
            &port.to_string(),
        ],
        &[],
    );
    let start = |p: u16| {
        Command::new("python3")
            .args(["-m", "http.server", &p.to_string(), "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(&dir.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut selected = start(port);
    let mut unselected = start(other);
    wait_traced(&agent, selected.id());
    for p in [port, other] {
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{p}/index.html"),
        ]);
    }
    collector.wait_for(1, Duration::from_secs(10), |s| s.is_server());
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.stop().success());
    let spans = collector.spans();
    assert_eq!(servers_of(&spans, selected.id()), 1, "{}", agent.stderr());
    assert_eq!(servers_of(&spans, unselected.id()), 0);
    let s = spans.iter().find(|s| s.is_server()).unwrap();
    assert_eq!(s.int("server.port"), Some(i64::from(port)));
    for c in [&mut selected, &mut unselected] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
