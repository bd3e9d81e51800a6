//! `zerospan doctor` on this machine: as root it finds everything the agent
//! needs; as an unprivileged user it says exactly what is missing.

use std::process::Command;

use zerospan_tests::{doctor_line, procs::agent_binary, require_root};

fn doctor(as_nobody: bool) -> (bool, String) {
    let bin = agent_binary();
    let out = if as_nobody {
        // A copy nobody can execute: the build tree may not be readable.
        let copy = std::env::temp_dir().join(format!("zerospan-doctor-{}", std::process::id()));
        std::fs::copy(&bin, &copy).unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(&copy)
            .status()
            .unwrap();
        let out = Command::new("su")
            .args(["nobody", "-s", "/bin/sh", "-c"])
            .arg(format!("{} doctor", copy.display()))
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&copy);
        out
    } else {
        Command::new(&bin).arg("doctor").output().unwrap()
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn doctor_as_root_finds_this_host_ready() {
    require_root();
    let (ok, report) = doctor(false);
    assert!(ok, "{report}");
    for check in [
        "btf",
        "go goroutines",
        "tracefs",
        "syscall tracepoints",
        "capabilities",
        "ring buffer",
        "tracepoint programs",
        "uprobes",
    ] {
        let l = doctor_line(&report, check);
        assert!(l[22..].starts_with(" ok "), "{l}");
    }
    // bpffs is not needed (nothing is pinned): reported either way.
    let bpffs = doctor_line(&report, "bpffs");
    assert!(
        bpffs[22..].starts_with(" ok ") || bpffs.contains("info not mounted (not needed"),
        "{bpffs}"
    );
    // This kernel has no kprobes (see the design brief); not needed.
    assert!(
        doctor_line(&report, "kprobes").contains("info absent (not needed"),
        "{report}"
    );
    assert!(report.trim_end().ends_with("result: ready"), "{report}");
}

#[test]
fn doctor_without_privileges_names_what_is_missing() {
    require_root();
    let (ok, report) = doctor(true);
    assert!(!ok, "{report}");
    let caps = doctor_line(&report, "capabilities");
    assert!(caps.contains("FAIL missing: CAP_BPF"), "{caps}");
    assert!(
        report.contains("fix: run as root, or grant CAP_BPF, CAP_PERFMON"),
        "{report}"
    );
    assert!(
        doctor_line(&report, "ring buffer").contains("FAIL"),
        "{report}"
    );
    assert!(
        report.contains("problem(s) to fix before the agent can run"),
        "{report}"
    );
}
