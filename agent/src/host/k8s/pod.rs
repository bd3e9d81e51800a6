//! What a pod object says about each of its containers: the attributes
//! spans carry and the names selectors match. Pure: no API calls.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

/// The workload that owns a pod, as the semantic conventions name it:
/// `kind` is the attribute (`k8s.deployment.name`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: OwnerKind,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl OwnerKind {
    /// The resource attribute holding the owner's name.
    pub fn attribute(self) -> &'static str {
        match self {
            OwnerKind::Deployment => "k8s.deployment.name",
            OwnerKind::ReplicaSet => "k8s.replicaset.name",
            OwnerKind::StatefulSet => "k8s.statefulset.name",
            OwnerKind::DaemonSet => "k8s.daemonset.name",
            OwnerKind::Job => "k8s.job.name",
            OwnerKind::CronJob => "k8s.cronjob.name",
        }
    }

    /// How a user writes it in `--k8s-owner KIND/NAME`.
    pub fn parse(kind: &str) -> Option<Self> {
        Some(match kind.to_ascii_lowercase().as_str() {
            "deployment" => OwnerKind::Deployment,
            "replicaset" => OwnerKind::ReplicaSet,
            "statefulset" => OwnerKind::StatefulSet,
            "daemonset" => OwnerKind::DaemonSet,
            "job" => OwnerKind::Job,
            "cronjob" => OwnerKind::CronJob,
            _ => return None,
        })
    }
}

/// One container of a pod, decorated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub node_name: Option<String>,
    pub container_name: String,
    /// Outermost first: a Deployment, then its ReplicaSet.
    pub owners: Vec<Owner>,
    pub labels: BTreeMap<String, String>,
    /// `resource.opentelemetry.io/service.name`, else the
    /// `app.kubernetes.io/name` label.
    pub declared_service: Option<String>,
}

impl PodMeta {
    /// `service.name` from Kubernetes alone: the declared name, else the
    /// outermost owner's name (a Deployment rather than its ReplicaSet).
    /// `None` leaves the executable name to the caller.
    pub fn service_name(&self) -> Option<&str> {
        self.declared_service
            .as_deref()
            .or_else(|| self.owners.first().map(|o| o.name.as_str()))
    }

