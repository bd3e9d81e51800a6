//! Command line and `OTEL_*` environment, resolved into one [`Config`].

pub mod settings;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use clap::Parser;

use crate::export::{self, transport::Transport, SinkConfig};
use crate::host::discovery::Selectors;
use crate::host::process::ResourceDefaults;
use crate::kernel::probes::{ProbeSettings, PropagationSettings};
use crate::spans::sampler::Sampler;

/// Zero-code distributed tracing: eBPF probes watch a program's network
/// traffic and the spans go to your OpenTelemetry collector. Run as root.
#[derive(Debug, Parser)]
#[command(
    name = "zerospan",
    version,
    override_usage = "zerospan [OPTIONS] --pid PID [--pid PID ...]\n       zerospan [OPTIONS] -- COMMAND [ARGS ...]\n       zerospan doctor",
    args_conflicts_with_subcommands = true,
    after_help = "Environment: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL, \
OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_CERTIFICATE, \
OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_KEY, OTEL_EXPORTER_OTLP_COMPRESSION, \
OTEL_EXPORTER_OTLP_INSECURE (and their _TRACES_ and _METRICS_ forms), OTEL_SERVICE_NAME, \
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_METRICS_EXPORTER \
and OTEL_METRIC_EXPORT_INTERVAL are honoured; KUBECONFIG or the in-cluster service account \
for the Kubernetes API.\n\
With no exporter configured, each trace is printed to stdout as a tree."
)]
pub struct Args {
    /// Read options from this YAML file (keys as the long options, with `_`:
    /// `capture_bytes: 2048`). Each option can also be set as ZEROSPAN_<KEY>.
    /// The command line beats the environment, which beats the file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Trace this running process, its threads, its existing children and
    /// everything it forks from now on. Repeatable.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace every process whose executable path matches this glob (`*`,
    /// `?`), running now or started later. Repeatable.
    #[arg(long = "exe", value_name = "GLOB")]
    pub exe: Vec<String>,

    /// Trace every process whose command line matches this regex.
    /// Repeatable.
    #[arg(long = "cmdline", value_name = "REGEX")]
    pub cmdline: Vec<String>,

    /// Trace every process listening on this port or range (`8000-8099`).
    /// Repeatable.
    #[arg(long = "port", value_name = "PORT[-PORT]")]
    pub port: Vec<String>,

    /// Never trace processes whose executable path matches this glob, even
    /// when a selector matches them. Repeatable.
    #[arg(long = "exclude-exe", value_name = "GLOB")]
    pub exclude_exe: Vec<String>,

    /// Never trace processes whose command line matches this regex.
    /// Repeatable.
    #[arg(long = "exclude-cmdline", value_name = "REGEX")]
    pub exclude_cmdline: Vec<String>,

    /// Trace only processes in containers (their cgroup is named by a
    /// container runtime). With other selectors, it narrows them; alone,
    /// it selects every containerised process.
    #[arg(long)]
    pub containers_only: bool,

    /// Trace only processes in pods of this namespace (a glob; repeatable).
    /// Kubernetes criteria of different kinds must all hold; with other
    /// selectors, they narrow them, alone they select.
    #[arg(long = "k8s-namespace", value_name = "GLOB")]
    pub k8s_namespace: Vec<String>,

    /// ... whose pod's name matches (a glob; repeatable).
    #[arg(long = "k8s-pod-name", value_name = "GLOB")]
    pub k8s_pod_name: Vec<String>,

    /// ... whose pod has this label (KEY=VALUE; repeatable).
    #[arg(long = "k8s-pod-label", value_name = "KEY=VALUE")]
    pub k8s_pod_label: Vec<String>,

    /// ... whose pod this workload owns: NAME or KIND/NAME, NAME a glob,
    /// KIND deployment, replicaset, statefulset, daemonset, job or cronjob
    /// (repeatable).
    #[arg(long = "k8s-owner", value_name = "[KIND/]NAME")]
    pub k8s_owner: Vec<String>,

    /// Never trace processes in pods of this namespace (a glob; repeatable).
    #[arg(long = "exclude-k8s-namespace", value_name = "GLOB")]
    pub exclude_k8s_namespace: Vec<String>,

    /// Read pod names, owners and labels from the Kubernetes API (a watch
    /// of this node's pods): `auto` does when running in a pod or with
    /// KUBECONFIG set.
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub k8s_metadata: K8sMetadata,

