//! The event path: each ring-buffer record to the tracker, finished
//! exchanges to spans, spans to the sampler, the metrics and the export
//! queue.

use aya::maps::{MapData, RingBuf};
use zerospan_common::origin;
use zerospan_protocols::stream::{Segment, Stamp};

use crate::{
    host::procfs,
    kernel::{
        events::{self, Event},
        Runtime,
    },
    spans::Span,
    stats::Stats,
};

use super::EventPath;

/// Most records handled in one drain (see [`EventPath::drain`]).
pub(super) const MAX_EVENTS_PER_DRAIN: usize = 65_536;

impl EventPath {
    pub(super) fn handle(&mut self, raw: &[u8]) {
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

    /// Turns finished exchanges into spans and queues them for export.
    pub(super) fn emit(&mut self) {
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
    pub(super) fn send(&mut self, span: Span) {
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
    pub(super) fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let mut n = 0;
        while n < MAX_EVENTS_PER_DRAIN {
            let Some(item) = ring.next() else { break };
            self.handle(&item);
            n += 1;
        }
        self.emit();
        n
    }
}
