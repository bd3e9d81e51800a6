//! HTTP/2 and gRPC end to end: real servers and clients (grpcio from
//! PyPI, nghttpd and h2load from Debian, curl), the real agent and probes,
//! spans read back from a real OTLP receiver. Run as root.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use zerospan_tests::{
    assert_child, collector::MetricPoint, procs::fixture, procs::free_port, require_root, Agent,
    Collector, Fixture, FlatSpan, TempDir,
};

/// The grpcio service fixture (see `tests/fixtures/grpc_service.py`).
fn grpc_server() -> Fixture {
    Fixture::start(
        Command::new("python3")
            .arg(fixture("grpc_service.py"))
            .arg("server"),
    )
}

fn grpc_client(port: u16, channels: u32, calls: u32) {
    let out = Command::new("python3")
        .arg(fixture("grpc_service.py"))
        .args([
            "client",
            &port.to_string(),
            &channels.to_string(),
            &calls.to_string(),
        ])
        .output()
        .expect("run the grpcio client");
    assert!(
        out.status.success(),
        "grpcio client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("DONE {}", 4 * channels * calls);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
}

fn by_name(spans: &[FlatSpan]) -> HashMap<String, &FlatSpan> {
    let mut m = HashMap::new();
    for s in spans {
        assert!(
            m.insert(s.span.name.clone(), s).is_none(),
            "two spans named {}",
            s.span.name
        );
    }
    m
}

/// The agent's clean-run counters: nothing lost, nothing guessed.
fn assert_clean(agent: &Agent) {
    for counter in [
        "desyncs.http2",
        "h2_streams_dropped",
        "kernel_ringbuf_full",
        "h2_fields_unknown",
    ] {
        assert_eq!(
            agent.stat(counter),
            Some(0),
            "{counter}:\n{}",
            agent.connections_log()
        );
    }
}

/// grpcio server and client, both traced, 8 channels at once, unary,
/// server-streaming, bidi and NOT_FOUND calls: one server and one client
/// span per call, every server span the child of its own call's client
/// span (the method names carry the call's id), statuses per the RPC
/// conventions on each side, and the call-duration metrics.
#[test]
fn grpcio_calls_on_eight_channels_give_exact_linked_spans() {
    require_root();
    let server = grpc_server();
    let collector = Collector::start();
    // -vv: should a connection go wrong, its trace is in the message.
    let mut agent = Agent::start(
        &[
            "-vv",
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--cmdline",
            r"grpc_service\.py (server|client)",
        ],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "300")],
    );
    agent.wait_for_log(
        &format!("tracing pid {} ", server.pid()),
        Duration::from_secs(30),
    );
    let (channels, rounds) = (8, 5);
    grpc_client(server.port, channels, rounds);
    let calls = (4 * channels * rounds) as usize;
    let spans = collector.wait_for(2 * calls, Duration::from_secs(20), |_| true);
    let servers: Vec<FlatSpan> = spans.iter().filter(|s| s.is_server()).cloned().collect();
    let clients: Vec<FlatSpan> = spans.iter().filter(|s| s.is_client()).cloned().collect();
    assert_eq!(servers.len(), calls, "{}", agent.final_connections_log());
    assert_eq!(clients.len(), calls, "{}", agent.final_connections_log());
    let (servers, clients) = (by_name(&servers), by_name(&clients));
    for c in 0..channels {
        for i in 0..rounds {
            for kind in ["Say", "Missing", "Count", "Chat"] {
                let name = format!("demo.Echo/{kind}{c}x{i}");
                let (sv, cl) = (servers[&name], clients[&name]);
                for s in [sv, cl] {
                    assert_eq!(s.str("rpc.system.name").as_deref(), Some("grpc"));
                    assert_eq!(s.str("rpc.method").as_deref(), Some(name.as_str()));
                    assert_eq!(s.str("network.protocol.version").as_deref(), Some("2"));
                    assert_eq!(s.str("server.address").as_deref(), Some("127.0.0.1"));
                    assert_eq!(s.int("server.port"), Some(i64::from(server.port)));
                    assert!(!s.has("zerospan.incomplete"), "{name}: {s:?}");
                }
                let status = if kind == "Missing" { "NOT_FOUND" } else { "OK" };
                assert_eq!(sv.str("rpc.response.status_code").as_deref(), Some(status));
                assert_eq!(cl.str("rpc.response.status_code").as_deref(), Some(status));
                // NOT_FOUND is the caller's error: an error on the client
                // side only.
                let sv_status = sv.span.status.as_ref().map_or(0, |s| s.code);
                let cl_status = cl.span.status.as_ref().map_or(0, |s| s.code);
                assert_eq!(sv_status, 0, "{name}");
                assert!(!sv.has("error.type"), "{name}");
                if kind == "Missing" {
                    assert_eq!(cl_status, 2, "{name}");
                    assert_eq!(cl.str("error.type").as_deref(), Some("NOT_FOUND"));
                } else {
                    assert_eq!(cl_status, 0, "{name}");
                }
                assert_child(sv, cl);
            }
        }
    }
    let durations = |name: &str, n: u64| -> Vec<MetricPoint> {
        collector.wait_for_metric("grpc", name, Duration::from_secs(10), |points| {
            points.iter().map(|p| p.count).sum::<u64>() >= n
        })
    };
    for metric in ["rpc.server.call.duration", "rpc.client.call.duration"] {
        let points = durations(metric, calls as u64);
        let newest: u64 = points
            .iter()
            .filter(|p| {
                p.str("rpc.method")
                    .is_some_and(|m| m.starts_with("demo.Echo/Missing"))
            })
            .filter(|p| p.str("rpc.response.status_code").as_deref() == Some("NOT_FOUND"))
            .map(|p| p.count)
            .max()
            .unwrap_or(0);
        assert_eq!(newest, 1, "{metric}: one NOT_FOUND call per method");
    }
    agent.stop();
    assert_clean(&agent);
}