    /// This node's name, to watch only its pods [default: the host name].
    /// In a DaemonSet, set it from the Downward API (spec.nodeName).
    #[arg(long, value_name = "NAME")]
    pub k8s_node_name: Option<String>,

    /// OTLP collector URL [default: $OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport [default: $OTEL_EXPORTER_OTLP_PROTOCOL, else grpc].
    #[arg(long, value_name = "grpc|http/protobuf")]
    pub otlp_protocol: Option<String>,

    /// Append spans as OTLP/JSON, one ExportTraceServiceRequest per line.
    #[arg(long, value_name = "PATH")]
    pub traces_file: Option<PathBuf>,

    /// Also print traces to stdout when an exporter is configured.
    #[arg(long)]
    pub console: bool,

    /// Bytes of each socket read or write the probes copy (1..=4096).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub capture_bytes: u32,

    /// Connections tracked at once, in the kernel and in the agent.
    #[arg(long, default_value_t = 65536, value_name = "N")]
    pub max_connections: u32,

    /// Processes and threads tracked at once in the kernel.
    #[arg(long, default_value_t = 16384, value_name = "N")]
    pub max_processes: u32,

    /// Size of the kernel-to-agent ring buffer (a power of two).
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub ring_buffer_mib: u32,

    /// A request with no response after this long becomes an error span.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub request_timeout: u64,

    /// Spans queued for export before new ones are dropped (and counted).
    #[arg(long, default_value_t = 16384, value_name = "N")]
    pub export_queue: usize,

    /// Batches each exporter buffers while its collector is unreachable.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub export_buffer_batches: usize,

    /// MiB of spans each exporter buffers while its collector is
    /// unreachable; past it the oldest batches are dropped (and counted).
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub export_buffer_mib: usize,

    /// Keep query-string values in url.query and url.full (redacted by default).
    #[arg(long)]
    pub no_redact_query: bool,

    /// Export SQL as the application sent it, literals included. By default
    /// every string, number and `IN (…)` list becomes `?`.
    #[arg(long)]
    pub no_sanitize_sql: bool,

    /// Export the user a PostgreSQL or MySQL connection logged in as, as
    /// `db.user` (never exported otherwise).
    #[arg(long)]
    pub db_user: bool,

    /// Write a W3C `traceparent` header into the plaintext HTTP/1 requests
    /// traced processes send, so the next hop joins the trace (`headers`),
    /// or never change a byte (`off`).
    #[arg(long, value_enum, default_value = "headers", value_name = "MODE")]
    pub context_propagation: Propagation,

    /// The cgroup (v2) whose processes' requests may carry the header;
    /// default: the whole cgroup v2 hierarchy. Traced processes outside it
    /// are traced, but their requests are sent unchanged.
    #[arg(long, value_name = "PATH")]
    pub propagation_cgroup: Option<PathBuf>,

    /// A route template, like `/users/{id}` or `/static/**`: a server
    /// request whose path matches gets `http.route` and is named
    /// `METHOD ROUTE`. `{name}` and `*` match one segment, a final `**` any
    /// number. Repeatable; the first match wins.
    #[arg(long = "http-route", value_name = "PATTERN")]
    pub http_route: Vec<String>,

    /// Distinct `http.route` values the metrics keep per service; paths
    /// that match no pattern are templated by guess (ids become `{id}`),
    /// and past this many, collapsed into `_OTHER`.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_routes: usize,

    /// Serve span-derived RED metrics and the agent's own counters for
    /// Prometheus at :PORT/metrics (on every address).
    #[arg(long, value_name = "PORT")]
    pub prometheus_port: Option<u16>,

    /// Least important log records written (error, warn, info, debug,
    /// trace).
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: log::LevelFilter,

    /// Log records as text, or as one JSON object per line.
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
    pub log_format: crate::logger::Format,

    /// More logging: -v debug, -vv trace.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Command to start and trace, with all its children.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    #[command(subcommand)]
    pub mode: Option<Mode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum Mode {
    /// Check whether this host can run the agent, and say what to fix.
    Doctor,
}

/// `--k8s-metadata`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum K8sMetadata {
    Auto,
    On,
    Off,
}

/// `--context-propagation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Propagation {
    Off,
    Headers,
}

