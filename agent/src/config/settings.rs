//! The layers under the command line: a YAML file (`--config`) and
//! `ZEROSPAN_*` environment variables. Precedence: command line, then
//! environment, then file, then defaults. Every option has one name,
//! used in all three places: `capture_bytes` in the file,
//! `ZEROSPAN_CAPTURE_BYTES` in the environment, `--capture-bytes` on the
//! command line. Unknown keys and bad values stop the agent, naming the key,
//! the value and where it came from.

use std::path::Path;

use anyhow::{bail, Context as _};
use clap::parser::{ArgMatches, ValueSource};

use crate::config::Args;

/// One option: its name, its clap argument id, and how a text value
/// applies to the arguments.
struct Setting {
    key: &'static str,
    arg: &'static str,
    apply: fn(&mut Args, &str) -> Result<(), String>,
}

fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("expected a whole number, got {v:?}"))
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got {v:?}")),
    }
}

/// A list: one item per line (a YAML list), or comma-separated.
fn list(v: &str) -> Vec<String> {
    v.split(['\n', ','])
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A list of regular expressions, which may hold commas: one per line.
fn lines(v: &str) -> Vec<String> {
    v.lines()
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One of a flag's named values (`auto`, `on`, `off`, …), as clap reads it.
fn choice<T: clap::ValueEnum>(v: &str) -> Result<T, String> {
    T::from_str(v.trim(), false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|c| Some(c.to_possible_value()?.get_name().to_owned()))
            .collect();
        format!("expected {}, got {v:?}", names.join(" or "))
    })
}

fn text(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() {
        return Err("expected a value, got nothing".into());
    }
    Ok(v.to_owned())
}

