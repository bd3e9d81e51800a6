//! Configuration from a YAML file and `ZEROSPAN_*` variables, under the
//! command line: a real run takes its exporters from both, and bad values
//! stop the agent at start, naming the key and the value.

use std::{process::Command, time::Duration};

use zerospan_tests::{procs::agent_binary, require_root, Agent, Collector, Fixture, TempDir};

#[test]
fn file_and_environment_configure_a_real_run() {
    require_root();
    let dir = TempDir::new("config");
    std::fs::write(dir.0.join("index.html"), "configured\n").unwrap();
    let server = Fixture::http_server("127.0.0.1", &dir.0, &[]);
    let traces = dir.0.join("traces.jsonl");
    let file = dir.0.join("zerospan.yaml");
    std::fs::write(
        &file,
        format!(
            "# written by the test\ntraces_file: {}\ncapture_bytes: 512\nredact_query: false\n",
            traces.display()
        ),
    )
    .unwrap();
    let collector = Collector::start();
    let url = format!("http://127.0.0.1:{}/index.html?user=alice", server.port);
    let config = file.display().to_string();
    let mut agent = Agent::start(
        &[
            "--config",
            &config,
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            &url,
        ],
        &[("ZEROSPAN_OTLP_ENDPOINT", collector.grpc_endpoint.as_str())],
    );
    assert!(
        agent.wait(Duration::from_secs(30)).success(),
        "{}",
        agent.stderr()
    );
    // The environment's exporter got the span…
    let spans = collector.wait_for(1, Duration::from_secs(10), |_| true);
    assert_eq!(spans.len(), 1, "{}", agent.stderr());
    // …with the file's `redact_query: false`…
    assert_eq!(spans[0].str("url.full").as_deref(), Some(url.as_str()));
    // …and so did the file's traces file.
    let written = std::fs::read_to_string(&traces).expect("the traces file from the YAML file");
    assert!(written.contains("user=alice"), "{written}");
    drop(server);
}

/// `--log-format json`: every line the agent logs is a JSON object.
#[test]
fn json_logs_one_object_per_line() {
    require_root();
    let dir = TempDir::new("config-json");
    let file = dir.0.join("zerospan.yaml");
    std::fs::write(
        &file,
        "log_format: json
log_level: info
context_propagation: off
",
    )
    .unwrap();
    let out = Command::new(agent_binary())
        .args(["--config", &file.display().to_string(), "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 3, "{err}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["ts"].is_number() && v["level"].is_string() && v["message"].is_string());
    }
    // The stats line, as JSON too (it lists only counters that are not zero).
    assert!(err.contains("\"message\":\"stats: "), "{err}");
}

#[test]
fn bad_configuration_stops_the_agent_naming_key_and_value() {
    let dir = TempDir::new("config-bad");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(agent_binary())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bad = dir.0.join("bad.yaml");
    std::fs::write(&bad, "capture_byte: 512\n").unwrap();
    let bad = bad.display().to_string();
    let (code, err) = run(&["--config", &bad, "--pid", "1"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown option \"capture_byte\""), "{err}");

    let (code, err) = run(&["--pid", "1"], &[("ZEROSPAN_CAPTURE_BYTES", "99999")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("capture_bytes (--capture-bytes) must be between 1 and 4096, not 99999"),
        "{err}"
    );

    let (code, err) = run(&["--pid", "1"], &[("ZEROSPAN_MAX_CONNECTIONS", "many")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ZEROSPAN_MAX_CONNECTIONS=\"many\""), "{err}");

    let (code, err) = run(&["--pid", "1"], &[("ZEROSPAN_LOG_LEVEL", "chatty")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ZEROSPAN_LOG_LEVEL=\"chatty\""), "{err}");
}
