//! The traced processes: which are alive, and the resource each reports as.

use std::sync::Arc;

use crate::hash::{Map, Set};

use crate::host::k8s::{self, PodMeta};
use crate::host::procfs::{self, ProcessMeta};
use crate::spans::{Resource, Value};

/// Resource settings that apply to every traced process.
#[derive(Clone, Debug, Default)]
pub struct ResourceDefaults {
    /// `OTEL_SERVICE_NAME` given to the agent: names every traced process.
    pub service_name: Option<String>,
    /// Parsed `OTEL_RESOURCE_ATTRIBUTES`.
    pub attributes: Vec<(String, String)>,
    pub host_name: String,
}

impl ResourceDefaults {
    /// What every metric resource carries: the host, and what
    /// `OTEL_RESOURCE_ATTRIBUTES` gives (`service.name` aside, which each
    /// resource has its own of).
    /// Each host's agent is one instance of every service it reports
    /// for: without `service.instance.id`, backends would merge the
    /// cumulative series of two hosts into one.
    pub fn metrics_resource(&self) -> Vec<(String, Value)> {
        let mut attrs = vec![
            ("host.name".to_owned(), self.host_name.as_str().into()),
            (
                "service.instance.id".to_owned(),
                self.host_name.as_str().into(),
            ),
        ];
        for (k, v) in &self.attributes {
            if !["service.name", "host.name", "service.instance.id"].contains(&k.as_str()) {
                attrs.push((k.clone(), v.as_str().into()));
            }
        }
        attrs
    }
}

/// What the registry knows of one process.
struct Known {
    meta: ProcessMeta,
    resource: Arc<Resource>,
    /// Its pod as of `pods_generation`, when it runs in a container.
    pod: Option<Arc<PodMeta>>,
    pods_generation: u64,
}

