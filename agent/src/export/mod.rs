//! The export pipeline.
//!
//! ```text
//! event path ──try_send──▶ span queue ──▶ batcher ──▶ per-sink queue ──▶ sink task ──▶ collector
//!   (never blocks)        (bounded)                   (bounded, drops    (retries with
//!                                                       oldest batch)      back-off)
//! ```
//!
//! A slow or absent collector fills only its own sink's queue, bounded in
//! batches and in bytes; the oldest batches go first and every dropped
//! span is counted. While a collector fails, its workers retry at most a
//! second apart, so one that comes back is used again within a second.

mod console;
pub mod encode;
mod file;
pub mod grpc;
pub mod http;
pub mod otlp;
pub mod transport;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, Notify},
    task::JoinHandle,
    time::Instant,
};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

use crate::{spans::Span, stats::Stats};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0} (will retry)")]
    Retryable(String),
    #[error("{0}")]
    Fatal(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkConfig {
    OtlpGrpc {
        endpoint: String,
        transport: transport::Transport,
    },
    OtlpHttp {
        endpoint: String,
        transport: transport::Transport,
    },
    JsonFile(PathBuf),
    Console,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub sinks: Vec<SinkConfig>,
    /// Spans the event path may queue before new ones are dropped.
    pub queue_spans: usize,
    pub batch_size: usize,
    pub batch_delay: Duration,
    /// Batches each sink buffers while its collector is unreachable.
    pub sink_buffer_batches: usize,
    /// Bytes of spans each sink buffers while its collector is unreachable
    /// (as the spans hold them in memory, see [`Span::memory_bytes`]).
    pub sink_buffer_bytes: usize,
    /// How long shutdown waits for sinks to deliver what they hold.
    pub shutdown_timeout: Duration,
}

pub(crate) enum Sink {
    Grpc(grpc::Grpc),
    Http(Box<http::Http>),
    File(file::JsonFile),
    Console(console::Console),
}

impl Sink {
    pub(crate) fn open(cfg: &SinkConfig) -> anyhow::Result<Self> {
        Ok(match cfg {
            SinkConfig::OtlpGrpc {
                endpoint,
                transport,
            } => Sink::Grpc(grpc::Grpc::new(endpoint, transport)?),
            SinkConfig::OtlpHttp {
                endpoint,
                transport,
            } => Sink::Http(Box::new(http::Http::new(endpoint, transport)?)),
            SinkConfig::JsonFile(path) => Sink::File(file::JsonFile::new(path)?),
            SinkConfig::Console => Sink::Console(console::Console),
        })
    }

    /// Exports one sink runs at once. Network sinks keep several requests
    /// in flight, so a collector's round-trip time does not cap throughput;
    /// the file and the console stay in order.
    fn workers(&self) -> usize {
        match self {
            Sink::Grpc(_) | Sink::Http(_) => NETWORK_WORKERS,
            Sink::File(_) | Sink::Console(_) => 1,
        }
    }

    fn try_clone(&self) -> Option<Self> {
        match self {
            Sink::Grpc(s) => Some(Sink::Grpc(s.clone())),
            Sink::Http(s) => Some(Sink::Http(s.clone())),
            Sink::File(_) | Sink::Console(_) => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Sink::Grpc(_) => "otlp-grpc",
            Sink::Http(_) => "otlp-http",
            Sink::File(_) => "traces-file",
            Sink::Console(_) => "console",
        }
    }

    /// Sends one metrics export: over OTLP only.
    pub(crate) async fn export_metrics(
        &mut self,
        request: ExportMetricsServiceRequest,
    ) -> Result<(), ExportError> {
        match self {
            Sink::Grpc(s) => s.export_metrics(request).await,
            Sink::Http(s) => s.post(prost::Message::encode_to_vec(&request)).await,
            Sink::File(_) | Sink::Console(_) => Err(ExportError::Fatal(format!(
                "metrics cannot be exported to {}",
                self.name()
            ))),
        }
    }

    async fn export(&mut self, batch: &[Span]) -> Result<(), ExportError> {
        match self {
            Sink::Grpc(s) => s.export(batch).await,
            Sink::Http(s) => s.export(batch).await,
            Sink::File(s) => s.export(batch),
            Sink::Console(s) => s.export(batch),
        }
    }
}

/// A batch, shared by the sinks, and the memory its spans hold.
#[derive(Clone)]
struct Batch {
    spans: Arc<Vec<Span>>,
    bytes: usize,
}

impl Batch {
    fn new(spans: Vec<Span>) -> Batch {
        let bytes = spans.iter().map(Span::memory_bytes).sum();
        Batch {
            spans: Arc::new(spans),
            bytes,
        }
    }
}

const NETWORK_WORKERS: usize = 4;

/// A sink's bounded backlog.
struct Backlog {
    queue: Mutex<Queue>,
    ready: Notify,
    closed: AtomicBool,
    /// Most batches queued.
    cap: usize,
    /// Most bytes queued; the newest batch is kept even if it alone is
    /// more.
    cap_bytes: usize,
    /// Spans taken by a worker and not yet delivered or dropped: counted as
    /// dropped if shutdown has to abort the workers.
    in_flight: AtomicU64,
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    bytes: usize,
}

impl Backlog {
    fn new(cap: usize, cap_bytes: usize) -> Backlog {
        Backlog {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            cap: cap.max(1),
            cap_bytes,
            in_flight: AtomicU64::new(0),
        }
    }

    fn push(&self, batch: Batch, stats: &Stats) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while !q.batches.is_empty()
            && (q.batches.len() >= self.cap || q.bytes + batch.bytes > self.cap_bytes)
        {
            if let Some(old) = q.batches.pop_front() {
                q.bytes -= old.bytes;
                Stats::add(&stats.spans_dropped_export, old.spans.len() as u64);
            }
        }
        q.bytes += batch.bytes;
        q.batches.push_back(batch);
        drop(q);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Batch> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let batch = q.batches.pop_front()?;
        q.bytes -= batch.bytes;
        Some(batch)
    }

    fn drop_all(&self, stats: &Stats) {
        while let Some(b) = self.pop() {
            Stats::add(&stats.spans_dropped_export, b.spans.len() as u64);
        }
        let taken = self.in_flight.swap(0, Ordering::AcqRel);
        Stats::add(&stats.spans_dropped_export, taken);
    }
}

