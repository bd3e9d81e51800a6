//! Periodic OTLP export of the registry and the agent's own counters.
//!
//! Temporality is cumulative: each export carries the totals since the
//! agent started, so an export the collector missed is made good by the
//! next one, and nothing queues up while it is down. One `ResourceMetrics`
//! per service (`service.name` and, on Kubernetes, its namespace,
//! workload, container and node: [`super::RESOURCE_KEYS`]),
//! with `host.name` and `service.instance.id` set to the host, so the
//! agents of a fleet never report the same series; the agent's own
//! counters are reported under `service.name=zerospan`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::InstrumentationScope,
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram,
        HistogramDataPoint, Metric as ProtoMetric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
        Sum,
    },
    resource::v1::Resource,
};
use tokio::{sync::oneshot, task::JoinHandle};

use super::{resource_of, Labels, Registry, Shared};
use crate::{
    clock::Clock,
    export::{otlp::kv, Sink, SinkConfig},
    spans::Value,
    stats::{Kind, Stats},
};

/// The agent's own resource, for its counters.
fn agent_resource() -> Labels {
    vec![("service.name", "zerospan".into())]
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `OtlpGrpc`, or `OtlpHttp` with the full `/v1/metrics` URL.
    pub sink: SinkConfig,
    /// `OTEL_METRIC_EXPORT_INTERVAL`.
    pub interval: Duration,
    /// `OTEL_METRIC_EXPORT_TIMEOUT`.
    pub timeout: Duration,
}

/// One export request: every histogram and every agent counter, with
/// `base` (host and `OTEL_RESOURCE_ATTRIBUTES`) in each resource.
pub fn request(
    registry: &Registry,
    stats: &Stats,
    base: &[(String, Value)],
    now_unix_ns: u64,
) -> ExportMetricsServiceRequest {
    let start = registry.start_unix_ns;
    // Metrics by resource (service name and namespace), in a stable order.
    let mut by_service: BTreeMap<Labels, Vec<ProtoMetric>> = BTreeMap::new();
    for (metric, rows) in registry.families() {
        let d = metric.describe();
        let mut points: BTreeMap<Labels, Vec<HistogramDataPoint>> = BTreeMap::new();
        for (labels, h) in rows {
            let (resource, attributes) = labels.split_at(resource_of(labels).len());
            let resource = if resource.is_empty() {
                agent_resource()
            } else {
                resource.to_vec()
            };
            points
                .entry(resource)
                .or_default()
                .push(HistogramDataPoint {
                    attributes: attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                    start_time_unix_nano: start,
                    time_unix_nano: now_unix_ns,
                    count: h.count,
                    sum: Some(h.sum),
                    bucket_counts: h.buckets.clone(),
                    explicit_bounds: d.bounds.to_vec(),
                    ..Default::default()
                });
        }
        for (resource, data_points) in points {
            by_service.entry(resource).or_default().push(ProtoMetric {
                name: d.name.to_owned(),
                description: d.help.to_owned(),
                unit: d.unit.to_owned(),
                data: Some(Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            });
        }
    }
    let own = by_service.entry(agent_resource()).or_default();
    for counter in stats.all() {
        let (name, value) = (
            counter.name,
            counter.load(std::sync::atomic::Ordering::Relaxed),
        );
        let point = |value: u64, attributes| NumberDataPoint {
            start_time_unix_nano: start,
            time_unix_nano: now_unix_ns,
            value: Some(number_data_point::Value::AsInt(value as i64)),
            attributes,
            ..Default::default()
        };
        let data = |data_points| {
            if counter.kind == Kind::Gauge {
                Data::Gauge(Gauge { data_points })
            } else {
                Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })
            }
        };
        own.push(ProtoMetric {
            name: format!("zerospan.{name}"),
            data: Some(data(vec![point(value, Vec::new())])),
            ..Default::default()
        });
        // Kept by protocol too: a metric of its own with a `protocol`
        // attribute, so that the total never changes shape.
        let by = stats.by_protocol(counter);
        if !by.is_empty() {
            let points = by
                .into_iter()
                .map(|(protocol, n)| point(n, vec![kv("protocol", &Value::from(protocol))]))
                .collect();
            own.push(ProtoMetric {
                name: format!("zerospan.{name}.by_protocol"),
                data: Some(data(points)),
                ..Default::default()
            });
        }
    }
    let scope = InstrumentationScope {
        name: "zerospan".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: by_service
            .into_iter()
            .map(|(resource, metrics)| {
                let mut attributes: Vec<_> = resource.iter().map(|(k, v)| kv(k, v)).collect();
                attributes.extend(
                    base.iter()
                        .filter(|(k, _)| !resource.iter().any(|(have, _)| have == k))
                        .map(|(k, v)| kv(k, v)),
                );
                ResourceMetrics {
                    resource: Some(Resource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(scope.clone()),
                        metrics,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
            .collect(),
    }
}

/// The export task; [`Exporter::shutdown`] sends the final totals.
pub struct Exporter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starts exporting every `settings.interval`.
pub fn start(
    settings: Settings,
    registry: Shared,
    stats: Arc<Stats>,
    base: Vec<(String, Value)>,
) -> anyhow::Result<Exporter> {
    anyhow::ensure!(
        matches!(
            settings.sink,
            SinkConfig::OtlpGrpc { .. } | SinkConfig::OtlpHttp { .. }
        ),
        "metrics cannot be exported to {:?}",
        settings.sink
    );
    let mut sink = Sink::open(&settings.sink)?;
    log::info!("exporting metrics over OTLP every {:?}", settings.interval);
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut failing = false;
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = &mut stopped => true,
            };
            let req = request(
                &registry.lock().expect("not poisoned"),
                &stats,
                &base,
                Clock::unix_now_ns(),
            );
            // A collector that does not answer is not waited on past the
            // next export, nor, at shutdown, past 5 s.
            let patience = if last {
                settings.timeout.min(Duration::from_secs(5))
            } else {
                settings.timeout.min(settings.interval)
            };
            match tokio::time::timeout(patience, sink.export_metrics(req)).await {
                Ok(Ok(())) => {
                    Stats::inc(&stats.metrics_exported);
                    if failing {
                        log::info!("metrics export recovered");
                        failing = false;
                    }
                }
                outcome => {
                    Stats::inc(&stats.metrics_export_failures);
                    if !failing {
                        let why = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".into(),
                        };
                        log::warn!(
                            "metrics export failed: {why}; the next export carries the totals"
                        );
                        failing = true;
                    }
                }
            }
            if last {
                break;
            }
        }
    });
    Ok(Exporter { stop, task })
}

