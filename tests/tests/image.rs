//! The container image. Built here and run as the DaemonSet runs it
//! (Docker, on a Debian base `cargo xtask test` makes with debootstrap),
//! and its Dockerfile checked: the runtime stage installs every shared
//! library the agent binary links, the build stage uses this machine's
//! Rust toolchain, and both ways of building start the binary they copy.

use std::{process::Command, time::Duration};

use zerospan_tests::{
    curl,
    deploy::{capability_mask, manifest_capabilities, manifest_mounts},
    procs::{agent_binary, free_port, workspace},
    Collector, Nginx,
};

/// Packages `debian:bookworm-slim` already has that a binary may link.
const IN_THE_BASE_IMAGE: &[&str] = &["libc6", "libgcc-s1", "zlib1g"];

fn dockerfile() -> String {
    std::fs::read_to_string(workspace().join("deploy/Dockerfile")).unwrap()
}

/// The stages: (FROM line, the lines up to the next FROM), comments out.
fn stages(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    // Continuation lines joined, as Docker reads them.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    for line in joined.lines() {
        let line = line.trim();
        if let Some(from) = line.strip_prefix("FROM ") {
            out.push((from.to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// The packages an `apt-get install` in `stage` names.
fn installed(stage: &str) -> Vec<String> {
    stage
        .lines()
        .filter(|l| l.contains("apt-get install"))
        .flat_map(|l| {
            let after = l.split("apt-get install").nth(1).unwrap_or_default();
            after
                .split("&&")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .filter(|w| !w.starts_with('-'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The Debian package that holds the library `soname`, by its path.
fn package_of(soname: &str) -> String {
    let out = Command::new("dpkg")
        .args(["-S", &format!("*/{soname}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no package has {soname}"));
    first.split(':').next().unwrap().trim().to_owned()
}

#[test]
fn the_runtime_stage_has_every_library_the_agent_links() {
    let text = dockerfile();
    let stages = stages(&text);
    let froms: Vec<&str> = stages.iter().map(|(f, _)| f.as_str()).collect();
    // The prebuilt stage before the Rust one, so a build of it needs no
    // Rust image; the default (last) stage builds from source.
    assert_eq!(
        froms,
        [
            "${BASE} AS runtime",
            "runtime AS prebuilt",
            "rust:1.95-bookworm AS build",
            "runtime"
        ]
    );
    assert!(
        text.lines().any(|l| l == "ARG BASE=debian:bookworm-slim"),
        "{text}"
    );
    let runtime = &stages[0].1;
    let runtime_packages = installed(runtime);
    let elf = Command::new("readelf")
        .arg("-d")
        .arg(agent_binary())
        .output()
        .expect("readelf (binutils)");
    let needed: Vec<String> = String::from_utf8_lossy(&elf.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_owned()))
        .collect();
    assert!(
        needed.iter().any(|l| l.starts_with("libc.so")),
        "{needed:?}"
    );
    for lib in &needed {
        let package = package_of(lib);
        let package = package.trim_end_matches(":amd64");
        assert!(
            IN_THE_BASE_IMAGE.contains(&package) || runtime_packages.iter().any(|p| p == package),
            "{lib} (from {package}) is neither in the base image nor installed by the runtime \
             stage ({runtime_packages:?})"
        );
    }
    // What each way of building copies is what the runtime starts.
    let entrypoint = runtime
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT [\"")?.strip_suffix("\"]"))
        .expect("the runtime stage has the entry point");
    for (stage, source) in [
        (&stages[1].1, "target/release/zerospan"),
        (&stages[3].1, "--from=build /src/target/release/zerospan"),
    ] {
        assert!(
            stage.contains(&format!("COPY {source} {entrypoint}")),
            "{stage}"
        );
    }
}

#[test]
fn the_build_stage_uses_this_toolchain() {
    let text = dockerfile();
    let (build_from, build) = &stages(&text)[2];
    let rustc = Command::new("rustc").arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&rustc.stdout);
    // "rustc 1.95.0 (…)" → "1.95".
    let minor = version
        .split_whitespace()
        .nth(1)
        .unwrap()
        .rsplit_once('.')
        .unwrap()
        .0
        .to_owned();
    assert_eq!(build_from, &format!("rust:{minor}-bookworm AS build"));
    assert!(
        build.contains("cargo xtask setup build && cargo xtask build"),
        "{build}"
    );
}

/// Debian's docker client, which speaks to Debian's dockerd.
const DOCKER: &str = "/usr/bin/docker";
/// The Debian base `cargo xtask test` (or `image`) makes with debootstrap.
const BASE: &str = "zerospan-base/debian:bookworm";

fn docker(args: &[&str]) -> std::process::Output {
    Command::new(DOCKER)
        .args(args)
        .output()
        .expect("docker (Debian's docker.io, installed by cargo xtask setup)")
}

/// Removes the container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// The image, built here from `deploy/Dockerfile` around this build's
/// binary, run as the DaemonSet runs it (host PID namespace, host network,
/// the manifest's mounts, every capability dropped but the manifest's),
/// traces plaintext and TLS on the host and exports to a receiver on
/// loopback. Docker 20.10 does not know CAP_BPF or CAP_PERFMON: it runs
/// with CAP_SYS_ADMIN in their place, which is what they were split from;
/// the exact set is the manifest pass of the suite (`setpriv`).
#[test]
fn the_image_built_here_traces_the_host_as_the_daemonset_runs_it() {
    zerospan_tests::require_root();
    assert!(
        docker(&["info"]).status.success(),
        "no Docker engine: `cargo xtask test` starts dockerd"
    );
    assert!(
        docker(&["image", "inspect", BASE]).status.success(),
        "no {BASE}: `cargo xtask test` makes it with debootstrap"
    );
    // The prebuilt stage copies target/release/zerospan: it must be the
    // binary under test.
    let copied = workspace().join("target/release/zerospan");
    assert_eq!(
        agent_binary().canonicalize().unwrap(),
        copied.canonicalize().unwrap(),
        "the image holds {}, not ZEROSPAN_BIN",
        copied.display()
    );
    let tag = format!("zerospan:test-{}", std::process::id());
    let built = Command::new(DOCKER)
        .current_dir(workspace())
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "--network", "host", "-f", "deploy/Dockerfile"])
        .args([
            "--target",
            "prebuilt",
            "--build-arg",
            &format!("BASE={BASE}"),
        ])
        .args(["-t", &tag, "."])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let _image = Image(tag.clone());

    let dir = zerospan_tests::TempDir::new("image-site");
    std::fs::write(dir.0.join("index.html"), "from the host\n").unwrap();
    let (plain_port, tls_port) = (free_port(), free_port());
    let plain = Nginx::start(&dir.0, plain_port);
    let tls = Nginx::start_tls(&dir.0, tls_port);
    let collector = Collector::start();

    // BPF and PERFMON → SYS_ADMIN: all Docker 20.10 can say.
    let mut caps: Vec<String> = manifest_capabilities()
        .into_iter()
        .filter(|c| c != "BPF" && c != "PERFMON")
        .collect();
    caps.push("SYS_ADMIN".into());
    let name = format!("zerospan-test-{}", std::process::id());
    let mut run: Vec<String> = ["run", "-d", "--name", &name, "--pid", "host"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    run.extend(["--network", "host", "--cap-drop", "ALL"].map(String::from));
    for c in &caps {
        run.extend(["--cap-add".into(), c.clone()]);
    }
    for (host, inside, read_only) in manifest_mounts() {
        let ro = if read_only { ":ro" } else { "" };
        run.extend(["-v".into(), format!("{host}:{inside}{ro}")]);
    }
    run.extend([
        "-e".into(),
        format!("OTEL_EXPORTER_OTLP_ENDPOINT={}", collector.grpc_endpoint),
        tag.clone(),
        "--pid".into(),
        plain.pid().to_string(),
        "--pid".into(),
        tls.pid().to_string(),
    ]);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let started = docker(&run);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let container = Container(name);
    let logs = || {
        let out = docker(&["logs", &container.0]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !logs().contains("zerospan INFO  tracing ") {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent in the container did not attach:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The agent runs with exactly those capabilities.
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &container.0]);
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_owned();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap();
    assert_eq!(eff, capability_mask(&caps), "{caps:?}");

    for _ in 0..3 {
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{plain_port}/index.html"),
        ]);
        curl(&[
            "-sk",
            "-o",
            "/dev/null",
            &format!("https://127.0.0.1:{tls_port}/index.html"),
        ]);
    }
    let spans = collector.wait_for(6, Duration::from_secs(15), |_| true);
    let mut seen: Vec<(String, i64, String, i64)> = spans
        .iter()
        .map(|s| {
            (
                s.str("url.scheme").unwrap(),
                s.int("server.port").unwrap(),
                s.str("url.path").unwrap(),
                s.int("http.response.status_code").unwrap(),
            )
        })
        .collect();
    seen.sort();
    let mut want = Vec::new();
    for (scheme, port) in [("http", plain_port), ("https", tls_port)] {
        for _ in 0..3 {
            want.push((
                scheme.to_owned(),
                port as i64,
                "/index.html".to_owned(),
                200,
            ));
        }
    }
    want.sort();
    assert_eq!(seen, want, "{}", logs());
    assert!(spans.iter().all(|s| s.is_server()));

    // A stop as Kubernetes does it: SIGTERM, then the exit status.
    assert!(docker(&["stop", "-t", "30", &container.0]).status.success());
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &container.0]);
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "{}",
        logs()
    );
    eprintln!("the image ran with {caps:?}: {} spans, exit 0", spans.len());
}

/// Removes the image however the test ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}