pub struct Pipeline {
    batcher: JoinHandle<()>,
    sinks: Vec<(Arc<Backlog>, Vec<JoinHandle<()>>)>,
    timeout: Duration,
    stats: Arc<Stats>,
}

/// Starts the pipeline. Must run inside the agent's tokio runtime: the
/// network sinks keep their connections on it.
pub fn start(
    settings: &Settings,
    stats: Arc<Stats>,
) -> anyhow::Result<(mpsc::Sender<Span>, Pipeline)> {
    let (tx, rx) = mpsc::channel(settings.queue_spans.max(1));
    let mut sinks = Vec::new();
    for cfg in &settings.sinks {
        let sink = Sink::open(cfg)?;
        let backlog = Arc::new(Backlog::new(
            settings.sink_buffer_batches,
            settings.sink_buffer_bytes,
        ));
        let mut workers = Vec::new();
        for _ in 1..sink.workers() {
            if let Some(clone) = sink.try_clone() {
                workers.push(tokio::spawn(run_sink(
                    clone,
                    backlog.clone(),
                    stats.clone(),
                )));
            }
        }
        workers.push(tokio::spawn(run_sink(sink, backlog.clone(), stats.clone())));
        sinks.push((backlog, workers));
    }
    let backlogs: Vec<Arc<Backlog>> = sinks.iter().map(|(b, _)| b.clone()).collect();
    let batcher = tokio::spawn(run_batcher(
        rx,
        backlogs,
        settings.batch_size.max(1),
        settings.batch_delay,
        stats.clone(),
    ));
    Ok((
        tx,
        Pipeline {
            batcher,
            sinks,
            timeout: settings.shutdown_timeout,
            stats,
        },
    ))
}

