//! Which processes to trace, by what they are rather than by pid: an
//! executable path glob, a command-line regex, a listening port. A process
//! matching any selector is traced unless an exclusion matches it;
//! exclusions win. The agent itself and OpenTelemetry collectors are never
//! traced. Matching is pure over a [`Candidate`]; reading `/proc` is the
//! caller's.

use std::{net::SocketAddr, ops::RangeInclusive, sync::Arc};

use anyhow::{bail, Context as _};
use regex_lite::Regex;

use crate::host::{
    glob::glob_match,
    k8s::{select::PodSelectors, PodMeta, Pods},
    procfs,
};

/// What the selectors look at.
#[derive(Debug, Default)]
pub struct Candidate {
    pub pid: u32,
    /// The executable's path (`/proc/PID/exe`), or its name when the link
    /// cannot be read.
    pub exe: String,
    /// Arguments joined by spaces.
    pub cmdline: String,
    /// Ports it listens on.
    pub ports: Vec<u16>,
    /// It runs in a container (its cgroup is named by a container runtime).
    pub in_container: bool,
    /// Its container's pod, when the Kubernetes API has told of it.
    pub pod: Option<Arc<PodMeta>>,
    /// Its cgroup names a Kubernetes pod (kubelet's `pod<uid>`).
    pub in_pod: bool,
}

impl Candidate {
    /// Reads a live process; `None` once it has gone. Listening ports are
    /// read only when `with_ports` (it costs a walk of its fds).
    pub fn read(pid: u32, with_ports: bool, pods: Option<&Pods>) -> Option<Candidate> {
        let meta = procfs::process_meta(pid)?;
        let ports = if with_ports {
            let table = procfs::tcp_sockets(pid);
            procfs::socket_fds(pid)
                .into_iter()
                .filter_map(|(_, inode)| table.get(&inode))
                .filter(|row| row.state == procfs::TCP_LISTEN)
                .map(|row: &procfs::TcpRow| SocketAddr::port(&row.local))
                .collect()
        } else {
            Vec::new()
        };
        let pod = pods.and_then(|p| p.of(&meta.container));
        Some(Candidate {
            pid,
            in_container: meta.container.id.is_some(),
            exe: meta.executable_path.unwrap_or(meta.executable_name),
            cmdline: meta.command_line,
            ports,
            pod,
            in_pod: meta.container.pod_uid.is_some(),
        })
    }
}

/// Executables never traced: the agent, and OpenTelemetry collectors
/// (tracing the exporter's own traffic would feed back into itself).
const NEVER: &[&str] = &["*/zerospan", "*/otelcol*", "*/otel-collector*"];

#[derive(Clone, Debug, Default)]
pub struct Selectors {
    exe: Vec<String>,
    cmdline: Vec<Regex>,
    ports: Vec<RangeInclusive<u16>>,
    exclude_exe: Vec<String>,
    exclude_cmdline: Vec<Regex>,
    /// Only processes in containers (`--containers-only`).
    containers_only: bool,
    /// Only processes in pods that match (`--k8s-…`).
    pods: PodSelectors,
}

fn parse_ports(spec: &str) -> anyhow::Result<RangeInclusive<u16>> {
    let num = |s: &str| -> anyhow::Result<u16> {
        s.trim()
            .parse()
            .with_context(|| format!("port {s:?} is not a number from 0 to 65535"))
    };
    let range = match spec.split_once('-') {
        Some((a, b)) => num(a)?..=num(b)?,
        None => {
            let p = num(spec)?;
            p..=p
        }
    };
    if range.is_empty() {
        bail!("port range {spec:?} is empty");
    }
    Ok(range)
}

fn regex(what: &str, r: &str) -> anyhow::Result<Regex> {
    Regex::new(r).with_context(|| format!("{what} {r:?} is not a valid regular expression"))
}

