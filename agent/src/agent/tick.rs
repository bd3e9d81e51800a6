//! The one-second tick: timeouts and the sweep, rescans, and the
//! kernel's counters copied into the stats.

use zerospan_common::counter;

use crate::{clock::Clock, host::procfs, stats::Stats};

use super::EventPath;

impl EventPath {
    pub(super) fn tick(&mut self) {
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

    /// The kernel dropped events since the last tick: some connection
    /// missed segments, which one is not known.
    pub(super) fn notice_dropped_events(&mut self, c: &[u64]) {
        let dropped = c[counter::RINGBUF_FULL as usize] + c[counter::ARGS_MAP_FULL as usize];
        if dropped > self.events_dropped {
            self.events_dropped = dropped;
            self.tracker.events_lost();
        }
    }

    /// Copies the probes' counters and gauges into the stats; returns the
    /// probes' counters as read.
    pub(super) fn copy_kernel_counters(&self) -> [u64; counter::COUNT as usize] {
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
            (&st.kernel_h2_unfollowed, counter::H2_UNFOLLOWED),
            (&st.kernel_context_injected, counter::INJECTED),
            (&st.kernel_context_had_header, counter::INJECT_HAD_HEADER),
            (&st.kernel_context_gave_up, counter::INJECT_GAVE_UP),
            (&st.kernel_context_failed, counter::INJECT_FAILED),
        ] {
            set(stat, c[index as usize]);
        }
        c
    }
}
