//! Export to a production collector: TLS verified against a private CA,
//! mTLS, and gzip, over OTLP/gRPC and OTLP/HTTP, set by the standard
//! `OTEL_EXPORTER_OTLP_*` variables. A collector the agent cannot trust,
//! or that does not trust the agent, gets nothing, and the agent says why.

use std::{process::Command, time::Duration};

use zerospan_tests::{
    collector::{Arrival, Peer, ReceiverTls},
    curl,
    pki::Pki,
    procs::{agent_binary, free_port},
    require_root, Agent, Collector, Nginx, TempDir,
};

const REQUESTS: usize = 5;

/// nginx on a fresh port, serving one index page.
fn nginx() -> (TempDir, Nginx, u16) {
    let dir = TempDir::new("export-site");
    std::fs::write(dir.0.join("index.html"), "ok\n").unwrap();
    let port = free_port();
    let nginx = Nginx::start(&dir.0, port);
    (dir, nginx, port)
}

/// `REQUESTS` requests to nginx, `/e/0` … `/e/4`.
fn drive(port: u16) {
    let urls: Vec<String> = (0..REQUESTS)
        .map(|i| format!("http://127.0.0.1:{port}/e/{i}"))
        .collect();
    let mut args = vec!["-s"];
    for url in &urls {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args);
}

/// Traces nginx with `env`, drives it, and stops the agent once `until`
/// returns.
fn trace(nginx: &Nginx, port: u16, env: &[(&str, &str)], until: impl FnOnce(&Agent)) -> Agent {
    let mut agent = Agent::start(&["--pid", &nginx.pid().to_string()], env);
    drive(port);
    until(&agent);
    assert!(agent.stop().success(), "{}", agent.stderr());
    agent
}

/// Until the collector has every span (or ten seconds passed).
fn delivered(collector: &Collector) -> impl FnOnce(&Agent) + '_ {
    |_| {
        collector.wait_for(REQUESTS, Duration::from_secs(10), |_| true);
    }
}

fn paths(collector: &Collector) -> Vec<String> {
    let mut p: Vec<String> = collector
        .spans()
        .iter()
        .map(|s| s.str("url.path").unwrap())
        .collect();
    p.sort();
    p
}

fn expected_paths() -> Vec<String> {
    (0..REQUESTS).map(|i| format!("/e/{i}")).collect()
}

/// Every span arrived, and every export (the spans, and the metrics
/// flushed at the stop) came as `how`, with no failure on either side.
fn delivered_as(collector: &Collector, agent: &Agent, how: Arrival) {
    assert_eq!(paths(collector), expected_paths(), "{}", agent.stderr());
    let arrivals = collector.arrivals();
    assert!(!arrivals.is_empty());
    for a in arrivals {
        assert_eq!(a, how);
    }
    assert_eq!(collector.tls_refused(), 0);
    assert_eq!(agent.stat("export_failures"), Some(0));
}

#[test]
fn spans_reach_a_tls_collector_verified_by_a_private_ca_with_gzip_over_grpc() {
    require_root();
    let pki = Pki::new();
    let collector = Collector::start_tls(&ReceiverTls {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: None,
    });
    let (_dir, nginx, port) = nginx();
    let ca = pki.ca.to_string_lossy();
    let agent = trace(
        &nginx,
        port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.grpc_endpoint),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
        delivered(&collector),
    );
    // TLS with h2 negotiated, gzip.
    delivered_as(
        &collector,
        &agent,
        Arrival {
            transport: "grpc",
            tls: Some(Peer {
                alpn: Some("h2".into()),
                client_cn: None,
            }),
            gzip: true,
        },
    );
}

#[test]
fn spans_reach_a_collector_that_requires_a_client_certificate_over_http() {
    require_root();
    let pki = Pki::new();
    let collector = Collector::start_tls(&ReceiverTls {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca.clone()),
    });
    let (_dir, nginx, port) = nginx();
    let (ca, cert, key) = (
        pki.ca.to_string_lossy(),
        pki.client_cert.to_string_lossy(),
        pki.client_key.to_string_lossy(),
    );
    let agent = trace(
        &nginx,
        port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.http_endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
        delivered(&collector),
    );
    delivered_as(
        &collector,
        &agent,
        Arrival {
            transport: "http",
            tls: Some(Peer {
                alpn: Some("http/1.1".into()),
                client_cn: Some("zerospan-agent".into()),
            }),
            gzip: true,
        },
    );
}