/// Spans from curls run one per path (`curl CURL_ARGS BASE PATH`) by a
/// traced shell, so each curl is traced from its first instruction, with
/// the agent tracing `server` too. Asserts that every curl got the status
/// `statuses` names over HTTP/2.
struct Curls {
    servers: Vec<FlatSpan>,
    clients: Vec<FlatSpan>,
    agent: Agent,
    _collector: Collector,
}

/// Server spans and client spans, each in start order.
fn by_side(spans: &[FlatSpan]) -> (Vec<FlatSpan>, Vec<FlatSpan>) {
    let side = |server: bool| {
        let mut v: Vec<FlatSpan> = spans
            .iter()
            .filter(|s| s.is_server() == server)
            .cloned()
            .collect();
        v.sort_by_key(|s| s.span.start_time_unix_nano);
        v
    };
    (side(true), side(false))
}

/// Runs `script` (which starts with `read go`) in a shell the agent
/// traces with `server`, once the agent has attached: its output, the
/// collector and the agent.
fn traced_shell(server: u32, script: &str) -> (String, Collector, Agent) {
    let mut shell = Command::new("bash")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let collector = Collector::start();
    let agent = Agent::for_pids(&[server, shell.id()], &collector, &[]);
    writeln!(shell.stdin.take().unwrap(), "go").unwrap();
    let out = shell.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, collector, agent)
}

fn curls_from_a_traced_shell(
    server: u32,
    curl_args: &str,
    base: &str,
    paths: &[(&str, u16)],
) -> Curls {
    let list: Vec<String> = paths.iter().map(|(p, _)| format!("'{p}'")).collect();
    let script = format!(
        "read go; for p in {}; do \
         curl {curl_args} -w '%{{http_code}} %{{http_version}}\\n' -o /dev/null \"{base}$p\"; done",
        list.join(" ")
    );
    let (out, collector, mut agent) = traced_shell(server, &script);
    let want: String = paths.iter().map(|(_, st)| format!("{st} 2\n")).collect();
    assert_eq!(out, want);
    let spans = collector.wait_for(2 * paths.len(), Duration::from_secs(10), |_| true);
    let (servers, clients) = by_side(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (paths.len(), paths.len()),
        "{}",
        agent.final_log()
    );
    Curls {
        servers,
        clients,
        agent,
        _collector: collector,
    }
}

/// `nghttpd --no-tls`, and curl with prior knowledge: three requests, the
/// server side and the client side, exact HTTP attributes with
/// `network.protocol.version` 2.
#[test]
fn curl_with_prior_knowledge_against_nghttpd() {
    require_root();
    let dir = TempDir::new("h2c");
    fs::write(dir.0.join("index.html"), "hello over h2c\n").unwrap();
    let port = free_port();
    let nghttpd = Nghttpd::start(&dir, port);
    let base = format!("http://127.0.0.1:{port}");
    // One curl per request: curl 7.88 does not send a second request on a
    // prior-knowledge connection it reuses.
    let Curls {
        servers,
        clients,
        mut agent,
        ..
    } = curls_from_a_traced_shell(
        nghttpd.pid(),
        "-s --http2-prior-knowledge",
        &base,
        &[
            ("/index.html", 200),
            ("/missing", 404),
            ("/index.html?user=alice", 200),
        ],
    );
    let want = [
        ("/index.html", None, 200, 15),
        ("/missing", None, 404, -1),
        ("/index.html", Some("user=REDACTED"), 200, 15),
    ];
    for (i, (path, query, status, size)) in want.iter().enumerate() {
        let (s, c) = (&servers[i], &clients[i]);
        for span in [s, c] {
            assert_eq!(span.span.name, "GET");
            assert_eq!(span.str("http.request.method").as_deref(), Some("GET"));
            assert_eq!(span.str("network.protocol.version").as_deref(), Some("2"));
            assert_eq!(span.str("server.address").as_deref(), Some("127.0.0.1"));
            assert_eq!(span.int("server.port"), Some(i64::from(port)));
            assert_eq!(span.int("http.response.status_code"), Some(*status));
            assert!(!span.has("zerospan.incomplete"), "{span:?}");
        }
        assert_eq!(s.str("url.path").as_deref(), Some(*path));
        assert_eq!(s.str("url.query").as_deref(), *query);
        assert_eq!(s.str("url.scheme").as_deref(), Some("http"));
        assert_eq!(s.str("user_agent.original").as_deref(), Some("curl/7.88.1"));
        let full = match query {
            Some(q) => format!("{base}{path}?{q}"),
            None => format!("{base}{path}"),
        };
        assert_eq!(c.str("url.full"), Some(full));
        if *size >= 0 {
            assert_eq!(s.int("http.response.body.size"), Some(*size));
            assert_eq!(c.int("http.response.body.size"), Some(*size));
        }
        // A client's 404 is an error; a server's is not.
        assert_eq!(code(s), 0);
        assert_eq!(code(c), if *status >= 400 { 2 } else { 0 });
        // nghttpd accepts with no address buffer: the probes learn the
        // peer in the first read, and the link holds.
        assert_eq!(s.str("client.address").as_deref(), Some("127.0.0.1"));
        assert_child(s, c);
    }
    agent.stop();
    assert_clean(&agent);
    assert_eq!(agent.stat("connections_peer_unknown"), Some(3));
    assert_eq!(agent.stat("connections_peer_learnt"), Some(3));
}

