//! An in-test OTLP receiver: gRPC (tonic) and HTTP/protobuf (hyper).

use std::{
    convert::Infallible,
    io::Read as _,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use openssl::ssl::{AlpnError, Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
    },
    common::v1::{any_value, KeyValue},
    metrics::v1::{metric::Data, number_data_point},
    trace::v1::Span,
};
use prost::Message as _;
use tonic::{codec::CompressionEncoding, codegen::Service as _};

/// What the receiver keeps: every request, or (for the benchmark, where
/// millions of spans arrive) only their count.
#[derive(Default)]
struct Received {
    keep: bool,
    requests: Vec<(&'static str, ExportTraceServiceRequest)>,
    span_count: u64,
    /// The newest metrics export per transport: each carries every total.
    metrics: Vec<(&'static str, ExportMetricsServiceRequest)>,
    metric_exports: u64,
    /// How each export request came (kept only with `keep`).
    arrivals: Vec<Arrival>,
    /// Connections whose TLS handshake failed (a wrong CA on either side,
    /// no client certificate, plaintext on a TLS port).
    tls_refused: u64,
}

/// How one export request reached the receiver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Arrival {
    pub transport: &'static str,
    /// The connection's TLS, if any.
    pub tls: Option<Peer>,
    /// Its body was gzip (`grpc-encoding` or `content-encoding`).
    pub gzip: bool,
}

/// What a TLS handshake established.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub alpn: Option<String>,
    /// The client certificate's common name (mTLS).
    pub client_cn: Option<String>,
}

/// A receiver's TLS side.
pub struct ReceiverTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require a client certificate chaining to this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl Received {
    fn add(&mut self, transport: &'static str, req: ExportTraceServiceRequest) {
        self.span_count += req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len() as u64)
            .sum::<u64>();
        if self.keep {
            self.requests.push((transport, req));
        }
    }

    fn arrive(&mut self, arrival: Arrival) {
        if self.keep {
            self.arrivals.push(arrival);
        }
    }

    fn add_metrics(&mut self, transport: &'static str, req: ExportMetricsServiceRequest) {
        self.metric_exports += 1;
        self.metrics.retain(|(t, _)| *t != transport);
        self.metrics.push((transport, req));
    }
}

type Store = Arc<Mutex<Received>>;

struct Service {
    store: Store,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.store.lock().unwrap().add("grpc", request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.store
            .lock()
            .unwrap()
            .add_metrics("grpc", request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// One data point of a metric, with its resource's `service.name`.
#[derive(Clone, Debug)]
pub struct MetricPoint {
    pub service: String,
    pub resource: Vec<KeyValue>,
    pub attributes: Vec<KeyValue>,
    /// Histograms: count and per-bucket counts (not cumulative).
    pub count: u64,
    pub bucket_counts: Vec<u64>,
    pub explicit_bounds: Vec<f64>,
    /// Sums and gauges.
    pub value: Option<i64>,
}

impl MetricPoint {
    pub fn str(&self, key: &str) -> Option<String> {
        as_string(value_of(&self.attributes, key))
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        as_int(value_of(&self.attributes, key))
    }
    pub fn res_str(&self, key: &str) -> Option<String> {
        as_string(value_of(&self.resource, key))
    }
}

fn metric_points(req: &ExportMetricsServiceRequest, name: &str) -> Vec<MetricPoint> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        let resource = rm
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let service = as_string(value_of(resource, "service.name")).unwrap_or_default();
        for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            if m.name != name {
                continue;
            }
            let number =
                |attributes: &[KeyValue], v: &Option<number_data_point::Value>| MetricPoint {
                    service: service.clone(),
                    resource: resource.to_vec(),
                    attributes: attributes.to_vec(),
                    count: 0,
                    bucket_counts: Vec::new(),
                    explicit_bounds: Vec::new(),
                    value: match v {
                        Some(number_data_point::Value::AsInt(n)) => Some(*n),
                        _ => None,
                    },
                };
            match &m.data {
                Some(Data::Histogram(h)) => out.extend(h.data_points.iter().map(|p| MetricPoint {
                    service: service.clone(),
                    resource: resource.to_vec(),
                    attributes: p.attributes.clone(),
                    count: p.count,
                    bucket_counts: p.bucket_counts.clone(),
                    explicit_bounds: p.explicit_bounds.clone(),
                    value: None,
                })),
                Some(Data::Sum(sum)) => out.extend(
                    sum.data_points
                        .iter()
                        .map(|p| number(&p.attributes, &p.value)),
                ),
                Some(Data::Gauge(g)) => out.extend(
                    g.data_points
                        .iter()
                        .map(|p| number(&p.attributes, &p.value)),
                ),
                _ => {}
            }
        }
    }
    out
}