/// Each way trust can fail: the collector gets no byte of a span, the
/// agent counts its failures and says why in its log.
#[test]
fn an_untrusted_collector_gets_nothing_and_the_agent_says_why() {
    require_root();
    let pki = Pki::new();
    let (_dir, nginx, port) = nginx();
    let (ca, stranger, cert, key) = (
        pki.ca.to_string_lossy(),
        pki.stranger_ca.to_string_lossy(),
        pki.client_cert.to_string_lossy(),
        pki.client_key.to_string_lossy(),
    );
    struct Case<'a> {
        what: &'a str,
        protocol: &'a str,
        mtls: bool,
        env: Vec<(&'a str, &'a str)>,
        /// In the agent's log.
        says: &'a str,
    }
    let cases = [
        Case {
            what: "the collector's CA is not the one configured",
            protocol: "grpc",
            mtls: false,
            env: vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", &stranger)],
            says: "certificate verify failed",
        },
        Case {
            what: "a private CA, and none configured: the system's roots",
            protocol: "http/protobuf",
            mtls: false,
            env: vec![],
            says: "certificate verify failed",
        },
        Case {
            what: "the collector wants a client certificate, the agent has none",
            protocol: "grpc",
            mtls: true,
            env: vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)],
            says: "if it requires a client certificate, set \
                   OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        },
        Case {
            what: "the client certificate is signed by a CA the collector does not know",
            protocol: "http/protobuf",
            mtls: true,
            env: vec![
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
            ],
            says: "alert unknown ca",
        },
    ];
    for case in cases {
        let collector = Collector::start_tls(&ReceiverTls {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            // The last case's collector trusts only the stranger CA.
            client_ca: case.mtls.then(|| {
                if case.env.len() == 3 {
                    pki.stranger_ca.clone()
                } else {
                    pki.ca.clone()
                }
            }),
        });
        let endpoint = if case.protocol == "grpc" {
            &collector.grpc_endpoint
        } else {
            &collector.http_endpoint
        };
        let mut env = case.env.clone();
        env.extend([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", case.protocol),
        ]);
        let agent = trace(&nginx, port, &env, |a| {
            a.wait_for_log("export failed", Duration::from_secs(15))
        });
        let log = agent.stderr();
        assert_eq!(collector.span_count(), 0, "{}: {log}", case.what);
        assert_eq!(collector.arrivals(), vec![], "{}", case.what);
        assert!(collector.tls_refused() > 0, "{}: {log}", case.what);
        assert!(
            agent.stat("export_failures").unwrap() > 0,
            "{}: {log}",
            case.what
        );
        assert!(
            agent.stat("spans_dropped_export").unwrap() >= REQUESTS as u64,
            "{}: {log}",
            case.what
        );
        assert!(log.contains(case.says), "{}: {log}", case.what);
        eprintln!(
            "{}: {}",
            case.what,
            log.lines()
                .find(|l| l.contains("export failed"))
                .unwrap_or("")
        );
    }
}

/// TLS settings with an `http://` endpoint: the scheme decides, as the
/// exporter specification says, and the agent warns that spans go in the
/// clear instead of ignoring the settings silently.
#[test]
fn tls_settings_with_a_plaintext_endpoint_are_reported() {
    require_root();
    let pki = Pki::new();
    let collector = Collector::start();
    let (_dir, nginx, port) = nginx();
    let ca = pki.ca.to_string_lossy();
    let agent = trace(
        &nginx,
        port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.grpc_endpoint),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        ],
        delivered(&collector),
    );
    assert_eq!(paths(&collector), expected_paths());
    assert!(
        agent.stderr().contains("spans are sent in the clear"),
        "{}",
        agent.stderr()
    );
}

/// Certificate files that cannot be used stop the agent at start, naming
/// the file.
#[test]
fn an_unreadable_certificate_stops_the_agent_at_start() {
    require_root();
    let out = Command::new("timeout")
        .arg("60")
        .arg(agent_binary())
        .args(["--pid", "1"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 124 would be `timeout` ending an agent that ran on.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}

/// SIGTERM while nginx is under load: the agent delivers every span it
/// made, within its shutdown timeout (5 s), and exits 0; the load sees no
/// error.
#[test]
fn a_sigterm_under_load_delivers_every_span_and_exits_0() {
    require_root();
    let (_dir, nginx, port) = nginx();
    let collector = Collector::start();
    let mut agent = Agent::for_pids(&[nginx.pid()], &collector, &[]);
    let load = Command::new("wrk")
        .args(["-t1", "-c2", "-d6s", &format!("http://127.0.0.1:{port}/")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wrk (installed by cargo xtask setup)");
    std::thread::sleep(Duration::from_secs(3));
    let signalled = std::time::Instant::now();
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let status = agent.wait(Duration::from_secs(30));
    let took = signalled.elapsed();
    let load = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&load.stdout);
    let log = agent.stderr();
    assert!(status.success(), "{status}: {log}");
    // The shutdown timeout (5 s), and slack for a loaded machine.
    assert!(took < Duration::from_secs(8), "{took:?}: {log}");
    assert!(
        load.status.success() && !report.contains("errors"),
        "{report}"
    );
    let stat = |k| agent.stat(k).unwrap_or_else(|| panic!("no {k}: {log}"));
    let created = stat("spans_created");
    assert!(created > 1000, "{created}: {report}");
    // Nothing sampled out, queued past its bound, or given up on: every
    // span made was delivered, and the receiver has each one.
    for lost in [
        "spans_sampled_out",
        "spans_dropped_queue_full",
        "spans_dropped_export",
    ] {
        assert_eq!(stat(lost), 0, "{lost}: {log}");
    }
    assert_eq!(stat("spans_exported"), created, "{log}");
    assert_eq!(collector.span_count(), created);
    eprintln!("SIGTERM under load: exited 0 in {took:?}, {created} spans made, all delivered");
}
