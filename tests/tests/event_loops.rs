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

/// The id a span carries: `/front/7`, `/leaf/7a` and `SELECT 1 AS c_7`
/// are all 7's. A Redis call carries none (its arguments are never read).
fn id_of(s: &FlatSpan) -> Option<String> {
    if let Some(query) = s.str("db.query.text") {
        return Some(query.split_once(" AS c_")?.1.trim().to_owned());
    }
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

/// A front service's server span.
fn is_front(s: &FlatSpan) -> bool {
    s.is_server() && s.str("url.path").is_some_and(|p| p.starts_with("/front/"))
}

/// The spans whose parent is `of`.
fn children<'a>(spans: &'a [FlatSpan], of: &FlatSpan) -> Vec<&'a FlatSpan> {
    spans
        .iter()
        .filter(|c| c.span.parent_span_id == of.span.span_id)
        .collect()
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
            by_id.get(&hex(&s.span.parent_span_id)).is_some_and(|p| {
                let ids_differ = id_of(s).is_some() && id_of(p) != id_of(s);
                ids_differ || p.span.trace_id != s.span.trace_id
            })
        })
        .count();
    let whole = spans
        .iter()
        .filter(|s| is_front(s))
        .filter(|front| {
            let calls_made = children(spans, front);
            let http = |c: &&FlatSpan| c.str("db.system.name").is_none();
            calls_made.len() == calls
                && calls_made.iter().all(|c| c.is_client() && (!http(c) || id_of(c) == id_of(front)))
                && calls_made.iter().filter(|c| http(c)).all(|c| {
                    matches!(children(spans, c).as_slice(), [leaf] if leaf.is_server() && id_of(leaf) == id_of(c))
                })
        })
        .count();
    Trees { whole, wrong }
}

/// Runs the leaf, a front service of `shape` (see the fixture, with `env`),
/// the agent tracing both, and the driver (not traced); returns the spans
/// and the agent, stopped. Per request: `calls` calls the front makes,
/// `served` of them to the leaf (whose server span is traced too).
fn run(shape: &str, calls: usize, served: usize, env: &[(&str, String)]) -> (Vec<FlatSpan>, Agent) {
    run_driven(shape, calls, served, env, Driver::Concurrent)
}

/// How the test drives the front.
enum Driver {
    /// `CONCURRENCY` requests at a time on keep-alive connections.
    Concurrent,
    /// Two requests in one write on each connection.
    Pipelined,
}

