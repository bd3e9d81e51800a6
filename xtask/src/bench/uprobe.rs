//! What one uprobe costs the traced program on this machine, by the
//! instruction it sits on: the figures behind where the agent puts its
//! probes (`agent/src/kernel/openssl.rs`, `agent/src/kernel/golang/returns.rs`).
//!
//! A tiny library holds functions that begin with the instructions real
//! ones begin with; a driver calls one in a loop. Each case defines a
//! probe in a tracefs instance of its own (no BPF program: what is
//! measured is the trap, the kernel's entry and exit, and the emulation
//! or single step), and the calls are timed with the probe and without it,
//! in alternating rounds.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::harness::median;

const TRACEFS: &str = "/sys/kernel/tracing";
/// The tracefs instance the probes are enabled in: its buffer, not the
/// system's, takes their records, and it records nothing (tracing off).
const INSTANCE: &str = "zerospan_bench";
const GROUP: &str = "zerospan_bench";
const ROUNDS: usize = 5;
const CALLS: u32 = 50_000;

/// Functions whose first instructions are the cases: x86-64 uprobes
/// emulate `push` of a register and calls, and single-step the rest out
/// of line.
const LIBRARY: &str = r#"
    .text
    .globl f_push
    .type f_push,@function
f_push:
    push %r13
    call inner
    pop %r13
    ret
    .globl f_sub
    .type f_sub,@function
f_sub:
    sub $0x18,%rsp
    call inner
    add $0x18,%rsp
    ret
    .globl f_endbr
    .type f_endbr,@function
f_endbr:
    endbr64
    sub $0x18,%rsp
    call inner
    add $0x18,%rsp
    ret
inner:
    ret
    .section .note.GNU-stack,"",@progbits
"#;

