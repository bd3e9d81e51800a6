//! The agent's main loop: ring buffer in, spans out. The loop and the
//! state it drives are here; what it does with each event, each tick and
//! each process is in the modules below.

mod dispatch;
mod launch;
mod processes;
mod tick;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use dispatch::MAX_EVENTS_PER_DRAIN;
use launch::spawn_gated;

use crate::{
    clock::Clock,
    config::{Config, Target},
    conn::{
        db::SqlOptions,
        tracker::{Limits, Tracker},
        unowned::Unowned,
    },
    export,
    hash::Map,
    host::{discovery::Selectors, k8s, process::Registry, procfs},
    kernel::probes::Probes,
    metrics,
    spans::{self, sampler::Sampler, Span},
    stats::Stats,
};

/// How often the agent drains the ring buffer unprompted. The probes write
/// without waking the agent until the ring is a quarter full, so under load
/// the agent reads events in batches instead of once per event.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Everything the event path touches.
struct EventPath {
    probes: Probes,
    tracker: Tracker,
    registry: Registry,
    clock: Clock,
    stats: Arc<Stats>,
    spans: mpsc::Sender<Span>,
    sampler: Sampler,
    /// This node's pods, when the Kubernetes API is used.
    pods: Option<k8s::Shared>,
    /// The pods' generation the last rescan saw.
    pods_seen: u64,
    /// When the last pod rescan ran (monotonic ns).
    pods_rescanned: u64,
    /// RED metrics, when served (`--prometheus-port`).
    metrics: Option<metrics::Shared>,
    /// Local addresses of listening sockets, by (tgid, fd).
    listeners: Map<(u32, i32), Option<SocketAddr>>,
    /// Events the kernel dropped, as of the last tick.
    events_dropped: u64,
    /// Processes that exec'd since the last tick: their TLS libraries are
    /// looked for again once the loader has mapped them.
    tls_rescan: Vec<u32>,
    /// The last process looked at by the round-robin rescan.
    tls_cursor: u32,
    /// What to trace by selectors, when the agent discovers processes.
    selectors: Option<Selectors>,
    /// Processes that exec'd recently and may yet listen on a selected
    /// port, until when to look.
    port_watch: Vec<(u32, u64)>,
    /// TLS writes waiting for the probes to name their socket.
    unowned: Unowned,
}