/// Every option the file and the environment may set.
const SETTINGS: &[Setting] = &[
    Setting {
        key: "pids",
        arg: "pids",
        apply: |a, v| {
            a.pids = list(v)
                .iter()
                .map(|p| number(p))
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    },
    Setting {
        key: "exe",
        arg: "exe",
        apply: |a, v| {
            a.exe = list(v);
            Ok(())
        },
    },
    Setting {
        key: "cmdline",
        arg: "cmdline",
        apply: |a, v| {
            a.cmdline = lines(v);
            Ok(())
        },
    },
    Setting {
        key: "port",
        arg: "port",
        apply: |a, v| {
            a.port = list(v);
            Ok(())
        },
    },
    Setting {
        key: "exclude_exe",
        arg: "exclude_exe",
        apply: |a, v| {
            a.exclude_exe = list(v);
            Ok(())
        },
    },
    Setting {
        key: "exclude_cmdline",
        arg: "exclude_cmdline",
        apply: |a, v| {
            a.exclude_cmdline = lines(v);
            Ok(())
        },
    },
    Setting {
        key: "containers_only",
        arg: "containers_only",
        apply: |a, v| {
            a.containers_only = boolean(v)?;
            Ok(())
        },
    },
    Setting {
        key: "k8s_namespace",
        arg: "k8s_namespace",
        apply: |a, v| {
            a.k8s_namespace = list(v);
            Ok(())
        },
    },
    Setting {
        key: "k8s_pod_name",
        arg: "k8s_pod_name",
        apply: |a, v| {
            a.k8s_pod_name = list(v);
            Ok(())
        },
    },
    Setting {
        key: "k8s_pod_label",
        arg: "k8s_pod_label",
        apply: |a, v| {
            a.k8s_pod_label = list(v);
            Ok(())
        },
    },
    Setting {
        key: "k8s_owner",
        arg: "k8s_owner",
        apply: |a, v| {
            a.k8s_owner = list(v);
            Ok(())
        },
    },
    Setting {
        key: "exclude_k8s_namespace",
        arg: "exclude_k8s_namespace",
        apply: |a, v| {
            a.exclude_k8s_namespace = list(v);
            Ok(())
        },
    },
    Setting {
        key: "k8s_metadata",
        arg: "k8s_metadata",
        apply: |a, v| {
            a.k8s_metadata = choice(v)?;
            Ok(())
        },
    },
    Setting {
        key: "k8s_node_name",
        arg: "k8s_node_name",
        apply: |a, v| {
            a.k8s_node_name = Some(text(v)?);
            Ok(())
        },
    },
    Setting {
        key: "otlp_endpoint",
        arg: "otlp_endpoint",
        apply: |a, v| {
            a.otlp_endpoint = Some(text(v)?);
            Ok(())
        },
    },
    Setting {
        key: "otlp_protocol",
        arg: "otlp_protocol",
        apply: |a, v| {
            a.otlp_protocol = Some(text(v)?);
            Ok(())
        },
    },
    Setting {
        key: "traces_file",
        arg: "traces_file",
        apply: |a, v| {
            a.traces_file = Some(text(v)?.into());
            Ok(())
        },
    },
    Setting {
        key: "console",
        arg: "console",
        apply: |a, v| {
            a.console = boolean(v)?;
            Ok(())
        },
    },
    Setting {
        key: "capture_bytes",
        arg: "capture_bytes",
        apply: |a, v| {
            a.capture_bytes = number(v)?;
            Ok(())
        },
    },
    Setting {
        key: "max_connections",
        arg: "max_connections",
        apply: |a, v| {
            a.max_connections = number(v)?;
            Ok(())
        },
    },
    Setting {
        key: "max_processes",
        arg: "max_processes",
        apply: |a, v| {
            a.max_processes = number(v)?;
            Ok(())
        },
    },
    Setting {
        key: "ring_buffer_mib",
        arg: "ring_buffer_mib",
        apply: |a, v| {
            a.ring_buffer_mib = number(v)?;
            Ok(())
        },
    },
    Setting {
        key: "request_timeout",
        arg: "request_timeout",
        apply: |a, v| {
            a.request_timeout = number(v)?;
            Ok(())
        },
    },
    Setting {
        key: "export_queue",
        arg: "export_queue",
        apply: |a, v| {
            a.export_queue = number(v)?;
            Ok(())
        },
    },
    Setting {
        key: "export_buffer_batches",
        arg: "export_buffer_batches",
        apply: |a, v| {
            a.export_buffer_batches = number(v)?;
            Ok(())
        },
    },
    Setting {
        key: "export_buffer_mib",
        arg: "export_buffer_mib",
        apply: |a, v| {
            a.export_buffer_mib = number(v)?;
            Ok(())
        },
    },
    Setting {
        key: "redact_query",
        arg: "no_redact_query",
        apply: |a, v| {
            a.no_redact_query = !boolean(v)?;
            Ok(())
        },
    },
    Setting {
        key: "sanitize_sql",
        arg: "no_sanitize_sql",
        apply: |a, v| {
            a.no_sanitize_sql = !boolean(v)?;
            Ok(())
        },
    },
    Setting {
        key: "log_level",
        arg: "log_level",
        apply: |a, v| {
            a.log_level = v
                .trim()
                .parse()
                .map_err(|_| format!("expected error, warn, info, debug or trace, got {v:?}"))?;
            Ok(())
        },
    },
    Setting {
        key: "log_format",
        arg: "log_format",
        apply: |a, v| {
            a.log_format = choice(v)?;
            Ok(())
        },
    },
    Setting {
        key: "context_propagation",
        arg: "context_propagation",
        apply: |a, v| {
            a.context_propagation = choice(v)?;
            Ok(())
        },
    },
    Setting {
        key: "propagation_cgroup",
        arg: "propagation_cgroup",
        apply: |a, v| {
            a.propagation_cgroup = Some(text(v)?.into());
            Ok(())
        },
    },
    Setting {
        key: "http_route",
        arg: "http_route",
        apply: |a, v| {
            a.http_route = list(v);
            Ok(())
        },
    },
    Setting {
        key: "max_routes",
        arg: "max_routes",
        apply: |a, v| {
            a.max_routes = number(v)?;
            Ok(())
        },
    },
    Setting {
        key: "prometheus_port",
        arg: "prometheus_port",
        apply: |a, v| {
            a.prometheus_port = Some(number(v)?);
            Ok(())
        },
    },
    Setting {
        key: "db_user",
        arg: "db_user",
        apply: |a, v| {
            a.db_user = boolean(v)?;
            Ok(())
        },
    },
];

/// The environment variable that sets `key`.
pub fn env_name(key: &str) -> String {
    format!("ZEROSPAN_{}", key.to_ascii_uppercase())
}

/// A YAML file's options as text, by key. Lists become one item per line.
fn read_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    let doc: serde_norway::Value = serde_norway::from_str(&raw)
        .with_context(|| format!("{} is not valid YAML", path.display()))?;
    let map = match doc {
        serde_norway::Value::Mapping(m) => m,
        serde_norway::Value::Null => return Ok(Vec::new()),
        _ => bail!("{}: expected a mapping of options", path.display()),
    };
    let scalar = |v: &serde_norway::Value| -> Option<String> {
        match v {
            serde_norway::Value::String(s) => Some(s.clone()),
            serde_norway::Value::Number(n) => Some(n.to_string()),
            serde_norway::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let Some(key) = k.as_str().map(str::to_owned) else {
            bail!("{}: option names must be text, got {k:?}", path.display());
        };
        let value = match &v {
            serde_norway::Value::Sequence(items) => items
                .iter()
                .map(|i| scalar(i).ok_or(()))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join("\n")),
            other => scalar(other).ok_or(()),
        }
        .map_err(|()| anyhow::anyhow!("{}: {key}: unsupported value {v:?}", path.display()))?;
        out.push((key, value));
    }
    Ok(out)
}