/// h2load opens one connection with 100 streams in flight at once: 100
/// server spans, each with its status and size. (Small bodies; large
/// ones are `large_responses_on_a_hundred_streams_keep_the_framing`.)
#[test]
fn a_hundred_concurrent_streams_on_one_connection() {
    require_root();
    let dir = TempDir::new("h2load");
    fs::write(dir.0.join("index.html"), vec![b'z'; 60]).unwrap();
    let port = free_port();
    let nghttpd = Nghttpd::start(&dir, port);
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[nghttpd.pid()], &collector, &[]);
    let out = Command::new("h2load")
        .args(["-n", "100", "-c", "1", "-m", "100"])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .expect("h2load comes from nghttp2-client");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("100 succeeded"), "{report}");
    let spans = collector.wait_for(100, Duration::from_secs(10), |s| s.is_server());
    assert_eq!(spans.len(), 100, "{}", agent.final_log());
    for s in &spans {
        assert_eq!(s.str("url.path").as_deref(), Some("/index.html"));
        assert_eq!(s.int("http.response.status_code"), Some(200));
        assert_eq!(s.int("http.response.body.size"), Some(60));
        assert_eq!(s.str("network.protocol.version").as_deref(), Some("2"));
    }
    agent.stop();
    assert_clean(&agent);
}

/// Large responses on 100 concurrent streams, both sides traced: nghttpd
/// writes many frames at once (tens of KiB, DATA between HEADERS), and
/// h2load reads them so. The probes follow the frames, copying the
/// headers and leaving the DATA payloads out, so not one frame header is
/// lost: 200 exact spans a side, each server span the child of its own
/// client span, and no desync.
#[test]
fn large_responses_on_a_hundred_streams_keep_the_framing() {
    require_root();
    let dir = large_files("h2large");
    let port = free_port();
    let nghttpd = Nghttpd::start(&dir, port);
    large_responses(nghttpd.pid(), &format!("http://127.0.0.1:{port}"));
}

/// The same through TLS: nginx (`http2` on a TLS listener) and h2load,
/// both through OpenSSL, so the frames are followed in the plaintext the
/// TLS probes see. nginx hands OpenSSL up to 64 KiB at a time here (by
/// default 16 KiB, which capture in chunks would see whole).
#[test]
fn large_responses_over_tls_keep_the_framing() {
    require_root();
    let dir = large_files("h2large-tls");
    let port = free_port();
    let nginx =
        zerospan_tests::procs::Nginx::start_tls_h2_with(&dir.0, port, "ssl_buffer_size 64k;");
    large_responses(nginx.pid(), &format!("https://127.0.0.1:{port}"));
}

/// Every frame header split across syscalls, both ways: a client (the
/// `h2` package) writes its frames five octets at a time and reads seven
/// at a time, and nghttpd pads its frames (`--padding`), so the probes
/// keep their place through split headers and padded DATA. Bodies small
/// enough to be copied with their frames and large ones left out: each
/// span has its exact status and body size (padding excluded), every
/// server span is the child of its client span, and nothing desyncs.
#[test]
fn frames_split_at_every_few_octets_and_padded() {
    require_root();
    let dir = TempDir::new("h2split");
    let sizes = [0usize, 17, 3000, 20_000, 40_001];
    for (i, size) in sizes.iter().enumerate() {
        fs::write(dir.0.join(format!("s{i}")), vec![b'q'; *size]).unwrap();
    }
    let port = free_port();
    let nghttpd = Nghttpd::start_with(&dir, port, &["--padding=200"]);
    let mut paths: Vec<String> = (0..sizes.len()).map(|i| format!("/s{i}")).collect();
    paths.push("/missing".into());
    let mut client = Command::new("python3")
        .arg(fixture("h2_split_client.py"))
        .args([&port.to_string(), "5", "7", "--wait"])
        .args(&paths)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[nghttpd.pid(), client.id()], &collector, &[]);
    writeln!(client.stdin.take().unwrap(), "go").unwrap();
    let out = client.wait_with_output().unwrap();
    let mut want: Vec<(String, i64, i64)> = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| (format!("/s{i}"), 200, *size as i64))
        .collect();
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1) // WAITING
        .map(str::to_owned)
        .collect();
    assert_eq!(printed.len(), paths.len(), "{printed:?}");
    let missing_size: i64 = printed[paths.len() - 1]
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    want.push(("/missing".into(), 404, missing_size));
    let expected: Vec<String> = want
        .iter()
        .map(|(p, st, size)| format!("{p} {st} {size}"))
        .collect();
    assert_eq!(printed, expected);
    let spans = collector.wait_for(2 * want.len(), Duration::from_secs(10), |_| true);
    agent.stop();
    assert_eq!(spans.len(), 2 * want.len(), "{}", agent.final_log());
    for (path, status, size) in &want {
        let server = spans
            .iter()
            .find(|s| s.is_server() && s.str("url.path").as_deref() == Some(path.as_str()))
            .unwrap_or_else(|| panic!("no server span for {path}"));
        let url = format!("http://127.0.0.1:{port}{path}");
        let client = spans
            .iter()
            .find(|s| !s.is_server() && s.str("url.full") == Some(url.clone()))
            .unwrap_or_else(|| panic!("no client span for {path}"));
        for s in [server, client] {
            assert_eq!(s.int("http.response.status_code"), Some(*status), "{s:?}");
            assert_eq!(s.int("http.response.body.size"), Some(*size), "{s:?}");
            assert!(!s.has("zerospan.incomplete"), "{s:?}");
        }
        assert_child(server, client);
    }
    assert_clean(&agent);
    assert_eq!(agent.stat("kernel_h2_unfollowed"), Some(0));
}