async fn run_batcher(
    mut rx: mpsc::Receiver<Span>,
    sinks: Vec<Arc<Backlog>>,
    batch_size: usize,
    delay: Duration,
    stats: Arc<Stats>,
) {
    let mut batch: Vec<Span> = Vec::with_capacity(batch_size);
    // One timer, armed when a batch starts, not one per span; and every
    // span queued by a wake taken at once.
    let timer = tokio::time::sleep(delay);
    tokio::pin!(timer);
    let mut armed = false;
    loop {
        let room = batch_size - batch.len();
        let done = tokio::select! {
            got = rx.recv_many(&mut batch, room) => {
                if got > 0 && !armed {
                    timer.as_mut().reset(Instant::now() + delay);
                    armed = true;
                }
                // 0 only once every sender is gone and the queue is empty.
                got == 0
            }
            () = &mut timer, if armed => {
                armed = false;
                false
            }
        };
        let due = !armed || done || batch.len() >= batch_size;
        if !batch.is_empty() && due {
            let full = Batch::new(std::mem::replace(
                &mut batch,
                Vec::with_capacity(batch_size),
            ));
            for s in &sinks {
                s.push(full.clone(), &stats);
            }
            armed = false;
        }
        if done {
            return;
        }
    }
}

async fn run_sink(mut sink: Sink, backlog: Arc<Backlog>, stats: Arc<Stats>) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(200);
    // A collector that comes back is used again within this: a retry
    // costs a refused connection, or one request, a second per worker.
    // (At 30 s, export resumed 20 s after the collector did, and that
    // backlog was lost.)
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        // Registered before the checks, so a push or the shutdown signal
        // between them and the await still wakes this worker.
        let notified = backlog.ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(batch) = backlog.pop() else {
            if backlog.closed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
            continue;
        };
        let n = batch.spans.len() as u64;
        backlog.in_flight.fetch_add(n, Ordering::AcqRel);
        loop {
            match sink.export(&batch.spans).await {
                Ok(()) => {
                    Stats::add(&stats.spans_exported, n);
                    if failing {
                        log::info!("{}: export recovered", sink.name());
                    }
                    failing = false;
                    backoff = FIRST_BACKOFF;
                    break;
                }
                Err(ExportError::Retryable(e)) => {
                    Stats::inc(&stats.export_failures);
                    if !failing {
                        log::warn!(
                            "{}: export failed: {e}; buffering and retrying",
                            sink.name()
                        );
                    }
                    failing = true;
                    if backlog.closed.load(Ordering::Acquire) && backoff >= MAX_BACKOFF {
                        Stats::add(&stats.spans_dropped_export, n);
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(ExportError::Fatal(e)) => {
                    Stats::inc(&stats.export_failures);
                    Stats::add(&stats.spans_dropped_export, n);
                    log::warn!(
                        "{}: export rejected, {} spans dropped: {e}",
                        sink.name(),
                        batch.spans.len()
                    );
                    break;
                }
            }
        }
        backlog.in_flight.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Awaits every task (no `futures` dependency for one loop).
async fn join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

impl Pipeline {
    /// Flushes what is queued (the caller has dropped its sender) and stops,
    /// waiting at most the shutdown timeout for slow collectors.
    pub async fn shutdown(self) {
        let _ = self.batcher.await;
        for (b, _) in &self.sinks {
            b.closed.store(true, Ordering::Release);
            b.ready.notify_waiters();
        }
        let deadline = Instant::now() + self.timeout;
        for (backlog, tasks) in self.sinks {
            let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
            let all = join_all(tasks);
            if tokio::time::timeout_at(deadline, all).await.is_err() {
                aborts.iter().for_each(tokio::task::AbortHandle::abort);
                backlog.drop_all(&self.stats);
                log::warn!(
                    "export did not finish within the shutdown timeout; the rest was dropped"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::test_span;

    fn batch(first_id: u8, n: u8) -> Batch {
        Batch::new(
            (first_id..first_id + n)
                .map(|i| test_span(i, 0, "x"))
                .collect(),
        )
    }

    /// A collector that never answers must cost a bounded amount of memory:
    /// the backlog keeps the newest batches and counts what it lets go.
    #[test]
    fn backlog_drops_the_oldest_batches_and_counts_their_spans() {
        let stats = Stats::default();
        let backlog = Backlog::new(2, usize::MAX);
        backlog.push(batch(1, 3), &stats);
        backlog.push(batch(10, 2), &stats);
        backlog.push(batch(20, 4), &stats);
        assert_eq!(stats.spans_dropped_export.load(Ordering::Relaxed), 3);
        assert_eq!(backlog.pop().unwrap().spans[0].span_id[7], 10);
        assert_eq!(backlog.pop().unwrap().spans[0].span_id[7], 20);
        assert!(backlog.pop().is_none());
    }

    /// The bound in bytes: batches go, oldest first, until the newest
    /// fits; a batch bigger than the bound alone is still kept, alone.
    #[test]
    fn backlog_keeps_within_its_bytes() {
        let stats = Stats::default();
        let one = batch(1, 1).bytes;
        assert!(one > std::mem::size_of::<Span>(), "{one}");
        let backlog = Backlog::new(100, 5 * one);
        for i in 0..4 {
            backlog.push(batch(10 * i, 2), &stats);
        }
        // 8 spans held no more than 5 spans' bytes: the two oldest batches
        // went, and the queue's count is what it holds.
        assert_eq!(stats.spans_dropped_export.load(Ordering::Relaxed), 4);
        let q = backlog.queue.lock().unwrap();
        assert_eq!(q.batches.len(), 2);
        assert_eq!(q.bytes, q.batches.iter().map(|b| b.bytes).sum::<usize>());
        assert!(q.bytes <= 5 * one);
        drop(q);
        backlog.push(batch(100, 9), &stats);
        assert_eq!(stats.spans_dropped_export.load(Ordering::Relaxed), 8);
        assert_eq!(backlog.pop().unwrap().spans.len(), 9);
        assert!(backlog.pop().is_none());
        assert_eq!(backlog.queue.lock().unwrap().bytes, 0);
    }

    /// Batches fill to their size; a partial one leaves after the delay,
    /// not before; the last leaves when the senders are gone.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn batches_fill_or_wait_their_delay() {
        let stats = Arc::new(Stats::default());
        let backlog = Arc::new(Backlog::new(100, usize::MAX));
        let (tx, rx) = mpsc::channel(100);
        let delay = Duration::from_millis(50);
        let batcher = tokio::spawn(run_batcher(rx, vec![backlog.clone()], 3, delay, stats));
        let sizes = |b: &Backlog| {
            let q = b.queue.lock().unwrap();
            q.batches.iter().map(|b| b.spans.len()).collect::<Vec<_>>()
        };
        for i in 0..7 {
            tx.send(test_span(i, 0, "x")).await.unwrap();
        }
        tokio::task::yield_now().await;
        assert_eq!(sizes(&backlog), [3, 3]);
        // The seventh waits for its delay.
        tokio::time::sleep(delay / 2).await;
        assert_eq!(sizes(&backlog), [3, 3]);
        tokio::time::sleep(delay).await;
        assert_eq!(sizes(&backlog), [3, 3, 1]);
        // A span after a quiet spell waits a whole delay of its own.
        tx.send(test_span(8, 0, "x")).await.unwrap();
        tokio::time::sleep(delay / 2).await;
        assert_eq!(sizes(&backlog), [3, 3, 1]);
        tx.send(test_span(9, 0, "x")).await.unwrap();
        drop(tx);
        batcher.await.unwrap();
        assert_eq!(sizes(&backlog), [3, 3, 1, 2]);
    }

    /// With a collector that refuses connections, export keeps failing,
    /// retries back off, and shutdown still returns within its timeout,
    /// counting what it could not deliver.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dead_collector_never_blocks_shutdown_past_its_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stats = Arc::new(Stats::default());
        let settings = Settings {
            sinks: vec![SinkConfig::OtlpGrpc {
                endpoint: format!("http://127.0.0.1:{port}"),
                transport: Default::default(),
            }],
            queue_spans: 100,
            batch_size: 10,
            batch_delay: Duration::from_millis(10),
            sink_buffer_batches: 3,
            sink_buffer_bytes: 8 << 20,
            shutdown_timeout: Duration::from_millis(800),
        };
        let (tx, pipeline) = start(&settings, stats.clone()).unwrap();
        for i in 0..100 {
            tx.try_send(test_span(i, 0, "x")).unwrap();
        }
        drop(tx);
        let started = std::time::Instant::now();
        pipeline.shutdown().await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 0);
        assert_eq!(stats.spans_dropped_export.load(Ordering::Relaxed), 100);
        assert!(stats.export_failures.load(Ordering::Relaxed) >= 1);
    }
}
