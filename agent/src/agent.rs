//! The agent's main loop: ring buffer in, spans out.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Arc,
    time::Duration,
};

use crate::hash::Map;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use zerospan_common::{counter, origin};
use zerospan_protocols::stream::{Segment, Stamp};

use crate::{
    clock::Clock,
    config::{Config, Target},
    conn::{
        db::SqlOptions,
        tracker::{Limits, Tracker},
        unowned::Unowned,
    },
    export,
    host::{
        discovery::{Candidate, Selectors},
        k8s,
        process::Registry,
        procfs::{self, ProcessMeta},
    },
    kernel::{
        events::{self, Event},
        probes::Probes,
        Runtime,
    },
    metrics,
    spans::{self, sampler::Sampler, Span},
    stats::Stats,
};

/// How often the agent drains the ring buffer unprompted. The probes write
/// without waking the agent until the ring is a quarter full, so under load
/// the agent reads events in batches instead of once per event.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_EVENTS_PER_DRAIN: usize = 65_536;

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

/// How long after its exec a process is looked at for selected ports.
const PORT_WATCH_NS: u64 = 30_000_000_000;
/// Most processes watched for ports at once.
const MAX_PORT_WATCH: usize = 1024;

/// Traced processes whose maps are looked at again on each tick.
const TLS_RESCAN_PER_TICK: usize = 8;
/// Pod rescans run at most this often, however busy the node's pods are.
const POD_RESCAN_EVERY: Duration = Duration::from_secs(2);

impl EventPath {
    fn handle(&mut self, raw: &[u8]) {
        Stats::inc(&self.stats.events_read);
        let event = match events::decode(raw) {
            Ok(e) => e,
            Err(e) => {
                Stats::inc(&self.stats.events_malformed);
                log::debug!("dropping malformed event: {e}");
                return;
            }
        };
        match event {
            Event::Data {
                key,
                task,
                egress,
                tls,
                enter_ns,
                exit_ns,
                len,
                bytes,
            } => {
                let seg = Segment {
                    bytes,
                    len,
                    stamp: Stamp { enter_ns, exit_ns },
                };
                if tls {
                    self.tracker.plaintext(key, task, egress, seg);
                } else {
                    self.tracker.data(key, task, egress, seg);
                }
            }
            Event::Unowned {
                tgid,
                ssl,
                task,
                enter_ns,
                exit_ns,
                len,
                bytes,
            } => {
                let seg = Segment {
                    bytes,
                    len,
                    stamp: Stamp { enter_ns, exit_ns },
                };
                log::trace!(
                    "pid {tgid}: TLS object {ssl:#x} wrote {len} bytes before its socket was known"
                );
                let dropped = self.unowned.hold(tgid, ssl, task, seg);
                Stats::add(&self.stats.tls_writes_unclaimed, dropped);
            }
            Event::TlsOwner { key, ssl } => {
                let (held, stale) = self.unowned.claim(key.tgid, ssl, key.opened_ns());
                log::debug!(
                    "{key:?}: TLS object {ssl:#x} is this socket's: {} held writes, {stale} from before it opened",
                    held.len()
                );
                Stats::add(&self.stats.tls_writes_unclaimed, stale);
                for held in held {
                    self.tracker.plaintext(key, held.task, true, held.segment());
                }
            }
            Event::ConnOpen {
                key,
                tid,
                origin: how,
                peer,
                listen_fd,
                at_ns,
            } => {
                let local = if how == origin::ACCEPTED {
                    *self
                        .listeners
                        .entry((key.tgid, listen_fd))
                        .or_insert_with(|| procfs::local_addr(key.tgid, listen_fd))
                } else {
                    None
                };
                self.tracker.open(key, how, peer, local, at_ns);
                if how == origin::CONNECTED {
                    self.tracker.connected(tid, key);
                }
            }
            Event::ConnClose { key, .. } => self.tracker.close(key),
            Event::LoopEnter { key, tid } => self.tracker.read_callback(key.tgid, tid, Some(key)),
            Event::LoopExit { tgid, tid } => self.tracker.read_callback(tgid, tid, None),
            Event::Context {
                key,
                egress,
                chosen,
            } => self.tracker.chosen(key, egress, chosen),
            Event::ConnPeer {
                key,
                peer,
                local_port,
            } => {
                if let Some(peer) = peer {
                    self.tracker.peer_known(key, peer, local_port);
                }
            }
            Event::ConnLocal { tgid, fd, local } => {
                if let Some(local) = local {
                    self.tracker.local_known(tgid, fd, local);
                }
            }
            Event::Fork {
                parent,
                child,
                comm,
            } => {
                Stats::inc(&self.stats.processes_forked);
                self.registry.fork(parent, child, &comm);
                self.probes.fork(parent, child);
                // A Go program that forks without exec (rare in Go) runs
                // the same image in the child: its goroutines still serve.
                let runtime = self.tracker.runtime(parent);
                if runtime != Runtime::default() && procfs::tgid_of(child) == Some(child) {
                    if runtime.go {
                        self.probes.fork_go(parent, child);
                    }
                    self.tracker.set_runtime(child, runtime);
                }
            }
            Event::ExecSeen { pid } => self.exec_seen(pid),
            Event::Exec { pid, comm } => {
                self.registry.exec(pid, &comm);
                // The old image's TLS objects are gone with it.
                let dropped = self.unowned.forget_process(pid);
                Stats::add(&self.stats.tls_writes_unclaimed, dropped);
                // Its executable now; its libraries once the loader has
                // mapped them (next tick).
                let runtime = self.probes.exec(pid);
                self.tracker.exec(pid, runtime);
                self.tls_rescan.push(pid);
            }
            Event::Exit { pid } => self.process_gone(pid),
            Event::Go {
                tgid,
                task,
                act,
                object,
                at_ns,
            } => self.tracker.go_event(tgid, (task, at_ns), act, object),
        }
    }

