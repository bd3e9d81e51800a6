//! Counters for everything the agent saw, skipped or lost.
//!
//! Every drop has a counter here, declared once with its kind and its
//! reason (the doc comment). Counting a loss is also what logs it: the
//! first one, and then each time its count reaches another power of ten,
//! say at info level what was lost and why, so nothing is dropped in
//! silence and a flood of drops does not flood the log. The stats line
//! (on exit and on SIGUSR1) shows the counters that are not zero, in this
//! order, which groups them by area; `/metrics` and OTLP carry them all.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

/// What a counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A running total of something that happened.
    Total,
    /// A running total of something lost, skipped or left unknown: each
    /// is logged as it is counted (see the module doc).
    Loss,
    /// A value now (processes traced, queue depth), not a total.
    Gauge,
}

/// One counter: its value, and what it is, for the logs and the metrics.
#[derive(Debug)]
pub struct Counter {
    value: AtomicU64,
    pub name: &'static str,
    pub kind: Kind,
    /// Its doc comment: what it counts.
    why: &'static str,
}

impl Counter {
    const fn new(name: &'static str, kind: Kind, why: &'static str) -> Self {
        Counter {
            value: AtomicU64::new(0),
            name,
            kind,
            why,
        }
    }

    pub fn load(&self, order: Ordering) -> u64 {
        self.value.load(order)
    }

    /// Sets a gauge, or a total kept elsewhere (the kernel's per-CPU
    /// counters): a loss that grew is logged as if counted here.
    pub fn store(&self, value: u64, order: Ordering) {
        let before = self.value.swap(value, order);
        if value > before {
            self.grew(before, value, None);
        }
    }

    /// Adds `n`; `protocol`, for a counter kept by protocol too, is named
    /// in the log.
    fn add(&self, n: u64, protocol: Option<&str>) {
        let before = self.value.fetch_add(n, Ordering::Relaxed);
        self.grew(before, before + n, protocol);
    }

    /// Logs a loss the first time, then at each new power of ten.
    fn grew(&self, before: u64, now: u64, protocol: Option<&str>) {
        if self.kind != Kind::Loss || magnitude(before) == magnitude(now) {
            return;
        }
        let why = self.why.trim();
        match protocol {
            Some(p) => log::info!("{}={now} (the last in {p}): {why}", self.name),
            None => log::info!("{}={now}: {why}", self.name),
        }
    }
}

/// 0 for 0, else one more than the number's digits less one: what changes
/// when a count reaches 1, 10, 100, ….
fn magnitude(n: u64) -> u32 {
    n.checked_ilog10().map_or(0, |d| d + 1)
}

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $kind:ident $name:ident),* $(,)?) => {
        #[derive(Debug)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: Counter,)*
            /// Counts kept by protocol too: (counter, protocol, count).
            /// Few protocols, rarely counted; apart from the counters so
            /// that those stay small and close together.
            by_protocol: Mutex<Vec<(&'static str, &'static str, u64)>>,
        }

        impl Default for Stats {
            fn default() -> Self {
                Stats {
                    $($name: Counter::new(
                        stringify!($name),
                        counters!(@kind $kind),
                        concat!($($doc),*),
                    ),)*
                    by_protocol: Mutex::new(Vec::new()),
                }
            }
        }

        impl Stats {
            /// Every counter, in declaration order.
            pub fn all(&self) -> [&Counter; [$(stringify!($name)),*].len()] {
                [$(&self.$name),*]
            }
        }
    };
    (@kind total) => { Kind::Total };
    (@kind loss) => { Kind::Loss };
    (@kind gauge) => { Kind::Gauge };
}