impl Exporter {
    /// Sends the totals one last time.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::server;

    #[test]
    fn histograms_are_cumulative_per_service_with_the_agent_counters_apart() {
        let mut r = Registry::new(7, 100);
        for _ in 0..3 {
            r.observe(&server(200, 20));
        }
        r.observe(&server(404, 20_000));
        let stats = Stats::default();
        Stats::add(&stats.spans_created, 4);
        let base = vec![("host.name".to_owned(), Value::from("node-1"))];
        let req = request(&r, &stats, &base, 99);
        let services: Vec<_> = req
            .resource_metrics
            .iter()
            .map(|rm| {
                let attrs = &rm.resource.as_ref().unwrap().attributes;
                (attrs[0].clone(), attrs[1].clone())
            })
            .collect();
        assert_eq!(
            services,
            vec![
                (
                    kv("service.name", &"web".into()),
                    kv("host.name", &"node-1".into())
                ),
                (
                    kv("service.name", &"zerospan".into()),
                    kv("host.name", &"node-1".into())
                ),
            ]
        );
        let web = &req.resource_metrics[0].scope_metrics[0].metrics;
        let duration = web
            .iter()
            .find(|m| m.name == "http.server.request.duration")
            .unwrap();
        assert_eq!(duration.unit, "s");
        let Some(Data::Histogram(h)) = &duration.data else {
            panic!("{duration:?}")
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let ok = &h.data_points[0];
        assert!(ok
            .attributes
            .contains(&kv("http.response.status_code", &200.into())));
        assert!(!ok.attributes.iter().any(|a| a.key == "service.name"));
        assert_eq!(
            (ok.count, ok.start_time_unix_nano, ok.time_unix_nano),
            (3, 7, 99)
        );
        assert_eq!(ok.bucket_counts.len(), ok.explicit_bounds.len() + 1);
        assert_eq!(ok.bucket_counts[2], 3, "20 ms is in (0.01, 0.025]");
        let slow = &h.data_points[1];
        assert_eq!(*slow.bucket_counts.last().unwrap(), 1, "20 s is above 10 s");
        let own = &req.resource_metrics[1].scope_metrics[0].metrics;
        let created = own
            .iter()
            .find(|m| m.name == "zerospan.spans_created")
            .unwrap();
        let Some(Data::Sum(sum)) = &created.data else {
            panic!("{created:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(4))
        );
        let traced = own
            .iter()
            .find(|m| m.name == "zerospan.traced_processes")
            .unwrap();
        assert!(matches!(traced.data, Some(Data::Gauge(_))));
    }
}
