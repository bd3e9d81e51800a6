//! Whole traces from event loops (issue 18): a Node.js front service that
//! calls a leaf service for every request, both traced, 200 requests at
//! concurrency 8. Every request carries its id in its path (`/front/N` →
//! `/leaf/N`), and every parent is checked by it: the goal is at least
//! 99 % whole traces, and never a wrong parent.

use std::{collections::HashMap, process::Command, time::Duration};

use zerospan_tests::{
    collector::hex, procs::fixture, require_root, Agent, Collector, Fixture, FlatSpan,
};

const REQUESTS: usize = 200;
const CONCURRENCY: usize = 8;

fn node(args: &[&str]) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(fixture("node/loop_service.js")).args(args);
    cmd
}

/// The id a span's path carries: `/front/7` and `/leaf/7a` are both 7's.
fn id_of(s: &FlatSpan) -> Option<String> {
    let path = s.str("url.path").or_else(|| {
        let full = s.str("url.full")?;
        let rest = full.split_once("://")?.1;
        Some(rest[rest.find('/')?..].to_owned())
    })?;
    let id = path.rsplit('/').next()?;
    Some(id.trim_end_matches(['a', 'b']).to_owned())
}

/// How the traces came out.
#[derive(Debug)]
struct Trees {
    /// Front requests whose calls are all its children, each with its
    /// leaf's server span as its child.
    whole: usize,
    /// Spans whose parent is a span of another request.
    wrong: usize,
}

/// Checks every front request's tree; `calls` leaf calls per request.
fn trees(spans: &[FlatSpan], calls: usize) -> Trees {
    let by_id: HashMap<String, &FlatSpan> =
        spans.iter().map(|s| (hex(&s.span.span_id), s)).collect();
    // A wrong parent, or a parent in another trace (the trace id a
    // header carried to the leaf must be its caller's).
    let wrong = spans
        .iter()
        .filter(|s| {
            by_id
                .get(&hex(&s.span.parent_span_id))
                .is_some_and(|p| id_of(p) != id_of(s) || p.span.trace_id != s.span.trace_id)
        })
        .count();
    let children = |of: &FlatSpan| -> Vec<&FlatSpan> {
        let id = hex(&of.span.span_id);
        spans
            .iter()
            .filter(|c| hex(&c.span.parent_span_id) == id)
            .collect()
    };
    let whole = spans
        .iter()
        .filter(|s| s.is_server() && s.str("url.path").is_some_and(|p| p.starts_with("/front/")))
        .filter(|front| {
            let calls_made = children(front);
            calls_made.len() == calls
                && calls_made.iter().all(|c| {
                    c.is_client()
                        && id_of(c) == id_of(front)
                        && matches!(children(c).as_slice(), [leaf] if leaf.is_server() && id_of(leaf) == id_of(c))
                })
        })
        .count();
    Trees { whole, wrong }
}

/// Runs the leaf, a front service of `shape` (see the fixture), the agent
/// tracing both, and the driver (not traced); returns the spans and the
/// agent, stopped.
fn run(shape: &str, calls: usize) -> (Vec<FlatSpan>, Agent) {
    require_root();
    let leaf = Fixture::start(&mut node(&["leaf"]));
    let leaf_port = leaf.port.to_string();
    let front = Fixture::start(&mut node(&["front", &leaf_port, shape]));
    let collector = Collector::start();
    let mut agent = Agent::start(
        &[
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--cmdline",
            r"loop_service\.js (leaf|front)",
        ],
        &[],
    );
    for pid in [leaf.pid(), front.pid()] {
        agent.wait_for_log(&format!("tracing pid {pid} "), Duration::from_secs(30));
    }
    let out = node(&[
        "drive",
        &front.port.to_string(),
        &REQUESTS.to_string(),
        &CONCURRENCY.to_string(),
    ])
    .output()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("DONE {REQUESTS}"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each request: the front's server span, its calls, and the leaf's
    // server span of each call.
    let want = REQUESTS * (1 + 2 * calls);
    collector.wait_for(want, Duration::from_secs(30), |_| true);
    assert!(agent.stop().success());
    let spans = collector.spans();
    assert_eq!(spans.len(), want, "{}", agent.stderr());
    (spans, agent)
}

/// A handler that calls the leaf on a keep-alive agent: the call is made
/// in the callback of the read that brought the request.
#[test]
fn a_node_front_service_calling_a_leaf_gives_whole_traces() {
    let (spans, agent) = run("get", 1);
    let t = trees(&spans, 1);
    assert_eq!(t.wrong, 0, "{t:?}");
    assert!(t.whole * 100 >= REQUESTS * 99, "{t:?}\n{}", agent.stderr());
    assert_eq!(agent.stat("context_parent_ambiguous"), Some(0));
}

/// Two calls in a row, the second after `await`ing the first: made in the
/// callback of the read that brought the first call's response, it is the
/// request's too.
#[test]
fn a_node_call_after_an_await_joins_its_request() {
    let (spans, agent) = run("chain", 2);
    let t = trees(&spans, 2);
    assert_eq!(t.wrong, 0, "{t:?}");
    assert!(t.whole * 100 >= REQUESTS * 99, "{t:?}\n{}", agent.stderr());
}

/// A call made from a timer: no read callback says whose it is, so it is
/// a root, counted, and never some other request's child.
#[test]
fn a_node_call_from_a_timer_stays_a_root_and_is_counted() {
    let (spans, agent) = run("timer", 1);
    let t = trees(&spans, 1);
    assert_eq!(t.wrong, 0, "{t:?}");
    assert_eq!(t.whole, 0, "{t:?}");
    assert_eq!(
        agent.stat("context_loop_unknown"),
        Some(REQUESTS as u64),
        "{}",
        agent.stderr()
    );
    // Still one whole trace per call: the leaf's span is its child.
    let roots = spans
        .iter()
        .filter(|s| s.is_client() && s.span.parent_span_id.iter().all(|&b| b == 0))
        .count();
    assert_eq!(roots, REQUESTS);
}