fn run_driven(
    shape: &str,
    calls: usize,
    served: usize,
    env: &[(&str, String)],
    driver: Driver,
) -> (Vec<FlatSpan>, Agent) {
    require_root();
    let leaf = Fixture::start(&mut node(&["leaf"]));
    let leaf_port = leaf.port.to_string();
    let mut front = node(&["front", &leaf_port, shape]);
    front.envs(env.iter().map(|(k, v)| (k, v)));
    let front = Fixture::start(&mut front);
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
    let (port, n, c) = (
        front.port.to_string(),
        REQUESTS.to_string(),
        CONCURRENCY.to_string(),
    );
    let out = match driver {
        Driver::Concurrent => node(&["drive", &port, &n, &c]),
        Driver::Pipelined => node(&["pipeline", &port, &n]),
    }
    .output()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("DONE {REQUESTS}"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each request: the front's server span, its calls, and the leaf's
    // server span of each call to it.
    let want = REQUESTS * (1 + calls + served);
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
    let (spans, agent) = run("get", 1, 1, &[]);
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
    let (spans, agent) = run("chain", 2, 2, &[]);
    let t = trees(&spans, 2);
    assert_eq!(t.wrong, 0, "{t:?}");
    assert!(t.whole * 100 >= REQUESTS * 99, "{t:?}\n{}", agent.stderr());
}

/// A call made from a timer: no read callback says whose it is, so it is
/// a root, counted, and never some other request's child.
#[test]
fn a_node_call_from_a_timer_stays_a_root_and_is_counted() {
    let (spans, agent) = run("timer", 1, 1, &[]);
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

/// `fetch` (undici, Node's own): its request is written where the
/// handler's read callback asked for it.
#[test]
fn a_node_fetch_joins_its_request() {
    let (spans, agent) = run("fetch", 1, 1, &[]);
    let t = trees(&spans, 1);
    assert_eq!(t.wrong, 0, "{t:?}");
    assert!(t.whole * 100 >= REQUESTS * 99, "{t:?}\n{}", agent.stderr());
}

/// A handler that awaits a PostgreSQL query (pg's pool, its connections
/// opened inside requests), then a Redis GET (one ioredis connection that
/// every request shares), then calls the leaf. The query and the GET are
/// always the request's children: the query carries the request's id; the
/// GET carries none, so its place is checked instead (one per request,
/// after that request's query, before its leaf call). The leaf call is
/// made after the GET's reply, and when replies to several requests come
/// back in one read, Node runs all their continuations in that one
/// callback: which call is whose cannot be known, so those stay roots,
/// counted. Never a wrong parent.
#[test]
fn a_node_handler_awaiting_postgres_and_redis_keeps_its_calls() {
    for package in ["pg", "ioredis"] {
        assert!(
            fixture(&format!("node/node_modules/{package}")).exists(),
            "{package} is missing: run cargo xtask setup (npm ci in tests/fixtures/node)"
        );
    }
    let pg = zerospan_tests::postgres::Postgres::start();
    let redis_port = zerospan_tests::procs::free_port();
    let _redis = zerospan_tests::RedisServer::start(redis_port);
    let env = [
        ("PGHOST", "127.0.0.1".to_owned()),
        ("PGPORT", pg.port.to_string()),
        ("PGUSER", "postgres".to_owned()),
        ("PGDATABASE", "postgres".to_owned()),
        ("REDIS_PORT", redis_port.to_string()),
    ];
    let (spans, agent) = run("db", 3, 1, &env);
    let t = trees(&spans, 3);
    assert_eq!(t.wrong, 0, "{t:?}");
    let fronts: Vec<&FlatSpan> = spans.iter().filter(|s| is_front(s)).collect();
    assert_eq!(fronts.len(), REQUESTS);
    let system = |c: &FlatSpan| c.str("db.system.name");
    let (mut queries, mut gets, mut leaves) = (0, 0, 0);
    for front in &fronts {
        let kids = children(&spans, front);
        let query = kids
            .iter()
            .find(|c| system(c).as_deref() == Some("postgresql"));
        let get: Vec<&&FlatSpan> = kids
            .iter()
            .filter(|c| system(c).as_deref() == Some("redis"))
            .collect();
        let leaf = kids.iter().find(|c| system(c).is_none());
        assert!(get.len() <= 1, "two Redis calls under one request: {get:?}");
        if let Some(query) = query {
            assert_eq!(id_of(query), id_of(front));
            queries += 1;
            if let [get] = get.as_slice() {
                let after = get.span.start_time_unix_nano >= query.span.end_time_unix_nano;
                let before =
                    leaf.is_none_or(|l| get.span.end_time_unix_nano <= l.span.start_time_unix_nano);
                assert!(after && before, "{get:?}");
                gets += 1;
            }
        }
        leaves += usize::from(leaf.is_some());
    }
    assert!(queries * 100 >= REQUESTS * 99, "{queries}");
    assert!(gets * 100 >= REQUESTS * 99, "{gets}");
    // Every leaf call that is not its request's child is a root, counted
    // with its reason.
    let roots = spans
        .iter()
        .filter(|s| s.is_client() && s.span.parent_span_id.iter().all(|&b| b == 0))
        .count();
    assert_eq!(roots, REQUESTS - leaves);
    let counted = agent.stat("context_parent_ambiguous").unwrap()
        + agent.stat("context_loop_unknown").unwrap();
    assert_eq!(counted, roots as u64, "{}", agent.stderr());
    eprintln!(
        "whole traces: {} of {REQUESTS}; leaf calls refused: {roots}",
        t.whole
    );
}

/// Odd requests call the leaf at once, even ones from a timer: the odd
/// requests' callbacks run while the even ones wait. The odd ones are
/// whole; the even ones are roots, counted; none is another's child.
#[test]
fn a_node_call_from_a_timer_never_joins_the_request_whose_callback_runs() {
    let (spans, agent) = run("mixed", 1, 1, &[]);
    let t = trees(&spans, 1);
    assert_eq!(t.wrong, 0, "{t:?}");
    assert!(
        t.whole * 100 >= REQUESTS / 2 * 99,
        "{t:?}\n{}",
        agent.stderr()
    );
    assert!(t.whole <= REQUESTS / 2, "{t:?}");
    assert_eq!(
        agent.stat("context_loop_unknown"),
        Some(REQUESTS as u64 / 2),
        "{}",
        agent.stderr()
    );
}

/// Two requests in one write (HTTP/1.1 pipelining): Node runs both
/// handlers in the callback of that one read, so which call is whose
/// cannot be known. Both stay roots, counted; never crossed.
#[test]
fn two_node_requests_in_one_read_give_roots_not_crossed_parents() {
    let (spans, agent) = run_driven("get", 1, 1, &[], Driver::Pipelined);
    let t = trees(&spans, 1);
    assert_eq!(t.wrong, 0, "{t:?}");
    let ambiguous = agent.stat("context_parent_ambiguous").unwrap();
    // Every refused call is counted as ambiguous, whether it reused a
    // connection (written inside the callback) or opened one (written once
    // the connect completes, outside it). A pair split across two reads
    // would be whole.
    let unknown = agent.stat("context_loop_unknown").unwrap();
    // Lost events forget which callback opened which connection: only
    // then may a refused call be counted as unknown.
    if agent.stat("kernel_ringbuf_full") == Some(0) {
        assert_eq!(unknown, 0, "{t:?}\n{}", agent.stderr());
    }
    assert_eq!(
        t.whole as u64 + ambiguous + unknown,
        REQUESTS as u64,
        "{t:?}"
    );
    assert!(ambiguous > 0, "no pair of requests shared a read?");
    eprintln!(
        "whole traces: {} of {REQUESTS}; ambiguous roots: {ambiguous}",
        t.whole
    );
}
