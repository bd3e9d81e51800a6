//! The agent with exactly the capabilities the DaemonSet grants (read from
//! the manifest, applied with `setpriv`): TLS capture works, and where it
//! cannot, the agent and `doctor` say so instead of going quiet.
//!
//! Every protocol's tests also run once more under that set (`cargo xtask
//! test` sets `ZEROSPAN_TEST_CAPABILITIES=manifest` for a second pass);
//! these check what only a reduced set can show.

use std::{process::Command, time::Duration};

use zerospan_tests::{
    deploy::as_deployed,
    doctor_line,
    procs::{agent_binary, free_port},
    require_root, Agent, Collector, Fixture, Nginx, TempDir,
};

/// A launcher that makes tracefs read-only for the agent alone (a private
/// mount namespace), then applies the manifest's capabilities.
fn read_only_tracefs() -> Vec<String> {
    let mut prefix: Vec<String> = [
        "unshare",
        "-m",
        "sh",
        "-c",
        "mount -o remount,bind,ro /sys/kernel/tracing && exec \"$0\" \"$@\"",
    ]
    .map(String::from)
    .to_vec();
    prefix.extend(as_deployed());
    prefix
}

fn doctor_via(prefix: &[String]) -> String {
    let (launcher, rest) = prefix.split_first().expect("a launcher");
    let out = Command::new(launcher)
        .args(rest)
        .arg(agent_binary())
        .arg("doctor")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn doctor_as_deployed_is_ready_and_says_how_tls_attaches() {
    require_root();
    let report = doctor_via(&as_deployed());
    let uprobes = doctor_line(&report, "uprobes");
    assert!(uprobes[22..].starts_with(" ok "), "{report}");
    // This kernel's uprobe PMU wants CAP_SYS_ADMIN, which the DaemonSet
    // does not grant: the route is tracefs's.
    assert!(uprobes.contains("tracefs uprobe_events"), "{report}");
    assert!(report.trim_end().ends_with("result: ready"), "{report}");
}

#[test]
fn doctor_fails_when_no_uprobe_route_is_open() {
    require_root();
    let report = doctor_via(&read_only_tracefs());
    let uprobes = doctor_line(&report, "uprobes");
    assert!(
        uprobes.contains("FAIL TLS capture would be off"),
        "{report}"
    );
    assert!(report.contains("fix: grant CAP_SYS_ADMIN, or CAP_PERFMON with tracefs"));
    assert!(report.contains("result: 1 problem(s) to fix"), "{report}");
}

/// As deployed, but with tracefs read-only: HTTP still gives its spans;
/// HTTPS gives none, and the agent says why at start and counts it.
#[test]
fn tls_off_is_said_and_counted_never_silent() {
    require_root();
    let root = TempDir::new("privileges");
    std::fs::write(root.0.join("index.html"), "hello\n").unwrap();
    let (http_port, https_port) = (free_port(), free_port());
    let plain = Nginx::start(&root.0, http_port);
    let tls = Nginx::start_tls(&root.0, https_port);
    let script = format!(
        "echo READY 0; read go; \
         curl -s -o /dev/null http://127.0.0.1:{http_port}/index.html; \
         curl -sk -o /dev/null https://127.0.0.1:{https_port}/index.html; \
         echo DONE; read done"
    );
    let mut client = Fixture::start(Command::new("sh").args(["-c", &script]));
    let collector = Collector::start();
    let pids = [plain.pid(), tls.pid(), client.pid()].map(|p| p.to_string());
    let mut args = vec!["--otlp-endpoint", collector.grpc_endpoint.as_str()];
    for pid in &pids {
        args.extend(["--pid", pid.as_str()]);
    }
    let mut agent = Agent::start_via(&read_only_tracefs(), &args, &[]);
    assert!(
        agent.stderr().contains(
            "WARN  TLS capture is OFF: cannot attach uprobes to OpenSSL's internal read \
             function in /usr/lib/x86_64-linux-gnu/libssl.so.3"
        ),
        "{}",
        agent.stderr()
    );
    client.send_line("go");
    assert_eq!(client.read_line().trim(), "DONE");
    let spans = collector.wait_for(2, Duration::from_secs(10), |_| true);
    // Let anything late arrive before counting.
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.stop().success());
    let spans = collector.spans().len().max(spans.len());
    // The plaintext request, client and server; nothing from HTTPS.
    assert_eq!(spans, 2, "{}", agent.stderr());
    assert!(
        agent.stat("tls_uprobes_failed").unwrap_or(0) >= 9,
        "{}",
        agent.stderr()
    );
    assert_eq!(
        agent.stderr().matches("TLS capture is OFF").count(),
        1,
        "said once, not per probe: {}",
        agent.stderr()
    );
}
