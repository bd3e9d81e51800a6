//! memcached client spans end to end: a real memcached from Debian, a
//! Python client (pymemcache) traced as a command, spans read back from the
//! OTLP receiver.

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use zerospan_tests::{procs::fixture, require_root, Agent, Collector};

struct Memcached(Child);

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn memcached(port: u16) -> Memcached {
    let child = Command::new("memcached")
        .args([
            "-p",
            &port.to_string(),
            "-l",
            "127.0.0.1",
            "-U",
            "0",
            "-u",
            "root",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("memcached is installed by cargo xtask setup");
    let server = Memcached(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "memcached did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

#[test]
fn pymemcache_commands_become_spans_in_order() {
    require_root();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = memcached(port);
    let collector = Collector::start();
    let client = fixture("memcache_client.py").display().to_string();
    let port_arg = port.to_string();
    let mut agent = Agent::start(
        &[
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--",
            "python3",
            &client,
            &port_arg,
        ],
        &[],
    );
    assert!(
        agent.wait(Duration::from_secs(30)).success(),
        "{}",
        agent.stderr()
    );
    let mut spans = collector.spans();
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    let got: Vec<(String, String)> = spans
        .iter()
        .map(|s| {
            (
                s.span.name.clone(),
                s.str("db.query.text").unwrap_or_default(),
            )
        })
        .collect();
    let want = [
        ("set", "set ?"),
        ("get", "get ?"),
        ("get", "get ? ? ?"),
        ("add", "add ?"),
        ("delete", "delete ?"),
        ("incr", "incr ?"),
        ("set", "set ?"),
        ("incr", "incr ?"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want, "{}", agent.stderr());
    for s in &spans {
        assert!(s.is_client());
        assert_eq!(s.str("db.system.name").as_deref(), Some("memcached"));
        assert_eq!(
            s.str("db.operation.name").as_deref(),
            Some(s.span.name.as_str())
        );
        assert_eq!(s.str("server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.int("server.port"), Some(i64::from(port)));
        assert!(
            !s.has("error.type"),
            "NOT_STORED and NOT_FOUND are answers, not errors"
        );
        assert!(!s.has("zerospan.incomplete"));
    }
    // `set … noreply` awaits nothing: its span is just the write, far
    // shorter than the round trip the next command takes.
    assert!(
        spans[6].duration() < spans[7].duration(),
        "{:?} vs {:?}",
        spans[6].duration(),
        spans[7].duration()
    );
    assert_eq!(agent.stat("desyncs.memcached"), Some(0));
    assert_eq!(agent.stat("db_orphan_replies"), Some(0));
}
