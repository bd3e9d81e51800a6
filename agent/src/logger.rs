//! The stderr logger for the `log` facade (aya logs through it too): text
//! for people (`zerospan INFO  message`), or one JSON object per line for
//! log pipelines (`--log-format json`).

use log::{LevelFilter, Metadata, Record};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

struct Stderr {
    level: LevelFilter,
    format: Format,
}

/// One record as a JSON line: time (Unix seconds), level, the emitting
/// module, and the message.
fn json_line(unix_s: f64, r: &Record<'_>) -> String {
    serde_json::json!({
        "ts": (unix_s * 1000.0).round() / 1000.0,
        "level": r.level().as_str(),
        "target": r.target(),
        "message": r.args().to_string(),
    })
    .to_string()
}

impl log::Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // Trace is for the agent's own modules (each connection's
        // segments): the libraries' trace of the agent's own OTLP and
        // Kubernetes traffic would drown it.
        let level = if m.target().starts_with("zerospan") {
            self.level
        } else {
            self.level.min(LevelFilter::Debug)
        };
        m.level() <= level
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        match self.format {
            Format::Text => eprintln!("zerospan {:<5} {}", r.level(), r.args()),
            Format::Json => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                eprintln!("{}", json_line(now, r));
            }
        }
    }

    fn flush(&self) {}
}

/// `level` is the configured one; each `-v` raises it a step.
pub fn init(level: LevelFilter, verbose: u8, format: Format) {
    let raised = match verbose {
        0 => level,
        1 => level.max(LevelFilter::Debug),
        _ => LevelFilter::Trace,
    };
    if log::set_boxed_logger(Box::new(Stderr {
        level: raised,
        format,
    }))
    .is_ok()
    {
        log::set_max_level(raised);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_escape_and_name_the_fields() {
        let record = Record::builder()
            .args(format_args!("tracing \"curl\" (pid 7)"))
            .level(log::Level::Info)
            .target("zerospan::agent")
            .build();
        let line = json_line(1_795_000_000.123_45, &record);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "zerospan::agent");
        assert_eq!(v["message"], "tracing \"curl\" (pid 7)");
        assert_eq!(v["ts"], 1_795_000_000.123);
        assert!(!line.contains('\n'));
    }

    #[test]
    fn trace_is_the_agents_own() {
        let logger = Stderr {
            level: LevelFilter::Trace,
            format: Format::Text,
        };
        let at = |level, target| {
            let m = Metadata::builder().level(level).target(target).build();
            log::Log::enabled(&logger, &m)
        };
        assert!(at(log::Level::Trace, "zerospan::conn::tracker"));
        assert!(!at(log::Level::Trace, "h2::codec"));
        assert!(at(log::Level::Debug, "aya::bpf"));
    }
}