impl Selectors {
    pub fn new(
        exe: &[String],
        cmdline: &[String],
        ports: &[String],
        exclude_exe: &[String],
        exclude_cmdline: &[String],
    ) -> anyhow::Result<Self> {
        Ok(Selectors {
            exe: exe.to_vec(),
            cmdline: cmdline
                .iter()
                .map(|r| regex("--cmdline", r))
                .collect::<Result<_, _>>()?,
            ports: ports
                .iter()
                .map(|p| parse_ports(p))
                .collect::<Result<_, _>>()?,
            exclude_exe: exclude_exe.to_vec(),
            exclude_cmdline: exclude_cmdline
                .iter()
                .map(|r| regex("--exclude-cmdline", r))
                .collect::<Result<_, _>>()?,
            containers_only: false,
            pods: PodSelectors::default(),
        })
    }

    /// Restricts the selection to processes in matching pods; alone, it
    /// selects every one of them.
    pub fn pods(mut self, pods: PodSelectors) -> Self {
        self.pods = pods;
        self
    }

    /// Whether matching needs the Kubernetes API.
    pub fn needs_pods(&self) -> bool {
        self.pods.needs_api()
    }

    /// Restricts the selection to processes in containers; alone, it
    /// selects every one of them.
    pub fn containers_only(mut self, yes: bool) -> Self {
        self.containers_only = yes;
        self
    }

    /// Whether any selector was given (else the agent traces only what it
    /// is pointed at).
    pub fn any(&self) -> bool {
        self.any_positive() || self.containers_only || self.pods.any()
    }

    fn any_positive(&self) -> bool {
        !self.exe.is_empty() || !self.cmdline.is_empty() || !self.ports.is_empty()
    }

    /// Whether matching needs the candidate's listening ports.
    pub fn wants_ports(&self) -> bool {
        !self.ports.is_empty()
    }

    pub fn excluded(&self, c: &Candidate) -> bool {
        c.pid == std::process::id()
            || NEVER.iter().any(|g| glob_match(g, &c.exe))
            || self.exclude_exe.iter().any(|g| glob_match(g, &c.exe))
            || self.exclude_cmdline.iter().any(|r| r.is_match(&c.cmdline))
            || c.pod.as_ref().is_some_and(|p| self.pods.excluded(p))
    }

