//! OTLP over HTTP with protobuf bodies (`http/protobuf`).

use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_openssl::client::legacy::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use super::{
    encode,
    transport::{self, Transport},
    ExportError,
};
use crate::spans::Span;

#[derive(Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: hyper::Uri,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    gzip: bool,
    closed_hint: Option<&'static str>,
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` is a base URL: traces go to `/v1/traces`
/// under it, metrics to `/v1/metrics` (`signal` is `traces` or
/// `metrics`). A base URL given with one signal's path already on it (as
/// `--otlp-endpoint http://c:4318/v1/traces` was accepted) still names the
/// collector: the other signal goes to its own path there.
pub fn signal_url(endpoint: &str, signal: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    let base = ["/v1/traces", "/v1/metrics"]
        .iter()
        .find_map(|p| base.strip_suffix(p))
        .unwrap_or(base);
    format!("{base}/v1/{signal}")
}

impl Http {
    /// `endpoint` is the full URL of one signal (see [`traces_url`]).
    pub fn new(endpoint: &str, transport: &Transport) -> anyhow::Result<Self> {
        let uri: hyper::Uri = endpoint
            .parse()
            .with_context(|| format!("invalid OTLP HTTP endpoint {endpoint:?}"))?;
        anyhow::ensure!(
            matches!(uri.scheme_str(), Some("http" | "https")),
            "OTLP HTTP endpoint {endpoint:?}: needs http:// or https://"
        );
        let connector = transport.connector(endpoint, transport::ALPN_HTTP1)?;
        let headers = transport
            .headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.parse()
                        .with_context(|| format!("invalid OTLP header name {k:?}"))?,
                    v.parse()
                        .with_context(|| format!("invalid value for OTLP header {k:?}"))?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
            uri,
            headers,
            gzip: transport.gzip,
            closed_hint: transport.closed_hint(endpoint),
        })
    }

    pub async fn export(&mut self, batch: &[Span]) -> Result<(), ExportError> {
        let mut body = Vec::new();
        encode::trace_request(batch, &mut body);
        self.post(body).await
    }

    /// Posts one encoded export request.
    pub async fn post(&mut self, body: Vec<u8>) -> Result<(), ExportError> {
        let mut req =
            hyper::Request::post(self.uri.clone()).header("content-type", "application/x-protobuf");
        let body = if self.gzip {
            req = req.header("content-encoding", "gzip");
            gzip(&body)
        } else {
            body
        };
        let mut req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ExportError::Fatal(e.to_string()))?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| ExportError::Retryable("timed out".into()))?
            .map_err(|e| {
                let msg = transport::describe(e.to_string(), std::error::Error::source(&e));
                ExportError::Retryable(transport::with_hint(msg, self.closed_hint))
            })?;
        let status = resp.status();
        // Drain the body so the connection can be reused.
        let _ = resp.into_body().collect().await;
        match status.as_u16() {
            200..=299 => Ok(()),
            429 | 502 | 503 | 504 => Err(ExportError::Retryable(format!("HTTP {status}"))),
            _ => Err(ExportError::Fatal(format!("HTTP {status}"))),
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        // Spans compress well at the fast level; the best one costs the
        // agent several times the CPU for a few percent.
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    encoder.write_all(body).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

#[cfg(test)]
mod tests {
    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let body = b"spans spans spans spans".repeat(100);
        let packed = super::gzip(&body);
        assert!(packed.len() < body.len() / 4);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn signal_urls_append_the_signal_path_once() {
        assert_eq!(
            super::signal_url("http://c:4318", "traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            super::signal_url("http://c:4318/", "traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            super::signal_url("http://c/v1/traces", "traces"),
            "http://c/v1/traces"
        );
        assert_eq!(
            super::signal_url("http://c:4318/", "metrics"),
            "http://c:4318/v1/metrics"
        );
        assert_eq!(
            super::signal_url("http://c:4318/v1/traces", "metrics"),
            "http://c:4318/v1/metrics"
        );
    }
}
