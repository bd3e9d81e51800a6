//! TLS end to end: plaintext from uprobes on OpenSSL, attributed to the
//! right connection, with the same spans as plaintext HTTP and nothing from
//! the ciphertext. nginx with a self-signed certificate, curl, and Python's
//! urllib (which loads OpenSSL only when `ssl` is imported).

use std::{process::Command, time::Duration};

use zerospan_tests::{
    assert_child, procs::fixture, procs::free_port, require_root, Agent, Collector, Fixture,
    FlatSpan, Nginx, TempDir,
};

fn summary(spans: &[FlatSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} {:?} {:?} {:?}\n",
                if s.is_server() { "SERVER" } else { "CLIENT" },
                s.span.name,
                s.str("url.full").or(s.str("url.path")),
                s.int("http.response.status_code"),
                s.int("http.response.body.size"),
            )
        })
        .collect()
}

fn assert_clean(agent: &Agent) {
    for stat in [
        "connections_unknown_protocol",
        "connections_tls_unhooked",
        "desyncs.http",
        "kernel_tls_unattributed",
        "kernel_tls_claims_refused",
    ] {
        assert_eq!(agent.stat(stat), Some(0), "{stat}: {}", agent.stderr());
    }
}

#[test]
fn curl_and_nginx_over_https() {
    require_root();
    let root = TempDir::new("tls-nginx");
    std::fs::write(root.0.join("index.html"), "hello tls\n").unwrap();
    let port = free_port();
    let nginx = Nginx::start_tls(&root.0, port);
    let base = format!("https://127.0.0.1:{port}");
    let script = format!(
        "echo READY 0; read go; \
         curl -sk -o /dev/null {base}/index.html; \
         curl -sk -o /dev/null '{base}/missing?token=secret'; \
         echo DONE; read done"
    );
    let mut client = Fixture::start(Command::new("sh").args(["-c", &script]));
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[nginx.pid(), client.pid()], &collector, &[]);
    client.send_line("go");
    assert_eq!(client.read_line().trim(), "DONE");
    let spans = collector.wait_for(4, Duration::from_secs(10), |_| true);
    assert!(agent.stop().success());
    assert_eq!(spans.len(), 4, "{}\n{}", summary(&spans), agent.stderr());
    let find = |server: bool, path: &str| -> &FlatSpan {
        spans
            .iter()
            .find(|s| {
                s.is_server() == server
                    && s.str(if server { "url.path" } else { "url.full" })
                        .is_some_and(|u| u.contains(path))
            })
            .unwrap_or_else(|| panic!("no span for {path}: {}", summary(&spans)))
    };
    let client_ok = find(false, "/index.html");
    assert_eq!(
        client_ok.str("url.full").as_deref(),
        Some(format!("{base}/index.html").as_str())
    );
    assert_eq!(client_ok.int("http.response.status_code"), Some(200));
    assert_eq!(client_ok.int("server.port"), Some(i64::from(port)));
    assert_eq!(
        client_ok.res_str("process.executable.name").as_deref(),
        Some("curl")
    );
    let server_ok = find(true, "/index.html");
    assert_eq!(server_ok.str("url.scheme").as_deref(), Some("https"));
    assert_eq!(server_ok.str("url.path").as_deref(), Some("/index.html"));
    assert_eq!(server_ok.int("http.response.status_code"), Some(200));
    assert_eq!(server_ok.int("http.response.body.size"), Some(10));
    assert_eq!(server_ok.int("server.port"), Some(i64::from(port)));
    assert_eq!(
        server_ok.res_str("process.executable.name").as_deref(),
        Some("nginx")
    );
    // Both ends traced on one host: the server span is the client's child.
    assert_child(server_ok, client_ok);
    // The version the server chose, from its ServerHello, on both ends.
    for s in [client_ok, server_ok] {
        assert_eq!(s.str("tls.protocol.name").as_deref(), Some("tls"));
        assert_eq!(s.str("tls.protocol.version").as_deref(), Some("1.3"));
    }

    let client_404 = find(false, "/missing");
    assert_eq!(
        client_404.str("url.full").as_deref(),
        Some(format!("{base}/missing?token=REDACTED").as_str())
    );
    assert_eq!(client_404.int("http.response.status_code"), Some(404));
    let server_404 = find(true, "/missing");
    assert_eq!(
        server_404.str("url.query").as_deref(),
        Some("token=REDACTED")
    );
    assert_eq!(server_404.str("url.scheme").as_deref(), Some("https"));
    assert_child(server_404, client_404);
    // Nothing came from the ciphertext.
    assert_clean(&agent);
    // The spans came through the cheap probe points, not SSL_read's and
    // SSL_write's own first instructions (see openssl.rs in the agent).
    for what in ["read", "write"] {
        assert!(
            agent.stderr().contains(&format!(
                "libssl.so.3 is probed at its internal {what} function"
            )),
            "{}",
            agent.stderr()
        );
    }
}