/// A connection open before the agent: the probes never saw its preface,
/// so they cannot know where its frames start. The agent recognises it
/// from a small exchange it sees whole (a request written and read in one
/// piece), asks for it to be followed, and the probes place each
/// direction at the first read or write that starts with a chain of
/// well-formed frames. From then on, large responses on 100 streams keep
/// their framing, in nghttpd's writes and in the client's reads: each
/// has its span on each side, with its status and exact body size (with
/// capture in chunks, those writes lose the framing).
#[test]
fn a_connection_from_before_the_agent_finds_its_frames() {
    require_root();
    let dir = large_files("h2joined");
    fs::write(dir.0.join("first"), "before the agent\n").unwrap();
    let port = free_port();
    let nghttpd = Nghttpd::start(&dir, port);
    let mut args = vec![port.to_string(), "65536".into(), "65536".into()];
    args.extend(["/first", "--wait", "/first", "--wait"].map(String::from));
    // nghttpd takes 100 streams at once.
    for i in 0..LARGE {
        if i == 100 {
            args.push("--next".into());
        }
        args.push(format!("/b{i}"));
    }
    let mut client = Command::new("python3")
        .arg(fixture("h2_split_client.py"))
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut waiting = || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert_eq!(line.trim(), "WAITING");
    };
    waiting();
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[nghttpd.pid(), client.id()], &collector, &[]);
    writeln!(stdin, "go").unwrap();
    waiting();
    // The agent has seen the small exchange and asked for the frames to
    // be followed well before this.
    std::thread::sleep(Duration::from_secs(1));
    writeln!(stdin, "go").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(client.wait().unwrap().success());
    assert_eq!(rest.lines().count(), LARGE + 2, "{rest}");
    let path_of = |s: &FlatSpan| match s.str("url.path") {
        Some(path) if s.is_server() => path,
        _ => s
            .str("url.full")
            .and_then(|u| u.rsplit_once('/').map(|(_, p)| format!("/{p}")))
            .unwrap_or_default(),
    };
    let large = |s: &FlatSpan| path_of(s).starts_with("/b");
    let spans = collector.wait_for(2 * LARGE, Duration::from_secs(15), large);
    agent.stop();
    let (servers, clients) = large_spans(spans.iter().filter(|s| large(s)), path_of);
    assert_eq!(
        (servers.len(), clients.len()),
        (LARGE, LARGE),
        "{}",
        agent.final_log()
    );
    for s in servers.values().chain(clients.values()) {
        assert_ne!(
            s.str("zerospan.incomplete").as_deref(),
            Some("response_unparsed"),
            "{s:?}"
        );
    }
    assert_eq!(
        agent.stat("desyncs.http2"),
        Some(0),
        "{}",
        agent.connections_log()
    );
    assert_eq!(agent.stat("kernel_ringbuf_full"), Some(0));
}

/// The spans of the large files, by file and side, each checked for its
/// status and exact body size; `path_of` tells a span's path.
type BySide<'s> = HashMap<usize, &'s FlatSpan>;
fn large_spans<'s>(
    spans: impl Iterator<Item = &'s FlatSpan>,
    path_of: impl Fn(&FlatSpan) -> String,
) -> (BySide<'s>, BySide<'s>) {
    let mut servers = HashMap::new();
    let mut clients = HashMap::new();
    for s in spans {
        let path = path_of(s);
        assert_eq!(s.int("http.response.status_code"), Some(200), "{s:?}");
        let i: usize = path.strip_prefix("/b").unwrap().parse().unwrap();
        assert_eq!(
            s.int("http.response.body.size"),
            Some(40_000 + i as i64),
            "{s:?}"
        );
        let side = if s.is_server() {
            &mut servers
        } else {
            &mut clients
        };
        assert!(side.insert(i, s).is_none(), "two spans for {path}");
    }
    (servers, clients)
}

const LARGE: usize = 200;

/// `b0` … `b199`, of 40 000 octets and one more for each: a path's body
/// size is its own.
fn large_files(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    for i in 0..LARGE {
        fs::write(dir.0.join(format!("b{i}")), vec![b'z'; 40_000 + i]).unwrap();
    }
    dir
}

