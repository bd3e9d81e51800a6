//! RED metrics: N requests give a histogram count of N, by status code,
//! with no path in any label, on the Prometheus endpoint and over OTLP
//! (gRPC and HTTP).

use std::time::Duration;

use zerospan_tests::{
    collector::MetricPoint, curl, procs::free_port, require_root, Agent, Collector, Fixture,
    TempDir,
};

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

/// Waits for an export in which `http.server.request.duration` has
/// counted `want` requests for each route, and returns that metric.
fn server_durations(
    collector: &Collector,
    transport: &str,
    want: &[(&str, u64)],
) -> Vec<MetricPoint> {
    collector.wait_for_metric(
        transport,
        "http.server.request.duration",
        Duration::from_secs(15),
        |points| {
            want.iter().all(|(route, n)| {
                points
                    .iter()
                    .any(|p| p.str("http.route").as_deref() == Some(route) && p.count == *n)
            })
        },
    )
}

#[test]
fn request_counts_and_agent_counters_on_the_prometheus_endpoint_and_otlp() {
    require_root();
    let dir = TempDir::new("metrics");
    std::fs::write(dir.0.join("index.html"), "measured\n").unwrap();
    std::fs::create_dir(dir.0.join("items")).unwrap();
    for n in 0..2 {
        std::fs::write(dir.0.join(format!("items/100{n}")), "an item\n").unwrap();
    }
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
            "--http-route",
            "/missing/{n}",
        ],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "300")],
    );
    let base = format!("http://127.0.0.1:{}", server.port);
    for _ in 0..5 {
        curl(&["-s", "-o", "/dev/null", &format!("{base}/index.html")]);
    }
    // Two paths the configured route matches; two it does not, served
    // (so a guessed template is admitted); two a scanner tries, not found.
    for n in 0..2 {
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            &format!("{base}/missing/{n}?token=x"),
        ]);
        curl(&["-s", "-o", "/dev/null", &format!("{base}/items/100{n}")]);
        curl(&["-s", "-o", "/dev/null", &format!("{base}/wp-login.php")]);
    }
    let spans = collector.wait_for(11, Duration::from_secs(10), |s| s.is_server());
    // The configured route is on the spans it matched, and names them.
    let routed: Vec<_> = spans
        .iter()
        .filter(|s| s.str("http.route").is_some())
        .collect();
    assert_eq!(routed.len(), 2, "{spans:#?}");
    for s in routed {
        assert_eq!(s.str("http.route").as_deref(), Some("/missing/{n}"));
        assert_eq!(s.span.name, "GET /missing/{n}");
    }
    let metrics = curl(&["-s", &format!("http://127.0.0.1:{port}/metrics")]);
    let labels = |route: &'static str, status: &'static str| {
        [
            "service_name=\"shop\"",
            "http_request_method=\"GET\"",
            "url_scheme=\"http\"",
            route,
            status,
        ]
    };
    // Unmatched paths are templated by guess: ids become {id}.
    let ok = labels(
        "http_route=\"/index.html\"",
        "http_response_status_code=\"200\"",
    );
    let missing = labels(
        "http_route=\"/missing/{n}\"",
        "http_response_status_code=\"404\"",
    );
    let items = labels(
        "http_route=\"/items/{id}\"",
        "http_response_status_code=\"200\"",
    );
    // A path no pattern matches, first seen failing: not admitted as a
    // template (a scanner's 404s cannot use up the routes), so _OTHER.
    let scanned = labels("http_route=\"_OTHER\"", "http_response_status_code=\"404\"");
    let count = "http_server_request_duration_seconds_count";
    assert_eq!(sample(&metrics, count, &ok), 5.0);
    assert_eq!(sample(&metrics, count, &missing), 2.0);
    assert_eq!(sample(&metrics, count, &items), 2.0);
    assert_eq!(sample(&metrics, count, &scanned), 2.0);
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
    // No raw path, no query, in any label.
    assert!(
        !metrics.contains("/missing/0")
            && !metrics.contains("/items/1000")
            && !metrics.contains("wp-login")
            && !metrics.contains("token"),
        "{metrics}"
    );
    // The agent's own counters.
    assert_eq!(sample(&metrics, "zerospan_spans_created_total", &[]), 11.0);
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

    // The same counts over OTLP/gRPC, under the app's own service.
    let points = server_durations(
        &collector,
        "grpc",
        &[
            ("/index.html", 5),
            ("/missing/{n}", 2),
            ("/items/{id}", 2),
            ("_OTHER", 2),
        ],
    );
    let point = |route: &str| -> &MetricPoint {
        let found: Vec<_> = points
            .iter()
            .filter(|p| p.str("http.route").as_deref() == Some(route))
            .collect();
        assert_eq!(found.len(), 1, "{points:#?}");
        found[0]
    };
    for (route, status, n) in [
        ("/index.html", 200, 5),
        ("/missing/{n}", 404, 2),
        ("/items/{id}", 200, 2),
        ("_OTHER", 404, 2),
    ] {
        let p = point(route);
        assert_eq!(p.int("http.response.status_code"), Some(status));
        assert_eq!(p.service, "shop");
        assert_eq!(p.count, n);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), n);
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.str("http.request.method").as_deref(), Some("GET"));
        assert_eq!(p.str("url.scheme").as_deref(), Some("http"));
        assert!(
            !p.attributes.iter().any(|a| a.key.starts_with("url.path")),
            "{p:?}"
        );
    }
    let created = collector.metric("grpc", "zerospan.spans_created");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].service, "zerospan");
    assert_eq!(created[0].value, Some(11));
    assert!(agent.stop().success());
}

/// Over OTLP/HTTP, with an interval longer than the test: the one export
/// is the final one the agent sends as it stops.
#[test]
fn request_counts_over_otlp_http_in_the_final_export() {
    require_root();
    let dir = TempDir::new("metrics-http");
    std::fs::write(dir.0.join("index.html"), "measured\n").unwrap();
    let server = Fixture::http_server("127.0.0.1", &dir.0, &[("OTEL_SERVICE_NAME", "shop")]);
    let collector = Collector::start();
    let mut agent = Agent::start(
        &[
            "--pid",
            &server.pid().to_string(),
            "--otlp-endpoint",
            &collector.http_endpoint,
            "--otlp-protocol",
            "http/protobuf",
        ],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "600000")],
    );
    let url = server.index_url();
    for _ in 0..3 {
        curl(&["-s", "-o", "/dev/null", &url]);
    }
    collector.wait_for(3, Duration::from_secs(10), |s| s.is_server());
    assert_eq!(collector.metric_exports(), 0);
    assert!(agent.stop().success());
    assert_eq!(collector.metric_exports(), 1, "{}", agent.stderr());
    let points = collector.metric("http", "http.server.request.duration");
    assert_eq!(points.len(), 1, "{points:#?}");
    assert_eq!((points[0].service.as_str(), points[0].count), ("shop", 3));
    // The response bodies: 9 bytes each, all at or below 100.
    let sizes = collector.metric("http", "http.server.response.body.size");
    assert_eq!(sizes.len(), 1, "{sizes:#?}");
    assert_eq!(sizes[0].explicit_bounds[1], 100.0);
    assert_eq!(sizes[0].bucket_counts[1], 3);
}