/// Python loads OpenSSL after the agent attached; four threads make
/// requests at once, one connection each: every span gets its own
/// request's response, none swapped or merged.
#[test]
fn python_urllib_over_https_from_concurrent_threads() {
    require_root();
    const THREADS: usize = 4;
    const REQUESTS: usize = 5;
    let root = TempDir::new("tls-python");
    for t in 0..THREADS {
        for n in 0..REQUESTS {
            let name = format!("f{t}-{n}.txt");
            std::fs::write(root.0.join(&name), name.repeat(t + n + 1)).unwrap();
        }
    }
    let port = free_port();
    let nginx = Nginx::start_tls(&root.0, port);
    let base = format!("https://127.0.0.1:{port}");
    let mut client = Fixture::start(
        Command::new("python3")
            .arg(fixture("https_client.py"))
            .args([&base, &THREADS.to_string(), &REQUESTS.to_string()]),
    );
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[nginx.pid(), client.pid()], &collector, &[]);
    client.send_line("go");
    assert_eq!(client.read_line().trim(), "DONE");
    let total = THREADS * REQUESTS;
    let spans = collector.wait_for(2 * total, Duration::from_secs(10), |_| true);
    assert!(agent.stop().success());
    assert_eq!(
        spans.len(),
        2 * total,
        "{}\n{}",
        summary(&spans),
        agent.stderr()
    );
    let mut client_threads = std::collections::HashSet::new();
    for s in &spans {
        let (t, n, path) = {
            let url = s
                .str(if s.is_server() {
                    "url.path"
                } else {
                    "url.full"
                })
                .unwrap();
            let name = url.rsplit('/').next().unwrap().to_owned();
            let (t, n) = name
                .trim_start_matches('f')
                .trim_end_matches(".txt")
                .split_once('-')
                .unwrap();
            (
                t.parse::<usize>().unwrap(),
                n.parse::<usize>().unwrap(),
                name,
            )
        };
        // The response's size is the one this request's file has.
        assert_eq!(
            s.int("http.response.body.size"),
            Some((path.len() * (t + n + 1)) as i64),
            "{}",
            summary(&spans)
        );
        assert_eq!(s.int("http.response.status_code"), Some(200));
        if s.is_client() {
            assert_eq!(
                s.str("url.full").as_deref(),
                Some(format!("{base}/{path}").as_str())
            );
            client_threads.insert(s.int("thread.id"));
        } else {
            assert_eq!(s.str("url.scheme").as_deref(), Some("https"));
        }
    }
    assert_eq!(
        client_threads.len(),
        THREADS,
        "one client thread per worker"
    );
    assert_clean(&agent);
}

/// PostgreSQL with `sslmode=require`: the SSLRequest is accepted, the
/// startup and every query go inside TLS, and the spans are the ones the
/// plaintext protocol gives.
#[test]
fn postgresql_with_sslmode_require() {
    require_root();
    let pg = zerospan_tests::Postgres::start_tls();
    pg.exec("postgres", "CREATE DATABASE shop");
    let collector = Collector::start();
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname=shop sslmode=require",
        pg.port
    );
    let sql = "CREATE TABLE t (id int PRIMARY KEY, secret text); \
               INSERT INTO t VALUES (1, 'secret'); \
               SELECT secret FROM t WHERE id = 1; \
               SELECT * FROM nope;";
    let args = [
        "--otlp-endpoint",
        collector.grpc_endpoint.as_str(),
        "--",
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=0",
        conninfo.as_str(),
        "-c",
        "SHOW ssl",
        "-c",
        sql,
    ];
    let mut agent = Agent::start(&args, &[]);
    assert!(
        agent.wait(Duration::from_secs(30)).success(),
        "{}",
        agent.stderr()
    );
    let mut spans = collector.wait_for(2, Duration::from_secs(10), |_| true);
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    // psql sends each -c as one simple query.
    assert_eq!(names, ["SHOW", "CREATE"], "{}", agent.stderr());
    for s in &spans {
        assert_eq!(s.str("db.system.name").as_deref(), Some("postgresql"));
        assert_eq!(s.str("db.namespace").as_deref(), Some("shop"));
        assert_eq!(s.int("server.port"), Some(i64::from(pg.port)));
    }
    assert!(!spans[0].has("error.type"));
    // The second query text holds four statements; the last one fails.
    assert_eq!(spans[1].str("error.type").as_deref(), Some("42P01"));
    assert!(!spans[1].str("db.query.text").unwrap().contains("secret'"));
    assert_clean(&agent);
    assert_eq!(agent.stat("desyncs.postgresql"), Some(0));
}

