//! RED metrics derived from spans, and the agent's own counters, for a
//! Prometheus scrape (`--prometheus-port`).
//!
//! Every span is observed before sampling, so the metrics count every
//! request even when traces are sampled. Attributes are the OpenTelemetry
//! semantic conventions' for each metric, minus anything unbounded: no
//! paths (the agent has no route templates yet), no peer ports. Each
//! metric keeps at most [`MAX_SERIES`] attribute sets; past that,
//! observations go to one series marked `otel.metric.overflow="true"`, as
//! the OpenTelemetry SDKs do.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use crate::{
    spans::{Span, SpanKind, Status, Value},
    stats::Stats,
};

/// Attribute sets kept per metric.
pub const MAX_SERIES: usize = 1000;

/// Bucket bounds for durations, in seconds: the semantic conventions'
/// advice for HTTP and database durations.
const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Bucket bounds for body sizes, in bytes.
const BYTES: &[f64] = &[
    0.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
];

/// Counters in [`Stats`] that are gauges (a value now, not a total).
const GAUGES: &[&str] = &[
    "traced_processes",
    "kernel_traced_entries",
    "tls_files_hooked",
    "tls_processes_known",
];

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Metric {
    HttpServerDuration,
    HttpServerRequestSize,
    HttpServerResponseSize,
    HttpClientDuration,
    HttpClientRequestSize,
    HttpClientResponseSize,
    DbClientDuration,
}

impl Metric {
    /// Prometheus name (the OpenTelemetry name, dots as underscores, and
    /// the unit) and help text.
    fn describe(self) -> (&'static str, &'static str, &'static [f64]) {
        match self {
            Metric::HttpServerDuration => (
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests (http.server.request.duration).",
                SECONDS,
            ),
            Metric::HttpServerRequestSize => (
                "http_server_request_body_size_bytes",
                "Size of HTTP server request bodies (http.server.request.body.size).",
                BYTES,
            ),
            Metric::HttpServerResponseSize => (
                "http_server_response_body_size_bytes",
                "Size of HTTP server response bodies (http.server.response.body.size).",
                BYTES,
            ),
            Metric::HttpClientDuration => (
                "http_client_request_duration_seconds",
                "Duration of HTTP client requests (http.client.request.duration).",
                SECONDS,
            ),
            Metric::HttpClientRequestSize => (
                "http_client_request_body_size_bytes",
                "Size of HTTP client request bodies (http.client.request.body.size).",
                BYTES,
            ),
            Metric::HttpClientResponseSize => (
                "http_client_response_body_size_bytes",
                "Size of HTTP client response bodies (http.client.response.body.size).",
                BYTES,
            ),
            Metric::DbClientDuration => (
                "db_client_operation_duration_seconds",
                "Duration of database client operations (db.client.operation.duration).",
                SECONDS,
            ),
        }
    }
}

/// Attributes each kind of span contributes, by semantic-convention name.
const HTTP_SERVER: &[&str] = &[
    "http.request.method",
    "url.scheme",
    "http.response.status_code",
    "error.type",
    "network.protocol.version",
];
const HTTP_CLIENT: &[&str] = &[
    "http.request.method",
    "http.response.status_code",
    "error.type",
    "server.address",
    "server.port",
    "network.protocol.version",
];
/// Not the server's address: database peers are IPs, which churn (pods).
const DB_CLIENT: &[&str] = &[
    "db.system.name",
    "db.operation.name",
    "db.collection.name",
    "db.namespace",
    "db.response.status_code",
    "error.type",
];

type Labels = Vec<(&'static str, String)>;

struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram {
            buckets: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Default)]
struct Series {
    by_labels: HashMap<Labels, Histogram>,
}

/// Histograms by metric and attribute set.
#[derive(Default)]
pub struct Registry {
    series: HashMap<Metric, Series>,
}

fn label(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::Int(n) => n.to_string(),
    }
}

