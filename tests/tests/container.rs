//! `container.id` from the cgroup, with no container runtime: the test puts
//! a real server in a cgroup named as docker names its containers', and its
//! spans carry the id.

use std::{process::Command, time::Duration};

use zerospan_tests::{curl, require_root, Agent, Cgroup, Collector, Fixture, TempDir};

#[test]
fn spans_of_a_containerised_process_carry_its_container_id() {
    require_root();
    let id = "4a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d";
    let dir = TempDir::new("container");
    std::fs::write(dir.0.join("index.html"), "in a box\n").unwrap();
    let server = Fixture::http_server("127.0.0.1", &dir.0, &[]);
    let group = Cgroup::new(
        &format!("zerospan-test-{}/docker-{id}.scope", std::process::id()),
        "this test needs one to stand in for a container runtime",
    );
    std::fs::write(group.dir.join("cgroup.procs"), server.pid().to_string()).unwrap();
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[server.pid()], &collector, &[]);
    curl(&["-s", "-o", "/dev/null", &server.index_url()]);
    let spans = collector.wait_for(1, Duration::from_secs(10), |s| s.is_server());
    assert!(agent.stop().success());
    assert_eq!(spans.len(), 1, "{}", agent.stderr());
    assert_eq!(spans[0].res_str("container.id").as_deref(), Some(id));
    // Out of the cgroup before it is removed.
    drop(server);
    std::thread::sleep(Duration::from_millis(200));
}

/// `--containers-only` narrows a selector to containerised processes: of
/// two servers started the same way, only the one in a container's cgroup
/// is traced.
#[test]
fn containers_only_narrows_a_selector_to_containers() {
    require_root();
    let id = "5b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e";
    let dir = TempDir::new("containers-only");
    std::fs::write(dir.0.join("index.html"), "boxed or not\n").unwrap();
    let group = Cgroup::new(
        &format!("zerospan-only-{}/docker-{id}.scope", std::process::id()),
        "this test needs one to stand in for a container runtime",
    );
    let collector = Collector::start();
    let mut agent = Agent::start(
        &[
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--cmdline",
            r"http_server\.py .* containers-only-test",
            "--containers-only",
        ],
        &[],
    );
    let server_py = zerospan_tests::procs::fixture("http_server.py");
    let root = dir.0.display().to_string();
    // In the container's cgroup before it execs the server.
    let inside = Fixture::http_server_in(&group, &dir.0, &["containers-only-test"]);
    // The same server, the same marker, outside any container.
    let outside = Fixture::start(Command::new("python3").args([
        &server_py.display().to_string(),
        "127.0.0.1",
        &root,
        "containers-only-test",
    ]));
    agent.wait_for_log(
        &format!("tracing pid {} ", inside.pid()),
        Duration::from_secs(10),
    );
    for f in [&inside, &outside] {
        curl(&["-s", "-o", "/dev/null", &f.index_url()]);
    }
    collector.wait_for(1, Duration::from_secs(10), |s| s.is_server());
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.stop().success());
    let spans = collector.spans();
    assert_eq!(spans.len(), 1, "{}", agent.stderr());
    assert_eq!(
        spans[0].res_int("process.pid"),
        Some(i64::from(inside.pid()))
    );
    assert_eq!(spans[0].res_str("container.id").as_deref(), Some(id));
    assert!(!agent
        .stderr()
        .contains(&format!("tracing pid {} ", outside.pid())));
    drop(inside);
    std::thread::sleep(Duration::from_millis(200));
}
