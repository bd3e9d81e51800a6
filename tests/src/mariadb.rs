//! A private MariaDB server for one test: Debian's binaries, a fresh data
//! directory, root without a password on 127.0.0.1 and a free port. The
//! server runs as the `mysql` user that Debian's package creates.

use std::{
    os::unix::fs::chown,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{procs::free_port, TempDir};

pub struct Mariadb {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

fn mysql_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "mysql"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a `mysql` user: install MariaDB with `cargo xtask setup`")
    };
    (id("-u"), id("-g"))
}

impl Mariadb {
    pub fn start() -> Mariadb {
        let (uid, gid) = mysql_ids();
        let dir = TempDir::new("mariadb");
        chown(&dir.0, Some(uid), Some(gid)).unwrap();
        let data = dir.0.join("data");
        let out = Command::new("mariadb-install-db")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .expect("mariadb-install-db is installed by `cargo xtask setup`");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.0.join("sock").display()))
            .arg(format!("--pid-file={}", dir.0.join("pid").display()))
            .args([
                "--user=mysql",
                &format!("--port={port}"),
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let db = Mariadb {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !db.client(&["-e", "SELECT 1"]).status.success() {
            assert!(Instant::now() < deadline, "mariadbd did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        db
    }

    /// A `mariadb` client command line, for the agent to run.
    pub fn client_args(&self) -> Vec<String> {
        vec![
            "mariadb".into(),
            "--no-defaults".into(),
            "--protocol=TCP".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-P".into(),
            self.port.to_string(),
            "-u".into(),
            "root".into(),
        ]
    }

    /// Runs the `mariadb` client (untraced).
    pub fn client(&self, args: &[&str]) -> Output {
        let argv = self.client_args();
        Command::new(&argv[0])
            .args(&argv[1..])
            .args(args)
            .output()
            .expect("run mariadb")
    }

    /// Runs SQL (untraced), panicking on failure.
    pub fn exec(&self, sql: &str) {
        let out = self.client(&["-e", sql]);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