    /// An untraced process exec'd: trace it if a selector matches what it
    /// now is. A port selector may match only once it listens, so it is
    /// looked at again on the next ticks.
    fn exec_seen(&mut self, pid: u32) {
        let Some(selectors) = self.selectors.clone() else {
            return;
        };
        self.consider(pid, &selectors, false);
        if selectors.wants_ports() && !self.registry.is_live(pid) {
            let until = Clock::now_ktime_ns() + PORT_WATCH_NS;
            if self.port_watch.len() < MAX_PORT_WATCH {
                self.port_watch.push((pid, until));
            }
        }
    }

    /// Traces `pid` if the selectors match it now.
    fn consider(&mut self, pid: u32, selectors: &Selectors, with_ports: bool) {
        let Some(c) = Candidate::read(pid, with_ports, self.pods.as_deref()) else {
            return;
        };
        if !selectors.matches(&c) {
            return;
        }
        match self.attach_pid(pid) {
            Ok(()) => log::info!("tracing pid {pid} ({}): it matches a selector", c.exe),
            Err(e) => log::warn!("cannot trace pid {pid} ({}): {e:#}", c.exe),
        }
    }

    /// When the node's pods changed, untraced processes in known pods are
    /// looked at again: a pod reaches the API's watch a moment after its
    /// processes start, and pod criteria need it; a pod update (ready, say)
    /// may also come as its process starts listening on a selected port. At
    /// most every [`POD_RESCAN_EVERY`]: each costs a listing of `/proc`, a
    /// cgroup read per untraced process, and a look at each one in a known
    /// pod. Nothing is cached between rescans: a pid may be reused, a
    /// process may fork or rename itself, and a cache keyed on either would
    /// need the very reads it saves.
    fn rescan_for_pods(&mut self) {
        let Some(pods) = self.pods.clone() else {
            return;
        };
        let generation = pods.generation();
        let now = Clock::now_ktime_ns();
        if generation == self.pods_seen
            || now < self.pods_rescanned + POD_RESCAN_EVERY.as_nanos() as u64
        {
            return;
        }
        self.pods_seen = generation;
        self.pods_rescanned = now;
        let Some(selectors) = self.selectors.clone().filter(Selectors::needs_pods) else {
            return;
        };
        for pid in procfs::all_pids() {
            if self.registry.is_live(pid) {
                continue;
            }
            let in_known_pod = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cgroup| pods.of(&crate::host::container::parse(&cgroup)).is_some());
            if in_known_pod {
                self.consider(pid, &selectors, selectors.wants_ports());
            }
        }
    }

    /// Processes that exec'd a moment ago, looked at again for the ports
    /// they have started to listen on.
    fn watch_ports(&mut self) {
        let Some(selectors) = self.selectors.clone() else {
            return;
        };
        let now = Clock::now_ktime_ns();
        let watch = std::mem::take(&mut self.port_watch);
        for (pid, until) in watch {
            if self.registry.is_live(pid) || now > until || !procfs::is_alive(pid) {
                continue;
            }
            self.consider(pid, &selectors, true);
            if !self.registry.is_live(pid) {
                self.port_watch.push((pid, until));
            }
        }
    }

    /// Libraries a process loads long after it started (a dlopen from its
    /// own directory) are found by looking at every traced process's maps
    /// again, a few at a time.
    fn rescan_some_for_tls(&mut self) {
        let mut pids = self.registry.live_pids();
        if pids.is_empty() {
            return;
        }
        pids.sort_unstable();
        let start = pids.partition_point(|&p| p <= self.tls_cursor);
        for &pid in pids
            .iter()
            .cycle()
            .skip(start)
            .take(TLS_RESCAN_PER_TICK.min(pids.len()))
        {
            self.hook_tls(pid);
            self.tls_cursor = pid;
        }
    }

    fn process_gone(&mut self, pid: u32) {
        self.registry.exited(pid);
        self.tracker.process_exited(pid);
        self.probes.forget_process(pid);
        self.listeners.retain(|(tgid, _), _| *tgid != pid);
        let dropped = self.unowned.forget_process(pid);
        Stats::add(&self.stats.tls_writes_unclaimed, dropped);
    }

    /// Turns finished exchanges into spans and queues them for export.
    fn emit(&mut self) {
        for key in self.tracker.take_evictions() {
            self.probes.forget_socket(key);
        }
        for (key, how) in self.tracker.take_deepened() {
            self.probes.capture_deeply(key, how);
        }
        let finished: Vec<_> = self.tracker.drain().collect();
        for record in finished {
            let resource = self.registry.resource(record.tgid);
            self.send(Span::from_record(record, &self.clock, resource));
        }
    }

    /// Samples, then queues for export without ever waiting.
    fn send(&mut self, span: Span) {
        Stats::inc(&self.stats.spans_created);
        // Before sampling: the metrics count every request.
        if let Some(m) = &self.metrics {
            m.lock().expect("not poisoned").observe(&span);
        }
        if !self.sampler.keeps(&span.trace_id, span.remote_sampled) {
            Stats::inc(&self.stats.spans_sampled_out);
            return;
        }
        if self.spans.try_send(span).is_err() {
            Stats::inc(&self.stats.spans_dropped_queue_full);
        }
    }

    /// Handles what the ring buffer holds, up to a bound so that a flood of
    /// events cannot starve the tick, the signals or the exporters; the next
    /// drain picks up the rest.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let mut n = 0;
        while n < MAX_EVENTS_PER_DRAIN {
            let Some(item) = ring.next() else { break };
            self.handle(&item);
            n += 1;
        }
        self.emit();
        n
    }

    fn tick(&mut self) {
        self.tracker.sweep(Clock::now_ktime_ns());
        let dropped = self.unowned.expire(Clock::now_ktime_ns());
        Stats::add(&self.stats.tls_writes_unclaimed, dropped);
        for pid in std::mem::take(&mut self.tls_rescan) {
            self.hook_tls(pid);
        }
        self.rescan_some_for_tls();
        self.watch_ports();
        self.rescan_for_pods();
        for pid in self.registry.live_pids() {
            if !procfs::is_alive(pid) {
                self.process_gone(pid);
            }
        }
        self.probes.release_unused_tls();
        self.emit();
        self.registry.prune();
        let kernel = self.copy_kernel_counters();
        self.notice_dropped_events(&kernel);
    }

    /// The probes' counters into the agent's, as totals so far, and the
    /// gauges of what is traced now.
    /// The kernel dropped events since the last tick: some connection
    /// missed segments, which one is not known.
    fn notice_dropped_events(&mut self, c: &[u64]) {
        let dropped = c[counter::RINGBUF_FULL as usize] + c[counter::ARGS_MAP_FULL as usize];
        if dropped > self.events_dropped {
            self.events_dropped = dropped;
            self.tracker.events_lost();
        }
    }

    /// Copies the probes' counters and gauges into the stats; returns the
    /// probes' counters as read.
    fn copy_kernel_counters(&self) -> [u64; counter::COUNT as usize] {
        let set =
            |c: &crate::stats::Counter, v: u64| c.store(v, std::sync::atomic::Ordering::Relaxed);
        let tls = self.probes.tls_counts();
        set(&self.stats.tls_uprobes_failed, tls.attach_failed);
        set(
            &self.stats.go_binaries_unsupported,
            tls.go_binaries_unsupported,
        );
        for (gauge, value) in [
            (
                &self.stats.traced_processes,
                self.registry.live_pids().len(),
            ),
            (
                &self.stats.kernel_traced_entries,
                self.probes.traced_entries(),
            ),
            (&self.stats.tls_files_hooked, tls.files_hooked),
            (&self.stats.tls_processes_known, tls.processes_known),
            (&self.stats.go_binaries_hooked, tls.go_binaries_hooked),
            (
                &self.stats.export_queue_depth,
                self.spans.max_capacity() - self.spans.capacity(),
            ),
        ] {
            set(gauge, value as u64);
        }
        let c = self.probes.counters();
        let st = &self.stats;
        for (stat, index) in [
            (&st.kernel_ringbuf_full, counter::RINGBUF_FULL),
            (&st.kernel_args_map_full, counter::ARGS_MAP_FULL),
            (&st.kernel_sock_map_full, counter::SOCK_MAP_FULL),
            (&st.kernel_read_user_failed, counter::READ_USER_FAILED),
            (&st.kernel_tls_unattributed, counter::TLS_UNATTRIBUTED),
            (&st.kernel_tls_claims_refused, counter::TLS_CLAIM_REFUSED),
            (&st.kernel_go_conn_unknown, counter::GO_CONN_UNKNOWN),
            (&st.kernel_go_g_mismatch, counter::GO_G_MISMATCH),
            (&st.kernel_tls_calls_nested, counter::TLS_CALL_NESTED),
            (&st.kernel_context_injected, counter::INJECTED),
            (&st.kernel_context_had_header, counter::INJECT_HAD_HEADER),
            (&st.kernel_context_gave_up, counter::INJECT_GAVE_UP),
            (&st.kernel_context_failed, counter::INJECT_FAILED),
        ] {
            set(stat, c[index as usize]);
        }
        c
    }

    /// Hooks `pid`'s TLS (and its runtime's probes): a Go program's
    /// threads are no request's, a Node.js program's serve them all.
    fn hook_tls(&mut self, pid: u32) {
        let runtime = self.probes.hook_tls(pid);
        if runtime != Runtime::default() {
            self.tracker.set_runtime(pid, runtime);
        }
    }

    /// Starts tracing a running process and the sockets it already holds.
    fn attach_pid(&mut self, pid: u32) -> anyhow::Result<()> {
        self.probes.trace(pid)?;
        self.hook_tls(pid);
        self.probes.mark_existing_threads(pid);
        self.registry.add(pid);
        let now = Clock::now_ktime_ns();
        for (key, row) in self.probes.seed_sockets(pid) {
            self.tracker.open(
                key,
                origin::PREEXISTING,
                Some(row.remote),
                Some(row.local),
                now,
            );
        }
        Ok(())
    }
}

