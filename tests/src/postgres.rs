//! A private PostgreSQL server for one test: Debian's binaries, a fresh
//! cluster in a temporary directory, trust authentication on 127.0.0.1 and
//! a free port. The server refuses root, so it runs as the `postgres`
//! user that Debian's package creates.

use std::{
    os::unix::{fs::chown, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{procs::free_port, TempDir};

pub struct Postgres {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a `postgres` user: install PostgreSQL with `cargo xtask setup`")
    };
    (id("-u"), id("-g"))
}

fn bindir() -> PathBuf {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config is installed with PostgreSQL by `cargo xtask setup`");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// The server with TLS on (a fresh self-signed certificate).
    pub fn start_tls() -> Postgres {
        Postgres::start_with(true)
    }

    fn start_with(tls: bool) -> Postgres {
        let (uid, gid) = postgres_ids();
        let dir = TempDir::new("pg");
        chown(&dir.0, Some(uid), Some(gid)).unwrap();
        let data = dir.0.join("data");
        let bin = bindir();
        let out = Command::new(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .arg("-D")
            .arg(&data)
            .uid(uid)
            .gid(gid)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut tls_args = Vec::new();
        if tls {
            let (cert, key) = crate::procs::self_signed_cert(&dir.0);
            for f in [&cert, &key] {
                chown(f, Some(uid), Some(gid)).unwrap();
            }
            // The server refuses a key others can read.
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            tls_args = vec![
                "-c".to_owned(),
                "ssl=on".to_owned(),
                "-c".to_owned(),
                format!("ssl_cert_file={}", cert.display()),
                "-c".to_owned(),
                format!("ssl_key_file={}", key.display()),
            ];
        }
        let child = Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir.0)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(&tls_args)
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let pg = Postgres {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pg.psql("postgres", &["-c", "SELECT 1"]).status.success() {
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// A psql command line against database `db`, for the agent to run.
    pub fn psql_args(&self, db: &str) -> Vec<String> {
        vec![
            "psql".into(),
            "-X".into(),
            "-q".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
            "-d".into(),
            db.into(),
        ]
    }

    /// Runs psql (untraced) against database `db`.
    pub fn psql(&self, db: &str, args: &[&str]) -> Output {
        let argv = self.psql_args(db);
        Command::new(&argv[0])
            .args(&argv[1..])
            .args(args)
            .output()
            .expect("run psql")
    }

    /// Runs SQL (untraced), panicking on failure.
    pub fn exec(&self, db: &str, sql: &str) {
        let out = self.psql(db, &["-v", "ON_ERROR_STOP=1", "-c", sql]);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it ends its own children.
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}