/// h2load, traced, asks `server` for each of the large files once, 100
/// streams at a time on one connection.
fn large_responses(server: u32, base: &str) {
    let uris: Vec<String> = (0..LARGE).map(|i| format!("{base}/b{i}")).collect();
    let script = format!(
        "read go; exec h2load -n {LARGE} -c 1 -m 100 {}",
        uris.join(" ")
    );
    let (report, collector, mut agent) = traced_shell(server, &script);
    assert!(report.contains(&format!("{LARGE} succeeded")), "{report}");
    let spans = collector.wait_for(2 * LARGE, Duration::from_secs(15), |_| true);
    agent.stop();
    let (servers, clients) = large_spans(spans.iter(), |s| {
        if s.is_server() {
            s.str("url.path").unwrap()
        } else {
            let full = s.str("url.full").unwrap();
            assert!(full.starts_with(base), "{full}");
            full[base.len()..].to_string()
        }
    });
    for s in servers.values().chain(clients.values()) {
        assert_eq!(s.str("network.protocol.version").as_deref(), Some("2"));
        assert!(!s.has("zerospan.incomplete"), "{s:?}");
    }
    assert_eq!(
        (servers.len(), clients.len()),
        (LARGE, LARGE),
        "{}",
        agent.final_log()
    );
    for (i, s) in &servers {
        assert_child(s, clients[i]);
    }
    assert_clean(&agent);
    assert_eq!(agent.stat("kernel_h2_unfollowed"), Some(0));
}

/// A gRPC connection that carried calls before the agent started: the
/// calls after it are spans, and none has a field the agent guessed. The
/// fields HPACK encodes as references into the table filled before the
/// agent came (here the repeated `:path`, `:authority`, `content-type`)
/// are left out, and the spans say so.
#[test]
fn a_connection_from_before_the_agent_never_gets_a_wrong_header() {
    require_root();
    let server = grpc_server();
    let mut client = Command::new("python3")
        .arg(fixture("grpc_service.py"))
        .args(["steady", &server.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut call = |method: &str| {
        use std::io::BufRead;
        writeln!(stdin, "{method}").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "{method}");
    };
    for _ in 0..3 {
        call("Say");
    }
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[server.pid()], &collector, &[]);
    for _ in 0..6 {
        call("Say");
    }
    call("Fresh");
    let spans = collector.wait_for(7, Duration::from_secs(10), |s| s.is_server());
    assert_eq!(spans.len(), 7, "{spans:#?}\n{}", agent.final_log());
    for s in &spans {
        // Whatever is known is right; what is not is absent and said so.
        match s.str("rpc.method") {
            Some(m) => assert!(m == "demo.Echo/Say" || m == "demo.Echo/Fresh", "{s:?}"),
            None => {
                let why = s.str("zerospan.incomplete").unwrap_or_default();
                assert!(why.contains("h2_request_fields_unknown"), "{s:?}");
                assert_eq!(s.str("http.request.method").as_deref(), Some("POST"));
            }
        }
        // Unknown `content-type`: an HTTP span, its path only if known.
        if let Some(p) = s.str("url.path") {
            assert!(p == "/demo.Echo/Say" || p == "/demo.Echo/Fresh", "{s:?}");
        }
    }
    // The method called once after the attach is a literal the agent saw.
    assert!(
        spans.iter().any(
            |s| s.str("rpc.method").as_deref() == Some("demo.Echo/Fresh")
                || s.str("url.path").as_deref() == Some("/demo.Echo/Fresh")
        ),
        "{spans:#?}"
    );
    drop(stdin);
    let _ = client.wait();
    agent.stop();
    assert!(
        agent.stat("h2_fields_unknown").unwrap_or(0) >= 5,
        "{}",
        agent.final_log()
    );
    assert_eq!(
        agent.stat("desyncs.http2"),
        Some(0),
        "{}",
        agent.final_log()
    );
}

/// The Node.js fixture (see `tests/fixtures/node/h2_service.js`), with
/// its npm dependencies installed by `cargo xtask setup`.
fn node_fixture(args: &[&str]) -> Command {
    let script = fixture("node/h2_service.js");
    assert!(
        fixture("node/node_modules/@grpc/grpc-js").exists(),
        "@grpc/grpc-js is missing: run cargo xtask setup (npm ci in tests/fixtures/node)"
    );
    let mut cmd = Command::new("node");
    cmd.arg(script).args(args);
    cmd
}

/// The agent tracing the Node.js fixtures whose command line matches
/// `cmdline` (`-vv` if `verbose`: should a connection go wrong, its trace
/// is in the failure's message), once it traces `server`.
fn agent_for_node(collector: &Collector, cmdline: &str, server: &Fixture, verbose: bool) -> Agent {
    let mut args = vec![
        "--otlp-endpoint",
        &collector.grpc_endpoint,
        "--cmdline",
        cmdline,
    ];
    if verbose {
        args.insert(0, "-vv");
    }
    let agent = Agent::start(&args, &[]);
    agent.wait_for_log(
        &format!("tracing pid {} ", server.pid()),
        Duration::from_secs(30),
    );
    agent
}

fn code(s: &FlatSpan) -> i32 {
    s.span.status.as_ref().map_or(0, |s| s.code)
}

