//! RED metrics on the Prometheus endpoint: N requests give a histogram
//! count of N, by status code, with no path in any label.

use std::time::Duration;

use zerospan_tests::{curl, procs::free_port, require_root, Agent, Collector, Fixture, TempDir};

/// The value of the one sample of `name` that holds every label in
/// `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    let found: Vec<&str> = text
        .lines()
        .filter(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && labels.iter().all(|x| l.contains(x))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}:\n{text}");
    found[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn request_counts_and_agent_counters_on_the_prometheus_endpoint() {
    require_root();
    let dir = TempDir::new("metrics");
    std::fs::write(dir.0.join("index.html"), "measured\n").unwrap();
    let server = Fixture::http_server("127.0.0.1", &dir.0, &[("OTEL_SERVICE_NAME", "shop")]);
    let collector = Collector::start();
    let port = free_port().to_string();
    let mut agent = Agent::start(
        &[
            "--pid",
            &server.pid().to_string(),
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--prometheus-port",
            &port,
        ],
        &[],
    );
    let base = format!("http://127.0.0.1:{}", server.port);
    for _ in 0..5 {
        curl(&["-s", "-o", "/dev/null", &format!("{base}/index.html")]);
    }
    for n in 0..2 {
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            &format!("{base}/missing/{n}?token=x"),
        ]);
    }
    collector.wait_for(7, Duration::from_secs(10), |s| s.is_server());
    let metrics = curl(&["-s", &format!("http://127.0.0.1:{port}/metrics")]);
    let labels = |status: &'static str| {
        [
            "service_name=\"shop\"",
            "http_request_method=\"GET\"",
            "url_scheme=\"http\"",
            status,
        ]
    };
    let ok = labels("http_response_status_code=\"200\"");
    let missing = labels("http_response_status_code=\"404\"");
    let count = "http_server_request_duration_seconds_count";
    assert_eq!(sample(&metrics, count, &ok), 5.0);
    assert_eq!(sample(&metrics, count, &missing), 2.0);
    let inf = "le=\"+Inf\"";
    let bucket = "http_server_request_duration_seconds_bucket";
    assert_eq!(sample(&metrics, bucket, &[&ok[..], &[inf]].concat()), 5.0);
    // Five bodies of 9 bytes: all in the bucket up to 100 bytes.
    let size = "http_server_response_body_size_bytes_bucket";
    assert_eq!(
        sample(&metrics, size, &[&ok[..], &["le=\"100\""]].concat()),
        5.0
    );
    assert_eq!(
        sample(&metrics, size, &[&ok[..], &["le=\"0\""]].concat()),
        0.0
    );
    // No path, no query, in any label.
    assert!(
        !metrics.contains("missing") && !metrics.contains("token"),
        "{metrics}"
    );
    // The agent's own counters.
    assert_eq!(sample(&metrics, "zerospan_spans_created_total", &[]), 7.0);
    assert!(metrics.contains("# TYPE zerospan_traced_processes gauge"));
    // Anything but /metrics is not found.
    let other = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{port}/"),
    ]);
    assert_eq!(other, "404");
    assert!(agent.stop().success());
}
