//! RED metrics derived from spans, kept as cumulative histograms, and
//! read out two ways: a Prometheus scrape ([`prometheus`],
//! `--prometheus-port`) and periodic OTLP export ([`otlp`]).
//!
//! Every span is observed before sampling, so the metrics count every
//! request even when traces are sampled. Attributes are the OpenTelemetry
//! semantic conventions' for each metric, minus anything unbounded: no raw
//! paths (only `http.route`, itself bounded by [`crate::spans::route`]),
//! no peer ports. Each metric keeps at most [`MAX_SERIES_PER_SERVICE`]
//! attribute sets per service and [`MAX_SERIES`] in all; past that,
//! observations go to the service's series marked
//! `otel.metric.overflow=true`, as the OpenTelemetry SDKs do.

pub mod otlp;
pub mod prometheus;

use std::sync::{Arc, Mutex};

use crate::hash::{Map, Set};

use crate::spans::{route, Category, Span, SpanKind, Status, Value};

/// Attribute sets kept per metric and service, and per metric in all.
pub const MAX_SERIES_PER_SERVICE: usize = 1000;
pub const MAX_SERIES: usize = 10_000;

/// Services whose guessed routes are remembered.
const MAX_ROUTE_SERVICES: usize = 1000;

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

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    HttpServerDuration,
    HttpServerRequestSize,
    HttpServerResponseSize,
    HttpClientDuration,
    HttpClientRequestSize,
    HttpClientResponseSize,
    DbClientDuration,
    RpcServerDuration,
    RpcClientDuration,
}

/// What a metric is called and measured in.
pub struct Description {
    /// The semantic conventions' name.
    pub name: &'static str,
    /// UCUM unit, as OTLP carries it.
    pub unit: &'static str,
    pub help: &'static str,
    pub bounds: &'static [f64],
}

impl Metric {
    pub fn describe(self) -> Description {
        let (name, unit, help, bounds) = match self {
            Metric::HttpServerDuration => (
                "http.server.request.duration",
                "s",
                "Duration of HTTP server requests.",
                SECONDS,
            ),
            Metric::HttpServerRequestSize => (
                "http.server.request.body.size",
                "By",
                "Size of HTTP server request bodies.",
                BYTES,
            ),
            Metric::HttpServerResponseSize => (
                "http.server.response.body.size",
                "By",
                "Size of HTTP server response bodies.",
                BYTES,
            ),
            Metric::HttpClientDuration => (
                "http.client.request.duration",
                "s",
                "Duration of HTTP client requests.",
                SECONDS,
            ),
            Metric::HttpClientRequestSize => (
                "http.client.request.body.size",
                "By",
                "Size of HTTP client request bodies.",
                BYTES,
            ),
            Metric::HttpClientResponseSize => (
                "http.client.response.body.size",
                "By",
                "Size of HTTP client response bodies.",
                BYTES,
            ),
            Metric::DbClientDuration => (
                "db.client.operation.duration",
                "s",
                "Duration of database client operations.",
                SECONDS,
            ),
            Metric::RpcServerDuration => (
                "rpc.server.call.duration",
                "s",
                "Measures the duration of inbound remote procedure calls.",
                SECONDS,
            ),
            Metric::RpcClientDuration => (
                "rpc.client.call.duration",
                "s",
                "Measures the duration of outbound remote procedure calls.",
                SECONDS,
            ),
        };
        Description {
            name,
            unit,
            help,
            bounds,
        }
    }
}

