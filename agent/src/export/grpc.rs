//! OTLP over gRPC, with tonic's generated client.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest},
    trace::v1::trace_service_client::TraceServiceClient,
};
use tonic::{metadata::MetadataMap, transport::Channel, Code, Status};

use super::{otlp, ExportError};
use crate::spans::Span;

#[derive(Clone)]
pub struct Grpc {
    channel: Channel,
    metadata: MetadataMap,
}

impl Grpc {
    /// Connects lazily: a collector that is down at start-up is retried, not fatal.
    pub fn new(endpoint: &str, headers: &[(String, String)]) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(endpoint.to_owned())
            .with_context(|| format!("invalid OTLP gRPC endpoint {endpoint:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        let mut metadata = MetadataMap::new();
        for (k, v) in headers {
            let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .with_context(|| format!("invalid OTLP header name {k:?}"))?;
            let value = v
                .parse()
                .with_context(|| format!("invalid value for OTLP header {k:?}"))?;
            metadata.insert(key, value);
        }
        Ok(Grpc { channel, metadata })
    }

    pub async fn export(&mut self, batch: &[Span]) -> Result<(), ExportError> {
        let mut req = tonic::Request::new(otlp::request(batch));
        *req.metadata_mut() = self.metadata.clone();
        let mut client = TraceServiceClient::new(self.channel.clone());
        client.export(req).await.map(drop).map_err(classify)
    }

    pub async fn export_metrics(
        &mut self,
        request: ExportMetricsServiceRequest,
    ) -> Result<(), ExportError> {
        let mut req = tonic::Request::new(request);
        *req.metadata_mut() = self.metadata.clone();
        let mut client = MetricsServiceClient::new(self.channel.clone());
        client.export(req).await.map(drop).map_err(classify)
    }
}

/// OTLP/gRPC: these codes mean "try again later".
fn classify(status: Status) -> ExportError {
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
    let msg = format!("{}: {}", status.code(), status.message());
    if retry {
        ExportError::Retryable(msg)
    } else {
        ExportError::Fatal(msg)
    }
}
