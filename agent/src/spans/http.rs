//! HTTP exchanges (HTTP/1 and HTTP/2) to spans, following OpenTelemetry's
//! HTTP conventions.

use super::{context::SpanContext, redact, Category, Record, SpanKind, Status, Value};
#[cfg(test)]
use super::{Resource, Span};
use crate::exchange::{Endpoints, Outcome, Role, Task};
use zerospan_protocols::http1::Head;
use zerospan_protocols::stream::Stamp;

#[cfg(test)]
use {crate::clock::Clock, std::sync::Arc};

/// One request with its response, as framed on one connection.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// Given when the request head was framed (see `linker`).
    pub ctx: SpanContext,
    pub request: Head,
    pub response: Option<Head>,
    /// Segment holding the request's first byte.
    pub request_at: Stamp,
    /// Body size; `None` when sync was lost inside it.
    pub request_body: Option<u64>,
    /// Segment holding the response's last byte (or the last activity seen).
    pub end_at: Stamp,
    pub response_body: Option<u64>,
    pub outcome: Outcome,
    /// Who framed the request: its thread (in Go, with its goroutine).
    pub task: Task,
    /// `network.protocol.version`: "1.0", "1.1" or "2".
    pub version: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Replace query-string values with `REDACTED`.
    pub redact_query: bool,
    /// Route patterns: a server request that matches one gets `http.route`.
    pub routes: std::sync::Arc<super::route::Routes>,
}

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Splits a `Host` header into host and port, handling `[v6]:port`.
pub(super) fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, tail)) = rest.split_once(']') {
            return (h, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}

fn host_for_url(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => ip_text(v4),
    }
}

/// An address as attribute text. IPv4, nearly every span's (up to three
/// times in a server span), is written digit by digit: the formatter's
/// machinery (`u8`'s `Display`, `fmt::write`, `pad_integral`) was about
/// 4 % of the agent's samples under load (perf, nginx under wrk). IPv6
/// goes through `Display`, which also shortens it as RFC 5952 asks.
pub(super) fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        v6 => v6.to_string(),
    }
}

/// Splits an origin-form target into path and query.
fn split_target(target: &str) -> (&str, Option<&str>) {
    let no_fragment = target.split('#').next().unwrap_or(target);
    match no_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (no_fragment, None),
    }
}

/// The status (and attributes) of an exchange that did not end with a
/// response we could read; shared by every protocol's spans.
fn scheme(ends: Endpoints) -> &'static str {
    if ends.tls {
        "https"
    } else {
        "http"
    }
}

