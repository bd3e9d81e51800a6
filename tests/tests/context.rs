//! Trace context end to end: incoming `traceparent`, parent/child inside a
//! process, and across services on one host with no header at all.

use std::process::Command;
use std::time::Duration;

use zerospan_tests::{
    assert_child, curl, hex, procs::fixture, require_root, Agent, Collector, Fixture, FlatSpan,
};

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

/// The one span of `pid` with this kind.
fn span_of(spans: &[FlatSpan], pid: u32, server: bool) -> &FlatSpan {
    let found: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| s.res_int("process.pid") == Some(i64::from(pid)) && s.is_server() == server)
        .collect();
    assert_eq!(found.len(), 1, "pid {pid} server={server}: {found:#?}");
    found[0]
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
    let mut agent = Agent::for_pids(&[a.pid(), b.pid(), c.pid()], &collector, &[]);
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

/// An application instrumented with the real OpenTelemetry SDK calls an
/// uninstrumented service that zerospan traces: the service's span joins
/// the SDK's trace, as the child of the SDK's own client span.
#[test]
fn a_real_sdk_client_span_is_the_parent_of_our_server_span() {
    require_root();
    let callee = service(None);
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[callee.pid()], &collector, &[]);
    let status = Command::new("python3")
        .arg(fixture("sdk_client.py"))
        .arg(format!("http://127.0.0.1:{}/pay", callee.port))
        .arg(format!("{}/v1/traces", collector.http_endpoint))
        .status()
        .expect("python3 with opentelemetry-sdk (installed by cargo xtask setup)");
    assert!(status.success(), "the SDK client failed");
    collector.wait_for(3, Duration::from_secs(10), |_| true);
    assert!(agent.stop().success());
    let spans = collector.spans();
    let sdk_client = spans
        .iter()
        .find(|s| s.transport == "http" && s.is_client())
        .expect("the SDK's urllib CLIENT span");
    let sdk_root = spans
        .iter()
        .find(|s| s.transport == "http" && s.span.name == "checkout")
        .expect("the SDK's checkout span");
    let ours: Vec<&FlatSpan> = spans.iter().filter(|s| s.transport == "grpc").collect();
    assert_eq!(ours.len(), 1, "{spans:#?}");
    let server = ours[0];
    assert!(server.is_server());
    assert_eq!(server.str("url.path").as_deref(), Some("/pay"));
    assert_eq!(server.res_int("process.pid"), Some(i64::from(callee.pid())));
    assert_eq!(
        sdk_client.res_str("service.name").as_deref(),
        Some("sdk-caller")
    );
    assert_eq!(
        hex(&sdk_client.span.parent_span_id),
        hex(&sdk_root.span.span_id)
    );
    assert_child(server, sdk_client);
}