const DRIVER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
void f_push(void); void f_sub(void); void f_endbr(void);
int main(int argc, char **argv) {
    void (*f)(void) = !strcmp(argv[1], "f_push") ? f_push
        : !strcmp(argv[1], "f_sub") ? f_sub
        : !strcmp(argv[1], "f_endbr") ? f_endbr : 0;
    if (!f) return 2;
    long n = atol(argv[2]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) f();
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"#;

/// One case: the function called, and the probe on it (kind `p` or `r`,
/// and the offset into the function), if any.
struct Case {
    what: &'static str,
    function: &'static str,
    probe: Option<(char, u64)>,
}

const CASES: &[Case] = &[
    Case {
        what: "entry probe on push %r13 (emulated)",
        function: "f_push",
        probe: Some(('p', 0)),
    },
    Case {
        what: "entry probe on call (emulated)",
        function: "f_push",
        probe: Some(('p', 2)),
    },
    Case {
        what: "entry probe on sub $0x18,%rsp (single-stepped)",
        function: "f_sub",
        probe: Some(('p', 0)),
    },
    Case {
        what: "entry probe on endbr64 (single-stepped)",
        function: "f_endbr",
        probe: Some(('p', 0)),
    },
    Case {
        what: "return probe, function entered at push",
        function: "f_push",
        probe: Some(('r', 0)),
    },
    Case {
        what: "return probe, function entered at sub",
        function: "f_sub",
        probe: Some(('r', 0)),
    },
];

pub fn run(_root: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("zerospan-bench-uprobe-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let result = (|| {
        let (library, driver) = build(&dir)?;
        let instance = Instance::new()?;
        let offsets = symbols(&library)?;
        println!(
            "\nzerospan benchmark: what a uprobe costs per call, by the instruction it is on \
             ({CALLS} calls a round, {ROUNDS} alternating rounds, medians; no BPF program)"
        );
        println!("{:<52}{:>12}{:>14}", "", "ns per call", "over none");
        let mut baselines = Vec::new();
        let mut rows = Vec::new();
        for case in CASES {
            let at = offsets
                .iter()
                .find(|(name, _)| name == case.function)
                .map(|&(_, at)| at)
                .with_context(|| format!("{} not in the library", case.function))?;
            let (mut none, mut probed) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                none.push(call(&driver, case.function)?);
                let (kind, into) = case.probe.context("a case without a probe")?;
                let _probe = instance.probe(kind, &library, at + into)?;
                probed.push(call(&driver, case.function)?);
            }
            baselines.extend(none.iter().copied());
            rows.push((case.what, median(probed)));
        }
        let none = median(baselines);
        println!("{:<52}{:>12.1}{:>14}", "no probe", none, "");
        for (what, ns) in rows {
            println!("{what:<52}{ns:>12.1}{:>14.1}", ns - none);
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}

/// Builds the library and the driver with the system's C compiler.
fn build(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (asm, c) = (dir.join("lib.S"), dir.join("driver.c"));
    fs::write(&asm, LIBRARY)?;
    fs::write(&c, DRIVER)?;
    let library = dir.join("libprobed.so");
    let driver = dir.join("driver");
    let steps: [&[&std::ffi::OsStr]; 2] = [
        &[
            "-shared".as_ref(),
            "-fPIC".as_ref(),
            "-o".as_ref(),
            library.as_os_str(),
            asm.as_os_str(),
        ],
        &[
            "-O2".as_ref(),
            "-o".as_ref(),
            driver.as_os_str(),
            c.as_os_str(),
            library.as_os_str(),
            "-Wl,-rpath".as_ref(),
            dir.as_os_str(),
        ],
    ];
    for args in steps {
        let out = Command::new("cc")
            .args(args)
            .output()
            .context("running cc")?;
        if !out.status.success() {
            bail!("cc: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok((library, driver))
}

/// The library's functions and their file offsets: `nm`'s addresses,
/// which are the offsets uprobes take when `.text` lies at its own file
/// offset (checked).
fn symbols(library: &Path) -> Result<Vec<(String, u64)>> {
    let out = Command::new("readelf")
        .args(["-SW"])
        .arg(library)
        .output()
        .context("running readelf")?;
    let sections = String::from_utf8(out.stdout)?;
    let text = sections
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = f.iter().position(|w| *w == ".text")?;
            Some((*f.get(at + 2)?, *f.get(at + 3)?))
        })
        .context("no .text in the library")?;
    if u64::from_str_radix(text.0, 16)? != u64::from_str_radix(text.1, 16)? {
        bail!("the library's .text is not at its file offset: {text:?}");
    }
    let out = Command::new("nm")
        .arg("-D")
        .arg(library)
        .output()
        .context("running nm")?;
    let text = String::from_utf8(out.stdout)?;
    let found: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            (f.next()? == "T").then_some(())?;
            Some((f.next()?.to_owned(), addr))
        })
        .collect();
    if found.len() != 3 {
        bail!("nm found {found:?} in {}", library.display());
    }
    Ok(found)
}

/// The driver's nanoseconds per call of `function`.
fn call(driver: &Path, function: &str) -> Result<f64> {
    let out = Command::new(driver)
        .args([function, &CALLS.to_string()])
        .output()
        .context("running the driver")?;
    if !out.status.success() {
        bail!("driver: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// A tracefs instance with recording off; removed on drop.
struct Instance {
    path: PathBuf,
}

impl Instance {
    fn new() -> Result<Instance> {
        let path = Path::new(TRACEFS).join("instances").join(INSTANCE);
        // What an interrupted run may have left: its probe, disabled in
        // the instance, then removed; then the instance.
        let _ = fs::write(path.join(format!("events/{GROUP}/case/enable")), "0");
        let _ = append(&format!("-:{GROUP}/case\n"));
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path)
            .with_context(|| format!("creating {} (run as root)", path.display()))?;
        // From here the guard removes it, whatever fails next.
        let instance = Instance { path };
        fs::write(instance.path.join("tracing_on"), "0")?;
        Ok(instance)
    }

    /// Defines and enables a probe until the returned guard drops.
    fn probe(&self, kind: char, library: &Path, offset: u64) -> Result<Probe> {
        append(&format!(
            "{kind}:{GROUP}/case {}:{offset:#x}\n",
            library.display()
        ))?;
        // From here the guard disables and removes it.
        let probe = Probe {
            enable: self.path.join(format!("events/{GROUP}/case/enable")),
        };
        fs::write(&probe.enable, "1")
            .with_context(|| format!("enabling {}", probe.enable.display()))?;
        Ok(probe)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
}

struct Probe {
    enable: PathBuf,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = fs::write(&self.enable, "0");
        let _ = append(&format!("-:{GROUP}/case\n"));
    }
}

/// Appends to `uprobe_events` (truncating would remove every probe).
fn append(line: &str) -> Result<()> {
    use std::io::Write as _;
    let mut events = fs::OpenOptions::new()
        .append(true)
        .open(Path::new(TRACEFS).join("uprobe_events"))?;
    events
        .write_all(line.as_bytes())
        .with_context(|| format!("uprobe_events: {}", line.trim()))
}
