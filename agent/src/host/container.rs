//! Which container a process runs in, from its `/proc/PID/cgroup` alone:
//! the container id (`container.id`) and, under Kubernetes, the pod's uid
//! (`k8s.pod.uid`). No API is needed, so this works with the Kubernetes API
//! unreachable, and on hosts running plain docker or podman.

/// What a cgroup file says of a process's container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub id: Option<String>,
    pub pod_uid: Option<String>,
}

/// Runtimes name a container's cgroup after its 64-hex id, with a prefix
/// and, under systemd, a `.scope` suffix.
const PREFIXES: &[&str] = &[
    "cri-containerd-",
    "crio-",
    "docker-",
    "libpod-",
    "containerd-",
];

fn container_id(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    let s = PREFIXES.iter().find_map(|p| s.strip_prefix(p)).unwrap_or(s);
    normal_id(s)
}

/// A container id as every runtime writes it (64 hex digits), lowercase;
/// `None` for anything else.
pub fn normal_id(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// `pod<uid>` (cgroupfs) or `kubepods-…-pod<uid with _>.slice` (systemd).
/// A static pod's uid (etcd, the API server on a control-plane node) is
/// the 32-hex hash kubelet gives its manifest, not a UUID.
fn pod_uid(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = s.rfind("pod")?;
    let uid = s[at + 3..].replace('_', "-");
    let uuid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    let hash = uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit());
    (uuid || hash).then_some(uid)
}

/// Reads the text of `/proc/PID/cgroup` (v1 or v2 lines).
pub fn parse(cgroup: &str) -> Container {
    let mut c = Container::default();
    for line in cgroup.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        for segment in path.split('/') {
            if let Some(id) = container_id(segment) {
                c.id = Some(id);
            }
            if let Some(uid) = pod_uid(segment) {
                c.pod_uid = Some(uid);
            }
        }
        if c.id.is_some() {
            break;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c8e6b2a9d4c7e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a";

    #[test]
    fn runtimes_and_drivers() {
        let uid = "1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b";
        let static_uid = "0c6f1e8b2d4a4c7e9f1a3b5d7e9f1a3c";
        let cases = [
            // A static pod (etcd): its uid is kubelet's hash of its manifest.
            (
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{static_uid}.slice/cri-containerd-{ID}.scope"),
                Some(static_uid),
            ),
            // containerd, systemd cgroup driver (kubelet default).
            (
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope", uid.replace('-', "_")),
                Some(uid),
            ),
            // CRI-O.
            (
                format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{ID}.scope", uid.replace('-', "_")),
                Some(uid),
            ),
            // containerd, cgroupfs driver, cgroup v1.
            (format!("12:pids:/kubepods/burstable/pod{uid}/{ID}\n11:memory:/kubepods/burstable/pod{uid}/{ID}"), Some(uid)),
            // docker, systemd and cgroupfs; podman.
            (format!("0::/system.slice/docker-{ID}.scope"), None),
            (format!("4:memory:/docker/{ID}"), None),
            (format!("0::/machine.slice/libpod-{ID}.scope"), None),
        ];
        for (text, pod) in cases {
            let c = parse(&text);
            assert_eq!(c.id.as_deref(), Some(ID), "{text}");
            assert_eq!(c.pod_uid.as_deref(), pod, "{text}");
        }
    }

    #[test]
    fn hosts_processes_have_no_container() {
        // This machine's own processes: a 32-hex memory cgroup, not a
        // container id.
        let host = "9:name=systemd:/\n4:memory:/process_api/aeecc551904b4d664493238f9f4f9514\n0::/";
        assert_eq!(parse(host), Container::default());
        assert_eq!(
            parse("0::/user.slice/user-0.slice/session-1.scope"),
            Container::default()
        );
        assert_eq!(parse(""), Container::default());
        assert_eq!(parse("garbage"), Container::default());
    }
}