/// @grpc/grpc-js on Node.js, server and client, over TLS through Node's
/// own OpenSSL (memory buffers: the client writes its preface before it
/// has read anything, so before the probes know its socket). Unary,
/// server-streaming, bidi and NOT_FOUND calls, all at once on three
/// channels (three connections from one event loop, each claiming its own
/// early writes): one exact span per call on each side, each server span the
/// child of its client span. (libuv accepts without asking for the peer's
/// address: the probes learn it in the connection's first read.)
#[test]
fn grpc_js_over_tls_through_nodes_openssl() {
    require_root();
    let dir = TempDir::new("grpc-js");
    let (cert, key) = zerospan_tests::procs::self_signed_cert(&dir.0);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let (rounds, channels) = (6, 3);
    let server = Fixture::start(&mut node_fixture(&[
        "grpc-server",
        &cert,
        &key,
        &rounds.to_string(),
    ]));
    let collector = Collector::start();
    let mut agent = agent_for_node(&collector, r"h2_service\.js grpc-", &server, true);
    let out = node_fixture(&[
        "grpc-client",
        &server.port.to_string(),
        &cert,
        &rounds.to_string(),
        &channels.to_string(),
    ])
    .output()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("DONE {}", 4 * rounds),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = 4 * rounds as usize;
    let spans = collector.wait_for(2 * calls, Duration::from_secs(20), |_| true);
    let servers: Vec<FlatSpan> = spans.iter().filter(|s| s.is_server()).cloned().collect();
    let clients: Vec<FlatSpan> = spans.iter().filter(|s| s.is_client()).cloned().collect();
    assert_eq!(
        (servers.len(), clients.len()),
        (calls, calls),
        "{}",
        agent.final_connections_log()
    );
    let (servers, clients) = (by_name(&servers), by_name(&clients));
    for i in 0..rounds {
        for kind in ["Say", "Missing", "Count", "Chat"] {
            let name = format!("demo.Echo/{kind}{i}");
            let (sv, cl) = (servers[&name], clients[&name]);
            for s in [sv, cl] {
                assert_eq!(s.str("rpc.system.name").as_deref(), Some("grpc"));
                assert_eq!(s.str("rpc.method").as_deref(), Some(name.as_str()));
                assert_eq!(s.str("network.protocol.version").as_deref(), Some("2"));
                assert_eq!(s.str("tls.protocol.version").as_deref(), Some("1.3"));
                assert_eq!(s.str("server.address").as_deref(), Some("localhost"));
                assert_eq!(s.int("server.port"), Some(i64::from(server.port)));
                assert!(!s.has("zerospan.incomplete"), "{name}: {s:?}");
            }
            let status = if kind == "Missing" { "NOT_FOUND" } else { "OK" };
            assert_eq!(sv.str("rpc.response.status_code").as_deref(), Some(status));
            assert_eq!(cl.str("rpc.response.status_code").as_deref(), Some(status));
            assert_eq!(code(sv), 0, "{name}");
            assert_eq!(code(cl), if kind == "Missing" { 2 } else { 0 }, "{name}");
            for s in [sv, cl] {
                assert_eq!(s.str("network.peer.address").as_deref(), Some("127.0.0.1"));
            }
            assert_child(sv, cl);
        }
    }
    agent.stop();
    assert_clean(&agent);
    for (counter, n) in [
        ("tls_writes_unclaimed", 0),
        ("kernel_tls_unattributed", 0),
        ("kernel_tls_claims_refused", 0),
        ("connections_peer_unknown", channels),
        ("connections_peer_learnt", channels),
    ] {
        assert_eq!(
            agent.stat(counter),
            Some(n),
            "{counter}\n{}",
            agent.final_connections_log()
        );
    }
}

