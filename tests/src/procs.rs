//! Processes the tests drive: the agent itself and fixture servers.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Fails loudly when not root: these tests load real eBPF programs.
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "\n\nzerospan's integration tests load and attach real eBPF probes and must run as root.\n\
         Run them from a root shell (`sudo -i`, then `cargo xtask test`: sudo alone may not find cargo).\n\n"
    );
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The agent binary under test (`ZEROSPAN_BIN`, else the release build).
pub fn agent_binary() -> PathBuf {
    let bin = std::env::var_os("ZEROSPAN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/zerospan"));
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo xtask build` first (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// The agent under test.
pub struct Agent {
    child: Child,
    stderr: Arc<Mutex<String>>,
    pub stdout: Arc<Mutex<String>>,
}

fn pump(mut r: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(&mut r);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            b.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    buf
}

impl Agent {
    /// Starts the agent and waits until its probes are attached and tracing.
    ///
    /// Without `--context-propagation` or `--propagation-cgroup` in `args`,
    /// header injection is off: its default would attach to the machine's
    /// root cgroup, and tests only ever attach to cgroups of their own.
    /// Likewise, the Kubernetes API is only used when a test gives
    /// `KUBECONFIG`, whatever the machine's own environment holds.
    ///
    /// With `ZEROSPAN_TEST_CAPABILITIES=manifest`, the agent runs with
    /// exactly the capabilities the DaemonSet grants (`setpriv`), and the
    /// start checks that it does.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Agent {
        match std::env::var("ZEROSPAN_TEST_CAPABILITIES").as_deref() {
            Err(_) => Agent::start_via(&[], args, env),
            Ok("manifest") => {
                let agent = Agent::start_via(&crate::deploy::as_deployed(), args, env);
                let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
                    .expect("the agent's status");
                let eff = status
                    .lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                    .expect("CapEff in /proc/PID/status");
                assert_eq!(
                    eff,
                    crate::deploy::manifest_mask(),
                    "the agent runs with the manifest's capabilities"
                );
                agent
            }
            Ok(other) => panic!("ZEROSPAN_TEST_CAPABILITIES={other}: only `manifest` is known"),
        }
    }

    /// Starts the agent under a launcher: `prefix` is a command that runs
    /// the agent's command line after it, in the same process (`setpriv`,
    /// `unshare` without `--fork`, `sh -c 'exec "$0" "$@"'`).
    pub fn start_via(prefix: &[String], args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut cmd = match prefix.split_first() {
            Some((launcher, rest)) => {
                let mut c = Command::new(launcher);
                c.args(rest).arg(agent_binary());
                c
            }
            None => Command::new(agent_binary()),
        };
        if !args.iter().any(|a| a.contains("propagation")) {
            cmd.arg("--context-propagation=off");
        }
        cmd.args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start zerospan");
        let stderr = pump(child.stderr.take().unwrap());
        let stdout = pump(child.stdout.take().unwrap());
        let agent = Agent {
            child,
            stderr,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent.stderr().contains("zerospan INFO  tracing ") {
                return agent;
            }
            if let Ok(Some(status)) = agent.child_exited() {
                panic!(
                    "zerospan exited ({status}) before tracing:\n{}",
                    agent.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "zerospan did not attach in 30s:\n{}",
                agent.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent tracing `pids`, exporting over OTLP/gRPC to `collector`.
    pub fn for_pids(pids: &[u32], collector: &crate::Collector, env: &[(&str, &str)]) -> Agent {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut args: Vec<&str> = Vec::new();
        for pid in &pids {
            args.extend(["--pid", pid.as_str()]);
        }
        args.extend(["--otlp-endpoint", collector.grpc_endpoint.as_str()]);
        Agent::start(&args, env)
    }

    fn child_exited(&self) -> std::io::Result<Option<ExitStatus>> {
        // try_wait needs &mut; peek through /proc instead.
        let pid = self.child.id();
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        Ok(zombie.then(ExitStatus::default))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The agent's final counters, parsed from its `stats:` line, which
    /// shows only those that are not zero: a counter the agent declares
    /// but the line leaves out reads 0, and a name it does not declare
    /// panics (a typo must not read as 0). `None`: no stats line yet.
    pub fn stat(&self, key: &str) -> Option<u64> {
        let text = self.stderr();
        let line = text
            .lines()
            .rev()
            .find_map(|l| l.split_once("stats: ").map(|(_, s)| s.to_owned()))?;
        let shown = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok());
        // `name.protocol`: a counter kept by protocol.
        let (counter, protocol) = key.split_once('.').unwrap_or((key, ""));
        assert!(
            shown.is_some() || counter_names().contains(&counter),
            "the agent has no counter {counter:?}"
        );
        assert!(
            protocol.is_empty() || protocol_names().contains(&protocol),
            "the agent has no protocol {protocol:?}"
        );
        Some(shown.unwrap_or(0))
    }

    /// Waits until the agent's log holds `text`; panics with the log after
    /// `timeout`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the agent never logged {text:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the agent to exit on its own (every traced process gone).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Give the pump threads a moment to read the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "zerospan did not exit within {timeout:?}:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The whole log with the final counters, for a failed assertion's
    /// message: stops the agent first if it still runs.
    pub fn final_log(&mut self) -> String {
        self.stop();
        self.stderr()
    }

    /// For a failed assertion's message on an agent started with `-vv`:
    /// its lines but the debug and trace ones (the final counters, and
    /// anything it printed as it failed), the TLS writes held before their
    /// socket was known, and its trace of every connection: only of those
    /// whose framing was lost, when some were, and up to the loss (what
    /// follows is ignored bytes), so that a failure's tail shows why.
    pub fn connections_log(&self) -> String {
        let log = self.stderr();
        let key_of = |l: &str| {
            let at = l.find("ConnKey { ")?;
            let end = at + l[at..].find('}')?;
            Some(l[at..=end].to_owned())
        };
        let lost: Vec<String> = log
            .lines()
            .filter(|l| l.contains("framing lost"))
            .filter_map(key_of)
            .collect();
        let mut past_loss = std::collections::HashSet::new();
        log.lines()
            .filter(|l| {
                let quiet = l.starts_with("zerospan DEBUG") || l.starts_with("zerospan TRACE");
                if !quiet || l.contains(": TLS object ") {
                    return true;
                }
                let Some(k) = key_of(l) else {
                    return false;
                };
                let wanted = lost.is_empty() || lost.contains(&k);
                let shown = wanted && !past_loss.contains(&k);
                if shown && l.contains("framing lost") {
                    past_loss.insert(k);
                }
                shown
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// [`Agent::connections_log`], once the agent has stopped.
    pub fn final_connections_log(&mut self) -> String {
        self.stop();
        self.connections_log()
    }

    /// SIGINT, then wait: the agent flushes and exits. Once it has exited,
    /// only its status: its pid may already belong to another process.
    pub fn stop(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait(Duration::from_secs(30))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fixture process that prints `READY <port>` once it listens.
pub struct Fixture {
    pub child: Child,
    pub port: u16,
    pub stdout: BufReader<std::process::ChildStdout>,
}

impl Fixture {
    pub fn start(cmd: &mut Command) -> Fixture {
        cmd.stdout(Stdio::piped()).stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("start fixture");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("fixture output");
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("fixture did not get ready: {line:?}"));
        Fixture {
            child,
            port,
            stdout,
        }
    }

    /// The Python `http.server` fixture; `env` may set OTEL_SERVICE_NAME.
    pub fn http_server(bind: &str, dir: &Path, env: &[(&str, &str)]) -> Fixture {
        Fixture::start(
            Command::new("python3")
                .arg(fixture("http_server.py"))
                .args([bind, &dir.display().to_string()])
                .env_remove("OTEL_SERVICE_NAME")
                .envs(env.iter().copied()),
        )
    }

    /// The page an HTTP server fixture serves from its directory.
    pub fn index_url(&self) -> String {
        format!("http://127.0.0.1:{}/index.html", self.port)
    }

    /// [`Fixture::http_server`] started inside `group`, as a container
    /// runtime starts a container's first process: in its cgroup before it
    /// execs. `args` go after the directory (a marker to select it by).
    pub fn http_server_in(group: &Cgroup, dir: &Path, args: &[&str]) -> Fixture {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec python3 {} 127.0.0.1 {} {}",
            group.dir.display(),
            fixture("http_server.py").display(),
            dir.display(),
            args.join(" ")
        );
        Fixture::start(
            Command::new("sh")
                .args(["-c", &script])
                .env_remove("OTEL_SERVICE_NAME"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    pub fn send_line(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn rest_of_output(&mut self) -> String {
        let mut s = String::new();
        let _ = self.stdout.read_to_string(&mut s);
        s
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh self-signed certificate for `localhost` and its key, made with
/// the openssl command line in `dir`: (cert.pem, key.pem).
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
        .args(["-subj", "/CN=localhost", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed with nginx by cargo xtask setup");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A port nothing listens on at the moment.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "zerospan-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// curl's version string as it sends it in User-Agent.
pub fn curl_user_agent() -> String {
    let out = Command::new("curl").arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).unwrap().to_owned();
    format!("curl/{version}")
}

/// Runs curl and returns stdout; panics on failure.
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(args).output().expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// nginx with one worker, serving `root` on 127.0.0.1:`port`. With
/// `sendfile on`, it writes response heads with `writev` and file bodies
/// with `sendfile`.
pub struct Nginx(Child);

impl Nginx {
    pub fn start(root: &Path, port: u16) -> Nginx {
        Nginx::start_with(root, &format!("listen 127.0.0.1:{port};"), port)
    }

    /// nginx serving HTTPS with a fresh self-signed certificate, TLS 1.2
    /// and 1.3 (Debian 12's nginx offers 1.3 only when told to).
    pub fn start_tls(root: &Path, port: u16) -> Nginx {
        let (cert, key) = self_signed_cert(root);
        let listen = format!(
            "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {}; \
             ssl_protocols TLSv1.2 TLSv1.3;",
            cert.display(),
            key.display()
        );
        Nginx::start_with(root, &listen, port)
    }

    /// As [`Nginx::start_tls`], offering HTTP/2 by ALPN.
    pub fn start_tls_h2(root: &Path, port: u16) -> Nginx {
        Nginx::start_tls_h2_with(root, port, "")
    }

    /// As [`Nginx::start_tls_h2`], with more directives for the server
    /// (`ssl_buffer_size 64k;`: up to 64 KiB of plaintext per `SSL_write`).
    pub fn start_tls_h2_with(root: &Path, port: u16, more: &str) -> Nginx {
        let (cert, key) = self_signed_cert(root);
        let listen = format!(
            "listen 127.0.0.1:{port} ssl http2; ssl_certificate {}; ssl_certificate_key {}; \
             ssl_protocols TLSv1.2 TLSv1.3; {more}",
            cert.display(),
            key.display()
        );
        Nginx::start_with(root, &listen, port)
    }

    fn start_with(root: &Path, listen: &str, port: u16) -> Nginx {
        let conf = format!(
            "worker_processes 1;\nuser root;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{}}\nhttp {{ access_log off; sendfile on; client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n\
             fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             server {{ {listen} root {d}; }} }}\n",
            d = root.display()
        );
        std::fs::write(root.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-c", &root.join("nginx.conf").display().to_string()])
            .spawn()
            .expect("nginx is installed by cargo xtask setup");
        let nginx = Nginx(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }
}

impl Nginx {
    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master must take its worker down with it.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// redis-server on 127.0.0.1:`port`, without persistence.
pub struct RedisServer(Child);

impl RedisServer {
    pub fn start(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed by cargo xtask setup");
        let server = RedisServer(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cgroup v2 directory a test makes under the hierarchy's root, removed
/// on drop with the parents the test made for it (its processes must have
/// left by then).
pub struct Cgroup {
    pub dir: PathBuf,
    root: PathBuf,
}

impl Cgroup {
    /// Makes `relative` under the cgroup v2 root; `needed_for` says in the
    /// failure why the test cannot run without cgroup v2.
    pub fn new(relative: &str, needed_for: &str) -> Cgroup {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no cgroup2 file system is mounted: {needed_for}"));
        let root = PathBuf::from(root);
        let dir = root.join(relative);
        std::fs::create_dir_all(&dir).unwrap();
        Cgroup { dir, root }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in self.dir.ancestors().take_while(|d| *d != self.root) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Every counter the agent declares (agent/src/stats.rs: `kind name,`).
pub fn counter_names() -> Vec<&'static str> {
    include_str!("../../agent/src/stats.rs")
        .lines()
        .filter_map(|l| {
            let (kind, name) = l.trim().strip_suffix(',')?.split_once(' ')?;
            ["total", "loss", "gauge"].contains(&kind).then_some(name)
        })
        .collect()
}

/// Every protocol the agent recognises (agent/src/conn/detect.rs's
/// `protocol: "…"` entries): the names counters are kept by.
pub fn protocol_names() -> Vec<&'static str> {
    include_str!("../../agent/src/conn/detect.rs")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("protocol: \""))
        .filter_map(|l| l.split('"').next())
        .collect()
}
