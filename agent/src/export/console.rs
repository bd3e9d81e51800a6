//! With no exporter configured: each trace as a readable tree on stdout.

use std::{collections::HashMap, fmt::Write as _, io::Write as _};

use super::ExportError;
use crate::spans::{ids::hex, Span, SpanKind, Status, Value};

pub struct Console;

fn kind(k: SpanKind) -> &'static str {
    match k {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    }
}

fn line(out: &mut String, s: &Span, prefix: &str, last: bool) {
    let branch = if last { "└─" } else { "├─" };
    let service = match s.resource.get("service.name") {
        Some(Value::Str(n)) => n.as_str(),
        _ => "?",
    };
    let ms = s.end_unix_ns.saturating_sub(s.start_unix_ns) as f64 / 1e6;
    let status = match s.attr("http.response.status_code") {
        Some(Value::Int(c)) => c.to_string(),
        _ => "-".into(),
    };
    let err = if matches!(s.status, Status::Error(_)) {
        " ERROR"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "{prefix}{branch} {} {} {status} {ms:.3}ms{err}  [{service} pid={}]",
        kind(s.kind),
        s.name,
        s.resource.pid
    );
    let pad = if last { "   " } else { "│  " };
    let attrs: Vec<String> = s
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(out, "{prefix}{pad}   {}", attrs.join(" "));
}

/// Renders a batch as one tree per trace.
pub fn render(batch: &[Span]) -> String {
    let mut out = String::new();
    let mut traces: Vec<[u8; 16]> = Vec::new();
    for s in batch {
        if !traces.contains(&s.trace_id) {
            traces.push(s.trace_id);
        }
    }
    for trace in traces {
        let spans: Vec<&Span> = batch.iter().filter(|s| s.trace_id == trace).collect();
        let mut children: HashMap<[u8; 8], Vec<&Span>> = HashMap::new();
        let mut roots = Vec::new();
        for s in &spans {
            if spans.iter().any(|p| p.span_id == s.parent_span_id) {
                children.entry(s.parent_span_id).or_default().push(s);
            } else {
                roots.push(*s);
            }
        }
        let _ = writeln!(out, "trace {}", hex(&trace));
        let mut stack: Vec<(&Span, String, bool)> = Vec::new();
        for (i, r) in roots.iter().enumerate().rev() {
            stack.push((r, String::new(), i == roots.len() - 1));
        }
        while let Some((s, prefix, last)) = stack.pop() {
            line(&mut out, s, &prefix, last);
            let next = format!("{prefix}{}", if last { "   " } else { "│  " });
            if let Some(kids) = children.get(&s.span_id) {
                for (i, k) in kids.iter().enumerate().rev() {
                    stack.push((k, next.clone(), i == kids.len() - 1));
                }
            }
        }
    }
    out
}

impl Console {
    pub fn export(&mut self, batch: &[Span]) -> Result<(), ExportError> {
        let text = render(batch);
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush())
            .map_err(|e| ExportError::Fatal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: u8, parent: u8, name: &str) -> Span {
        crate::spans::test_span(id, parent, name)
    }

    #[test]
    fn renders_parents_above_children() {
        let text = render(&[span(2, 1, "child"), span(1, 0, "root")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("trace {}", "01".repeat(16)));
        assert_eq!(lines[1], "└─ SERVER root 200 1.500ms  [web pid=42]");
        assert_eq!(lines[3], "   └─ SERVER child 200 1.500ms  [web pid=42]");
    }
}