impl Registry {
    /// Records what `span` says about its request. Requests whose outcome
    /// is not known (still in flight when the agent stopped, a response
    /// that could not be read) are left out rather than counted as
    /// successes.
    pub fn observe(&mut self, span: &Span) {
        if span.attr("zerospan.incomplete").is_some() {
            return;
        }
        let seconds = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9;
        let service = span
            .resource
            .get("service.name")
            .map(label)
            .unwrap_or_default();
        let labels_of = |keys: &[&'static str]| -> Labels {
            let mut l: Labels = vec![("service.name", service.clone())];
            for k in keys {
                if let Some(v) = span.attr(k) {
                    l.push((k, label(v)));
                } else if *k == "error.type" && matches!(span.status, Status::Error(_)) {
                    l.push((k, "_OTHER".to_owned()));
                }
            }
            l
        };
        let size = |key: &str| match span.attr(key) {
            Some(Value::Int(n)) => Some(*n as f64),
            _ => None,
        };
        if span.attr("db.system.name").is_some() {
            self.record(Metric::DbClientDuration, labels_of(DB_CLIENT), seconds);
            return;
        }
        let (duration, request, response, labels) = match span.kind {
            SpanKind::Server => (
                Metric::HttpServerDuration,
                Metric::HttpServerRequestSize,
                Metric::HttpServerResponseSize,
                labels_of(HTTP_SERVER),
            ),
            SpanKind::Client => (
                Metric::HttpClientDuration,
                Metric::HttpClientRequestSize,
                Metric::HttpClientResponseSize,
                labels_of(HTTP_CLIENT),
            ),
        };
        if let Some(n) = size("http.request.body.size") {
            self.record(request, labels.clone(), n);
        }
        if let Some(n) = size("http.response.body.size") {
            self.record(response, labels.clone(), n);
        }
        self.record(duration, labels, seconds);
    }

    fn record(&mut self, metric: Metric, labels: Labels, v: f64) {
        let (_, _, bounds) = metric.describe();
        let series = self.series.entry(metric).or_default();
        let labels =
            if series.by_labels.contains_key(&labels) || series.by_labels.len() < MAX_SERIES {
                labels
            } else {
                vec![("otel.metric.overflow", "true".to_owned())]
            };
        series
            .by_labels
            .entry(labels)
            .or_insert_with(|| Histogram::new(bounds))
            .observe(bounds, v);
    }

    /// The Prometheus text exposition of every histogram, then the agent's
    /// own counters as `zerospan_*`.
    pub fn render(&self, stats: &Stats) -> String {
        let mut out = String::new();
        let mut metrics: Vec<&Metric> = self.series.keys().collect();
        metrics.sort_by_key(|m| m.describe().0);
        for metric in metrics {
            let (name, help, bounds) = metric.describe();
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            let mut rows: Vec<(&Labels, &Histogram)> =
                self.series[metric].by_labels.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for (labels, h) in rows {
                let base = render_labels(labels);
                let mut cumulative = 0;
                for (bound, n) in bounds.iter().zip(&h.buckets) {
                    cumulative += n;
                    let _ = writeln!(out, "{name}_bucket{{{base}le=\"{bound}\"}} {cumulative}");
                }
                let _ = writeln!(out, "{name}_bucket{{{base}le=\"+Inf\"}} {}", h.count);
                let trimmed = base.trim_end_matches(',');
                let _ = writeln!(out, "{name}_sum{{{trimmed}}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{{trimmed}}} {}", h.count);
            }
        }
        for (name, value) in stats.snapshot() {
            let (kind, suffix) = if GAUGES.contains(&name) {
                ("gauge", "")
            } else {
                ("counter", "_total")
            };
            let _ = writeln!(
                out,
                "# TYPE zerospan_{name}{suffix} {kind}\nzerospan_{name}{suffix} {value}"
            );
        }
        out
    }
}

/// `a_b="v",` for each label, dots in names as underscores, values escaped.
fn render_labels(labels: &Labels) -> String {
    let mut out = String::new();
    for (k, v) in labels {
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{}=\"{v}\",", k.replace('.', "_"));
    }
    out
}