counters! {
    /// Records read from the ring buffer.
    total events_read,
    /// Records that failed to decode.
    loss events_malformed,
    /// Lost in the kernel: ring buffer full.
    loss kernel_ringbuf_full,
    /// Lost in the kernel: syscall-argument map full.
    loss kernel_args_map_full,
    /// Lost in the kernel: tracked-socket map full.
    loss kernel_sock_map_full,
    /// Segments sent uncaptured because user memory could not be read.
    loss kernel_read_user_failed,
    /// TLS plaintext dropped: the library call's socket was not known.
    loss kernel_tls_unattributed,
    /// Memory-buffer library objects whose held writes were kept from the
    /// socket their first read named, because it already had another
    /// object's plaintext (the naming is in doubt); the writes themselves
    /// count in `tls_writes_unclaimed` when they age out.
    loss kernel_tls_claims_refused,
    /// Go `crypto/tls` calls on a connection that is not a
    /// `*net.TCPConn` (a wrapper, a pipe): its socket is not known for
    /// sure, so its plaintext is not read.
    loss kernel_go_conn_unknown,
    /// Go processes whose TLS slot did not hold the running goroutine
    /// where the probes checked it: their goroutines are not followed.
    loss kernel_go_g_mismatch,
    /// Node.js TLS calls made inside another on the same thread (a
    /// callback writing while a read runs): their plaintext is not read.
    loss kernel_tls_calls_nested,
    /// Times the probes lost their place in a direction of an HTTP/2
    /// connection (a buffer of more frames than one walk takes, unreadable
    /// octets, a header not well formed, a walk already running on the
    /// CPU, `sendfile` outside a DATA payload): captured in chunks, where a
    /// large write may cost the framing (`desyncs.http2`), until a read or
    /// write starts with frames again.
    loss kernel_h2_unfollowed,
    /// Segments of TLS writes made before their socket was known (a
    /// memory-buffer library's object that had not read yet) that no
    /// socket got: past the bounds, from before the socket that claimed
    /// the object opened, or never claimed.
    loss tls_writes_unclaimed,
    /// TLS connections whose plaintext never appeared (a TLS library the
    /// agent does not hook): skipped, no longer captured.
    loss connections_tls_unhooked,
    /// Connections whose bytes were no protocol the agent knows: skipped,
    /// no longer captured.
    loss connections_unknown_protocol,
    /// Accepted connections whose accept passed no address buffer (libuv,
    /// so Node.js; nghttpd; also Unix sockets, which have no peer to
    /// learn): the probes learn a TCP peer in the first read.
    total connections_peer_unknown,
    /// ... and those whose peer they then learnt. The difference never
    /// read, or lost the report: their server spans get no same-host
    /// parent and no `network.peer.*`.
    total connections_peer_learnt,
    /// Connections not tracked because the userspace table was full.
    loss connections_table_full,
    /// Times a connection's protocol lost its framing (bytes uncaptured
    /// or not the protocol): what was waiting ends unanswered, and the
    /// stream is found again or no longer captured. Kept by protocol too
    /// (`desyncs.http=…`; `desyncs_by_protocol` with a `protocol` label in
    /// the metrics).
    loss desyncs,
    /// Responses seen without their request (e.g. attached mid-exchange).
    loss http_orphan_responses,
    /// Requests that got no response before the request timeout.
    total http_requests_timed_out,
    /// Requests whose connection closed before the response completed.
    total http_requests_unanswered,
    /// Requests still waiting for their response when the agent stopped
    /// (exported as incomplete, not as errors).
    total http_requests_in_flight_at_stop,
    /// Requests ended without a response because it may have been in bytes
    /// that could not be framed (see `conn::http1`).
    loss http_responses_lost,
    /// Pipelined requests dropped past the per-connection bound, or framed
    /// after a request that upgraded the connection to h2c.
    loss http_pipeline_overflow,
    /// HTTP/2 spans with request or response fields the agent could not
    /// know (HPACK state unknown: joined mid-stream, or a lost block).
    loss h2_fields_unknown,
    /// HTTP/2 frames for streams whose request the agent did not see.
    loss h2_orphan_frames,
    /// Times a direction of an HTTP/2 connection that had lost its framing
    /// found it again at whole frames holding a header block (its streams
    /// open at the loss ended as lost; the table's old entries unknown).
    total h2_resyncs,
    /// HTTP/2 streams given up past the per-connection bound.
    loss h2_streams_dropped,
    /// Times a lost PostgreSQL response stream was found again at a read
    /// ending with `ReadyForQuery`.
    total db_resyncs,
    /// Executions of PostgreSQL statements prepared before the agent
    /// attached: spans without SQL text.
    loss db_statements_unknown,
    /// Prepared statements or portals not remembered: the per-connection
    /// bound was reached.
    loss db_statements_not_remembered,
    /// Database replies with no command waiting (pub/sub pushes, or
    /// commands sent before the agent attached).
    loss db_orphan_replies,
    /// Pipelined Redis commands given up past the per-connection bound.
    loss db_pipeline_overflow,
    /// `traceparent` headers ignored because they were malformed.
    loss context_traceparent_malformed,
    /// Client spans left as roots: several requests were in flight on the
    /// thread that made the call (on an event loop: on the connection
    /// whose read callback made it), so its parent could not be known.
    loss context_parent_ambiguous,
    /// Client spans of a Node.js event loop left as roots: made outside
    /// any read callback (a timer, an immediate) or in the callback of a
    /// read that carried none of the traced requests, so their cause is
    /// not known.
    loss context_loop_unknown,
    /// Server spans linked to the traced client span at the other end of
    /// their connection, on this host.
    total context_linked_same_host,
    /// `traceparent` headers the probes wrote into outgoing requests.
    total kernel_context_injected,
    /// Outgoing requests that already carried a `traceparent` (an
    /// instrumented application): sent unchanged.
    total kernel_context_had_header,
    /// Traced connections whose requests the probes stopped following
    /// (not HTTP/1, a head split across writes, chunked or upgraded
    /// bodies, pipelining): sent unchanged from then on.
    loss kernel_context_gave_up,
    /// Requests the kernel could not grow for the header: sent unchanged.
    loss kernel_context_failed,
    /// Calls made by Go programs, left roots because the goroutine they
    /// were made for is not known: the probes could not read it (not
    /// checked yet, or not followed in that binary), or a `net/http`
    /// writer goroutine wrote a request no goroutine was seen asking for.
    loss context_goroutine_unknown,
    /// Go calls parented through `net/http`'s hand-off: the request asked
    /// for on the handler's goroutine, written by the connection's writer.
    total context_goroutine_handoff,
    /// Go calls made on a goroutine started while a request was in flight,
    /// parented to that request.
    total context_goroutine_inherited,
    /// Go calls made on a goroutine started under a request that has
    /// ended since (a worker started by the first request it served):
    /// left roots, never parented to an ended request.
    loss context_goroutine_stale,
    /// Goroutine starts and `net/http` hand-offs not remembered because
    /// the agent's tables for them were full (65 536 each): the calls they
    /// would have parented stay roots.
    loss context_goroutine_table_full,
    /// Ids the probes chose for a request the agent did not frame as that
    /// request (its framing lost sync): not used.
    loss context_chosen_unmatched,
    /// Server requests whose `traceparent` the probes and the agent read
    /// differently; the probes' reading was kept (the next hop has it).
    loss context_chosen_disagreed,
    /// Processes and threads that traced processes started (traced too,
    /// from their start).
    total processes_forked,
    /// TLS probes that could not be attached (not counting functions a
    /// file does not have): with a refusal, TLS capture is off.
    loss tls_uprobes_failed,
    /// Go executables left alone (stripped, of a release not in the offsets
    /// table; code not as expected), or whose goroutines are not followed
    /// though their TLS is hooked (then counted in `go_binaries_hooked`
    /// too): the log names each and the reason.
    loss go_binaries_unsupported,
    /// Go executables whose `crypto/tls` is hooked now (a gauge).
    gauge go_binaries_hooked,
    /// Library and executable files with TLS probes now (a gauge).
    gauge tls_files_hooked,
    /// Traced processes known to map a file looked at for TLS (a gauge).
    gauge tls_processes_known,
    /// Processes traced now (a gauge, as of the last tick).
    gauge traced_processes,
    /// Entries in the probes' traced-process map now: processes and
    /// threads (a gauge, as of the last tick).
    gauge kernel_traced_entries,
    /// Spans built.
    total spans_created,
    /// Spans left out by the sampler (OTEL_TRACES_SAMPLER).
    total spans_sampled_out,
    /// Spans dropped because the export queue was full.
    loss spans_dropped_queue_full,
    /// Spans an exporter delivered (summed over exporters: with two
    /// configured, each span counts twice here and in the two below).
    total spans_exported,
    /// Spans an exporter gave up on (collector down past its buffer).
    loss spans_dropped_export,
    /// Failed export attempts (each retried with back-off).
    loss export_failures,
    /// Spans waiting in the export queue now (a gauge, as of the last tick).
    gauge export_queue_depth,
    /// Failed attempts to list or watch this node's pods.
    loss k8s_api_errors,
    /// Containers of this node's pods known from the API (a gauge).
    gauge k8s_containers_known,
    /// Pods left out of the cache because it is full (a gauge).
    gauge k8s_pods_left_out,
    /// OTLP metric exports delivered.
    total metrics_exported,
    /// OTLP metric exports that failed. Nothing is lost: every export
    /// carries the totals since start, so the next one catches up.
    loss metrics_export_failures,
}

