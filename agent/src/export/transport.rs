//! How an OTLP exporter reaches its collector, beyond the URL: headers,
//! TLS (the system's roots or a private CA, and a client certificate for
//! mTLS) and gzip, as the OpenTelemetry exporter variables set them.
//!
//! TLS is OpenSSL's, which the agent links already for the Kubernetes API:
//! one TLS stack in the binary. The URL's scheme decides: `https://` is
//! verified TLS, `http://` is plaintext, and TLS files given with an
//! `http://` URL are reported, never silently ignored.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use hyper_openssl::client::legacy::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use openssl::{
    ssl::{SslConnector, SslFiletype, SslMethod},
    x509::{store::X509StoreBuilder, verify::X509VerifyFlags, X509},
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transport {
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// PEM file of the CAs that verify the collector, instead of the
    /// system's (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain) and its key, for mTLS
    /// (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `_CLIENT_KEY`).
    pub client: Option<(PathBuf, PathBuf)>,
    /// gzip request bodies (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`).
    pub gzip: bool,
}

/// ALPN protocols, in OpenSSL's wire format.
pub const ALPN_H2: &[u8] = b"\x02h2";
pub const ALPN_HTTP1: &[u8] = b"\x08http/1.1";

impl Transport {
    /// A connector for `endpoint` that offers `alpn`: verified TLS for an
    /// `https://` endpoint, plain TCP for `http://`. Unreadable or
    /// mismatched certificate files are an error now, at start, not a
    /// failing export later.
    pub fn connector(
        &self,
        endpoint: &str,
        alpn: &[u8],
    ) -> anyhow::Result<HttpsConnector<HttpConnector>> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        if scheme_is(endpoint, "http") && (self.ca.is_some() || self.client.is_some()) {
            log::warn!(
                "OTLP endpoint {endpoint} is http://: the TLS settings \
                 (OTEL_EXPORTER_OTLP_CERTIFICATE, _CLIENT_CERTIFICATE, _CLIENT_KEY) are \
                 not used and spans are sent in the clear; use https:// for TLS"
            );
        }
        let mut ssl = SslConnector::builder(SslMethod::tls_client())?;
        ssl.set_alpn_protos(alpn)?;
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("OTLP CA certificate {}", ca.display()))?;
            let certs = X509::stack_from_pem(&pem)
                .with_context(|| format!("OTLP CA certificate {}: not PEM", ca.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "OTLP CA certificate {}: no certificate in it",
                ca.display()
            );
            let mut store = X509StoreBuilder::new()?;
            for cert in certs {
                store.add_cert(cert)?;
            }
            // An intermediate given as the CA is trusted as an anchor, as
            // the Go and Java SDKs trust it.
            store.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
            // Only these CAs: a private CA replaces the system's roots, as
            // the OpenTelemetry SDKs do.
            ssl.set_cert_store(store.build());
        }
        if let Some((cert, key)) = &self.client {
            ssl.set_certificate_chain_file(cert)
                .with_context(|| format!("OTLP client certificate {}", cert.display()))?;
            ssl.set_private_key_file(key, SslFiletype::PEM)
                .with_context(|| format!("OTLP client key {}", key.display()))?;
            ssl.check_private_key().with_context(|| {
                format!(
                    "OTLP client key {} does not match certificate {}",
                    key.display(),
                    cert.display()
                )
            })?;
        }
        Ok(HttpsConnector::with_connector(http, ssl)?)
    }
}

/// `head`, then each error in `source`'s chain that adds to it: a failed
/// handshake's reason (an unknown CA, a rejected certificate) is several
/// sources down from "transport error".
pub fn describe(head: String, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut text = head;
    let mut source = source;
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

impl Transport {
    /// What to add to an export failure on `endpoint` that says only that
    /// the connection ended. Under TLS 1.3 a collector refuses a missing
    /// client certificate after the handshake, with an alert the HTTP/2
    /// client often reports as no more than a closed or reset connection.
    pub fn closed_hint(&self, endpoint: &str) -> Option<&'static str> {
        (scheme_is(endpoint, "https") && self.client.is_none()).then_some(
            "the collector closed the TLS connection; if it requires a client certificate, \
             set OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY",
        )
    }
}

/// Whether `endpoint`'s scheme is `scheme` (schemes are case-insensitive).
fn scheme_is(endpoint: &str, scheme: &str) -> bool {
    endpoint
        .split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case(scheme))
}

/// `msg`, with `hint` if the failure is a connection the collector
/// ended, or refused for want of a certificate. Which of these the HTTP/2
/// client reports depends on when the alert arrives.
pub fn with_hint(msg: String, hint: Option<&str>) -> String {
    const ENDED: [&str; 5] = [
        "connection closed",
        "Connection reset by peer",
        "Broken pipe",
        "unexpected EOF",
        "alert certificate required",
    ];
    match hint {
        Some(hint) if ENDED.iter().any(|e| msg.contains(e)) => format!("{msg} ({hint})"),
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_certificate_files_fail_at_start() {
        let t = Transport {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Transport::default()
        };
        let Err(e) = t.connector("https://c:4317", ALPN_H2) else {
            panic!("accepted")
        };
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"), "{e:#}");
        let t = Transport {
            client: Some(("/nonexistent/c.pem".into(), "/nonexistent/k.pem".into())),
            ..Transport::default()
        };
        let Err(e) = t.connector("https://c:4317", ALPN_H2) else {
            panic!("accepted")
        };
        assert!(format!("{e:#}").contains("/nonexistent/c.pem"), "{e:#}");
    }

    #[test]
    fn a_refused_client_gets_the_hint_only_without_a_certificate() {
        let bare = Transport::default();
        let hint = bare.closed_hint("https://c:4317");
        let msg = with_hint("transport error: connection closed".into(), hint);
        assert!(
            msg.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
            "{msg}"
        );
        assert_eq!(bare.closed_hint("http://c:4317"), None);
        let with_cert = Transport {
            client: Some(("c.pem".into(), "k.pem".into())),
            ..Transport::default()
        };
        assert_eq!(with_cert.closed_hint("https://c:4317"), None);
        let msg = with_hint("connection refused".into(), hint);
        assert_eq!(msg, "connection refused");
    }

    #[test]
    fn the_system_roots_serve_by_default() {
        Transport::default()
            .connector("https://c:4317", ALPN_H2)
            .unwrap();
    }
}
