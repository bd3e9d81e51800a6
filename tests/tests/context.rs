//! Trace context end to end: incoming `traceparent`, parent/child inside a
//! process, and across services on one host with no header at all.

use std::process::Command;
use std::time::Duration;

use zerospan_tests::{curl, procs::fixture, require_root, Agent, Collector, Fixture, FlatSpan};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn service(next: Option<u16>) -> Fixture {
    let mut cmd = Command::new("python3");
    cmd.arg(fixture("chain_service.py"));
    if let Some(port) = next {
        cmd.arg(format!("http://127.0.0.1:{port}"));
    }
    Fixture::start(&mut cmd)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span of `pid` with this kind.
fn span_of(spans: &[FlatSpan], pid: u32, server: bool) -> &FlatSpan {
    let found: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| s.res_int("process.pid") == Some(i64::from(pid)) && s.is_server() == server)
        .collect();
    assert_eq!(found.len(), 1, "pid {pid} server={server}: {found:#?}");
    found[0]
}

fn assert_child(child: &FlatSpan, parent: &FlatSpan) {
    assert_eq!(child.span.trace_id, parent.span.trace_id);
    assert_eq!(hex(&child.span.parent_span_id), hex(&parent.span.span_id));
    assert!(child.span.start_time_unix_nano >= parent.span.start_time_unix_nano);
    assert!(child.span.end_time_unix_nano <= parent.span.end_time_unix_nano);
}

/// curl → A → B → C, three Python services traced by one agent. curl sends
/// a traceparent; everything after it is linked by the agent alone.
#[test]
fn three_services_form_one_trace_under_the_callers_traceparent() {
    require_root();
    let c = service(None);
    let b = service(Some(c.port));
    let a = service(Some(b.port));
    let collector = Collector::start();
    let mut agent = Agent::start(
        &[
            "--pid",
            &a.pid().to_string(),
            "--pid",
            &b.pid().to_string(),
            "--pid",
            &c.pid().to_string(),
            "--otlp-endpoint",
            &collector.grpc_endpoint,
        ],
        &[],
    );
    let header = format!("traceparent: 00-{TRACE}-{PARENT}-01");
    let body = curl(&[
        "-s",
        "-H",
        &header,
        &format!("http://127.0.0.1:{}/work", a.port),
    ]);
    assert_eq!(body, "via:via:leaf");
    // A malformed header is ignored (and counted): a fresh trace starts.
    curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-H",
        "traceparent: 00-nope",
        &format!("http://127.0.0.1:{}/bad", c.port),
    ]);
    collector.wait_for(6, Duration::from_secs(10), |_| true);
    assert!(agent.stop().success());
    let all = collector.spans();
    let spans: Vec<FlatSpan> = all
        .iter()
        .filter(|s| {
            s.str("url.path").as_deref() != Some("/bad")
                && s.str("url.full").is_none_or(|u| u.ends_with("/work"))
        })
        .cloned()
        .collect();
    assert_eq!(spans.len(), 5, "{all:#?}\n{}", agent.stderr());

    let a_server = span_of(&spans, a.pid(), true);
    let a_client = span_of(&spans, a.pid(), false);
    let b_server = span_of(&spans, b.pid(), true);
    let b_client = span_of(&spans, b.pid(), false);
    let c_server = span_of(&spans, c.pid(), true);
    assert_eq!(hex(&a_server.span.trace_id), TRACE);
    assert_eq!(hex(&a_server.span.parent_span_id), PARENT);
    eprintln!(
        "A server tid {:?} client tid {:?} {}",
        a_server.int("thread.id"),
        a_client.int("thread.id"),
        agent.stderr()
    );
    assert_child(a_client, a_server);
    assert_child(b_server, a_client);
    assert_child(b_client, b_server);
    assert_child(c_server, b_client);
    for s in &spans {
        assert_eq!(hex(&s.span.trace_id), TRACE);
    }

    let bad = all
        .iter()
        .find(|s| s.str("url.path").as_deref() == Some("/bad"))
        .unwrap();
    assert!(
        bad.span.parent_span_id.is_empty(),
        "a malformed traceparent is not trusted"
    );
    assert_ne!(hex(&bad.span.trace_id), TRACE);
    assert_eq!(agent.stat("context_traceparent_malformed"), Some(1));
    assert_eq!(agent.stat("context_linked_same_host"), Some(2));
}
