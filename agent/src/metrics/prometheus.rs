//! The Prometheus text exposition of the registry, served at
//! `:PORT/metrics` (`--prometheus-port`).

use std::{fmt::Write as _, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Labels, Registry, Shared};
use crate::{
    spans::Value,
    stats::{Kind, Stats},
};

/// The OpenTelemetry name as Prometheus spells it: dots as underscores,
/// then the unit.
fn prometheus_name(name: &str, unit: &str) -> String {
    let suffix = match unit {
        "s" => "_seconds",
        "By" => "_bytes",
        _ => "",
    };
    format!("{}{suffix}", name.replace('.', "_"))
}

/// Every histogram, then the agent's own counters as `zerospan_*`.
pub fn render(registry: &Registry, stats: &Stats) -> String {
    let mut out = String::new();
    for (metric, rows) in registry.families() {
        let d = metric.describe();
        let name = prometheus_name(d.name, d.unit);
        let _ = writeln!(
            out,
            "# HELP {name} {} ({})\n# TYPE {name} histogram",
            d.help, d.name
        );
        for (labels, h) in rows {
            let base = render_labels(labels);
            let mut cumulative = 0;
            for (bound, n) in d.bounds.iter().zip(&h.buckets) {
                cumulative += n;
                let _ = writeln!(out, "{name}_bucket{{{base}le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_bucket{{{base}le=\"+Inf\"}} {}", h.count);
            let trimmed = base.trim_end_matches(',');
            let _ = writeln!(out, "{name}_sum{{{trimmed}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{trimmed}}} {}", h.count);
        }
    }
    for counter in stats.all() {
        let (name, value) = (
            counter.name,
            counter.load(std::sync::atomic::Ordering::Relaxed),
        );
        let (kind, suffix) = if counter.kind == Kind::Gauge {
            ("gauge", "")
        } else {
            ("counter", "_total")
        };
        let _ = writeln!(
            out,
            "# TYPE zerospan_{name}{suffix} {kind}\nzerospan_{name}{suffix} {value}"
        );
        // Kept by protocol too: a family of its own with a `protocol`
        // label, so that the total's series never changes shape.
        let by = stats.by_protocol(counter);
        if !by.is_empty() {
            let _ = writeln!(out, "# TYPE zerospan_{name}_by_protocol{suffix} {kind}");
        }
        for (protocol, n) in by {
            let _ = writeln!(
                out,
                "zerospan_{name}_by_protocol{suffix}{{protocol=\"{protocol}\"}} {n}"
            );
        }
    }
    out
}

/// `a_b="v",` for each label, dots in names as underscores, values escaped.
fn render_labels(labels: &Labels) -> String {
    let mut out = String::new();
    for (k, v) in labels {
        let v = match v {
            Value::Str(s) => s
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n"),
            Value::Int(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
        };
        let _ = write!(out, "{}=\"{v}\",", k.replace('.', "_"));
    }
    out
}

/// Serves `GET /metrics` on `port`, on every address, until the runtime
/// stops. One request per connection; anything else gets a 404.
pub async fn serve(port: u16, registry: Shared, stats: Arc<Stats>) -> anyhow::Result<()> {
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
                    tokio::time::sleep(Duration::from_millis(100)).await;
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
                let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut head))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let wanted = head[..n].starts_with(b"GET /metrics ")
                    || head[..n].starts_with(b"GET /metrics?");
                let response = if wanted {
                    let body = render(&registry.lock().expect("not poisoned"), &stats);
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
                    Duration::from_secs(10),
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
    use crate::metrics::{tests::server, MAX_SERIES_PER_SERVICE};

    #[test]
    fn histograms_count_requests_by_bounded_attributes() {
        let mut r = Registry::new(0, 100);
        for _ in 0..3 {
            r.observe(&server(200, 20));
        }
        r.observe(&server(404, 200));
        let text = render(&r, &Stats::default());
        let base = "service_name=\"web\",http_request_method=\"GET\",\
                    http_route=\"/secret/{id}\",url_scheme=\"http\"";
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
        // Paths become labels only as templates.
        assert!(!text.contains("123"), "{text}");
        assert!(text.contains("# TYPE zerospan_spans_created_total counter"));
        assert!(text.contains("# TYPE zerospan_traced_processes gauge"));
    }

    #[test]
    fn the_overflow_series_is_rendered() {
        let mut r = Registry::new(0, 100);
        for status in 0..(MAX_SERIES_PER_SERVICE as i64 + 50) {
            r.observe(&server(status, 1));
        }
        let text = render(&r, &Stats::default());
        assert!(text.contains(
            "http_server_request_duration_seconds_count{service_name=\"web\",otel_metric_overflow=\"true\"} 50"
        ));
    }
}