/// Shared between the event path, which records, and the scrape endpoint.
pub type Shared = Arc<Mutex<Registry>>;

/// Serves `GET /metrics` on `port`, on every address, until the runtime
/// stops. One request per connection; anything else gets a 404.
pub async fn serve(port: u16, registry: Shared, stats: Arc<Stats>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("--prometheus-port {port}: cannot listen"))?;
    log::info!("serving Prometheus metrics on :{port}/metrics");
    // A scraper or two at a time; more connections are closed at once.
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    tokio::spawn(async move {
        loop {
            let mut sock = match listener.accept().await {
                Ok((sock, _)) => sock,
                Err(_) => {
                    // Out of file descriptors, say: not a busy loop.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let registry = registry.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let mut head = [0u8; 2048];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut head),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let wanted = head[..n].starts_with(b"GET /metrics ")
                    || head[..n].starts_with(b"GET /metrics?");
                let response = if wanted {
                    let body = registry.lock().expect("not poisoned").render(&stats);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                // A client that does not read is not waited for.
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    sock.write_all(response.as_bytes()),
                )
                .await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::test_span;

    fn server(status: i64, millis: u64) -> Span {
        let mut s = test_span(1, 0, "GET");
        s.start_unix_ns = 0;
        s.end_unix_ns = millis * 1_000_000;
        s.attributes = vec![
            ("http.request.method", "GET".into()),
            ("url.path", "/secret/123".into()),
            ("url.scheme", "http".into()),
            ("http.response.status_code", status.into()),
            ("http.response.body.size", 1500.into()),
        ];
        s
    }

    #[test]
    fn histograms_count_requests_by_bounded_attributes() {
        let mut r = Registry::default();
        for _ in 0..3 {
            r.observe(&server(200, 20));
        }
        r.observe(&server(404, 200));
        let text = r.render(&Stats::default());
        let base = "service_name=\"web\",http_request_method=\"GET\",url_scheme=\"http\"";
        assert!(text.contains(&format!(
            "http_server_request_duration_seconds_count{{{base},http_response_status_code=\"200\"}} 3"
        )), "{text}");
        assert!(text.contains(&format!(
            "http_server_request_duration_seconds_bucket{{{base},http_response_status_code=\"200\",le=\"0.025\"}} 3"
        )), "{text}");
        assert!(text.contains(&format!(
            "http_server_request_duration_seconds_bucket{{{base},http_response_status_code=\"404\",le=\"0.1\"}} 0"
        )), "{text}");
        assert!(text.contains(&format!(
            "http_server_response_body_size_bytes_bucket{{{base},http_response_status_code=\"404\",le=\"10000\"}} 1"
        )), "{text}");
        // Paths never become labels.
        assert!(!text.contains("secret"), "{text}");
        // Requests of unknown outcome are not counted.
        let mut stopped = server(200, 5);
        stopped
            .attributes
            .push(("zerospan.incomplete", "agent_stopped".into()));
        r.observe(&stopped);
        assert!(r.render(&Stats::default()).contains(&format!(
            "http_server_request_duration_seconds_count{{{base},http_response_status_code=\"200\"}} 3"
        )));
        assert!(text.contains("# TYPE zerospan_spans_created_total counter"));
        assert!(text.contains("# TYPE zerospan_traced_processes gauge"));
    }

    #[test]
    fn past_the_bound_series_overflow_into_one() {
        let mut r = Registry::default();
        for status in 0..(MAX_SERIES as i64 + 50) {
            r.observe(&server(status, 1));
        }
        let series = &r.series[&Metric::HttpServerDuration].by_labels;
        assert_eq!(series.len(), MAX_SERIES + 1);
        let overflow = vec![("otel.metric.overflow", "true".to_owned())];
        assert_eq!(series[&overflow].count, 50);
        let text = r.render(&Stats::default());
        assert!(text.contains(
            "http_server_request_duration_seconds_count{otel_metric_overflow=\"true\"} 50"
        ));
    }
}