    pub fn matches(&self, c: &Candidate) -> bool {
        if self.excluded(c) || (self.containers_only && !c.in_container) {
            return false;
        }
        if self.pods.any() && !c.pod.as_ref().is_some_and(|p| self.pods.matches(p)) {
            return false;
        }
        // A pod's process is never judged without its pod (which may be
        // excluded): it is looked at again when the API tells of the pod.
        // Containers that are not pods (`docker run` on the node) are judged
        // as they are.
        if self.pods.needs_api() && c.in_pod && c.pod.is_none() {
            return false;
        }
        if !self.any_positive() {
            return self.containers_only || self.pods.any();
        }
        self.exe.iter().any(|g| glob_match(g, &c.exe))
            || self.cmdline.iter().any(|r| r.is_match(&c.cmdline))
            || c.ports
                .iter()
                .any(|p| self.ports.iter().any(|r| r.contains(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(exe: &str, cmdline: &str, ports: &[u16]) -> Candidate {
        Candidate {
            pid: 4242,
            exe: exe.into(),
            cmdline: cmdline.into(),
            ports: ports.to_vec(),
            in_container: false,
            pod: None,
            in_pod: false,
        }
    }

    #[test]
    fn pod_criteria_narrow_other_selectors_and_alone_select() {
        let pod = |name: &str| {
            crate::host::k8s::pod::containers(&crate::host::k8s::pod::tests::fixture(name))
                .remove(0)
                .1
        };
        let checkout = Candidate {
            in_container: true,
            in_pod: true,
            pod: Some(Arc::new(pod("pod-deployment-containerd"))),
            ..cand("/usr/bin/python3.11", "python3 app.py", &[])
        };
        let db = Candidate {
            in_container: true,
            in_pod: true,
            pod: Some(Arc::new(pod("pod-statefulset-crio"))),
            ..cand("/usr/lib/postgresql/15/bin/postgres", "postgres", &[])
        };
        // In a pod not yet known.
        let unknown = Candidate {
            in_container: true,
            in_pod: true,
            ..cand("/usr/bin/python3.11", "python3 app.py", &[])
        };
        // In a container that is no pod.
        let docker = Candidate {
            in_container: true,
            ..cand("/usr/bin/python3.11", "python3 app.py", &[])
        };
        let pods = |ns: &[&str], exclude: &[&str]| {
            let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            PodSelectors::new(&v(ns), &[], &[], &[], &v(exclude)).unwrap()
        };
        let alone = Selectors::new(&[], &[], &[], &[], &[])
            .unwrap()
            .pods(pods(&["shop"], &[]));
        assert!(alone.any() && alone.needs_pods());
        assert!(alone.matches(&checkout) && alone.matches(&db) && !alone.matches(&unknown));
        let python_in_shop = Selectors::new(&["*/python3*".into()], &[], &[], &[], &[])
            .unwrap()
            .pods(pods(&["shop"], &[]));
        assert!(python_in_shop.matches(&checkout) && !python_in_shop.matches(&db));
        // An excluded namespace wins over an exe selector.
        let not_shop = Selectors::new(&["*".into()], &[], &[], &[], &[])
            .unwrap()
            .pods(pods(&[], &["shop"]));
        assert!(!not_shop.matches(&checkout));
        // A pod not known yet is waited for, rather than traced past its
        // exclusions; a container that is no pod is judged as it is.
        assert!(!not_shop.matches(&unknown) && not_shop.matches(&docker));
        assert!(!alone.matches(&docker));
    }

    #[test]
    fn containers_only_restricts_and_alone_selects_every_container() {
        let inside = Candidate {
            in_container: true,
            ..cand("/usr/bin/python3.11", "python3 app.py", &[])
        };
        let outside = cand("/usr/bin/python3.11", "python3 app.py", &[]);
        let s = Selectors::new(&["*/python3*".into()], &[], &[], &[], &[])
            .unwrap()
            .containers_only(true);
        assert!(s.matches(&inside) && !s.matches(&outside));
        let alone = Selectors::new(&[], &[], &[], &[], &[])
            .unwrap()
            .containers_only(true);
        assert!(alone.any());
        assert!(alone.matches(&inside) && !alone.matches(&outside));
        let none = Selectors::new(&[], &[], &[], &[], &[]).unwrap();
        assert!(!none.any());
    }

    #[test]
    fn selectors_and_exclusions() {
        let s = Selectors::new(
            &["*/python3*".into()],
            &["gunicorn .*app:".into()],
            &["8000-8099".into(), "5432".into()],
            &["*/python3.9".into()],
            &["--no-trace".into()],
        )
        .unwrap();
        assert!(s.any() && s.wants_ports());
        assert!(s.matches(&cand("/usr/bin/python3.11", "python3 x.py", &[])));
        assert!(!s.matches(&cand("/usr/bin/python3.9", "python3 x.py", &[])));
        assert!(s.matches(&cand("/usr/bin/env", "gunicorn -w 2 app:app", &[])));
        assert!(s.matches(&cand(
            "/usr/lib/postgresql/15/bin/postgres",
            "postgres",
            &[5432]
        )));
        assert!(s.matches(&cand("/opt/svc", "svc", &[8042])));
        assert!(!s.matches(&cand("/opt/svc", "svc", &[9000])));
        // Exclusions win.
        assert!(!s.matches(&cand(
            "/usr/bin/python3.11",
            "python3 x.py --no-trace",
            &[8000]
        )));
        // Never the agent, never a collector.
        assert!(!s.matches(&cand("/usr/local/bin/zerospan", "zerospan", &[8000])));
        assert!(!s.matches(&cand(
            "/usr/bin/otelcol-contrib",
            "otelcol-contrib",
            &[8001]
        )));
    }

    #[test]
    fn bad_selectors_say_which() {
        let e = Selectors::new(&[], &["(".into()], &[], &[], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("--cmdline \"(\""), "{e:#}");
        let e = Selectors::new(&[], &[], &["90-80".into()], &[], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("empty"), "{e:#}");
        let e = Selectors::new(&[], &[], &["http".into()], &[], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("\"http\""), "{e:#}");
    }
}