/// The Node.js HTTPS fixture, with a certificate made in a new directory
/// (kept as long as the server).
fn node_https_server(name: &str) -> (TempDir, Fixture) {
    let dir = TempDir::new(name);
    let (cert, key) = zerospan_tests::procs::self_signed_cert(&dir.0);
    let server = Fixture::start(
        Command::new("node")
            .arg(fixture("https_server.js"))
            .arg(&cert)
            .arg(&key),
    );
    (dir, server)
}

/// Node.js: OpenSSL is linked into the node binary and works on memory
/// buffers, so no syscall nests in its calls; reads are attributed to the
/// socket the thread last read. SERVER spans, exact.
#[test]
fn node_https_server_through_its_own_openssl() {
    require_root();
    let (_dir, server) = node_https_server("tls-node");
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[server.pid()], &collector, &[]);
    let base = format!("https://127.0.0.1:{}", server.port);
    // A first request, not asserted: a Node.js whose OpenSSL is a shared
    // library is recognised as working on memory buffers only by it.
    zerospan_tests::curl(&["-sk", "-o", "/dev/null", &format!("{base}/warm-up")]);
    for path in ["/a", "/b", "/missing"] {
        zerospan_tests::curl(&["-sk", "-o", "/dev/null", &format!("{base}{path}")]);
    }
    let spans = collector.wait_for(3, Duration::from_secs(10), |s| {
        s.str("url.path").as_deref() != Some("/warm-up")
    });
    assert!(agent.stop().success());
    let mut paths: Vec<(String, i64)> = spans
        .iter()
        .map(|s| {
            assert!(s.is_server());
            assert_eq!(s.str("url.scheme").as_deref(), Some("https"));
            assert_eq!(s.int("server.port"), Some(i64::from(server.port)));
            assert_eq!(
                s.res_str("process.executable.name").as_deref(),
                Some("node")
            );
            // Node's OpenSSL and curl's agree on TLS 1.3.
            assert_eq!(s.str("tls.protocol.version").as_deref(), Some("1.3"));
            (
                s.str("url.path").unwrap(),
                s.int("http.response.status_code").unwrap(),
            )
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            ("/a".to_owned(), 200),
            ("/b".to_owned(), 200),
            ("/missing".to_owned(), 404)
        ],
        "{}",
        agent.stderr()
    );
    assert_eq!(agent.stat("desyncs.http"), Some(0));
}

/// A Node.js HTTPS client whose keep-alive connection predates the agent:
/// its next request is written before the probes know the socket (Node's
/// OpenSSL works on memory buffers), held, and given to the socket the
/// agent found in `/proc` once the response names it. Exact CLIENT spans,
/// and no write left unclaimed.
#[test]
fn node_https_client_on_a_connection_from_before_the_agent() {
    require_root();
    let (_dir, server) = node_https_server("tls-node-client");
    let mut client = Fixture::start(
        Command::new("node")
            .arg(fixture("https_keepalive_client.js"))
            .arg(server.port.to_string()),
    );
    // The client's port: its one connection, opened before the agent.
    let local = client.port;
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[client.pid()], &collector, &[]);
    for (path, status) in [("/after", 200), ("/missing", 404)] {
        client.send_line(path);
        assert_eq!(client.read_line().trim(), format!("{status} {local}"));
    }
    let spans = collector.wait_for(2, Duration::from_secs(10), |_| true);
    assert!(agent.stop().success());
    let mut got: Vec<(String, i64)> = spans
        .iter()
        .map(|s| {
            assert!(s.is_client(), "{}", summary(&spans));
            assert!(!s.has("zerospan.incomplete"), "{s:?}");
            assert_eq!(s.str("http.request.method").as_deref(), Some("GET"));
            assert_eq!(s.int("server.port"), Some(i64::from(server.port)));
            // Its handshake went before the agent: the version is not
            // known, so not guessed.
            assert!(!s.has("tls.protocol.version"), "{s:?}");
            (
                s.str("url.full").unwrap(),
                s.int("http.response.status_code").unwrap(),
            )
        })
        .collect();
    got.sort();
    let base = format!("https://127.0.0.1:{}", server.port);
    assert_eq!(
        got,
        [
            (format!("{base}/after"), 200),
            (format!("{base}/missing"), 404)
        ],
        "{}",
        agent.stderr()
    );
    assert_clean(&agent);
    assert_eq!(agent.stat("tls_writes_unclaimed"), Some(0));
    assert_eq!(agent.stat("http_orphan_responses"), Some(0));
}