/// A span with the resource it was reported under.
#[derive(Clone, Debug)]
pub struct FlatSpan {
    pub transport: &'static str,
    pub resource: Vec<KeyValue>,
    pub span: Span,
}

fn value_of<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn as_string(v: Option<&any_value::Value>) -> Option<String> {
    match v? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn as_int(v: Option<&any_value::Value>) -> Option<i64> {
    match v? {
        any_value::Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

impl FlatSpan {
    pub fn str(&self, key: &str) -> Option<String> {
        as_string(value_of(&self.span.attributes, key))
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        as_int(value_of(&self.span.attributes, key))
    }
    pub fn has(&self, key: &str) -> bool {
        value_of(&self.span.attributes, key).is_some()
    }
    pub fn res_str(&self, key: &str) -> Option<String> {
        as_string(value_of(&self.resource, key))
    }
    pub fn res_int(&self, key: &str) -> Option<i64> {
        as_int(value_of(&self.resource, key))
    }
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(
            self.span
                .end_time_unix_nano
                .saturating_sub(self.span.start_time_unix_nano),
        )
    }
    pub fn is_server(&self) -> bool {
        self.span.kind == 2
    }
    pub fn is_client(&self) -> bool {
        self.span.kind == 3
    }
}

/// Lowercase hex, as trace and span ids are written.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `child` is `parent`'s child, in the same trace, and nested in time.
pub fn assert_child(child: &FlatSpan, parent: &FlatSpan) {
    assert_eq!(
        child.span.trace_id, parent.span.trace_id,
        "{} in {}",
        child.span.name, parent.span.name
    );
    assert_eq!(
        hex(&child.span.parent_span_id),
        hex(&parent.span.span_id),
        "{} under {}",
        child.span.name,
        parent.span.name
    );
    assert!(child.span.start_time_unix_nano >= parent.span.start_time_unix_nano);
    // A server's last write returns a moment after its caller's read may
    // already have returned with the bytes (seen: 161 ns), so a server span
    // may end just after its client parent.
    assert!(child.span.end_time_unix_nano <= parent.span.end_time_unix_nano + 1_000_000);
}

/// Flattens export requests into spans.
pub fn flatten(transport: &'static str, req: &ExportTraceServiceRequest) -> Vec<FlatSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| r.attributes.clone())
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(FlatSpan {
                    transport,
                    resource: resource.clone(),
                    span: s.clone(),
                });
            }
        }
    }
    out
}

pub struct Collector {
    pub grpc_endpoint: String,
    pub http_endpoint: String,
    store: Store,
    runtime: Option<std::thread::JoinHandle<()>>,
    /// Ends the receivers, their listeners and their connections.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn http_export(
    store: Store,
    peer: Option<Peer>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let ok_type = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/x-protobuf");
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body = match body {
        Ok(b) if gzip => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&b[..])
                .read_to_end(&mut out)
                .map(|_| Bytes::from(out))
                .map_err(drop)
        }
        Ok(b) => Ok(b),
        Err(_) => Err(()),
    };
    store.lock().unwrap().arrive(Arrival {
        transport: "http",
        tls: peer,
        gzip,
    });
    let status = match (path.as_str(), ok_type, body) {
        ("/v1/traces", true, Ok(bytes)) => match ExportTraceServiceRequest::decode(bytes) {
            Ok(r) => {
                store.lock().unwrap().add("http", r);
                200
            }
            Err(_) => 400,
        },
        ("/v1/metrics", true, Ok(bytes)) => match ExportMetricsServiceRequest::decode(bytes) {
            Ok(r) => {
                store.lock().unwrap().add_metrics("http", r);
                200
            }
            Err(_) => 400,
        },
        ("/v1/traces" | "/v1/metrics", _, _) => 415,
        _ => 404,
    };
    Ok(hyper::Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap())
}