/// A pipe whose ends close on exec.
fn cloexec_pipe(what: &str) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid out-array; O_CLOEXEC keeps the pipe out of the exec'd program.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("creating the {what}"));
    }
    // SAFETY: fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `argv` held at a gate until its pid is traced, so not one of its
/// syscalls goes unseen.
///
/// `spawn` only returns once the child has exec'd, so the child reports its
/// own pid through a second pipe before it waits at the gate, and the spawn
/// runs on a helper thread while this one traces the pid and opens the gate.
fn spawn_gated(argv: &[String], path: &mut EventPath) -> anyhow::Result<tokio::process::Child> {
    let (gate_r, gate_w) = cloexec_pipe("start gate")?;
    let (pid_r, pid_w) = cloexec_pipe("pid pipe")?;
    let (gr, gw, pw) = (gate_r.as_raw_fd(), gate_w.as_raw_fd(), pid_w.as_raw_fd());
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            libc::close(gw);
            let pid = libc::getpid();
            libc::write(pw, (&pid as *const i32).cast(), 4);
            libc::close(pw);
            let mut b = 0u8;
            // EOF (the agent died before opening the gate) aborts the exec.
            if libc::read(gr, (&mut b as *mut u8).cast(), 1) != 1 {
                // No allocation after fork: a bare errno, reported by spawn.
                return Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
            }
            Ok(())
        });
    }
    let runtime = tokio::runtime::Handle::current();
    std::thread::scope(|scope| {
        let spawner = scope.spawn(move || {
            let _in_runtime = runtime.enter();
            let spawned = cmd.spawn();
            // Only now: if fork itself failed, this EOF ends the pid read.
            drop(pid_w);
            spawned
        });
        let mut pid = [0u8; 4];
        let mut file = std::fs::File::from(pid_r);
        let got = std::io::Read::read_exact(&mut file, &mut pid);
        let opened = got.map_err(anyhow::Error::from).and_then(|()| {
            let pid = i32::from_ne_bytes(pid) as u32;
            path.probes.trace(pid)?;
            path.registry.add_with(pid, command_meta(argv));
            // SAFETY: writing one byte to our own pipe.
            unsafe { libc::write(gate_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
            Ok(())
        });
        // Closing the gate unopened makes the child abort before exec.
        drop(gate_w);
        let spawned = spawner
            .join()
            .map_err(|_| anyhow::anyhow!("the spawning thread panicked"))?;
        // If tracing failed, the child gave up at the gate: that is the
        // error worth reporting, not the spawn's.
        opened.context("tracing the command before it starts")?;
        spawned.with_context(|| format!("cannot start {:?}", argv[0]))
    })
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

/// What we know of a command we start before it execs.
fn command_meta(argv: &[String]) -> ProcessMeta {
    let exe = std::path::Path::new(&argv[0])
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| argv[0].clone());
    ProcessMeta {
        executable_name: exe,
        executable_path: None,
        command_line: argv.join(" "),
        container: Default::default(),
        service_name: std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty()),
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