/// `network.peer.*`: the other end of the connection, every protocol's.
pub(super) fn peer_attributes(attrs: &mut Vec<(&'static str, Value)>, ends: Endpoints) {
    if let Some(peer) = ends.peer {
        attrs.push(("network.peer.address", ip_text(peer.ip()).into()));
        attrs.push(("network.peer.port", i64::from(peer.port()).into()));
    }
}

/// `tls.protocol.*` of a TLS connection whose version the agent read.
pub(super) fn tls_attributes(attrs: &mut Vec<(&'static str, Value)>, ends: Endpoints) {
    if let (true, Some(v)) = (ends.tls, ends.tls_version) {
        attrs.push(("tls.protocol.name", "tls".into()));
        attrs.push(("tls.protocol.version", v.into()));
    }
}

/// Adds `why` to the span's `zerospan.incomplete` (comma-separated when a
/// span is incomplete in more than one way: one key, never two).
pub fn mark_incomplete(attrs: &mut Vec<(&'static str, Value)>, why: &str) {
    match attrs.iter_mut().find(|(k, _)| *k == "zerospan.incomplete") {
        Some((_, Value::Str(v))) => {
            v.push(',');
            v.push_str(why);
        }
        _ => attrs.push(("zerospan.incomplete", why.into())),
    }
}

pub fn outcome_status(outcome: Outcome, attrs: &mut Vec<(&'static str, Value)>) -> Status {
    match outcome {
        Outcome::Complete => Status::Unset,
        Outcome::TimedOut => {
            attrs.push(("error.type", "timeout".into()));
            Status::Error("no response before the request timeout".to_owned())
        }
        // Not known to be an error: only that the agent could not see it.
        Outcome::ResponseLost => {
            mark_incomplete(attrs, "response_unparsed");
            Status::Unset
        }
        Outcome::AgentStopped => {
            mark_incomplete(attrs, "agent_stopped");
            Status::Unset
        }
        Outcome::Closed => {
            attrs.push(("error.type", "connection_closed".into()));
            Status::Error("connection closed before the response completed".to_owned())
        }
    }
}

/// The record of an HTTP exchange, in the HTTP conventions. `tgid`: the
/// traced process. An empty method or target is one the agent could not
/// know (an HTTP/2 field it could not decode): left out, never guessed.
pub fn record(x: &Exchange, role: Role, ends: Endpoints, opts: &Options, tgid: u32) -> Record {
    let req = &x.request;
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(16);
    let method_known = KNOWN_METHODS.contains(&req.method.as_str());
    let mut name = if method_known {
        req.method.clone()
    } else {
        "HTTP".to_owned()
    };
    if method_known {
        attrs.push(("http.request.method", req.method.as_str().into()));
    } else if !req.method.is_empty() {
        attrs.push(("http.request.method", "_OTHER".into()));
        attrs.push(("http.request.method_original", req.method.as_str().into()));
    }
    let query = |q: &str| {
        if opts.redact_query {
            redact::query(q)
        } else {
            q.to_owned()
        }
    };
    let host_header = req.host.as_deref().map(split_host);
    let status = x.response.as_ref().map(|r| r.status);
    let (kind, start_ns) = match role {
        Role::Server => {
            let (path, q) = split_target(&req.target);
            if !path.is_empty() {
                attrs.push(("url.path", path.into()));
            }
            if let Some(route) = opts.routes.matching(path).filter(|_| !path.is_empty()) {
                attrs.push(("http.route", route.into()));
                name = format!("{name} {route}");
            }
            if let Some(q) = q {
                attrs.push(("url.query", query(q).into()));
            }
            attrs.push(("url.scheme", scheme(ends).into()));
            let local = ends.local;
            let default_port = if ends.tls { 443 } else { 80 };
            let server = host_header
                .map(|(h, p)| (h.to_owned(), p.unwrap_or(default_port)))
                .or_else(|| {
                    local
                        .filter(|a| !a.ip().is_unspecified())
                        .map(|a| (ip_text(a.ip()), a.port()))
                });
            if let Some((h, p)) = server {
                attrs.push(("server.address", h.into()));
                attrs.push(("server.port", i64::from(p).into()));
            }
            if let Some(peer) = ends.peer {
                attrs.push(("client.address", ip_text(peer.ip()).into()));
                attrs.push(("client.port", i64::from(peer.port()).into()));
            }
            peer_attributes(&mut attrs, ends);
            if let Some(local) = local {
                if !local.ip().is_unspecified() {
                    attrs.push(("network.local.address", ip_text(local.ip()).into()));
                }
                attrs.push(("network.local.port", i64::from(local.port()).into()));
            }
            // The request has arrived once its first read returns.
            (SpanKind::Server, x.request_at.exit_ns)
        }
        Role::Client => {
            let url = if req.target.starts_with('/') {
                let authority = match (req.host.as_deref(), ends.peer) {
                    (Some(h), _) => h.to_owned(),
                    (None, Some(p)) => format!("{}:{}", host_for_url(p.ip()), p.port()),
                    (None, None) => String::new(),
                };
                let (path, q) = split_target(&req.target);
                let scheme = scheme(ends);
                match q {
                    Some(q) => format!("{scheme}://{authority}{path}?{}", query(q)),
                    None => format!("{scheme}://{authority}{path}"),
                }
            } else {
                // absolute-form (proxies): redact its query the same way.
                match req.target.split_once('?') {
                    Some((base, q)) => format!("{base}?{}", query(q)),
                    None => req.target.clone(),
                }
            };
            if !req.target.is_empty() {
                attrs.push(("url.full", url.into()));
            }
            let server = host_header
                .map(|(h, p)| {
                    (
                        h.to_owned(),
                        p.or(ends.peer.map(|a| a.port())).unwrap_or(80),
                    )
                })
                .or_else(|| ends.peer.map(|a| (ip_text(a.ip()), a.port())));
            if let Some((h, p)) = server {
                attrs.push(("server.address", h.into()));
                attrs.push(("server.port", i64::from(p).into()));
            }
            peer_attributes(&mut attrs, ends);
            // A client call starts when the request write is issued.
            (SpanKind::Client, x.request_at.enter_ns)
        }
    };
    tls_attributes(&mut attrs, ends);
    attrs.push(("network.protocol.name", "http".into()));
    // The thread that read the request (server) or wrote it (client).
    attrs.push(("thread.id", i64::from(x.task.tid).into()));
    attrs.push(("network.protocol.version", x.version.into()));
    if let Some(ua) = &req.user_agent {
        if role == Role::Server {
            attrs.push(("user_agent.original", ua.as_str().into()));
        }
    }
    if let Some(size) = x.request_body {
        attrs.push(("http.request.body.size", (size as i64).into()));
    }
    if req.partial {
        // Only its request line could be read: its headers are unknown.
        mark_incomplete(&mut attrs, "request_head_unparsed");
    }
    if let Some(code) = status {
        attrs.push(("http.response.status_code", i64::from(code).into()));
        if let Some(size) = x.response_body {
            attrs.push(("http.response.body.size", (size as i64).into()));
        }
    }
    let error_floor = if role == Role::Server { 500 } else { 400 };
    let status = match (x.outcome, status) {
        (Outcome::Complete, Some(code)) if code >= error_floor => {
            attrs.push(("error.type", code.to_string().into()));
            Status::Error(String::new())
        }
        (outcome, _) => outcome_status(outcome, &mut attrs),
    };
    Record {
        tgid,
        task: x.task,
        kind,
        category: Category::Http,
        ctx: x.ctx.clone(),
        name,
        start_ns,
        end_ns: x.end_at.exit_ns.max(start_ns),
        attributes: attrs,
        status,
    }
}

/// The span of an exchange, for tests that check attributes end to end.
#[cfg(test)]
pub fn build_span(
    x: &Exchange,
    role: Role,
    ends: Endpoints,
    clock: &Clock,
    opts: &Options,
    resource: Arc<Resource>,
) -> Span {
    Span::from_record(record(x, role, ends, opts, 0), clock, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.9.255",
            "192.168.100.7",
            "255.255.255.255",
            "::1",
            "fe80::1:2",
            "2001:db8::ff00:42:8329",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for n in [0u32, 1, 9, 10, 99, 100, 199, 200, 255, 256, 65535, u32::MAX] {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(n.wrapping_mul(2654435761)));
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    fn resource() -> Arc<Resource> {
        Arc::new(Resource {
            pid: 1,
            attributes: vec![],
        })
    }

    fn exchange(method: &str, target: &str, host: Option<&str>, status: u16) -> Exchange {
        Exchange {
            ctx: SpanContext::root(),
            request: Head {
                method: method.into(),
                target: target.into(),
                minor_version: 1,
                host: host.map(Into::into),
                user_agent: Some("curl/8".into()),
                ..Default::default()
            },
            response: Some(Head {
                status,
                minor_version: 1,
                ..Default::default()
            }),
            request_at: Stamp {
                enter_ns: 100,
                exit_ns: 150,
            },
            request_body: Some(0),
            end_at: Stamp {
                enter_ns: 900,
                exit_ns: 1000,
            },
            response_body: Some(42),
            outcome: Outcome::Complete,
            task: Task::thread(1),
            version: "1.1",
        }
    }

    fn ends() -> Endpoints {
        Endpoints {
            peer: Some("127.0.0.1:40000".parse().unwrap()),
            local: Some("0.0.0.0:8000".parse().unwrap()),
            tls: false,
            tls_version: None,
        }
    }

    #[test]
    fn server_span_attributes() {
        let x = exchange("GET", "/a/b?token=s3cret&x", Some("localhost:8000"), 503);
        let opts = Options {
            redact_query: true,
            ..Options::default()
        };
        let s = build_span(
            &x,
            Role::Server,
            ends(),
            &Clock::identity(),
            &opts,
            resource(),
        );
        assert_eq!(s.name, "GET");
        assert_eq!(s.attr("http.route"), None, "no pattern, no route");
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.attr("url.path"), Some(&"/a/b".into()));
        assert_eq!(s.attr("url.query"), Some(&"token=REDACTED&x".into()));
        assert_eq!(s.attr("server.address"), Some(&"localhost".into()));
        assert_eq!(s.attr("server.port"), Some(&8000.into()));
        assert_eq!(s.attr("client.port"), Some(&40000.into()));
        assert_eq!(s.attr("network.local.address"), None);
        assert_eq!(s.attr("http.response.status_code"), Some(&503.into()));
        assert_eq!(s.attr("error.type"), Some(&"503".into()));
        assert_eq!(s.attr("user_agent.original"), Some(&"curl/8".into()));
        assert!(matches!(s.status, Status::Error(_)));
        assert_eq!((s.start_unix_ns, s.end_unix_ns), (150, 1000));
    }

    /// A request of which only the request line could be read is marked
    /// so, in the one `zerospan.incomplete` attribute, with any other reason.
    #[test]
    fn partial_requests_are_marked_incomplete_once() {
        let mut x = exchange("GET", "/big", None, 400);
        x.request.partial = true;
        x.request_body = None;
        let s = build_span(
            &x,
            Role::Server,
            ends(),
            &Clock::identity(),
            &Options::default(),
            resource(),
        );
        assert_eq!(
            s.attr("zerospan.incomplete"),
            Some(&"request_head_unparsed".into())
        );
        assert_eq!(s.attr("http.response.status_code"), Some(&400.into()));
        assert_eq!(s.attr("http.request.body.size"), None);
        x.response = None;
        x.outcome = Outcome::ResponseLost;
        let s = build_span(
            &x,
            Role::Server,
            ends(),
            &Clock::identity(),
            &Options::default(),
            resource(),
        );
        let marks: Vec<_> = s
            .attributes
            .iter()
            .filter(|(k, _)| *k == "zerospan.incomplete")
            .collect();
        assert_eq!(marks.len(), 1);
        assert_eq!(marks[0].1, "request_head_unparsed,response_unparsed".into());
    }

    #[test]
    fn client_span_builds_a_redacted_url() {
        let x = exchange("POST", "/api?key=abc", None, 404);
        let opts = Options {
            redact_query: true,
            ..Options::default()
        };
        let e = Endpoints {
            peer: Some("[::1]:8080".parse().unwrap()),
            local: None,
            tls: false,
            tls_version: None,
        };
        let s = build_span(&x, Role::Client, e, &Clock::identity(), &opts, resource());
        // The same call over TLS.
        let tls = Endpoints {
            tls: true,
            tls_version: Some("1.3"),
            ..e
        };
        let s2 = build_span(&x, Role::Client, tls, &Clock::identity(), &opts, resource());
        assert_eq!(s2.attr("tls.protocol.version"), Some(&"1.3".into()));
        assert_eq!(s.attr("tls.protocol.version"), None);
        assert_eq!(
            s2.attr("url.full"),
            Some(&"https://[::1]:8080/api?key=REDACTED".into())
        );
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(
            s.attr("url.full"),
            Some(&"http://[::1]:8080/api?key=REDACTED".into())
        );
        assert_eq!(s.attr("server.address"), Some(&"::1".into()));
        assert_eq!(s.attr("server.port"), Some(&8080.into()));
        assert_eq!(s.attr("error.type"), Some(&"404".into()));
        assert_eq!(s.attr("user_agent.original"), None);
        assert_eq!((s.start_unix_ns, s.end_unix_ns), (100, 1000));
    }

    #[test]
    fn unknown_methods_and_timeouts() {
        let mut x = exchange("PURGE", "/", Some("h"), 200);
        x.response = None;
        x.outcome = Outcome::TimedOut;
        let opts = Options::default();
        let s = build_span(
            &x,
            Role::Server,
            ends(),
            &Clock::identity(),
            &opts,
            resource(),
        );
        assert_eq!(s.name, "HTTP");
        assert_eq!(s.attr("http.request.method"), Some(&"_OTHER".into()));
        assert_eq!(
            s.attr("http.request.method_original"),
            Some(&"PURGE".into())
        );
        assert_eq!(s.attr("error.type"), Some(&"timeout".into()));
        assert_eq!(s.attr("server.port"), Some(&80.into()));
    }

    #[test]
    fn a_matching_route_pattern_names_the_span() {
        let x = exchange("GET", "/users/42?x=1", Some("h"), 200);
        let opts = Options {
            redact_query: true,
            routes: std::sync::Arc::new(
                crate::spans::route::Routes::parse(&["/users/{id}".into()]).unwrap(),
            ),
        };
        let s = build_span(
            &x,
            Role::Server,
            ends(),
            &Clock::identity(),
            &opts,
            resource(),
        );
        assert_eq!(s.name, "GET /users/{id}");
        assert_eq!(s.attr("http.route"), Some(&"/users/{id}".into()));
        let client = build_span(
            &x,
            Role::Client,
            ends(),
            &Clock::identity(),
            &opts,
            resource(),
        );
        assert_eq!(client.name, "GET", "http.route is a server attribute");
    }

    #[test]
    fn host_header_forms() {
        assert_eq!(split_host("a:1"), ("a", Some(1)));
        assert_eq!(split_host("a"), ("a", None));
        assert_eq!(split_host("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_host("[::1]"), ("::1", None));
        assert_eq!(split_host("a:b"), ("a:b", None));
    }
}