/// GnuTLS (`gnutls_record_send`/`recv`), through gnutls-cli, held to
/// TLS 1.2 (the other tests negotiate 1.3).
#[test]
fn gnutls_client_spans() {
    require_root();
    let root = TempDir::new("tls-gnutls");
    std::fs::write(root.0.join("index.html"), "hello gnutls\n").unwrap();
    let port = free_port();
    let _nginx = Nginx::start_tls(&root.0, port);
    let request = root.0.join("request.txt");
    std::fs::write(
        &request,
        format!("GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    let collector = Collector::start();
    let script = format!(
        "gnutls-cli --insecure --logfile=/dev/null --priority NORMAL:-VERS-TLS1.3 \
         -p {port} 127.0.0.1 < {} > /dev/null 2>&1",
        request.display()
    );
    let args = [
        "--otlp-endpoint",
        collector.grpc_endpoint.as_str(),
        "--",
        "sh",
        "-c",
        script.as_str(),
    ];
    let mut agent = Agent::start(&args, &[]);
    assert!(
        agent.wait(Duration::from_secs(30)).success(),
        "{}",
        agent.stderr()
    );
    let spans = collector.wait_for(1, Duration::from_secs(10), |_| true);
    assert_eq!(spans.len(), 1, "{}\n{}", summary(&spans), agent.stderr());
    let s = &spans[0];
    assert!(s.is_client());
    assert_eq!(
        s.str("url.full").as_deref(),
        Some(format!("https://127.0.0.1:{port}/index.html").as_str())
    );
    assert_eq!(s.int("http.response.status_code"), Some(200));
    assert_eq!(s.int("http.response.body.size"), Some(13));
    assert_eq!(
        s.res_str("process.executable.name").as_deref(),
        Some("gnutls-cli")
    );
    assert_eq!(s.str("tls.protocol.version").as_deref(), Some("1.2"));
    assert_clean(&agent);
}

/// A TLS library only one traced process mapped (here Node.js's
/// executable) loses its probes some seconds after that process exits,
/// and is hooked again for the next one, whose spans still come.
#[test]
fn probes_leave_a_library_no_traced_process_maps() {
    require_root();
    let dir = TempDir::new("tls-release");
    let (cert, key) = zerospan_tests::procs::self_signed_cert(&dir.0);
    let collector = Collector::start();
    let mut agent = Agent::start(
        &[
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--cmdline",
            r"https_server\.js .* release-test",
        ],
        &[],
    );
    let node = || {
        Fixture::start(
            Command::new("node")
                .arg(fixture("https_server.js"))
                .arg(&cert)
                .arg(&key)
                // For the selector: not the other Node.js test's server.
                .arg("release-test"),
        )
    };
    for path in ["/first", "/second"] {
        let server = node();
        let pid = server.pid();
        agent.wait_for_log(
            &format!("TLS functions in /proc/{pid}/exe"),
            Duration::from_secs(30),
        );
        let base = format!("https://127.0.0.1:{}", server.port);
        zerospan_tests::curl(&["-sk", "-o", "/dev/null", &format!("{base}/warm-up")]);
        zerospan_tests::curl(&["-sk", "-o", "/dev/null", &format!("{base}{path}")]);
        let spans = collector.wait_for(1, Duration::from_secs(10), |s| {
            s.str("url.path").as_deref() == Some(path)
        });
        assert_eq!(spans.len(), 1, "{path}: {}", agent.stderr());
        assert_eq!(
            spans[0].res_int("process.pid"),
            Some(i64::from(server.pid()))
        );
        drop(server);
        // Hooked again for the second server (nothing was left cached).
        agent.wait_for_log(
            &format!("released the TLS probes in /proc/{pid}/exe: no traced process maps it"),
            Duration::from_secs(30),
        );
    }
    assert!(agent.stop().success());
}