#[derive(Clone, Debug)]
pub enum Target {
    Pids(Vec<u32>),
    Command(Vec<String>),
    /// Processes found by selectors, now and as they start, plus any pids
    /// given; the agent runs until stopped.
    Discover {
        pids: Vec<u32>,
        selectors: Box<Selectors>,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    pub probes: ProbeSettings,
    pub export: export::Settings,
    pub resource: ResourceDefaults,
    pub redact_query: bool,
    pub routes: crate::spans::route::Routes,
    pub max_routes: usize,
    pub sanitize_sql: bool,
    pub db_user: bool,
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub sampler: Sampler,
    pub prometheus_port: Option<u16>,
    /// OTLP metrics export, when there is an OTLP collector and
    /// `OTEL_METRICS_EXPORTER` is not `none`.
    pub metrics_export: Option<crate::metrics::otlp::Settings>,
    /// The pod watch, when the Kubernetes API is used.
    pub k8s: Option<crate::host::k8s::watch::Settings>,
}

/// Parses the `k=v,k2=v2` lists of `OTEL_EXPORTER_OTLP_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES`.
pub fn parse_key_values(s: &str) -> Vec<(String, String)> {
    crate::host::process::parse_resource_attributes(s)
}

impl Config {
    /// Resolves arguments against the environment (`env` looks a name up).
    pub fn resolve(args: Args, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let selectors = Selectors::new(
            &args.exe,
            &args.cmdline,
            &args.port,
            &args.exclude_exe,
            &args.exclude_cmdline,
        )?
        .containers_only(args.containers_only)
        .pods(crate::host::k8s::select::PodSelectors::new(
            &args.k8s_namespace,
            &args.k8s_pod_name,
            &args.k8s_pod_label,
            &args.k8s_owner,
            &args.exclude_k8s_namespace,
        )?);
        let k8s = match args.k8s_metadata {
            K8sMetadata::Off => None,
            K8sMetadata::On => Some(()),
            K8sMetadata::Auto => (env("KUBERNETES_SERVICE_HOST").is_some()
                || env("KUBECONFIG").is_some())
            .then_some(()),
        }
        .map(|()| crate::host::k8s::watch::Settings {
            node_name: args
                .k8s_node_name
                .clone()
                .unwrap_or_else(crate::host::procfs::host_name),
        });
        if selectors.needs_pods() && k8s.is_none() {
            bail!(
                "--k8s-namespace, --k8s-pod-name, --k8s-pod-label, --k8s-owner and \
                 --exclude-k8s-namespace need the \
                 Kubernetes API: run the agent in a pod, or set KUBECONFIG (or --k8s-metadata on)"
            );
        }
        let target = match (args.pids.is_empty(), args.command.is_empty()) {
            _ if selectors.any() && !args.command.is_empty() => {
                bail!("give selectors (--exe, --cmdline, --port, --containers-only, --k8s-…) or -- COMMAND, not both")
            }
            _ if selectors.any() => Target::Discover {
                pids: args.pids,
                selectors: Box::new(selectors),
            },
            (false, true) => Target::Pids(args.pids),
            (true, false) => Target::Command(args.command),
            (true, true) => bail!(
                "nothing to trace: give --pid PID, a selector (--exe, --cmdline, --port) \
                 or -- COMMAND (see --help)"
            ),
            (false, false) => bail!("give either --pid or -- COMMAND, not both"),
        };
        if !(1..=4096).contains(&args.capture_bytes) {
            bail!(
                "capture_bytes (--capture-bytes) must be between 1 and 4096, not {}",
                args.capture_bytes
            );
        }
        if !args.ring_buffer_mib.is_power_of_two() || args.ring_buffer_mib > 1024 {
            bail!(
                "ring_buffer_mib (--ring-buffer-mib) must be a power of two, at most 1024, not {}",
                args.ring_buffer_mib
            );
        }
        let otlp_endpoint = args.otlp_endpoint;
        let mut sinks = Vec::new();
        if let Some(sink) = otlp_sink(
            &env,
            "TRACES",
            otlp_endpoint.clone(),
            args.otlp_protocol.clone(),
        )? {
            sinks.push(sink);
        }
        let metrics_export = if metrics_exporters(env("OTEL_METRICS_EXPORTER").as_deref()) {
            let millis = |key: &str, default: u64| match env(key) {
                None => Duration::from_millis(default),
                Some(v) => {
                    match v.trim().parse::<u64>() {
                        Ok(ms) if ms > 0 => Duration::from_millis(ms),
                        _ => {
                            log::warn!("{key}={v:?} is not a positive number of milliseconds: using {default}");
                            Duration::from_millis(default)
                        }
                    }
                }
            };
            otlp_sink(&env, "METRICS", otlp_endpoint, args.otlp_protocol)?.map(|sink| {
                crate::metrics::otlp::Settings {
                    sink,
                    interval: millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000),
                    timeout: millis("OTEL_METRIC_EXPORT_TIMEOUT", 10_000),
                }
            })
        } else {
            None
        };
        if let Some(path) = args.traces_file {
            sinks.push(SinkConfig::JsonFile(path));
        }
        if sinks.is_empty() || args.console {
            sinks.push(SinkConfig::Console);
        }
        let resource = ResourceDefaults {
            service_name: env("OTEL_SERVICE_NAME"),
            attributes: env("OTEL_RESOURCE_ATTRIBUTES")
                .map(|a| parse_key_values(&a))
                .unwrap_or_default(),
            host_name: crate::host::procfs::host_name(),
        };
        let discover = matches!(target, Target::Discover { .. });
        let sampler = Sampler::from_env(
            env("OTEL_TRACES_SAMPLER").as_deref(),
            env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        let propagation = match args.context_propagation {
            Propagation::Off => None,
            Propagation::Headers => Some(PropagationSettings {
                cgroup: args.propagation_cgroup,
                sample_bound: sampler.root.bound(),
            }),
        };
        Ok(Config {
            target,
            probes: ProbeSettings {
                discover,
                capture_bytes: args.capture_bytes,
                max_connections: args.max_connections,
                max_processes: args.max_processes,
                ring_buffer_bytes: args
                    .ring_buffer_mib
                    .checked_mul(1 << 20)
                    .context("ring buffer too large")?,
                propagation,
            },
            export: export::Settings {
                sinks,
                queue_spans: args.export_queue,
                batch_size: 512,
                batch_delay: Duration::from_millis(500),
                sink_buffer_batches: args.export_buffer_batches,
                sink_buffer_bytes: args.export_buffer_mib.saturating_mul(1 << 20),
                shutdown_timeout: Duration::from_secs(5),
            },
            resource,
            redact_query: !args.no_redact_query,
            routes: crate::spans::route::Routes::parse(&args.http_route)?,
            max_routes: args.max_routes,
            sanitize_sql: !args.no_sanitize_sql,
            db_user: args.db_user,
            max_connections: args.max_connections as usize,
            request_timeout: Duration::from_secs(args.request_timeout.max(1)),
            sampler,
            prometheus_port: args.prometheus_port,
            metrics_export,
            k8s,
        })
    }
}

/// Whether `OTEL_METRICS_EXPORTER` (a comma-separated list, default
/// `otlp`) asks for OTLP. Other exporters are an SDK's, not ours: they are
/// ignored with a warning, as the specification asks of unknown values.
fn metrics_exporters(value: Option<&str>) -> bool {
    let Some(value) = value else {
        return true;
    };
    let mut otlp = false;
    for exporter in value.split(',').map(str::trim) {
        match exporter {
            "otlp" => otlp = true,
            "none" | "" => {}
            "prometheus" => log::warn!(
                "OTEL_METRICS_EXPORTER=prometheus is ignored: the agent serves Prometheus with \
                 --prometheus-port"
            ),
            other => log::warn!("OTEL_METRICS_EXPORTER: {other:?} is not supported, ignored"),
        }
    }
    otlp
}

/// The OTLP exporter of one signal (`TRACES` or `METRICS`), if an endpoint
/// is set. A signal-specific endpoint (`OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`)
/// is used as given; a base endpoint (the flag, or
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) gets the signal's path appended for
/// HTTP (OTLP exporter spec). The protocol: the flag's, else the signal's
/// variable, else the general one, else gRPC.
fn otlp_sink(
    env: &impl Fn(&str) -> Option<String>,
    signal: &str,
    flag: Option<String>,
    protocol_flag: Option<String>,
) -> anyhow::Result<Option<SinkConfig>> {
    let protocol = protocol_flag
        .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "grpc".into());
    let endpoint = match (flag, env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))) {
        (Some(e), _) => Some((e, false)),
        (None, Some(e)) => Some((e, true)),
        (None, None) => env("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| (e, false)),
    };
    let Some((endpoint, exact)) = endpoint else {
        return Ok(None);
    };
    // The signal's own variable, else the general one.
    let var = |name: &str| {
        env(&format!("OTEL_EXPORTER_OTLP_{signal}_{name}"))
            .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{name}")))
    };
    let transport = otlp_transport(&var)?;
    Ok(Some(match protocol.as_str() {
        "grpc" => SinkConfig::OtlpGrpc {
            endpoint: grpc_endpoint(endpoint, var("INSECURE").as_deref())?,
            transport,
        },
        "http/protobuf" => SinkConfig::OtlpHttp {
            endpoint: if exact {
                endpoint
            } else {
                export::http::signal_url(&endpoint, &signal.to_ascii_lowercase())
            },
            transport,
        },
        "http/json" => {
            bail!("OTLP protocol http/json is not supported yet; use grpc or http/protobuf")
        }
        other => bail!(
            "unknown OTLP protocol {other:?} (from --otlp-protocol, ZEROSPAN_OTLP_PROTOCOL or \
             OTEL_EXPORTER_OTLP_[{signal}_]PROTOCOL); use grpc or http/protobuf"
        ),
    }))
}