/// Node.js's http2 module, server and client over h2c, ten requests at
/// once on one session, two of them 404s: exact spans on both sides, and
/// every server span the child of its own client span.
#[test]
fn node_http2_server_and_client() {
    require_root();
    let server = Fixture::start(&mut node_fixture(&["h2-server"]));
    let collector = Collector::start();
    let mut agent = agent_for_node(&collector, r"h2_service\.js h2-", &server, false);
    let n = 10;
    let out = node_fixture(&["h2-client", &server.port.to_string(), &n.to_string()])
        .output()
        .unwrap();
    let statuses: Vec<&str> = (0..n)
        .map(|i| if i % 5 == 4 { "404" } else { "200" })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("DONE {}", statuses.join(",")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = collector.wait_for(2 * n, Duration::from_secs(20), |_| true);
    for server_side in [true, false] {
        let mut side: Vec<&FlatSpan> = spans
            .iter()
            .filter(|s| s.is_server() == server_side)
            .collect();
        assert_eq!(side.len(), n, "{}", agent.final_log());
        side.sort_by_key(|s| s.str("url.path").or_else(|| s.str("url.full")));
        let mut want: Vec<(String, i64, i64)> = (0..n)
            .map(|i| {
                if i % 5 == 4 {
                    (format!("/missing/{i}"), 404, 0)
                } else {
                    let path = format!("/item/{i}");
                    let size = format!("item {path}\n").len() as i64;
                    (path, 200, size)
                }
            })
            .collect();
        want.sort();
        let base = format!("http://127.0.0.1:{}", server.port);
        for (s, (path, status, size)) in side.iter().zip(&want) {
            assert_eq!(s.span.name, "GET");
            assert_eq!(s.str("network.protocol.version").as_deref(), Some("2"));
            assert_eq!(s.int("http.response.status_code"), Some(*status));
            assert_eq!(s.int("http.response.body.size"), Some(*size), "{s:?}");
            assert!(!s.has("zerospan.incomplete"), "{s:?}");
            if server_side {
                assert_eq!(s.str("url.path").as_deref(), Some(path.as_str()));
            } else {
                assert_eq!(s.str("url.full"), Some(format!("{base}{path}")));
            }
        }
    }
    // Each server stream the child of the client stream that asked for
    // its path, though all ten share one connection.
    let base = format!("http://127.0.0.1:{}", server.port);
    for sv in spans.iter().filter(|s| s.is_server()) {
        let full = format!("{base}{}", sv.str("url.path").unwrap());
        let cl = spans
            .iter()
            .find(|c| c.is_client() && c.str("url.full").as_deref() == Some(full.as_str()))
            .unwrap();
        assert_child(sv, cl);
    }
    agent.stop();
    assert_clean(&agent);
}

/// Node.js runs JavaScript inside the OpenSSL read that ends a handshake
/// (the server's `secureConnection` handler). Here it wakes the event loop
/// (a write on an eventfd) and writes a line on a plain TCP connection:
/// neither syscall is the TLS call's own, so neither may name its socket,
/// and the HTTP/2 preface that read decrypts stays its own connection's.
/// Eight connections at once, so that in some the client's Finished and
/// preface arrive in one read: one exact span per request on each side,
/// each server span the child of its client span, none on the plain
/// connection, nothing lost.
#[test]
fn node_callbacks_inside_a_tls_read_never_name_its_socket() {
    require_root();
    let dir = TempDir::new("h2-tls");
    let (cert, key) = zerospan_tests::procs::self_signed_cert(&dir.0);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let server = Fixture::start(&mut node_fixture(&["h2-tls-server", &cert, &key]));
    let collector = Collector::start();
    let mut agent = agent_for_node(&collector, r"h2_service\.js h2-tls-", &server, true);
    let n = 8;
    let port = server.port.to_string();
    let out = node_fixture(&["h2-tls-client", &port, &cert, &n.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("DONE {n}"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    collector.wait_for(2 * n, Duration::from_secs(20), |_| true);
    agent.stop();
    let spans = collector.spans();
    assert_eq!(spans.len(), 2 * n, "{}", agent.connections_log());
    for i in 0..n {
        let path = format!("/conn/{i}");
        let full = format!("https://localhost:{port}{path}");
        let one = |server_side: bool| {
            let side: Vec<&FlatSpan> = spans
                .iter()
                .filter(|s| s.is_server() == server_side)
                .filter(|s| {
                    s.str("url.path").as_deref() == Some(path.as_str())
                        || s.str("url.full").as_deref() == Some(full.as_str())
                })
                .collect();
            assert_eq!(side.len(), 1, "{path}: {side:?}");
            side[0]
        };
        let (sv, cl) = (one(true), one(false));
        for s in [sv, cl] {
            assert_eq!(s.span.name, "GET");
            assert_eq!(s.str("network.protocol.version").as_deref(), Some("2"));
            assert_eq!(s.str("tls.protocol.version").as_deref(), Some("1.3"));
            assert_eq!(s.int("http.response.status_code"), Some(200));
            assert!(!s.has("zerospan.incomplete"), "{s:?}");
        }
        assert_child(sv, cl);
    }
    assert_clean(&agent);
    for counter in [
        "tls_writes_unclaimed",
        "kernel_tls_unattributed",
        "kernel_tls_claims_refused",
        "kernel_tls_calls_nested",
    ] {
        assert_eq!(
            agent.stat(counter),
            Some(0),
            "{counter}\n{}",
            agent.connections_log()
        );
    }
}

/// nginx with `http2` on a TLS listener, and `curl --http2`, which asks
/// for h2 by ALPN: both sides traced through OpenSSL, the server span the
/// child of the client's.
#[test]
fn curl_http2_against_nginx_over_tls() {
    require_root();
    let root = TempDir::new("h2-tls");
    fs::write(root.0.join("index.html"), "hello over h2 and TLS\n").unwrap();
    let port = free_port();
    let nginx = zerospan_tests::procs::Nginx::start_tls_h2(&root.0, port);
    let base = format!("https://127.0.0.1:{port}");
    let Curls {
        servers,
        clients,
        mut agent,
        ..
    } = curls_from_a_traced_shell(
        nginx.pid(),
        "-sk --http2",
        &base,
        &[("/index.html", 200), ("/missing", 404)],
    );
    assert_nginx_pages(&servers, &clients, &base, 22);
    agent.stop();
    assert_clean(&agent);
}

/// The spans of `/index.html` (200, `body` octets) then `/missing`
/// (404) fetched over h2 and TLS 1.3 from nginx: exact HTTP attributes
/// on both sides, each server span the child of its client span.
fn assert_nginx_pages(servers: &[FlatSpan], clients: &[FlatSpan], base: &str, body: i64) {
    assert_eq!((servers.len(), clients.len()), (2, 2));
    for (i, (path, status)) in [("/index.html", 200), ("/missing", 404)].iter().enumerate() {
        let (s, c) = (&servers[i], &clients[i]);
        for span in [s, c] {
            assert_eq!(span.str("http.request.method").as_deref(), Some("GET"));
            assert_eq!(span.str("network.protocol.version").as_deref(), Some("2"));
            assert_eq!(span.str("tls.protocol.version").as_deref(), Some("1.3"));
            assert_eq!(span.int("http.response.status_code"), Some(*status));
            assert!(!span.has("zerospan.incomplete"), "{span:?}");
        }
        assert_eq!(s.str("url.path").as_deref(), Some(*path));
        assert_eq!(s.str("url.scheme").as_deref(), Some("https"));
        assert_eq!(c.str("url.full"), Some(format!("{base}{path}")));
        if *status == 200 {
            assert_eq!(s.int("http.response.body.size"), Some(body));
            assert_eq!(c.int("http.response.body.size"), Some(body));
        }
        assert_child(s, c);
    }
}

/// GnuTLS carrying h2: libcurl's GnuTLS flavour (Debian's
/// libcurl3-gnutls, through `tests/fixtures/curl_gnutls.py`) fetches two
/// pages over one connection from nginx, ALPN h2. The client's spans come
/// from `gnutls_record_send`/`recv`'s plaintext, the server's from
/// OpenSSL's, each server span the child of its client span.
#[test]
fn gnutls_client_over_h2_against_nginx() {
    require_root();
    let root = TempDir::new("h2-gnutls");
    fs::write(root.0.join("index.html"), "hello over h2 and GnuTLS\n").unwrap();
    let port = free_port();
    let nginx = zerospan_tests::procs::Nginx::start_tls_h2(&root.0, port);
    let base = format!("https://127.0.0.1:{port}");
    let mut client = Command::new("python3")
        .arg(fixture("curl_gnutls.py"))
        .args([format!("{base}/index.html"), format!("{base}/missing")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "LOADED\n", "libcurl-gnutls did not load");
    // Started now, the agent finds libgnutls already mapped.
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[nginx.pid(), client.id()], &collector, &[]);
    writeln!(client.stdin.take().unwrap(), "go").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(client.wait().unwrap().success());
    assert_eq!(rest, "200 2\n404 2\n");
    let spans = collector.wait_for(4, Duration::from_secs(10), |_| true);
    let (servers, clients) = by_side(&spans);
    assert_eq!(spans.len(), 4, "{}", agent.final_log());
    assert_nginx_pages(&servers, &clients, &base, 25);
    for c in &clients {
        assert_eq!(c.res_int("process.pid"), Some(i64::from(client.id())));
    }
    // Two streams of one connection: one client port.
    assert!(servers[0].int("client.port").is_some());
    assert_eq!(servers[0].int("client.port"), servers[1].int("client.port"));
    agent.stop();
    assert_eq!(collector.spans().len(), 4, "{}", agent.final_log());
    assert_clean(&agent);
}

/// `curl --http2` on an http:// URL asks to upgrade with `Upgrade: h2c`;
/// Hypercorn (PyPI) takes it, and answers the request over HTTP/2 on
/// stream 1. Both sides traced: one span per request, the server's the
/// child of the client's.
#[test]
fn curl_upgrades_to_h2c_with_hypercorn() {
    require_root();
    let port = free_port();
    let server = Fixture::start(
        Command::new("python3")
            .arg(fixture("h2c_server.py"))
            .arg(port.to_string()),
    );
    let base = format!("http://127.0.0.1:{port}");
    let Curls {
        servers,
        clients,
        mut agent,
        ..
    } = curls_from_a_traced_shell(
        server.pid(),
        "-s --http2",
        &base,
        &[("/index.html", 200), ("/missing", 404)],
    );
    let want = [("/index.html", 200, 25), ("/missing", 404, 0)];
    for (i, (path, status, size)) in want.iter().enumerate() {
        let (s, c) = (&servers[i], &clients[i]);
        for span in [s, c] {
            assert_eq!(span.span.name, "GET");
            assert_eq!(span.str("network.protocol.version").as_deref(), Some("2"));
            assert_eq!(span.int("http.response.status_code"), Some(*status));
            assert_eq!(span.int("http.response.body.size"), Some(*size), "{span:?}");
            assert!(!span.has("zerospan.incomplete"), "{span:?}");
        }
        assert_eq!(s.str("url.path").as_deref(), Some(*path));
        assert_eq!(s.str("user_agent.original").as_deref(), Some("curl/7.88.1"));
        assert_eq!(c.str("url.full"), Some(format!("{base}{path}")));
        // curl stops reading once it has the `content-length` bytes and
        // closes, so its span ends at that read, and Hypercorn's END_STREAM
        // write may come later: the server span is the client's child,
        // but need not end first.
        assert_eq!(s.span.trace_id, c.span.trace_id);
        assert_eq!(s.span.parent_span_id, c.span.span_id);
        assert!(s.span.start_time_unix_nano >= c.span.start_time_unix_nano);
    }
    agent.stop();
    assert_clean(&agent);
    assert_eq!(agent.stat("desyncs.http"), Some(0), "{}", agent.final_log());
}

/// `nghttpd --no-tls` serving `dir`, killed when dropped.
struct Nghttpd(std::process::Child);

impl Nghttpd {
    fn start(dir: &TempDir, port: u16) -> Nghttpd {
        Nghttpd::start_with(dir, port, &[])
    }

    fn start_with(dir: &TempDir, port: u16, more: &[&str]) -> Nghttpd {
        let child = Command::new("nghttpd")
            .args(["--no-tls", "-d", &dir.0.display().to_string()])
            .args(more)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("nghttpd comes from nghttp2-server, installed by cargo xtask setup");
        let server = Nghttpd(child);
        wait_for_port(port);
        server
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Nghttpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
