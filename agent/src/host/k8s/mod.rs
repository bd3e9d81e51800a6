//! Kubernetes metadata: which pod, container and workload a process belongs
//! to, from the pods of this node.
//!
//! ```text
//! API server ──list+watch (spec.nodeName=NODE)──▶ watch.rs ──▶ Pods (index by container id)
//!                                                                   │
//! /proc/PID/cgroup ──container::parse──▶ container id ──lookup──────┘──▶ resource, selectors
//! ```
//!
//! The cgroup gives the container id with no API at all (`container.id`,
//! `k8s.pod.uid`); the index adds the names. Without the API nothing fails:
//! the names are simply missing.

pub mod pod;
pub mod select;
pub mod watch;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, RwLock,
    },
};

use k8s_openapi::api::core::v1::Pod;
pub use pod::PodMeta;

/// Containers kept at most: a node runs at most a few hundred pods; this
/// bounds memory if the API sends far more than that.
pub const MAX_CONTAINERS: usize = 20_000;

#[derive(Default)]
struct Index {
    by_container: HashMap<String, Arc<PodMeta>>,
    /// Container ids by pod uid, to forget a pod's containers.
    by_pod: HashMap<String, Vec<String>>,
    /// Pods whose containers did not fit under [`MAX_CONTAINERS`].
    left_out: HashSet<String>,
}

impl Index {
    fn remove(&mut self, uid: &str) {
        self.left_out.remove(uid);
        for id in self.by_pod.remove(uid).unwrap_or_default() {
            self.by_container.remove(&id);
        }
    }

    fn upsert(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        self.remove(uid);
        let containers = pod::containers(pod);
        if self.by_container.len() + containers.len() > MAX_CONTAINERS {
            self.left_out.insert(uid.to_owned());
            return;
        }
        let ids = containers.iter().map(|(id, _)| id.clone()).collect();
        for (id, meta) in containers {
            self.by_container.insert(id, Arc::new(meta));
        }
        self.by_pod.insert(uid.to_owned(), ids);
    }
}

/// The node's pods, shared by the watch (writer) and the event path.
#[derive(Default)]
pub struct Pods {
    index: RwLock<Index>,
    /// Bumped on every change, so readers can tell their copy is stale
    /// without taking the lock.
    generation: AtomicU64,
    /// The first full list has arrived.
    synced: AtomicBool,
}

pub type Shared = Arc<Pods>;

impl Pods {
    /// The pod of the container a process's cgroup names, if known.
    pub fn of(&self, container: &crate::host::container::Container) -> Option<Arc<PodMeta>> {
        self.lookup(container.id.as_deref()?)
    }

    pub fn lookup(&self, container_id: &str) -> Option<Arc<PodMeta>> {
        self.index
            .read()
            .expect("not poisoned")
            .by_container
            .get(container_id)
            .cloned()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Relaxed)
    }

    pub fn len(&self) -> usize {
        self.index.read().expect("not poisoned").by_container.len()
    }

    /// Pods left out because the index is full.
    pub fn left_out(&self) -> usize {
        self.index.read().expect("not poisoned").left_out.len()
    }

    /// A pod was added or changed.
    pub fn upsert(&self, pod: &Pod) {
        self.index.write().expect("not poisoned").upsert(pod);
        self.generation.fetch_add(1, Relaxed);
    }

    pub fn remove(&self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.index.write().expect("not poisoned").remove(uid);
            self.generation.fetch_add(1, Relaxed);
        }
    }

    /// A full list: what is not in it is gone.
    pub fn replace_all(&self, pods: &[Pod]) {
        let mut fresh = Index::default();
        for pod in pods {
            fresh.upsert(pod);
        }
        *self.index.write().expect("not poisoned") = fresh;
        self.generation.fetch_add(1, Relaxed);
        self.synced.store(true, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::container;

    /// cgroup lines in the form each runtime writes them (containerd under
    /// the systemd driver, CRI-O and docker under cgroupfs), for the
    /// containers of the fixture pods.
    const CGROUPS: &[(&str, &str)] = &[
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b0e2a4c_8d1f_4e3a_9b5c_7d2e1f0a3b4c.slice/cri-containerd-9d5f1c7a3e2b4d6f8a0c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f.scope",
            "checkout-7c9d8b5f4d-x2x7q",
        ),
        (
            "0::/kubepods/besteffort/poda1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d/crio-4a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c",
            "orders-db-0",
        ),
        (
            "0::/kubepods/besteffort/podc7e9b1d3-f5a7-4c9e-8b3d-5f7a9c1e3b5d/e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3",
            "nightly-report-29402520-7kq2m",
        ),
    ];

    fn pods() -> Vec<Pod> {
        [
            "pod-deployment-containerd",
            "pod-statefulset-crio",
            "pod-cronjob-docker",
        ]
        .map(pod::tests::fixture)
        .to_vec()
    }

    #[test]
    fn cgroup_paths_lead_to_their_pods() {
        let index = Pods::default();
        index.replace_all(&pods());
        for (cgroup, pod_name) in CGROUPS {
            let c = container::parse(cgroup);
            let meta = index
                .lookup(c.id.as_deref().expect(cgroup))
                .unwrap_or_else(|| panic!("{cgroup}"));
            assert_eq!(&meta.pod_name, pod_name);
            assert_eq!(c.pod_uid.as_deref(), Some(meta.pod_uid.as_str()));
        }
    }

    #[test]
    fn changes_and_deletions_replace_what_was_known() {
        let index = Pods::default();
        let mut all = pods();
        index.replace_all(&all);
        let g = index.generation();
        let app = "9d5f1c7a3e2b4d6f8a0c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f";
        // The app container restarted: a new id.
        let restarted = "1".repeat(64);
        all[0]
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .container_id = Some(format!("containerd://{restarted}"));
        index.upsert(&all[0]);
        assert!(index.generation() > g);
        assert!(index.lookup(app).is_none());
        assert_eq!(index.lookup(&restarted).unwrap().container_name, "app");
        index.remove(&all[0]);
        assert!(index.lookup(&restarted).is_none());
        assert_eq!(index.len(), 2);
        // A relist without the CronJob's pod forgets it.
        index.replace_all(&all[1..2]);
        assert_eq!(index.len(), 1);
    }
}
