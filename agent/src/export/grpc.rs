//! OTLP over gRPC, with tonic's generated client.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest},
    trace::v1::trace_service_client::TraceServiceClient,
};
use tonic::{codec::CompressionEncoding, metadata::MetadataMap, transport::Channel, Code, Status};

use super::{
    otlp,
    transport::{self, Transport},
    ExportError,
};
use crate::spans::Span;

#[derive(Clone)]
pub struct Grpc {
    channel: Channel,
    metadata: MetadataMap,
    gzip: bool,
    closed_hint: Option<&'static str>,
}

impl Grpc {
    /// Connects lazily: a collector that is down at start-up is retried, not fatal.
    pub fn new(endpoint: &str, transport: &Transport) -> anyhow::Result<Self> {
        let scheme = endpoint.split_once("://").map(|(s, _)| s);
        anyhow::ensure!(
            matches!(scheme, Some("http" | "https")),
            "OTLP gRPC endpoint {endpoint:?}: needs http:// or https://"
        );
        // gRPC servers may refuse a TLS client that does not offer h2.
        let connector = transport.connector(endpoint, transport::ALPN_H2)?;
        let channel = Channel::from_shared(endpoint.to_owned())
            .with_context(|| format!("invalid OTLP gRPC endpoint {endpoint:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_with_connector_lazy(connector);
        let mut metadata = MetadataMap::new();
        for (k, v) in &transport.headers {
            let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .with_context(|| format!("invalid OTLP header name {k:?}"))?;
            let value = v
                .parse()
                .with_context(|| format!("invalid value for OTLP header {k:?}"))?;
            metadata.insert(key, value);
        }
        Ok(Grpc {
            channel,
            metadata,
            gzip: transport.gzip,
            closed_hint: transport.closed_hint(endpoint),
        })
    }

    pub async fn export(&mut self, batch: &[Span]) -> Result<(), ExportError> {
        let mut client = TraceServiceClient::new(self.channel.clone());
        if self.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let sent = client.export(self.request(otlp::request(batch))).await;
        self.outcome(sent)
    }

    pub async fn export_metrics(
        &mut self,
        request: ExportMetricsServiceRequest,
    ) -> Result<(), ExportError> {
        let mut client = MetricsServiceClient::new(self.channel.clone());
        if self.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let sent = client.export(self.request(request)).await;
        self.outcome(sent)
    }

    /// `message` with the configured headers.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        *req.metadata_mut() = self.metadata.clone();
        req
    }

    fn outcome<R>(&self, sent: Result<tonic::Response<R>, Status>) -> Result<(), ExportError> {
        sent.map(drop).map_err(|s| classify(s, self.closed_hint))
    }
}

/// OTLP/gRPC: these codes mean "try again later".
fn classify(status: Status, closed_hint: Option<&str>) -> ExportError {
    let retry = matches!(
        status.code(),
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
            | Code::Unknown
    );
    // A connection's failure (a refused connect, a certificate the CA
    // did not sign) is in the status's sources, not only its message.
    let msg = transport::describe(
        format!("{}: {}", status.code(), status.message()),
        std::error::Error::source(&status),
    );
    let msg = transport::with_hint(msg, closed_hint);
    if retry {
        ExportError::Retryable(msg)
    } else {
        ExportError::Fatal(msg)
    }
}