type TokioIo<T> = hyper_util::rt::TokioIo<T>;

/// A TLS server context for `tls`, choosing `alpn` (wire format); with
/// `require_alpn`, a client that offers other protocols is refused.
fn acceptor(tls: &ReceiverTls, alpn: &'static [u8], require_alpn: bool) -> SslAcceptor {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_private_key_file(&tls.key, SslFiletype::PEM).unwrap();
    b.set_certificate_chain_file(&tls.cert).unwrap();
    if let Some(ca) = &tls.client_ca {
        b.set_ca_file(ca).unwrap();
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    b.set_alpn_select_callback(move |_, offered| {
        openssl::ssl::select_next_proto(alpn, offered).ok_or(if require_alpn {
            AlpnError::ALERT_FATAL
        } else {
            AlpnError::NOACK
        })
    });
    b.build()
}

type TlsIo = hyper_openssl::SslStream<TokioIo<tokio::net::TcpStream>>;

/// The server side of a TLS handshake, and what it established.
async fn handshake(
    stream: tokio::net::TcpStream,
    acceptor: &SslAcceptor,
) -> Result<(TlsIo, Peer), ()> {
    let ssl = Ssl::new(acceptor.context()).map_err(drop)?;
    let mut io = hyper_openssl::SslStream::new(ssl, TokioIo::new(stream)).map_err(drop)?;
    Pin::new(&mut io).accept().await.map_err(drop)?;
    let ssl = io.ssl();
    let peer = Peer {
        alpn: ssl
            .selected_alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        client_cn: ssl.peer_certificate().and_then(|c| {
            let cn = c
                .subject_name()
                .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                .next()?;
            Some(String::from_utf8_lossy(cn.data().as_slice()).into_owned())
        }),
    };
    Ok((io, peer))
}

async fn serve_http<I>(io: I, store: Store, peer: Option<Peer>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |r| http_export(store.clone(), peer.clone(), r));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}

/// tonic's Router needs axum; the generated services are plain tower
/// services, so hyper's HTTP/2 server runs them, routed by the gRPC path.
#[derive(Clone)]
struct GrpcService {
    traces: TraceServiceServer<Service>,
    metrics: MetricsServiceServer<Service>,
    store: Store,
}

