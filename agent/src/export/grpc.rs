//! OTLP over gRPC, with tonic's generated client.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest},
    trace::v1::ExportTraceServiceResponse,
};
use prost::{bytes::BufMut as _, Message as _};
use tonic::{
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::MetadataMap,
    transport::Channel,
    Code, Status,
};

use super::{
    encode,
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

    /// Sends `batch` as one `TraceService/Export` call, encoded by
    /// [`encode`] rather than built as messages for tonic's generated
    /// client to encode.
    pub async fn export(&mut self, batch: &[Span]) -> Result<(), ExportError> {
        let mut body = Vec::new();
        encode::trace_request(batch, &mut body);
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        let sent = match grpc.ready().await {
            Ok(()) => {
                let path = PathAndQuery::from_static(TRACE_EXPORT);
                grpc.unary(self.request(body), path, Encoded).await
            }
            Err(e) => Err(Status::unknown(format!("the channel was not ready: {e}"))),
        };
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

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// tonic's codec for a request already encoded: its bytes go out as they
/// are; the reply is decoded as the generated client would.
#[derive(Clone, Copy)]
struct Encoded;

impl Codec for Encoded {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Encoded {
        Encoded
    }

    fn decoder(&mut self) -> Encoded {
        Encoded
    }
}

impl Encoder for Encoded {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Encoded {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("the collector's reply: {e}")))
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
