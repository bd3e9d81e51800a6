//! The container image, as far as it can be checked without a container
//! engine (the CI machines have none): its runtime stage installs every
//! shared library the agent binary links, its build stage uses this
//! machine's Rust toolchain, and it starts the binary it copies.

use std::process::Command;

use zerospan_tests::procs::{agent_binary, workspace};

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
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (runtime_from, runtime) = &stages[1];
    assert_eq!(runtime_from, "debian:bookworm-slim");
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
    // What it copies is what it starts.
    let copied = runtime
        .lines()
        .find_map(|l| l.strip_prefix("COPY --from=build /src/target/release/zerospan "))
        .expect("the runtime stage copies the agent");
    assert!(
        runtime.contains(&format!("ENTRYPOINT [\"{copied}\"]")),
        "{runtime}"
    );
}

#[test]
fn the_build_stage_uses_this_toolchain() {
    let text = dockerfile();
    let (build_from, build) = &stages(&text)[0];
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
        build.contains("cargo xtask setup && cargo xtask build"),
        "{build}"
    );
}