/// Attributes each kind of span contributes, by semantic-convention name.
const HTTP_SERVER: &[&str] = &[
    "http.request.method",
    "http.route",
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

/// The RPC conventions' call-duration attributes.
const RPC_CALL: &[&str] = &[
    "rpc.system.name",
    "rpc.method",
    "rpc.response.status_code",
    "server.address",
    "server.port",
    "error.type",
];

/// An attribute set. It starts with `service.name` and whichever of the
/// other [`RESOURCE_KEYS`] the process's resource has, which OTLP carries
/// in the resource and Prometheus as labels.
pub type Labels = Vec<(&'static str, Value)>;

/// Resource attributes a metric keeps: the service, and on Kubernetes its
/// namespace, workload, container and node. Not the pod's name or uid, nor
/// a Job's (a CronJob's Jobs are named by the minute): they churn, and
/// cumulative series of pods long gone would fill the bounds.
pub const RESOURCE_KEYS: &[&str] = &[
    "service.name",
    "service.namespace",
    "k8s.namespace.name",
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.container.name",
    "k8s.node.name",
];

pub struct Histogram {
    /// Observations per bucket (not cumulative); the last bucket is
    /// everything above the highest bound.
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram {
            buckets: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// The `http.route` of a server request whose path matched no configured
/// pattern: a guessed template, remembered per service up to `max`. A new
/// template is admitted only from a successful response, so scanners'
/// 404s cannot use up the budget; past it, or for failures of templates
/// never seen succeeding, the route is `_OTHER`.
struct GuessedRoutes {
    max: usize,
    /// By service (its `service.name` and `service.namespace` labels).
    by_service: Map<Labels, Set<String>>,
}

/// What unknown paths collapse into past the bound.
const OTHER_ROUTE: &str = "_OTHER";

impl GuessedRoutes {
    fn route(&mut self, service: &[(&'static str, Value)], path: &str, succeeded: bool) -> String {
        let Some(template) = route::guess(path) else {
            return OTHER_ROUTE.to_owned();
        };
        if let Some(seen) = self.by_service.get_mut(service) {
            if seen.contains(&template) {
                return template;
            }
            if succeeded && seen.len() < self.max {
                seen.insert(template.clone());
                return template;
            }
            return OTHER_ROUTE.to_owned();
        }
        if succeeded && self.max > 0 && self.by_service.len() < MAX_ROUTE_SERVICES {
            self.by_service
                .insert(service.to_vec(), Set::from_iter([template.clone()]));
            return template;
        }
        OTHER_ROUTE.to_owned()
    }
}

/// The leading labels that name the service ([`RESOURCE_KEYS`]).
pub fn resource_of<'a>(labels: &'a [(&'static str, Value)]) -> &'a [(&'static str, Value)] {
    let n = labels
        .iter()
        .take_while(|(k, _)| RESOURCE_KEYS.contains(k))
        .count();
    &labels[..n]
}

/// Histograms by metric and attribute set, counted since `start_unix_ns`.
pub struct Registry {
    series: Map<Metric, Map<Labels, Histogram>>,
    /// Attribute sets per metric and service, for the per-service bound.
    per_service: Map<Metric, Map<Labels, usize>>,
    routes: GuessedRoutes,
    pub start_unix_ns: u64,
}

/// Shared between the event path, which records, and the readers.
pub type Shared = Arc<Mutex<Registry>>;

pub fn shared(max_routes: usize) -> Shared {
    Arc::new(Mutex::new(Registry::new(
        crate::clock::Clock::unix_now_ns(),
        max_routes,
    )))
}

impl Registry {
    pub fn new(start_unix_ns: u64, max_routes: usize) -> Self {
        Registry {
            series: Map::default(),
            per_service: Map::default(),
            routes: GuessedRoutes {
                max: max_routes,
                by_service: Map::default(),
            },
            start_unix_ns,
        }
    }

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
            .cloned()
            .unwrap_or_else(|| Value::Str(String::new()));
        let labels_of = |keys: &[&'static str]| -> Labels {
            let mut l: Labels = vec![("service.name", service.clone())];
            for k in &RESOURCE_KEYS[1..] {
                if let Some(v) = span.resource.get(k) {
                    l.push((k, v.clone()));
                }
            }
            for k in keys {
                if let Some(v) = span.attr(k) {
                    l.push((k, v.clone()));
                } else if *k == "error.type" && matches!(span.status, Status::Error(_)) {
                    l.push((k, "_OTHER".into()));
                }
            }
            l
        };
        let size = |key: &str| match span.attr(key) {
            Some(Value::Int(n)) => Some(*n as f64),
            _ => None,
        };
        match (span.category, span.kind) {
            (Category::Db, _) => {
                self.record(Metric::DbClientDuration, &labels_of(DB_CLIENT), seconds);
                return;
            }
            (Category::Rpc, SpanKind::Server) => {
                self.record(Metric::RpcServerDuration, &labels_of(RPC_CALL), seconds);
                return;
            }
            (Category::Rpc, SpanKind::Client) => {
                self.record(Metric::RpcClientDuration, &labels_of(RPC_CALL), seconds);
                return;
            }
            (Category::Http, _) => {}
        }
        let (duration, request, response, labels) = match span.kind {
            SpanKind::Server => {
                let mut labels = labels_of(HTTP_SERVER);
                let succeeded = matches!(
                    span.attr("http.response.status_code"),
                    Some(Value::Int(100..=399))
                );
                let guessed = match span.attr("url.path") {
                    Some(Value::Str(path)) if span.attr("http.route").is_none() => {
                        Some(self.routes.route(resource_of(&labels), path, succeeded))
                    }
                    _ => None,
                };
                if let Some(route) = guessed {
                    // After the method, where a configured route would be.
                    let at = labels
                        .iter()
                        .position(|(k, _)| *k == "http.request.method")
                        .map_or(labels.len(), |i| i + 1);
                    labels.insert(at, ("http.route", route.into()));
                }
                (
                    Metric::HttpServerDuration,
                    Metric::HttpServerRequestSize,
                    Metric::HttpServerResponseSize,
                    labels,
                )
            }
            SpanKind::Client => (
                Metric::HttpClientDuration,
                Metric::HttpClientRequestSize,
                Metric::HttpClientResponseSize,
                labels_of(HTTP_CLIENT),
            ),
        };
        if let Some(n) = size("http.request.body.size") {
            self.record(request, &labels, n);
        }
        if let Some(n) = size("http.response.body.size") {
            self.record(response, &labels, n);
        }
        self.record(duration, &labels, seconds);
    }

    /// Hot path: an existing series is found by reference; labels are
    /// copied only for a new one.
    fn record(&mut self, metric: Metric, labels: &Labels, v: f64) {
        let bounds = metric.describe().bounds;
        let series = self.series.entry(metric).or_default();
        if let Some(h) = series.get_mut(labels) {
            h.observe(bounds, v);
            return;
        }
        let resource = resource_of(labels);
        let overflow = ("otel.metric.overflow", Value::Bool(true));
        let services = self.per_service.entry(metric).or_default();
        // A service's count only grows with a new series: bounding the
        // series bounds the services too.
        let labels = if series.len() >= MAX_SERIES {
            // Past the overall bound, one series for everything new.
            vec![overflow]
        } else {
            let count = match services.get_mut(resource) {
                Some(count) => count,
                None => services.entry(resource.to_vec()).or_default(),
            };
            if *count < MAX_SERIES_PER_SERVICE {
                *count += 1;
                labels.clone()
            } else {
                let mut own = resource.to_vec();
                own.push(overflow);
                own
            }
        };
        series
            .entry(labels)
            .or_insert_with(|| Histogram::new(bounds))
            .observe(bounds, v);
    }

    /// Every metric with its series, in a stable order.
    pub fn families(&self) -> Vec<(Metric, Vec<(&Labels, &Histogram)>)> {
        let mut out: Vec<_> = self
            .series
            .iter()
            .map(|(m, by_labels)| {
                let mut rows: Vec<_> = by_labels.iter().collect();
                rows.sort_by(|a, b| a.0.cmp(b.0));
                (*m, rows)
            })
            .collect();
        out.sort_by_key(|(m, _)| *m);
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spans::test_span;

    pub fn server(status: i64, millis: u64) -> Span {
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
    fn requests_of_unknown_outcome_are_not_counted() {
        let mut r = Registry::new(0, 100);
        r.observe(&server(200, 5));
        let mut stopped = server(200, 5);
        stopped
            .attributes
            .push(("zerospan.incomplete", "agent_stopped".into()));
        r.observe(&stopped);
        let families = r.families();
        assert_eq!(families[0].1[0].1.count, 1);
    }

    #[test]
    fn a_value_above_every_bound_lands_in_the_last_bucket() {
        let mut r = Registry::new(0, 100);
        r.observe(&server(200, 60_000));
        let (_, rows) = &r.families()[0];
        let h = rows[0].1;
        assert_eq!(h.buckets.len(), SECONDS.len() + 1);
        assert_eq!(h.buckets[SECONDS.len()], 1);
    }

    fn path(p: &str) -> Span {
        let mut s = server(200, 1);
        s.attributes[1].1 = p.into();
        s
    }

    fn routes(r: &Registry) -> Vec<(String, u64)> {
        r.series[&Metric::HttpServerDuration]
            .iter()
            .map(|(labels, h)| {
                let route = labels.iter().find(|(k, _)| *k == "http.route");
                (format!("{:?}", route.map(|(_, v)| v)), h.count)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect()
    }

    #[test]
    fn unmatched_paths_are_templated_then_collapsed_past_the_bound() {
        let mut r = Registry::new(0, 2);
        for p in [
            "/users/1",
            "/users/2",
            "/users/3/cart",
            "/about",
            "/users/4",
        ] {
            r.observe(&path(p));
        }
        assert_eq!(
            routes(&r),
            vec![
                ("Some(Str(\"/users/{id}\"))".into(), 3),
                ("Some(Str(\"/users/{id}/cart\"))".into(), 1),
                ("Some(Str(\"_OTHER\"))".into(), 1),
            ],
            "the third template is past the bound of 2"
        );
        // A configured route is kept as the span has it, past the bound.
        let mut routed = path("/orders/7");
        routed.attributes.push(("http.route", "/orders/{n}".into()));
        r.observe(&routed);
        assert!(routes(&r).contains(&("Some(Str(\"/orders/{n}\"))".into(), 1)));
    }

    #[test]
    fn past_the_bound_a_services_series_overflow_into_one() {
        let mut r = Registry::new(0, 100);
        for status in 0..(MAX_SERIES_PER_SERVICE as i64 + 50) {
            r.observe(&server(status, 1));
        }
        let series = &r.series[&Metric::HttpServerDuration];
        assert_eq!(series.len(), MAX_SERIES_PER_SERVICE + 1);
        let overflow: Labels = vec![
            ("service.name", "web".into()),
            ("otel.metric.overflow", Value::Bool(true)),
        ];
        assert_eq!(series[&overflow].count, 50);
        // Another service still has room.
        let mut other = server(200, 1);
        other.resource = Arc::new(crate::spans::Resource {
            pid: 2,
            attributes: vec![("service.name".into(), "api".into())],
        });
        r.observe(&other);
        assert_eq!(
            r.series[&Metric::HttpServerDuration].len(),
            MAX_SERIES_PER_SERVICE + 2
        );
    }

    #[test]
    fn past_the_overall_bound_everything_new_shares_one_series() {
        let mut r = Registry::new(0, 100);
        for n in 0..(MAX_SERIES + 50) {
            let mut s = server(200, 1);
            s.resource = Arc::new(crate::spans::Resource {
                pid: 2,
                attributes: vec![("service.name".into(), format!("svc-{n}").into())],
            });
            r.observe(&s);
        }
        let series = &r.series[&Metric::HttpServerDuration];
        assert_eq!(series.len(), MAX_SERIES + 1);
        let overflow: Labels = vec![("otel.metric.overflow", Value::Bool(true))];
        assert_eq!(series[&overflow].count, 50);
        assert!(r.per_service[&Metric::HttpServerDuration].len() <= MAX_SERIES);
    }

    #[test]
    fn a_pods_metrics_carry_its_workload_not_the_pod() {
        let mut s = server(200, 1);
        let attrs = [
            ("service.name", "checkout"),
            ("k8s.pod.name", "checkout-7c9d8b5f4d-x2x7q"),
            ("k8s.namespace.name", "shop"),
            ("k8s.replicaset.name", "checkout-7c9d8b5f4d"),
            ("k8s.deployment.name", "checkout"),
            ("k8s.container.name", "app"),
            ("service.namespace", "shop"),
        ];
        s.resource = Arc::new(crate::spans::Resource {
            pid: 3,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), (*v).into()))
                .collect(),
        });
        let mut r = Registry::new(0, 100);
        r.observe(&s);
        let (labels, _) = r.series[&Metric::HttpServerDuration].iter().next().unwrap();
        let keys: Vec<&str> = resource_of(labels).iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "service.name",
                "service.namespace",
                "k8s.namespace.name",
                "k8s.deployment.name",
                "k8s.container.name"
            ]
        );
        assert!(!labels.iter().any(|(k, _)| k.starts_with("k8s.pod")));
    }

    #[test]
    fn failures_do_not_admit_new_route_templates() {
        let mut r = Registry::new(0, 100);
        let mut scan = path("/wp-login.php");
        scan.attributes[3].1 = 404.into();
        r.observe(&scan);
        r.observe(&path("/users/1"));
        let mut missing = path("/users/2");
        missing.attributes[3].1 = 404.into();
        r.observe(&missing);
        let got = routes(&r);
        assert!(
            got.contains(&("Some(Str(\"_OTHER\"))".into(), 1)),
            "{got:?}"
        );
        assert!(
            got.contains(&("Some(Str(\"/users/{id}\"))".into(), 1)),
            "{got:?}"
        );
        assert!(!format!("{got:?}").contains("wp-login"), "{got:?}");
        // A 404 of a template seen succeeding keeps its route.
        let counted: u64 = r.series[&Metric::HttpServerDuration]
            .iter()
            .filter(|(l, _)| l.contains(&("http.route", "/users/{id}".into())))
            .map(|(_, h)| h.count)
            .sum();
        assert_eq!(counted, 2);
    }
}
