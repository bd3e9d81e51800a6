//! HTTP/1.x end to end: the real agent, real eBPF, real servers and clients,
//! spans read back from a real OTLP receiver. Run as root.

use std::{collections::HashSet, fs, process::Command, time::Duration};

use zerospan_tests::{
    collector::flatten, curl, curl_user_agent, procs::free_port, require_root, Agent, Collector,
    Fixture, FlatSpan, Nginx, TempDir,
};

const INDEX: &str = "hello zerospan\n";

/// How much later than its client's span a server span may end: the
/// server's last write returns a moment after the peer's read may already
/// have returned with the bytes (seen: 161 ns).
const END_SLACK_NS: u64 = 1_000_000;

fn site() -> TempDir {
    let dir = TempDir::new("site");
    fs::write(dir.0.join("index.html"), INDEX).unwrap();
    fs::write(dir.0.join("big.bin"), vec![b'z'; 5 << 20]).unwrap();
    dir
}

fn exe_name(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

fn servers(spans: &[FlatSpan]) -> Vec<FlatSpan> {
    let mut v: Vec<FlatSpan> = spans.iter().filter(|s| s.is_server()).cloned().collect();
    v.sort_by_key(|s| s.span.start_time_unix_nano);
    v
}

fn clients(spans: &[FlatSpan]) -> Vec<FlatSpan> {
    let mut v: Vec<FlatSpan> = spans.iter().filter(|s| s.is_client()).cloned().collect();
    v.sort_by_key(|s| s.span.start_time_unix_nano);
    v
}

#[test]
fn python_http_server_keep_alive_gives_one_exact_span_per_request() {
    require_root();
    let dir = site();
    let server = Fixture::http_server("127.0.0.1", &dir.0, &[("OTEL_SERVICE_NAME", "fixture-web")]);
    let port = server.port;
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[server.pid()], &collector, &[]);

    // One curl: 50 hits on one keep-alive connection, then 5 misses (which
    // http.server answers with `Connection: close`, so each gets its own
    // connection) and 2 server errors.
    let mut args: Vec<String> = vec![
        "-s".into(),
        "-w".into(),
        "%{http_code} %{local_port} %{time_total}\\n".into(),
    ];
    let mut expected = Vec::new();
    for i in 0..50 {
        args.push("-o".into());
        args.push("/dev/null".into());
        args.push(format!(
            "http://127.0.0.1:{port}/index.html?user=alice&id={i}"
        ));
        expected.push(("/index.html", 200));
    }
    for i in 0..5 {
        args.extend([
            "-o".into(),
            "/dev/null".into(),
            format!("http://127.0.0.1:{port}/missing-{i}"),
        ]);
        expected.push(("/missing", 404));
    }
    for _ in 0..2 {
        args.extend([
            "-o".into(),
            "/dev/null".into(),
            format!("http://127.0.0.1:{port}/status/503"),
        ]);
        expected.push(("/status/503", 503));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&args);
    let transfers: Vec<(u16, u16, f64)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(transfers.len(), 57);
    let client_port = transfers[0].1;
    assert!(
        transfers[..50].iter().all(|t| t.1 == client_port),
        "curl did not keep one connection alive: {out}"
    );

    collector.wait_for(57, Duration::from_secs(10), |s| s.is_server());
    assert!(agent.stop().success(), "{}", agent.stderr());
    let spans = servers(&collector.spans());
    assert_eq!(
        spans.len(),
        57,
        "exactly one SERVER span per request:\n{}",
        agent.stderr()
    );

    let ua = curl_user_agent();
    let exe = exe_name(server.pid());
    for (i, (s, (path, code))) in spans.iter().zip(&expected).enumerate() {
        assert_eq!(s.span.name, "GET");
        assert_eq!(s.str("http.request.method").as_deref(), Some("GET"));
        assert!(
            s.str("url.path").unwrap().starts_with(path),
            "span {i}: {:?}",
            s.str("url.path")
        );
        assert_eq!(s.int("http.response.status_code"), Some(i64::from(*code)));
        assert_eq!(s.str("url.scheme").as_deref(), Some("http"));
        assert_eq!(s.str("server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.int("server.port"), Some(i64::from(port)));
        assert_eq!(s.str("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.int("client.port"), Some(i64::from(transfers[i].1)));
        assert_eq!(s.str("network.protocol.version").as_deref(), Some("1.1"));
        assert_eq!(s.str("user_agent.original"), Some(ua.clone()));
        assert_eq!(s.int("http.request.body.size"), Some(0));
        assert_eq!(s.res_str("service.name").as_deref(), Some("fixture-web"));
        assert_eq!(s.res_int("process.pid"), Some(i64::from(server.pid())));
        assert_eq!(s.res_str("process.executable.name"), Some(exe.clone()));
        assert_eq!(s.res_str("host.name"), Some(host_name()));
        assert_eq!(s.res_str("telemetry.sdk.name").as_deref(), Some("zerospan"));
        assert!(s.span.parent_span_id.is_empty());
        assert_eq!(s.span.trace_id.len(), 16);
        assert_eq!(s.span.span_id.len(), 8);
        match code {
            200 => {
                assert_eq!(s.str("url.path").as_deref(), Some("/index.html"));
                assert_eq!(
                    s.str("url.query").as_deref(),
                    Some("user=REDACTED&id=REDACTED")
                );
                assert_eq!(s.int("http.response.body.size"), Some(INDEX.len() as i64));
                assert!(!s.has("error.type"));
                assert_eq!(s.span.status.as_ref().map(|st| st.code), Some(0));
            }
            404 => {
                assert_eq!(s.str("url.path"), Some(format!("/missing-{}", i - 50)));
                assert!(!s.has("url.query"));
                assert!(!s.has("error.type"), "4xx is not a server error");
            }
            _ => {
                assert_eq!(s.int("http.response.body.size"), Some(2));
                assert_eq!(s.str("error.type").as_deref(), Some("503"));
                assert_eq!(s.span.status.as_ref().map(|st| st.code), Some(2));
            }
        }
        // The server's view fits inside what the client measured.
        let client_total = Duration::from_secs_f64(transfers[i].2);
        assert!(
            s.duration() <= client_total + Duration::from_millis(2),
            "span {i} lasted {:?}, curl measured {client_total:?}",
            s.duration()
        );
        assert!(s.duration() > Duration::ZERO);
    }
    // Keep-alive requests are sequential: each span ends before the next starts.
    for w in spans.windows(2) {
        assert!(w[0].span.end_time_unix_nano <= w[1].span.start_time_unix_nano);
    }
    assert_eq!(agent.stat("spans_created"), Some(57));
    assert_eq!(agent.stat("kernel_ringbuf_full"), Some(0));
}

#[test]
fn curl_as_a_command_gives_client_spans_to_grpc_and_the_traces_file() {
    require_root();
    let dir = TempDir::new("nginx");
    let port = free_port();
    fs::write(dir.0.join("index.html"), INDEX).unwrap();
    let nginx = Nginx::start(&dir.0, port);

    let collector = Collector::start();
    let traces = dir.0.join("traces.jsonl");
    let base = format!("http://127.0.0.1:{port}");
    let urls = [
        format!("{base}/index.html"),
        format!("{base}/index.html?x=1&y=2"),
        format!("{base}/nope"),
    ];
    let mut args: Vec<String> = vec![
        "--otlp-endpoint".into(),
        collector.grpc_endpoint.clone(),
        "--traces-file".into(),
        traces.display().to_string(),
        "--".into(),
        "curl".into(),
        "-s".into(),
    ];
    for u in &urls {
        args.extend(["-o".into(), "/dev/null".into(), u.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::start(&args, &[]);
    let status = agent.wait(Duration::from_secs(30));
    drop(nginx);
    assert!(
        status.success(),
        "agent must exit 0 once curl is done:\n{}",
        agent.stderr()
    );

    let spans = clients(&collector.spans());
    assert_eq!(spans.len(), 3, "{}", agent.stderr());
    let want = [
        (format!("{base}/index.html"), 200),
        (format!("{base}/index.html?x=REDACTED&y=REDACTED"), 200),
        (format!("{base}/nope"), 404),
    ];
    for (s, (url, code)) in spans.iter().zip(&want) {
        assert_eq!(s.span.name, "GET");
        assert_eq!(s.str("url.full").as_ref(), Some(url));
        assert_eq!(s.str("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.int("http.response.status_code"), Some(*code));
        assert_eq!(s.str("server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.int("server.port"), Some(i64::from(port)));
        assert_eq!(s.str("network.peer.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.res_str("service.name").as_deref(), Some("curl"));
        assert_eq!(
            s.res_str("process.executable.name").as_deref(),
            Some("curl")
        );
        let cmdline = s.res_str("process.command_line").unwrap();
        assert!(cmdline.starts_with("curl -s -o /dev/null"), "{cmdline}");
    }
    assert_eq!(
        spans[0].int("http.response.body.size"),
        Some(INDEX.len() as i64)
    );
    assert_eq!(spans[2].str("error.type").as_deref(), Some("404"));
    assert!(!spans[0].has("error.type"));

    // The traces file holds the same spans, as OTLP/JSON, one request per line.
    let text = fs::read_to_string(&traces).unwrap();
    let mut from_file = Vec::new();
    for line in text.lines() {
        let req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
            serde_json::from_str(line)
                .expect("each line is an OTLP/JSON ExportTraceServiceRequest");
        from_file.extend(flatten("file", &req));
        let raw: serde_json::Value = serde_json::from_str(line).unwrap();
        let span = &raw["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(
            span["traceId"].as_str().unwrap().len(),
            32,
            "ids are hex: {line}"
        );
        assert!(
            span["startTimeUnixNano"].is_string(),
            "64-bit ints are strings: {line}"
        );
    }
    let ids = |v: &[FlatSpan]| {
        v.iter()
            .map(|s| s.span.span_id.clone())
            .collect::<HashSet<_>>()
    };
    assert_eq!(ids(&from_file), ids(&spans));
}

#[test]
fn large_download_client_span_covers_the_transfer_over_otlp_http() {
    require_root();
    let dir = site();
    let server = Fixture::http_server("127.0.0.1", &dir.0, &[]);
    let collector = Collector::start();
    let url = format!("http://127.0.0.1:{}/slow/{}", server.port, 5 << 20);
    let out_file = dir.0.join("curl.out");
    let mut agent = Agent::start(
        &[
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-endpoint",
            &collector.http_endpoint,
            "--",
            "sh",
            "-c",
            &format!(
                "curl -s -o /dev/null -w '%{{time_total}} %{{size_download}}' {url} > {}",
                out_file.display()
            ),
        ],
        &[],
    );
    assert!(
        agent.wait(Duration::from_secs(60)).success(),
        "{}",
        agent.stderr()
    );
    let measured = fs::read_to_string(&out_file).unwrap();
    let (total, size) = measured.split_once(' ').unwrap();
    let total = Duration::from_secs_f64(total.parse().unwrap());
    assert_eq!(size, (5u64 << 20).to_string());
    assert!(
        total > Duration::from_millis(1500),
        "the server trickles for 1.6 s: {total:?}"
    );

    let spans = clients(&collector.spans());
    assert_eq!(
        spans.len(),
        1,
        "one span for one download:\n{}",
        agent.stderr()
    );
    let s = &spans[0];
    assert!(s.transport == "http", "received over OTLP/HTTP");
    assert_eq!(s.int("http.response.body.size"), Some(5 << 20));
    assert_eq!(s.res_str("service.name").as_deref(), Some("curl"));
    // The span covers the transfer: within 10% of what curl measured.
    let d = s.duration();
    assert!(
        d <= total + Duration::from_millis(5),
        "span {d:?} longer than curl's {total:?}"
    );
    assert!(
        d >= total.mul_f64(0.9),
        "span {d:?} does not cover curl's {total:?}"
    );
}

/// Everything curl does not exercise: a connection that predates the agent,
/// sendmsg/recvmsg, pipelining, chunked bodies both ways, a 100 kB upload in
/// many writes, and a multi-megabyte response, from both ends of one
/// connection (server and client traced by the same agent).
#[test]
fn preexisting_connection_pipelining_chunked_and_vectored_io() {
    require_root();
    let dir = site();
    let server = Fixture::http_server("127.0.0.1", &dir.0, &[]);
    let mut client = Fixture::start(
        Command::new("python3")
            .arg(zerospan_tests::procs::fixture("raw_client.py"))
            .args(["127.0.0.1", &server.port.to_string()]),
    );
    let client_port = client.port;
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[server.pid(), client.pid()], &collector, &[]);
    client.send_line("go");
    let done = client.read_line();
    assert_eq!(done.trim(), "DONE 200 200 200 503 201 201 200");
    client.send_line("bye");
    collector.wait_for(14, Duration::from_secs(10), |_| true);
    assert!(agent.stop().success());
    let all = collector.spans();

    let srv = servers(&all);
    let expect = [
        ("GET", "/index.html", None, 200, 0, Some(INDEX.len() as i64)),
        (
            "GET",
            "/index.html",
            Some("a=REDACTED"),
            200,
            0,
            Some(INDEX.len() as i64),
        ),
        ("GET", "/chunked", None, 200, 0, Some(1210)),
        ("GET", "/status/503", None, 503, 0, Some(2)),
        ("POST", "/echo", None, 201, 5, Some(1)),
        ("POST", "/echo", None, 201, 100_000, Some(6)),
        ("GET", "/big.bin", None, 200, 0, Some(5 << 20)),
    ];
    assert_eq!(
        srv.len(),
        expect.len(),
        "{:#?}\n{}",
        srv.iter().map(|s| s.str("url.path")).collect::<Vec<_>>(),
        agent.stderr()
    );
    for (s, (method, path, query, code, req_size, resp_size)) in srv.iter().zip(&expect) {
        assert_eq!(s.span.name, *method);
        assert_eq!(s.str("url.path").as_deref(), Some(*path));
        assert_eq!(s.str("url.query").as_deref(), *query);
        assert_eq!(s.int("http.response.status_code"), Some(*code));
        assert_eq!(s.int("http.request.body.size"), Some(*req_size));
        assert_eq!(s.int("http.response.body.size"), *resp_size);
        // The Host header names the server; no port in it means port 80.
        assert_eq!(s.str("server.address").as_deref(), Some("zerospan.test"));
        assert_eq!(s.int("server.port"), Some(80));
        // The pre-existing socket's peer came from /proc.
        assert_eq!(s.str("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.int("client.port"), Some(i64::from(client_port)));
        assert_eq!(
            s.str("user_agent.original").as_deref(),
            Some("raw-client/1")
        );
        assert_eq!(s.res_int("process.pid"), Some(i64::from(server.pid())));
    }

    let cli = clients(&all);
    assert_eq!(cli.len(), expect.len());
    for (s, (method, path, query, code, _, _)) in cli.iter().zip(&expect) {
        let url = match query {
            Some(q) => format!("http://zerospan.test{path}?{q}"),
            None => format!("http://zerospan.test{path}"),
        };
        assert_eq!(s.span.name, *method);
        assert_eq!(s.str("url.full"), Some(url));
        assert_eq!(s.int("http.response.status_code"), Some(*code));
        assert_eq!(s.int("network.peer.port"), Some(i64::from(server.port)));
        assert_eq!(s.res_int("process.pid"), Some(i64::from(client.pid())));
    }
    // Each client span encloses the server span at the other end (the end
    // within END_SLACK_NS).
    for (i, (c, s)) in cli.iter().zip(&srv).enumerate() {
        let (cs, ce) = (c.span.start_time_unix_nano, c.span.end_time_unix_nano);
        let (ss, se) = (s.span.start_time_unix_nano, s.span.end_time_unix_nano);
        assert!(cs <= ss, "exchange {i}: client starts {cs}, server {ss}");
        assert!(
            ce + END_SLACK_NS >= se,
            "exchange {i}: client ends {ce}, server {se}"
        );
    }
}

#[test]
fn ipv6_server_spans() {
    require_root();
    let dir = site();
    let server = Fixture::http_server("::1", &dir.0, &[]);
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[server.pid()], &collector, &[]);
    let out = curl(&[
        "-s",
        "-g",
        "-o",
        "/dev/null",
        "-w",
        "%{local_port}",
        &format!("http://[::1]:{}/index.html", server.port),
    ]);
    collector.wait_for(1, Duration::from_secs(10), |s| s.is_server());
    assert!(agent.stop().success());
    let spans = servers(&collector.spans());
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.str("server.address").as_deref(), Some("::1"));
    assert_eq!(s.int("server.port"), Some(i64::from(server.port)));
    assert_eq!(s.str("client.address").as_deref(), Some("::1"));
    assert_eq!(
        s.int("client.port"),
        Some(out.trim().parse::<i64>().unwrap())
    );
    assert_eq!(s.str("network.local.address").as_deref(), Some("::1"));
    assert_eq!(s.int("http.response.status_code"), Some(200));
}

#[test]
fn garbage_and_non_http_traffic_yield_no_spans() {
    require_root();
    let dir = site();
    let server = Fixture::http_server("127.0.0.1", &dir.0, &[]);
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[server.pid()], &collector, &[]);
    // Bytes that are not HTTP/1 at all: a TLS ClientHello prefix (waited on
    // as TLS whose plaintext never comes) and noise.
    for payload in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"\x00\xff garbage \r\n\r\n",
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        std::io::Write::write_all(&mut s, payload).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut sink);
    }
    // A real request afterwards still works and is the only span.
    curl(&["-s", "-o", "/dev/null", &server.index_url()]);
    collector.wait_for(1, Duration::from_secs(10), |s| s.is_server());
    std::thread::sleep(Duration::from_millis(600));
    assert!(agent.stop().success());
    let spans = servers(&collector.spans());
    assert_eq!(
        spans.len(),
        1,
        "{:#?}",
        spans.iter().map(|s| s.str("url.path")).collect::<Vec<_>>()
    );
    assert_eq!(spans[0].str("url.path").as_deref(), Some("/index.html"));
    assert_eq!(
        agent.stat("connections_unknown_protocol"),
        Some(1),
        "{}",
        agent.stderr()
    );
    assert_eq!(agent.stat("connections_tls_unhooked"), Some(1));
}

#[test]
fn otel_traces_sampler_ratio_keeps_exactly_the_traces_below_the_bound() {
    require_root();
    let dir = site();
    let server = Fixture::http_server("127.0.0.1", &dir.0, &[]);
    let collector = Collector::start();
    let mut agent = Agent::for_pids(
        &[server.pid()],
        &collector,
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    );
    let url = server.index_url();
    let mut args = vec!["-s"];
    for _ in 0..40 {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args);
    std::thread::sleep(Duration::from_millis(800));
    assert!(agent.stop().success());
    let spans = servers(&collector.spans());
    let created = agent.stat("spans_created").unwrap();
    let sampled_out = agent.stat("spans_sampled_out").unwrap();
    assert_eq!(created, 40, "{}", agent.stderr());
    assert_eq!(spans.len() as u64, created - sampled_out);
    // With 40 random trace ids, all or none kept has odds of 2 in 2^40.
    assert!(
        !spans.is_empty() && sampled_out > 0,
        "kept {} of 40",
        spans.len()
    );
    for s in &spans {
        let low = u64::from_be_bytes(s.span.trace_id[8..].try_into().unwrap());
        assert!(low < 1 << 63, "a kept trace id is below the 0.5 bound");
    }
}

/// nginx writes heads with writev and bodies with sendfile, and its worker
/// is a child of the master: `--pid master` must cover it.
#[test]
fn nginx_server_spans_through_writev_and_sendfile() {
    require_root();
    let dir = site();
    let port = free_port();
    let nginx = Nginx::start(&dir.0, port);
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[nginx.pid()], &collector, &[]);
    let base = format!("http://127.0.0.1:{port}");
    let out = curl(&[
        "-s",
        "-w",
        "%{local_port}\\n",
        "-o",
        "/dev/null",
        &format!("{base}/index.html"),
        "-o",
        "/dev/null",
        &format!("{base}/big.bin"),
        "--next",
        "-s",
        "-o",
        "/dev/null",
        "--data-binary",
        "payload",
        &format!("{base}/index.html"),
    ]);
    let client_port: i64 = out.lines().next().unwrap().parse().unwrap();
    collector.wait_for(3, Duration::from_secs(10), |s| s.is_server());
    assert!(agent.stop().success());
    let spans = servers(&collector.spans());
    let want = [
        ("GET", 200, 0, INDEX.len() as i64),
        ("GET", 200, 0, 5 << 20),
        ("POST", 405, 7, -1),
    ];
    assert_eq!(spans.len(), want.len(), "{}", agent.stderr());
    for (s, (method, code, req, resp)) in spans.iter().zip(want) {
        assert_eq!(s.span.name, method);
        assert_eq!(s.int("http.response.status_code"), Some(code));
        assert_eq!(s.int("http.request.body.size"), Some(req));
        if resp >= 0 {
            assert_eq!(s.int("http.response.body.size"), Some(resp));
        }
        assert_eq!(s.int("server.port"), Some(i64::from(port)));
        assert_eq!(s.int("client.port"), Some(client_port));
        assert_eq!(
            s.res_str("process.executable.name").as_deref(),
            Some("nginx")
        );
        // The worker serves; the master only supervises.
        assert_ne!(s.res_int("process.pid"), Some(i64::from(nginx.pid())));
    }
    assert_eq!(spans[1].str("url.path").as_deref(), Some("/big.bin"));
    // Whole transfers are counted without being copied.
    assert_eq!(agent.stat("kernel_ringbuf_full"), Some(0));
}

/// A collector that is down at first: the agent keeps tracing, buffers with
/// back-off, and delivers everything once the collector comes up.
#[test]
fn spans_wait_for_a_collector_that_comes_up_late() {
    require_root();
    let dir = site();
    let server = Fixture::http_server("127.0.0.1", &dir.0, &[]);
    let port = free_port();
    let mut agent = Agent::start(
        &[
            "--pid",
            &server.pid().to_string(),
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}"),
        ],
        &[],
    );
    let url = server.index_url();
    let mut args = vec!["-s"];
    for _ in 0..20 {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args);
    // Long enough for the first export (after the 500 ms batch delay) and a
    // retry or two to fail against the closed port.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        agent.stderr().contains("export failed"),
        "the agent should say the collector is unreachable:\n{}",
        agent.stderr()
    );
    let collector = Collector::start_grpc_on(port);
    let spans = collector.wait_for(20, Duration::from_secs(15), |s| s.is_server());
    assert!(agent.stop().success());
    assert_eq!(spans.len(), 20, "{}", agent.stderr());
    assert!(agent.stat("export_failures").unwrap() >= 1);
    assert_eq!(agent.stat("spans_dropped_export"), Some(0));
    assert!(
        agent.stderr().contains("export recovered"),
        "{}",
        agent.stderr()
    );
}

/// A collector that goes down under load and comes back. What was traced
/// meanwhile waits in a buffer bounded in bytes (`--export-buffer-mib 1`
/// here, far less than 3000 spans take): the oldest batches go, counted,
/// the newest span is kept, and once the collector is back what was kept
/// reaches it within seconds (export retries at most a second apart; it
/// used to back off to 30 s). Every span is accounted for: received, or
/// counted as dropped, none twice.
#[test]
fn a_collector_that_comes_back_gets_the_newest_spans_at_once() {
    require_root();
    let dir = site();
    let port = free_port();
    let nginx = Nginx::start(&dir.0, port);
    let collector_port = free_port();
    let collector = Collector::start_grpc_on(collector_port);
    let mut agent = Agent::start(
        &[
            "--pid",
            &nginx.pid().to_string(),
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{collector_port}"),
            "--export-buffer-mib",
            "1",
        ],
        &[],
    );
    let get = |paths: std::ops::Range<usize>| {
        let urls: Vec<String> = paths
            .map(|i| format!("http://127.0.0.1:{port}/p/{i}"))
            .collect();
        let mut args = vec!["-s"];
        for url in &urls {
            args.extend(["-o", "/dev/null", url.as_str()]);
        }
        curl(&args);
    };
    get(0..10);
    let before = collector.wait_for(10, Duration::from_secs(15), |_| true);
    assert_eq!(before.len(), 10, "{}", agent.stderr());
    collector.stop();
    let down = std::time::Instant::now();
    let (first, last) = (10, 3010);
    get(first..last);
    // Down long enough for a doubling back-off to have grown past the
    // cap several times over.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(down.elapsed()));
    let back = std::time::Instant::now();
    let collector = Collector::start_grpc_on(collector_port);
    let newest = format!("/p/{}", last - 1);
    let got = collector.wait_for(1, Duration::from_secs(10), |s| {
        s.str("url.path").as_deref() == Some(newest.as_str())
    });
    let resumed = back.elapsed();
    assert_eq!(got.len(), 1, "{}", agent.stderr());
    eprintln!("export resumed {resumed:?} after the collector came back");
    assert!(resumed < Duration::from_secs(5), "{resumed:?}");
    // Let the rest of what was kept arrive, then count.
    let mut seen = 0;
    while collector.span_count() != seen {
        seen = collector.span_count();
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert!(agent.stop().success());
    let spans = collector.spans();
    let mut paths: Vec<usize> = spans
        .iter()
        .map(|s| {
            let path = s.str("url.path").unwrap();
            path.strip_prefix("/p/").unwrap().parse().unwrap()
        })
        .collect();
    paths.sort_unstable();
    let delivered = paths.len();
    paths.dedup();
    assert_eq!(paths.len(), delivered, "a span was exported twice");
    assert!(paths.iter().all(|i| (first..last).contains(i)), "{paths:?}");
    // The first 10 went to the collector before it went down.
    let delivered = (first + delivered) as u64;
    let dropped = agent.stat("spans_dropped_export").unwrap();
    assert!(dropped > 0, "3000 spans fitted in 1 MiB?");
    assert_eq!(agent.stat("spans_created"), Some(last as u64));
    assert_eq!(agent.stat("spans_exported"), Some(delivered));
    assert_eq!(delivered + dropped, last as u64);
    assert!(agent.stat("export_failures").unwrap() >= 1);
}

/// Request-smuggling shapes against nginx: a request with both
/// `Content-Length` and `Transfer-Encoding`, and one with two lengths that
/// disagree, each followed in the same write by a second request. nginx
/// answers the first with 400 and closes; the second was never served, so
/// it must never become a span.
#[test]
fn smuggled_requests_never_become_spans() {
    require_root();
    let dir = site();
    let port = free_port();
    let nginx = Nginx::start(&dir.0, port);
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[nginx.pid()], &collector, &[]);
    let shapes: [&[u8]; 2] = [
        b"POST /smug HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /twice HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for payload in shapes {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(&mut s, payload).unwrap();
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut answer);
        let answer = String::from_utf8_lossy(&answer);
        // What nginx really did: one 400, then it closed.
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }
    // A real request afterwards is traced as ever.
    curl(&[
        "-s",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/index.html"),
    ]);
    collector.wait_for(3, Duration::from_secs(10), |s| s.is_server());
    std::thread::sleep(Duration::from_millis(600));
    assert!(agent.stop().success());
    let spans = servers(&collector.spans());
    let got: Vec<(Option<String>, Option<i64>, Option<String>)> = spans
        .iter()
        .map(|s| {
            (
                s.str("url.path"),
                s.int("http.response.status_code"),
                s.str("error.type"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (Some("/smug".into()), Some(400), None),
            (Some("/twice".into()), Some(400), None),
            (Some("/index.html".into()), Some(200), None),
        ],
        "{}",
        agent.stderr()
    );
    // The ambiguous requests' body sizes are not known, so not reported.
    assert_eq!(spans[0].int("http.request.body.size"), None);
    assert_eq!(spans[1].int("http.request.body.size"), None);
}

/// Requests nginx rejects with 400 (a 1 MiB header line, 10,000 headers, a
/// malformed `Content-Length`) are still requests, and what scanners and
/// attacks look like: each is a span from its request line, with nginx's
/// status, marked `zerospan.incomplete=request_head_unparsed`.
#[test]
fn rejected_requests_are_spans_marked_incomplete() {
    require_root();
    let dir = site();
    let port = free_port();
    let nginx = Nginx::start(&dir.0, port);
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[nginx.pid()], &collector, &[]);
    let mut long_line = b"GET /long-line HTTP/1.1\r\nHost: x\r\nCookie: ".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', 1 << 20));
    long_line.extend_from_slice(b"\r\n\r\n");
    let mut many = b"GET /many-headers HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..10_000 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let bad_length =
        b"POST /bad-length HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec();
    for payload in [&long_line, &many, &bad_length] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // nginx may answer and close before it read everything: a reset
        // here is expected, and the server's side is what is checked.
        let _ = std::io::Write::write_all(&mut s, payload);
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    }
    collector.wait_for(3, Duration::from_secs(10), |s| s.is_server());
    std::thread::sleep(Duration::from_millis(600));
    assert!(agent.stop().success());
    let spans = servers(&collector.spans());
    let got: Vec<_> = spans
        .iter()
        .map(|s| {
            (
                s.str("http.request.method"),
                s.str("url.path"),
                s.int("http.response.status_code"),
                s.str("zerospan.incomplete"),
            )
        })
        .collect();
    let incomplete = Some("request_head_unparsed".to_owned());
    assert_eq!(
        got,
        [
            (
                Some("GET".into()),
                Some("/long-line".into()),
                Some(400),
                incomplete.clone()
            ),
            (
                Some("GET".into()),
                Some("/many-headers".into()),
                Some(400),
                incomplete.clone()
            ),
            (
                Some("POST".into()),
                Some("/bad-length".into()),
                Some(400),
                incomplete
            ),
        ],
        "{}",
        agent.stderr()
    );
    // Headers that could not be read are not guessed.
    assert!(spans
        .iter()
        .all(|s| s.str("server.address").as_deref() != Some("x")));
}