impl Stats {
    /// A connection's protocol lost its framing: counted in all and for
    /// `protocol` (its name in counters and logs).
    pub fn desync(&self, protocol: &'static str) {
        self.add_for(&self.desyncs, protocol, 1);
    }

    /// Counts `n` in `counter` and in its count for `protocol`.
    pub fn add_for(&self, counter: &Counter, protocol: &'static str, n: u64) {
        {
            let mut by = self.by_protocol.lock().unwrap_or_else(|e| e.into_inner());
            match by
                .iter_mut()
                .find(|(c, p, _)| *c == counter.name && *p == protocol)
            {
                Some((_, _, count)) => *count += n,
                None => by.push((counter.name, protocol, n)),
            }
        }
        counter.add(n, Some(protocol));
    }

    /// `counter`'s counts by protocol, if it is kept that way.
    pub fn by_protocol(&self, counter: &Counter) -> Vec<(&'static str, u64)> {
        let mut by: Vec<_> = self
            .by_protocol
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(c, _, _)| *c == counter.name)
            .map(|&(_, p, n)| (p, n))
            .collect();
        by.sort_unstable();
        by
    }

    pub fn add(counter: &Counter, n: u64) {
        if n > 0 {
            counter.add(n, None);
        }
    }

    pub fn inc(counter: &Counter) {
        counter.add(1, None);
    }

    /// The stats line: the counters that are not zero, `name=value`, in
    /// declaration order (grouped by area); all of them are in /metrics.
    pub fn render(&self) -> String {
        let mut line: Vec<String> = Vec::new();
        for c in self.all() {
            let v = c.load(Ordering::Relaxed);
            if v > 0 {
                line.push(format!("{}={v}", c.name));
                for (protocol, n) in self.by_protocol(c) {
                    line.push(format!("{}.{protocol}={n}", c.name));
                }
            }
        }
        if line.is_empty() {
            "all zero".into()
        } else {
            line.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desyncs_are_counted_in_all_and_by_protocol() {
        let s = Stats::default();
        for protocol in ["postgresql", "mysql", "mysql", "redis", "http2"] {
            s.desync(protocol);
        }
        assert_eq!(
            s.render(),
            "desyncs=5 desyncs.http2=1 desyncs.mysql=2 desyncs.postgresql=1 desyncs.redis=1"
        );
    }

    #[test]
    fn losses_are_logged_at_the_first_and_each_power_of_ten() {
        let logged: Vec<u64> = (0..=1000u64)
            .filter(|&n| n > 0 && magnitude(n - 1) != magnitude(n))
            .collect();
        assert_eq!(logged, [1, 10, 100, 1000]);
        let s = Stats::default();
        assert_eq!(s.kernel_ringbuf_full.kind, Kind::Loss);
        assert_eq!(s.spans_created.kind, Kind::Total);
        assert_eq!(s.export_queue_depth.kind, Kind::Gauge);
        assert!(s.kernel_ringbuf_full.why.contains("ring buffer full"));
        assert_eq!(s.render(), "all zero");
    }
}