    /// The resource attributes this container adds, in a stable order.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("k8s.namespace.name", self.namespace.clone()),
            ("k8s.pod.name", self.pod_name.clone()),
            ("k8s.pod.uid", self.pod_uid.clone()),
            ("k8s.container.name", self.container_name.clone()),
        ];
        if let Some(node) = &self.node_name {
            out.push(("k8s.node.name", node.clone()));
        }
        for o in &self.owners {
            out.push((o.kind.attribute(), o.name.clone()));
        }
        out.push(("service.namespace", self.namespace.clone()));
        out.push((
            "service.instance.id",
            format!(
                "{}.{}.{}",
                self.namespace, self.pod_name, self.container_name
            ),
        ));
        out
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`: the id, lowercase,
/// as the cgroup path has it.
pub fn container_id(status_id: &str) -> Option<String> {
    let (_, id) = status_id.split_once("://")?;
    crate::host::container::normal_id(id)
}

/// A Deployment's ReplicaSet is named `<deployment>-<pod-template-hash>`,
/// and its pods carry that hash as a label: the Deployment is known
/// without reading the ReplicaSet. A CronJob's Job is
/// `<cronjob>-<scheduled time in minutes since 1970>`; a Job named after a
/// date (`backup-20240101`) is not taken for one.
fn owners(pod: &Pod) -> Vec<Owner> {
    let meta = &pod.metadata;
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    let Some(owner) = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
    else {
        return Vec::new();
    };
    let Some(kind) = OwnerKind::parse(&owner.kind) else {
        return Vec::new();
    };
    let direct = Owner {
        kind,
        name: owner.name.clone(),
    };
    let parent = match kind {
        OwnerKind::ReplicaSet => meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
            .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
            .and_then(|rest| rest.strip_suffix('-'))
            .filter(|d| !d.is_empty())
            .map(|d| Owner {
                kind: OwnerKind::Deployment,
                name: d.to_owned(),
            }),
        OwnerKind::Job => owner
            .name
            .rsplit_once('-')
            .filter(|(c, minute)| {
                // 25 000 000 minutes is mid-2017, and above every YYYYMMDD.
                !c.is_empty()
                    && minute.len() >= 8
                    && minute.bytes().all(|b| b.is_ascii_digit())
                    && minute.parse::<u64>().is_ok_and(|m| m >= 25_000_000)
            })
            .map(|(c, _)| Owner {
                kind: OwnerKind::CronJob,
                name: c.to_owned(),
            }),
        _ => None,
    };
    parent.into_iter().chain([direct]).collect()
}

/// Every container of `pod` the runtime has started, by container id.
pub fn containers(pod: &Pod) -> Vec<(String, PodMeta)> {
    let meta = &pod.metadata;
    let (Some(namespace), Some(name), Some(uid)) = (&meta.namespace, &meta.name, &meta.uid) else {
        return Vec::new();
    };
    let labels = meta.labels.clone().unwrap_or_default();
    let declared_service = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get("resource.opentelemetry.io/service.name"))
        .filter(|s| !s.is_empty())
        .or_else(|| {
            labels
                .get("app.kubernetes.io/name")
                .filter(|s| !s.is_empty())
        })
        .cloned();
    let owners = owners(pod);
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    [
        &status.init_container_statuses,
        &status.container_statuses,
        &status.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .filter_map(|c| {
        let id = container_id(c.container_id.as_deref()?)?;
        Some((
            id,
            PodMeta {
                namespace: namespace.clone(),
                pod_name: name.clone(),
                pod_uid: uid.clone(),
                node_name: node_name.clone(),
                container_name: c.name.clone(),
                owners: owners.clone(),
                labels: labels.clone(),
                declared_service: declared_service.clone(),
            },
        ))
    })
    .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Pods in the form the API serves them (`kubectl get pod -o json`),
    /// one per runtime and owner kind, in `tests/fixtures/k8s/`.
    pub fn fixture(name: &str) -> Pod {
        let path = format!(
            "{}/../tests/fixtures/k8s/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn a_deployment_pod_on_containerd() {
        let found = containers(&fixture("pod-deployment-containerd"));
        assert_eq!(
            found.len(),
            2,
            "app and sidecar; the init container never started"
        );
        let (id, app) = &found[0];
        assert_eq!(
            id,
            "9d5f1c7a3e2b4d6f8a0c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f"
        );
        assert_eq!(app.container_name, "app");
        assert_eq!(
            app.owners,
            vec![
                Owner {
                    kind: OwnerKind::Deployment,
                    name: "checkout".into()
                },
                Owner {
                    kind: OwnerKind::ReplicaSet,
                    name: "checkout-7c9d8b5f4d".into()
                },
            ]
        );
        assert_eq!(app.service_name(), Some("checkout-api"), "the label wins");
        let attrs = app.attributes();
        for (k, v) in [
            ("k8s.namespace.name", "shop"),
            ("k8s.pod.name", "checkout-7c9d8b5f4d-x2x7q"),
            ("k8s.pod.uid", "6b0e2a4c-8d1f-4e3a-9b5c-7d2e1f0a3b4c"),
            ("k8s.container.name", "app"),
            ("k8s.node.name", "node-a"),
            ("k8s.deployment.name", "checkout"),
            ("k8s.replicaset.name", "checkout-7c9d8b5f4d"),
            ("service.namespace", "shop"),
            ("service.instance.id", "shop.checkout-7c9d8b5f4d-x2x7q.app"),
        ] {
            assert!(attrs.contains(&(k, v.to_owned())), "{k}={v} in {attrs:?}");
        }
        assert_eq!(found[1].1.container_name, "envoy");
    }

    #[test]
    fn a_statefulset_pod_on_crio_and_a_cronjob_pod_on_docker() {
        let found = containers(&fixture("pod-statefulset-crio"));
        assert_eq!(found.len(), 1);
        let (id, db) = &found[0];
        assert!(id.starts_with("4a7c"), "{id}");
        assert_eq!(
            db.owners,
            vec![Owner {
                kind: OwnerKind::StatefulSet,
                name: "orders-db".into()
            }]
        );
        assert_eq!(
            db.service_name(),
            Some("orders-db"),
            "no label: the owner names it"
        );

        let found = containers(&fixture("pod-cronjob-docker"));
        let (_, job) = &found[0];
        assert_eq!(
            job.owners.iter().map(|o| o.kind).collect::<Vec<_>>(),
            vec![OwnerKind::CronJob, OwnerKind::Job]
        );
        assert_eq!(job.owners[0].name, "nightly-report");
        assert_eq!(
            job.service_name(),
            Some("reports"),
            "the annotation beats the owner"
        );
    }

    #[test]
    fn a_job_named_after_a_date_is_not_a_cronjobs() {
        let mut pod = fixture("pod-cronjob-docker");
        let owner = &mut pod.metadata.owner_references.as_mut().unwrap()[0];
        owner.name = "backup-20240101".into();
        let (_, job) = &containers(&pod)[0];
        assert_eq!(
            job.owners,
            vec![Owner {
                kind: OwnerKind::Job,
                name: "backup-20240101".into()
            }]
        );
    }

    #[test]
    fn an_empty_annotation_does_not_hide_the_label() {
        let mut pod = fixture("pod-deployment-containerd");
        pod.metadata.annotations = Some(
            [(
                "resource.opentelemetry.io/service.name".to_owned(),
                String::new(),
            )]
            .into(),
        );
        assert_eq!(containers(&pod)[0].1.service_name(), Some("checkout-api"));
    }

    #[test]
    fn a_bare_pod_and_pending_containers() {
        let mut pod = fixture("pod-deployment-containerd");
        pod.metadata.owner_references = None;
        pod.metadata.labels = None;
        let (_, meta) = &containers(&pod)[0];
        assert!(meta.owners.is_empty());
        assert_eq!(meta.service_name(), None, "left to the executable name");
        pod.status = None;
        assert!(containers(&pod).is_empty());
    }

    #[test]
    fn container_ids_by_runtime() {
        let id = "4A7C".repeat(16);
        for prefix in ["containerd://", "cri-o://", "docker://"] {
            assert_eq!(
                container_id(&format!("{prefix}{id}")),
                Some(id.to_ascii_lowercase())
            );
        }
        assert_eq!(container_id("containerd://short"), None);
        assert_eq!(container_id(&id), None);
    }
}