/// Headers, TLS files and compression of one signal's exporter.
fn otlp_transport(var: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Transport> {
    let path = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let client = match (path("CLIENT_CERTIFICATE"), path("CLIENT_KEY")) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY (or \
             their _TRACES_ or _METRICS_ forms) go together: mTLS needs both"
        ),
    };
    let gzip = match var("COMPRESSION").as_deref().map(str::trim) {
        Some("gzip") => true,
        None | Some("" | "none") => false,
        Some(other) => {
            bail!("OTEL_EXPORTER_OTLP_COMPRESSION={other:?} is not supported; use gzip or none")
        }
    };
    Ok(Transport {
        headers: var("HEADERS")
            .map(|h| parse_key_values(&h))
            .unwrap_or_default(),
        ca: path("CERTIFICATE"),
        client,
        gzip,
    })
}

/// A gRPC endpoint given without a scheme (`collector:4317`) is TLS unless
/// `OTEL_EXPORTER_OTLP_INSECURE=true`, as the exporter specification says;
/// with a scheme, the scheme decides.
fn grpc_endpoint(endpoint: String, insecure: Option<&str>) -> anyhow::Result<String> {
    if endpoint.contains("://") {
        return Ok(endpoint);
    }
    let insecure = match insecure.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("true") => true,
        None | Some("" | "false") => false,
        Some(other) => bail!("OTEL_EXPORTER_OTLP_INSECURE={other:?}: use true or false"),
    };
    let scheme = if insecure { "http" } else { "https" };
    Ok(format!("{scheme}://{endpoint}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(argv: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args = Args::try_parse_from(std::iter::once("zerospan").chain(argv.iter().copied()))?;
        Config::resolve(args, |k| env.get(k).cloned())
    }

    #[test]
    fn console_is_the_default_sink() {
        let c = resolve(&["--pid", "1"], &[]).unwrap();
        assert_eq!(c.export.sinks, vec![SinkConfig::Console]);
        assert!(matches!(c.target, Target::Pids(ref p) if p == &[1]));
    }

    #[test]
    fn otel_environment_is_honoured() {
        let c = resolve(
            &["--traces-file", "/tmp/t.json", "--", "curl", "-s"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret,x-team=web"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.export.sinks,
            vec![
                SinkConfig::OtlpHttp {
                    endpoint: "http://c:4318/v1/traces".into(),
                    transport: Transport {
                        headers: vec![
                            ("api-key".into(), "s3cret".into()),
                            ("x-team".into(), "web".into())
                        ],
                        ..Transport::default()
                    },
                },
                SinkConfig::JsonFile("/tmp/t.json".into()),
            ]
        );
        assert!(matches!(c.target, Target::Command(ref a) if a == &["curl", "-s"]));
    }

    #[test]
    fn tls_and_compression_come_from_the_environment() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "/c.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/k.pem"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ];
        let c = resolve(&["--pid", "1"], &env).unwrap();
        // No scheme: TLS, as the specification says.
        assert_eq!(
            c.export.sinks[0],
            SinkConfig::OtlpGrpc {
                endpoint: "https://collector:4317".into(),
                transport: Transport {
                    headers: vec![],
                    ca: Some("/ca.pem".into()),
                    client: Some(("/c.pem".into(), "/k.pem".into())),
                    gzip: true,
                },
            }
        );
        // The traces' own client certificate is not the metrics'.
        assert_eq!(
            c.metrics_export.unwrap().sink,
            SinkConfig::OtlpGrpc {
                endpoint: "https://collector:4317".into(),
                transport: Transport {
                    ca: Some("/ca.pem".into()),
                    gzip: true,
                    ..Transport::default()
                },
            }
        );
        let insecure = resolve(
            &["--pid", "1"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ],
        )
        .unwrap();
        assert!(matches!(
            &insecure.export.sinks[0],
            SinkConfig::OtlpGrpc { endpoint, .. } if endpoint == "http://collector:4317"
        ));
        // What cannot be honoured is refused at start, never ignored.
        for bad in [
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "br"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "maybe"),
        ] {
            let e = resolve(
                &["--pid", "1"],
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"), bad],
            )
            .unwrap_err();
            assert!(e.to_string().contains(bad.0), "{e}");
        }
    }

    #[test]
    fn flags_beat_the_environment_and_traces_endpoint_is_exact() {
        let c = resolve(
            &["--pid", "2", "--otlp-endpoint", "http://flag:4317"],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317")],
        )
        .unwrap();
        assert!(
            matches!(&c.export.sinks[0], SinkConfig::OtlpGrpc { endpoint, .. } if endpoint == "http://flag:4317")
        );
        let c = resolve(
            &["--pid", "2"],
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c/custom"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap();
        assert!(
            matches!(&c.export.sinks[0], SinkConfig::OtlpHttp { endpoint, .. } if endpoint == "http://c/custom")
        );
    }

    #[test]
    fn metrics_go_to_the_same_collector_unless_told_otherwise() {
        let c = resolve(
            &["--pid", "1"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "k=v"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.metrics_export,
            Some(crate::metrics::otlp::Settings {
                sink: SinkConfig::OtlpHttp {
                    endpoint: "http://c:4318/v1/metrics".into(),
                    transport: Transport {
                        headers: vec![("k".into(), "v".into())],
                        ..Transport::default()
                    },
                },
                interval: Duration::from_millis(1500),
                timeout: Duration::from_secs(10),
            })
        );
        let c = resolve(
            &["--pid", "1", "--otlp-endpoint", "http://c:4317"],
            &[
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap();
        // The flag names the collector of both; its protocol flag (unset
        // here) would too, but the metrics protocol variable still applies.
        assert!(matches!(
            c.metrics_export.unwrap().sink,
            SinkConfig::OtlpHttp { endpoint, .. } if endpoint == "http://c:4317/v1/metrics"
        ));
        let off = resolve(
            &["--pid", "1", "--otlp-endpoint", "http://c:4317"],
            &[("OTEL_METRICS_EXPORTER", "none")],
        )
        .unwrap();
        assert_eq!(off.metrics_export, None);
        // Only a traces endpoint: metrics have nowhere to go.
        let traces_only = resolve(
            &["--pid", "1"],
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")],
        )
        .unwrap();
        assert_eq!(traces_only.metrics_export, None);
        // Unknown or malformed values are ignored (with a warning), as the
        // specification asks: the defaults apply.
        let lenient = resolve(
            &["--pid", "1", "--otlp-endpoint", "http://c:4317"],
            &[
                ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
                ("OTEL_METRICS_EXPORTER", "prometheus,otlp"),
            ],
        )
        .unwrap();
        assert_eq!(
            lenient.metrics_export.unwrap().interval,
            Duration::from_secs(60)
        );
        assert!(!metrics_exporters(Some("prometheus")));
        assert!(!metrics_exporters(Some("none")));
        assert!(metrics_exporters(Some(" otlp ")));
    }

    #[test]
    fn clear_errors_for_bad_input() {
        let e = resolve(&[], &[]).unwrap_err().to_string();
        assert!(e.contains("nothing to trace"), "{e}");
        let e = resolve(
            &["--pid", "1"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown OTLP protocol"), "{e}");
        assert!(resolve(&["--pid", "1", "--capture-bytes", "0"], &[]).is_err());
        assert!(resolve(&["--pid", "1", "--", "x"], &[]).is_err());
    }
}