/// Pod criteria judge processes by their pods: the first scan waits a
/// little for the API's list of this node's pods.
async fn wait_for_pods(pods: &k8s::Pods) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pods.is_synced() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !pods.is_synced() {
        log::warn!(
            "the Kubernetes API has not listed this node's pods after 10 s; processes in \
             pods are traced once it does"
        );
    }
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if let Target::Pids(pids) = &cfg.target {
        for &pid in pids {
            anyhow::ensure!(procfs::is_alive(pid), "no process with pid {pid}");
        }
    }
    let stats = Arc::new(Stats::default());
    let (span_tx, pipeline) = export::start(&cfg.export, stats.clone())?;
    let metrics = (cfg.prometheus_port.is_some() || cfg.metrics_export.is_some())
        .then(|| metrics::shared(cfg.max_routes));
    if let (Some(port), Some(shared)) = (cfg.prometheus_port, &metrics) {
        metrics::prometheus::serve(port, shared.clone(), stats.clone()).await?;
    }
    let metrics_exporter = match (cfg.metrics_export.clone(), &metrics) {
        (Some(settings), Some(shared)) => Some(metrics::otlp::start(
            settings,
            shared.clone(),
            stats.clone(),
            cfg.resource.metrics_resource(),
        )?),
        _ => None,
    };
    let pods = cfg
        .k8s
        .clone()
        .map(|settings| k8s::watch::start(settings, stats.clone()));
    let (probes, ring) = Probes::load(&cfg.probes)?;
    let mut path = EventPath {
        probes,
        tracker: Tracker::new(
            Limits {
                max_connections: cfg.max_connections,
                request_timeout_ns: cfg.request_timeout.as_nanos() as u64,
                idle_timeout_ns: 15 * 60 * 1_000_000_000,
                sql: SqlOptions {
                    sanitize: cfg.sanitize_sql,
                    user: cfg.db_user,
                },
            },
            Arc::new(spans::http::Options {
                redact_query: cfg.redact_query,
                routes: Arc::new(cfg.routes.clone()),
            }),
            stats.clone(),
        ),
        registry: Registry::new(cfg.resource.clone(), pods.clone()),
        pods: pods.clone(),
        pods_seen: 0,
        pods_rescanned: 0,
        clock: Clock::new(),
        stats: stats.clone(),
        spans: span_tx,
        listeners: Map::default(),
        events_dropped: 0,
        sampler: cfg.sampler,
        metrics,
        tls_rescan: Vec::new(),
        tls_cursor: 0,
        selectors: match &cfg.target {
            Target::Discover { selectors, .. } => Some((**selectors).clone()),
            _ => None,
        },
        port_watch: Vec::new(),
        unowned: Unowned::default(),
    };
    let mut child = None;
    match &cfg.target {
        Target::Pids(pids) => {
            let all = procfs::with_descendants(pids);
            for pid in &all {
                path.attach_pid(*pid)?;
            }
            log::info!("tracing {} process(es): {:?}", all.len(), all);
        }
        Target::Command(argv) => {
            let c = spawn_gated(argv, &mut path)?;
            log::info!("tracing {:?} (pid {})", argv.join(" "), c.id().unwrap_or(0));
            child = Some(c);
        }
        Target::Discover { pids, selectors } => {
            if let Some(pods) = pods.as_ref().filter(|_| selectors.needs_pods()) {
                wait_for_pods(pods).await;
                path.pods_seen = pods.generation();
            }
            for pid in procfs::with_descendants(pids) {
                path.attach_pid(pid)?;
            }
            for pid in procfs::all_pids() {
                if !path.registry.is_live(pid) {
                    path.consider(pid, selectors, selectors.wants_ports());
                }
            }
            log::info!(
                "tracing {} process(es) now, and every process that matches the selectors as it starts",
                path.registry.live_pids().len()
            );
        }
    }
    let daemon = matches!(cfg.target, Target::Discover { .. });

    // SAFETY: the ring buffer owns its map fd until it is dropped with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("polling the ring buffer")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                path.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain.tick() => {
                path.drain(ring.get_mut());
            }
            _ = tick.tick() => {
                path.tick();
                if !daemon && !path.registry.any_live() {
                    break "every traced process has exited";
                }
            }
            status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() => {
                if let Ok(s) = status {
                    log::info!("command exited: {s}");
                }
                child = None;
            }
            _ = sigint.recv() => break "interrupted",
            _ = sigterm.recv() => break "terminated",
            _ = sigusr1.recv() => log::info!("stats: {}", stats.render()),
        }
    };
    log::info!("{reason}: flushing");
    // Whatever the probes wrote before we stopped still becomes spans.
    while path.drain(ring.get_mut()) == MAX_EVENTS_PER_DRAIN {}
    path.tracker.close_all();
    path.emit();
    // Since the last tick, the probes may have counted more.
    let _ = path.copy_kernel_counters();
    let EventPath { probes, spans, .. } = path;
    drop(spans);
    // Dropping the probes detaches every program: about 2.4 s here, one
    // RCU grace period per program, which the kernel serialises. The
    // exporters deliver meanwhile, so a stop costs the longer of the two,
    // not their sum.
    let detach = tokio::task::spawn_blocking(move || {
        drop(probes);
        drop(ring);
    });
    pipeline.shutdown().await;
    if let Some(exporter) = metrics_exporter {
        exporter.shutdown().await;
    }
    if let Err(e) = detach.await {
        log::warn!("detaching the probes failed: {e}");
    }
    log::info!("stats: {}", stats.render());
    Ok(())
}