pub struct Registry {
    defaults: ResourceDefaults,
    /// This node's pods, when the Kubernetes API is used.
    pods: Option<k8s::Shared>,
    /// Metadata and resource by pid, for live and recently exited processes.
    known: Map<u32, Known>,
    /// Processes still running that the agent traces.
    live: Set<u32>,
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES`: `k=v,k2=v2`, values percent-decoded.
pub fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Builds a process's resource. Precedence for `service.name`: the agent's
/// `OTEL_SERVICE_NAME`, then the process's own, then `service.name` from
/// the agent's `OTEL_RESOURCE_ATTRIBUTES`, then what its pod declares
/// (annotation, `app.kubernetes.io/name`), its workload's name, then the
/// executable name (the OpenTelemetry Operator's order).
pub fn build_resource(
    pid: u32,
    meta: &ProcessMeta,
    d: &ResourceDefaults,
    pod: Option<&PodMeta>,
) -> Resource {
    let from_attrs = d
        .attributes
        .iter()
        .find_map(|(k, v)| (k == "service.name").then(|| v.clone()));
    let service = d
        .service_name
        .clone()
        .or_else(|| meta.service_name.clone())
        .or(from_attrs)
        .or_else(|| pod.and_then(PodMeta::service_name).map(str::to_owned))
        .unwrap_or_else(|| meta.executable_name.clone());
    let mut attrs: Vec<(String, Value)> = vec![
        ("service.name".into(), service.into()),
        ("process.pid".into(), i64::from(pid).into()),
        (
            "process.executable.name".into(),
            meta.executable_name.as_str().into(),
        ),
        (
            "process.command_line".into(),
            meta.command_line.as_str().into(),
        ),
        ("host.name".into(), d.host_name.as_str().into()),
        ("telemetry.sdk.name".into(), "zerospan".into()),
        ("telemetry.sdk.language".into(), "rust".into()),
        (
            "telemetry.sdk.version".into(),
            env!("CARGO_PKG_VERSION").into(),
        ),
    ];
    if let Some(path) = &meta.executable_path {
        attrs.push(("process.executable.path".into(), path.as_str().into()));
    }
    if let Some(id) = &meta.container.id {
        attrs.push(("container.id".into(), id.as_str().into()));
    }
    match pod {
        Some(pod) => attrs.extend(
            pod.attributes()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into())),
        ),
        None => {
            if let Some(uid) = &meta.container.pod_uid {
                attrs.push(("k8s.pod.uid".into(), uid.as_str().into()));
            }
        }
    }
    for (k, v) in &d.attributes {
        if !attrs.iter().any(|(have, _)| have == k) {
            attrs.push((k.clone(), v.as_str().into()));
        }
    }
    Resource {
        pid,
        attributes: attrs,
    }
}

impl Registry {
    pub fn new(defaults: ResourceDefaults, pods: Option<k8s::Shared>) -> Self {
        Registry {
            defaults,
            pods,
            known: Map::default(),
            live: Set::default(),
        }
    }

    /// The pod of a process's container, and the index version it is from.
    fn pod_of(&self, meta: &ProcessMeta) -> (Option<Arc<PodMeta>>, u64) {
        match &self.pods {
            Some(pods) => {
                let generation = pods.generation();
                (pods.of(&meta.container), generation)
            }
            None => (None, 0),
        }
    }

    fn set(&mut self, pid: u32, meta: ProcessMeta) {
        let (pod, pods_generation) = self.pod_of(&meta);
        let resource = Arc::new(build_resource(pid, &meta, &self.defaults, pod.as_deref()));
        self.known.insert(
            pid,
            Known {
                meta,
                resource,
                pod,
                pods_generation,
            },
        );
    }

    /// Starts tracing a running process, reading its metadata from `/proc`.
    pub fn add(&mut self, pid: u32) {
        self.live.insert(pid);
        if let Some(meta) = procfs::process_meta(pid) {
            self.set(pid, meta);
        }
    }

    /// Starts tracing a process whose metadata the caller knows (a command
    /// the agent is about to exec).
    pub fn add_with(&mut self, pid: u32, meta: ProcessMeta) {
        self.live.insert(pid);
        self.set(pid, meta);
    }

    /// A traced process forked: the child runs the parent's image until it execs.
    pub fn fork(&mut self, parent: u32, child: u32, comm: &str) {
        self.live.insert(child);
        let meta = match self.known.get(&parent) {
            Some(k) => k.meta.clone(),
            None => comm_meta(comm),
        };
        self.set(child, meta);
    }

    /// A traced process exec'd. If it is already gone, its `comm` names it.
    pub fn exec(&mut self, pid: u32, comm: &str) {
        if let Some(meta) = procfs::process_meta(pid) {
            return self.set(pid, meta);
        }
        // comm is the executable name cut to 15 bytes.
        let same = self
            .known
            .get(&pid)
            .is_some_and(|k| k.meta.executable_name.starts_with(comm) && !comm.is_empty());
        if !same {
            self.set(pid, comm_meta(comm));
        }
    }

    pub fn exited(&mut self, pid: u32) {
        self.live.remove(&pid);
    }

    /// Forgets exited processes once their spans are out.
    pub fn prune(&mut self) {
        let live = &self.live;
        self.known.retain(|pid, _| live.contains(pid));
    }

    pub fn live_pids(&self) -> Vec<u32> {
        self.live.iter().copied().collect()
    }

    pub fn is_live(&self, pid: u32) -> bool {
        self.live.contains(&pid)
    }

    pub fn any_live(&self) -> bool {
        !self.live.is_empty()
    }

    /// The resource for `pid`, reading `/proc` on first use. A process in a
    /// container whose pod was unknown, or has changed, since its resource
    /// was built gets a new one: pods often reach the API's watch a moment
    /// after their processes start. A pod that leaves the index while its
    /// process runs (deleted, or left out of a full index) keeps the names
    /// last known, rather than the process changing its service mid-life.
    pub fn resource(&mut self, pid: u32) -> Arc<Resource> {
        if !self.known.contains_key(&pid) {
            let meta =
                procfs::process_meta(pid).unwrap_or_else(|| comm_meta(&format!("pid-{pid}")));
            self.set(pid, meta);
        } else if let Some(pods) = &self.pods {
            let k = &self.known[&pid];
            if k.meta.container.id.is_some() && k.pods_generation != pods.generation() {
                let (pod, generation) = self.pod_of(&k.meta);
                let changed = pod.is_some() && pod != k.pod;
                let k = self.known.get_mut(&pid).expect("checked above");
                if changed {
                    k.resource =
                        Arc::new(build_resource(pid, &k.meta, &self.defaults, pod.as_deref()));
                    k.pod = pod;
                }
                k.pods_generation = generation;
            }
        }
        self.known[&pid].resource.clone()
    }
}

fn comm_meta(comm: &str) -> ProcessMeta {
    ProcessMeta {
        executable_name: comm.to_owned(),
        executable_path: None,
        command_line: comm.to_owned(),
        container: Default::default(),
        service_name: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ProcessMeta {
        ProcessMeta {
            executable_name: "python3".into(),
            executable_path: Some("/usr/bin/python3".into()),
            command_line: "python3 -m http.server".into(),
            container: Default::default(),
            service_name: None,
        }
    }

    #[test]
    fn service_name_precedence() {
        let mut d = ResourceDefaults {
            host_name: "h".into(),
            attributes: parse_resource_attributes(
                "service.name=attr,deployment.environment.name=prod%2Ceu",
            ),
            ..Default::default()
        };
        let r = build_resource(7, &meta(), &d, None);
        assert_eq!(r.get("service.name"), Some(&"attr".into()));
        assert_eq!(
            r.get("deployment.environment.name"),
            Some(&"prod,eu".into())
        );
        let mut m = meta();
        m.service_name = Some("own".into());
        assert_eq!(
            build_resource(7, &m, &d, None).get("service.name"),
            Some(&"own".into())
        );
        d.service_name = Some("agent".into());
        assert_eq!(
            build_resource(7, &m, &d, None).get("service.name"),
            Some(&"agent".into())
        );
        d = ResourceDefaults::default();
        let r = build_resource(7, &meta(), &d, None);
        assert_eq!(r.get("service.name"), Some(&"python3".into()));
        assert_eq!(r.get("process.pid"), Some(&7.into()));
        assert_eq!(r.get("telemetry.sdk.name"), Some(&"zerospan".into()));
    }

    #[test]
    fn a_pod_decorates_and_names_a_process_once_it_is_known() {
        let pods = k8s::Shared::default();
        let mut reg = Registry::new(ResourceDefaults::default(), Some(pods.clone()));
        let mut m = meta();
        m.container = crate::host::container::parse(
            "0::/kubepods/besteffort/poda1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d/\
             crio-4a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c",
        );
        reg.add_with(1_000_000_003, m.clone());
        // The pod is not known yet: the cgroup's ids only.
        let r = reg.resource(1_000_000_003);
        assert_eq!(r.get("service.name"), Some(&"python3".into()));
        assert_eq!(
            r.get("k8s.pod.uid"),
            Some(&"a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d".into())
        );
        assert_eq!(r.get("k8s.pod.name"), None);
        pods.replace_all(&[k8s::pod::tests::fixture("pod-statefulset-crio")]);
        let r = reg.resource(1_000_000_003);
        assert_eq!(r.get("k8s.pod.name"), Some(&"orders-db-0".into()));
        assert_eq!(r.get("k8s.statefulset.name"), Some(&"orders-db".into()));
        assert_eq!(r.get("service.name"), Some(&"orders-db".into()));
        assert_eq!(
            r.attributes
                .iter()
                .filter(|(k, _)| k == "k8s.pod.uid")
                .count(),
            1
        );
        // Deleted while the process runs: the names stay.
        pods.replace_all(&[]);
        let r = reg.resource(1_000_000_003);
        assert_eq!(r.get("k8s.pod.name"), Some(&"orders-db-0".into()));
        // The app's own OTEL_SERVICE_NAME still wins.
        m.service_name = Some("own".into());
        reg.add_with(1_000_000_004, m);
        assert_eq!(
            reg.resource(1_000_000_004).get("service.name"),
            Some(&"own".into())
        );
    }

    #[test]
    fn forked_children_inherit_until_exec() {
        let mut reg = Registry::new(ResourceDefaults::default(), None);
        reg.add_with(1_000_000_001, meta());
        reg.fork(1_000_000_001, 1_000_000_002, "python3");
        let r = reg.resource(1_000_000_002);
        assert_eq!(r.get("process.pid"), Some(&1_000_000_002i64.into()));
        assert_eq!(
            r.get("process.command_line"),
            Some(&"python3 -m http.server".into())
        );
        // Exec of a process already gone: keep what we know if comm agrees...
        reg.exec(1_000_000_002, "python3");
        let r = reg.resource(1_000_000_002);
        assert_eq!(
            r.get("process.command_line"),
            Some(&"python3 -m http.server".into())
        );
        // ...otherwise name it by comm.
        reg.exec(1_000_000_002, "curl");
        let r = reg.resource(1_000_000_002);
        assert_eq!(r.get("service.name"), Some(&"curl".into()));
        reg.exited(1_000_000_001);
        reg.exited(1_000_000_002);
        assert!(!reg.any_live());
    }

    #[test]
    fn resource_attribute_parsing_tolerates_junk() {
        assert_eq!(
            parse_resource_attributes("k=é%"),
            vec![("k".into(), "é%".into())]
        );
        assert_eq!(
            parse_resource_attributes("a=1, b = 2 ,junk,=x,c=%zz"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("c".into(), "%zz".into())
            ]
        );
    }
}