impl GrpcService {
    async fn serve<I>(self, io: I, peer: Option<Peer>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |r: hyper::Request<_>| {
            let (mut traces, mut metrics) = (self.traces.clone(), self.metrics.clone());
            let gzip = r
                .headers()
                .get("grpc-encoding")
                .is_some_and(|v| v == "gzip");
            self.store.lock().unwrap().arrive(Arrival {
                transport: "grpc",
                tls: peer.clone(),
                gzip,
            });
            async move {
                const METRICS: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/";
                if r.uri().path().starts_with(METRICS) {
                    metrics.call(r).await
                } else {
                    traces.call(r).await
                }
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.halt();
    }
}

impl Collector {
    /// Starts both receivers on ephemeral loopback ports, keeping every span.
    pub fn start() -> Self {
        Self::start_with(true, 0, None)
    }

    /// Like [`Collector::start`], with the gRPC receiver on a given port
    /// (to bring a collector up where an agent is already sending).
    pub fn start_grpc_on(port: u16) -> Self {
        Self::start_with(true, port, None)
    }

    /// Like [`Collector::start`], but only counts spans: memory stays flat
    /// however many arrive.
    pub fn counting() -> Self {
        Self::counting_on(0)
    }

    /// Like [`Collector::counting`], on a given port (0: any).
    pub fn counting_on(port: u16) -> Self {
        Self::start_with(false, port, None)
    }

    /// Like [`Collector::start`], both receivers behind TLS with `tls`:
    /// gRPC insists on ALPN `h2`, as gRPC servers do.
    pub fn start_tls(tls: &ReceiverTls) -> Self {
        Self::start_with(true, 0, Some(tls))
    }

    fn start_with(keep: bool, grpc_port: u16, tls: Option<&ReceiverTls>) -> Self {
        let store: Store = Arc::new(Mutex::new(Received {
            keep,
            ..Received::default()
        }));
        let grpc = std::net::TcpListener::bind(("127.0.0.1", grpc_port)).unwrap();
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let grpc_addr: SocketAddr = grpc.local_addr().unwrap();
        let http_addr: SocketAddr = http.local_addr().unwrap();
        grpc.set_nonblocking(true).unwrap();
        http.set_nonblocking(true).unwrap();
        let grpc_tls = tls.map(|t| Arc::new(acceptor(t, b"\x02h2", true)));
        let http_tls = tls.map(|t| Arc::new(acceptor(t, b"\x08http/1.1", false)));
        let s = store.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Dropping the runtime as the thread ends closes every
            // listener and connection its tasks hold.
            let serve = async move {
                let grpc = tokio::net::TcpListener::from_std(grpc).unwrap();
                let http = tokio::net::TcpListener::from_std(http).unwrap();
                let hs = s.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = http.accept().await else {
                            continue;
                        };
                        let (hs, tls) = (hs.clone(), http_tls.clone());
                        tokio::spawn(async move {
                            match tls {
                                None => serve_http(TokioIo::new(stream), hs, None).await,
                                Some(tls) => match handshake(stream, &tls).await {
                                    Ok((io, peer)) => serve_http(io, hs, Some(peer)).await,
                                    Err(()) => hs.lock().unwrap().tls_refused += 1,
                                },
                            }
                        });
                    }
                });
                let grpc_service = GrpcService {
                    traces: TraceServiceServer::new(Service { store: s.clone() })
                        .accept_compressed(CompressionEncoding::Gzip),
                    metrics: MetricsServiceServer::new(Service { store: s.clone() })
                        .accept_compressed(CompressionEncoding::Gzip),
                    store: s.clone(),
                };
                loop {
                    let Ok((stream, _)) = grpc.accept().await else {
                        continue;
                    };
                    let (svc, tls) = (grpc_service.clone(), grpc_tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            None => svc.serve(TokioIo::new(stream), None).await,
                            Some(tls) => match handshake(stream, &tls).await {
                                Ok((io, peer)) => svc.serve(io, Some(peer)).await,
                                Err(()) => svc.store.lock().unwrap().tls_refused += 1,
                            },
                        }
                    });
                }
            };
            rt.block_on(async move {
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        Collector {
            grpc_endpoint: format!("{scheme}://{grpc_addr}"),
            http_endpoint: format!("{scheme}://{http_addr}"),
            store,
            runtime: Some(runtime),
            stop: Some(stop),
        }
    }

    /// How each export request came, in order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.store.lock().unwrap().arrivals.clone()
    }

    /// Connections refused in the TLS handshake.
    pub fn tls_refused(&self) -> u64 {
        self.store.lock().unwrap().tls_refused
    }

    /// Takes the collector down, as a crash would: its ports stop
    /// listening and its connections close.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            let _ = runtime.join();
        }
    }

    /// Spans received so far, in any mode.
    pub fn span_count(&self) -> u64 {
        self.store.lock().unwrap().span_count
    }

    pub fn spans(&self) -> Vec<FlatSpan> {
        self.store
            .lock()
            .unwrap()
            .requests
            .iter()
            .flat_map(|(t, r)| flatten(t, r))
            .collect()
    }

    /// Metric exports received, over any transport.
    pub fn metric_exports(&self) -> u64 {
        self.store.lock().unwrap().metric_exports
    }

    /// The points of metric `name` in the newest export over `transport`
    /// (`grpc` or `http`).
    pub fn metric(&self, transport: &str, name: &str) -> Vec<MetricPoint> {
        let store = self.store.lock().unwrap();
        store
            .metrics
            .iter()
            .filter(|(t, _)| *t == transport)
            .flat_map(|(_, req)| metric_points(req, name))
            .collect()
    }

    /// Waits until the newest export over `transport` has points of metric
    /// `name` that satisfy `done`, or `timeout`; returns the last points.
    pub fn wait_for_metric(
        &self,
        transport: &str,
        name: &str,
        timeout: Duration,
        done: impl Fn(&[MetricPoint]) -> bool,
    ) -> Vec<MetricPoint> {
        let deadline = Instant::now() + timeout;
        loop {
            let points = self.metric(transport, name);
            if done(&points) || Instant::now() > deadline {
                return points;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until at least `n` spans matching `pred` arrived, or `timeout`.
    pub fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&FlatSpan) -> bool,
    ) -> Vec<FlatSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let got: Vec<FlatSpan> = self.spans().into_iter().filter(&pred).collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
