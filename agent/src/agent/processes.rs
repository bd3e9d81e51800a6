//! Which processes are traced: a new exec judged by the selectors (and
//! later by its listening ports, or its pod), attached, its TLS libraries
//! hooked, forgotten when it exits.

use std::time::Duration;

use zerospan_common::origin;

use crate::{
    clock::Clock,
    host::{
        discovery::{Candidate, Selectors},
        procfs,
    },
    kernel::Runtime,
    stats::Stats,
};

use super::EventPath;

/// How long after its exec a process is looked at for selected ports.
const PORT_WATCH_NS: u64 = 30_000_000_000;
/// Most processes watched for ports at once.
const MAX_PORT_WATCH: usize = 1024;

/// Traced processes whose maps are looked at again on each tick.
const TLS_RESCAN_PER_TICK: usize = 8;
/// Pod rescans run at most this often, however busy the node's pods are.
const POD_RESCAN_EVERY: Duration = Duration::from_secs(2);

impl EventPath {
    /// An untraced process exec'd: trace it if a selector matches what it
    /// now is. A port selector may match only once it listens, so it is
    /// looked at again on the next ticks.
    pub(super) fn exec_seen(&mut self, pid: u32) {
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
    pub(super) fn consider(&mut self, pid: u32, selectors: &Selectors, with_ports: bool) {
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
    pub(super) fn rescan_for_pods(&mut self) {
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
    pub(super) fn watch_ports(&mut self) {
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
    pub(super) fn rescan_some_for_tls(&mut self) {
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

    pub(super) fn process_gone(&mut self, pid: u32) {
        self.registry.exited(pid);
        self.tracker.process_exited(pid);
        self.probes.forget_process(pid);
        self.listeners.retain(|(tgid, _), _| *tgid != pid);
        let dropped = self.unowned.forget_process(pid);
        Stats::add(&self.stats.tls_writes_unclaimed, dropped);
    }

    /// Hooks `pid`'s TLS (and its runtime's probes): a Go program's
    /// threads are no request's, a Node.js program's serve them all.
    pub(super) fn hook_tls(&mut self, pid: u32) {
        let runtime = self.probes.hook_tls(pid);
        if runtime != Runtime::default() {
            self.tracker.set_runtime(pid, runtime);
        }
    }

    /// Starts tracing a running process and the sockets it already holds.
    pub(super) fn attach_pid(&mut self, pid: u32) -> anyhow::Result<()> {
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