/// Fills in the options the command line did not set, from the
/// environment, then from the file named by `--config` (or
/// `ZEROSPAN_CONFIG`).
pub fn layer(
    args: &mut Args,
    matches: &ArgMatches,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let file_path = args
        .config
        .clone()
        .or_else(|| env("ZEROSPAN_CONFIG").map(Into::into));
    let file = match &file_path {
        Some(p) => read_file(p)?,
        None => Vec::new(),
    };
    for (key, _) in &file {
        if !SETTINGS.iter().any(|s| s.key == key) {
            let known: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
            bail!(
                "{}: unknown option {key:?} (known: {})",
                file_path.as_ref().expect("a file was read").display(),
                known.join(", ")
            );
        }
    }
    for s in SETTINGS {
        if matches.value_source(s.arg) == Some(ValueSource::CommandLine) {
            continue;
        }
        let name = env_name(s.key);
        let (value, origin) = match env(&name) {
            Some(v) => (v, name),
            None => match file.iter().rev().find(|(k, _)| k == s.key) {
                Some((_, v)) => (
                    v.clone(),
                    format!(
                        "{} ({})",
                        s.key,
                        file_path.as_ref().expect("a file was read").display()
                    ),
                ),
                None => continue,
            },
        };
        (s.apply)(args, &value).map_err(|why| anyhow::anyhow!("{origin}={value:?}: {why}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn named_values_are_clap_s_and_errors_list_them() {
        use crate::config::K8sMetadata;
        assert_eq!(choice::<K8sMetadata>(" on "), Ok(K8sMetadata::On));
        let e = choice::<K8sMetadata>("sometimes").unwrap_err();
        assert_eq!(e, "expected auto or on or off, got \"sometimes\"");
    }

    use std::collections::HashMap;

    use clap::{CommandFactory as _, FromArgMatches as _};

    use super::*;

    fn layered(argv: &[&str], env: &[(&str, &str)], file: Option<&str>) -> anyhow::Result<Args> {
        let dir = std::env::temp_dir().join(format!("zerospan-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A file per call: tests run in parallel, and two with the same
        // arguments must not read each other's file.
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.yaml"));
        let mut full: Vec<String> = vec!["zerospan".into()];
        if let Some(f) = file {
            std::fs::write(&path, f).unwrap();
            full.extend(["--config".into(), path.display().to_string()]);
        }
        full.extend(argv.iter().map(|s| s.to_string()));
        let matches = Args::command().try_get_matches_from(full)?;
        let mut args = Args::from_arg_matches(&matches)?;
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        layer(&mut args, &matches, |k| env.get(k).cloned())?;
        Ok(args)
    }

    const FILE: &str = "\
# zerospan.yaml
pids: [10, 11]
cmdline: ['python3 .*app\\.py', 'gunicorn (a|b),c']
capture_bytes: 2048
otlp_endpoint: http://file:4317
redact_query: false
db_user: yes
";

    #[test]
    fn command_line_beats_environment_beats_file_beats_defaults() {
        let a = layered(&[], &[], Some(FILE)).unwrap();
        assert_eq!(a.pids, [10, 11]);
        assert_eq!(a.cmdline, ["python3 .*app\\.py", "gunicorn (a|b),c"]);
        assert_eq!(a.capture_bytes, 2048);
        assert_eq!(a.otlp_endpoint.as_deref(), Some("http://file:4317"));
        assert!(a.no_redact_query && a.db_user);
        assert_eq!(a.max_connections, 65536, "the default stays");

        let a = layered(
            &[],
            &[
                ("ZEROSPAN_CAPTURE_BYTES", "512"),
                ("ZEROSPAN_OTLP_ENDPOINT", "http://env:4317"),
            ],
            Some(FILE),
        )
        .unwrap();
        assert_eq!(a.capture_bytes, 512);
        assert_eq!(a.otlp_endpoint.as_deref(), Some("http://env:4317"));

        let a = layered(
            &["--capture-bytes", "100", "--pid", "7"],
            &[("ZEROSPAN_CAPTURE_BYTES", "512")],
            Some(FILE),
        )
        .unwrap();
        assert_eq!(a.capture_bytes, 100);
        assert_eq!(a.pids, [7]);
        // Set on the command line to its default value: still the command
        // line's.
        let a = layered(&["--capture-bytes", "1024"], &[], Some(FILE)).unwrap();
        assert_eq!(a.capture_bytes, 1024);
    }

    #[test]
    fn bad_configuration_names_the_key_and_value() {
        let e = layered(&[], &[], Some("captur_bytes: 10\n")).unwrap_err();
        assert!(
            e.to_string().contains("unknown option \"captur_bytes\""),
            "{e}"
        );
        let e = layered(&[], &[], Some("capture_bytes: lots\n")).unwrap_err();
        assert!(
            e.to_string().contains("capture_bytes") && e.to_string().contains("\"lots\""),
            "{e}"
        );
        let e = layered(&[], &[("ZEROSPAN_DB_USER", "maybe")], None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ZEROSPAN_DB_USER=\"maybe\": expected true or false"),
            "{e}"
        );
        let e = layered(&[], &[], Some("pids: {a: 1}\n")).unwrap_err();
        assert!(e.to_string().contains("pids"), "{e}");
        let e = layered(&[], &[], Some("- not\n- a mapping\n")).unwrap_err();
        assert!(e.to_string().contains("expected a mapping"), "{e}");
    }
}
