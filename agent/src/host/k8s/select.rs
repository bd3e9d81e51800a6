//! Selecting processes by their pod: namespace, label, owner.
//!
//! Given together, the kinds of criteria must all hold (namespace `shop`
//! *and* owner `deployment/checkout`); several of one kind are
//! alternatives. Exclusions by namespace win over everything.

use anyhow::{bail, Context as _};

use super::pod::{OwnerKind, PodMeta};
use crate::host::glob::glob_match;

#[derive(Clone, Debug, Default)]
pub struct PodSelectors {
    namespaces: Vec<String>,
    pod_names: Vec<String>,
    labels: Vec<(String, String)>,
    /// Kind (any kind when `None`) and name glob.
    owners: Vec<(Option<OwnerKind>, String)>,
    exclude_namespaces: Vec<String>,
}

impl PodSelectors {
    /// `namespaces`, `pod_names` and `exclude_namespaces` are globs;
    /// `labels` are `key=value`; `owners` are `NAME` or `KIND/NAME` (NAME a
    /// glob).
    pub fn new(
        namespaces: &[String],
        pod_names: &[String],
        labels: &[String],
        owners: &[String],
        exclude_namespaces: &[String],
    ) -> anyhow::Result<Self> {
        let labels = labels
            .iter()
            .map(|l| {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("--k8s-pod-label {l:?}: expected KEY=VALUE"))?;
                if k.trim().is_empty() {
                    bail!("--k8s-pod-label {l:?}: the key is empty");
                }
                Ok((k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect::<anyhow::Result<_>>()?;
        let owners = owners
            .iter()
            .map(|o| match o.split_once('/') {
                Some((kind, name)) => match OwnerKind::parse(kind) {
                    Some(k) => Ok((Some(k), name.to_owned())),
                    None => bail!(
                        "--k8s-owner {o:?}: unknown kind {kind:?}; use deployment, replicaset, \
                         statefulset, daemonset, job or cronjob"
                    ),
                },
                None => Ok((None, o.clone())),
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(PodSelectors {
            namespaces: namespaces.to_vec(),
            pod_names: pod_names.to_vec(),
            labels,
            owners,
            exclude_namespaces: exclude_namespaces.to_vec(),
        })
    }

    /// Whether any positive criterion was given.
    pub fn any(&self) -> bool {
        !self.namespaces.is_empty()
            || !self.pod_names.is_empty()
            || !self.labels.is_empty()
            || !self.owners.is_empty()
    }

    pub fn needs_api(&self) -> bool {
        self.any() || !self.exclude_namespaces.is_empty()
    }

    pub fn excluded(&self, pod: &PodMeta) -> bool {
        self.exclude_namespaces
            .iter()
            .any(|g| glob_match(g, &pod.namespace))
    }

    /// Every kind of criterion given holds for `pod` (exclusions are
    /// [`PodSelectors::excluded`]'s, which the caller checks first).
    pub fn matches(&self, pod: &PodMeta) -> bool {
        let namespace = self.namespaces.is_empty()
            || self
                .namespaces
                .iter()
                .any(|g| glob_match(g, &pod.namespace));
        let name = self.pod_names.is_empty()
            || self.pod_names.iter().any(|g| glob_match(g, &pod.pod_name));
        let label = self.labels.is_empty()
            || self
                .labels
                .iter()
                .any(|(k, v)| pod.labels.get(k) == Some(v));
        let owner = self.owners.is_empty()
            || self.owners.iter().any(|(kind, name)| {
                pod.owners
                    .iter()
                    .any(|o| kind.is_none_or(|k| k == o.kind) && glob_match(name, &o.name))
            });
        namespace && name && label && owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::k8s::pod::{containers, tests::fixture};

    fn sel(ns: &[&str], labels: &[&str], owners: &[&str], exclude: &[&str]) -> PodSelectors {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        PodSelectors::new(&v(ns), &[], &v(labels), &v(owners), &v(exclude)).unwrap()
    }

    #[test]
    fn pod_names_by_glob() {
        let checkout = containers(&fixture("pod-deployment-containerd"))
            .remove(0)
            .1;
        let by_name = |g: &str| PodSelectors::new(&[], &[g.to_owned()], &[], &[], &[]).unwrap();
        assert!(by_name("checkout-*").matches(&checkout));
        assert!(!by_name("orders-*").matches(&checkout));
        assert!(by_name("orders-*").any());
    }

    #[test]
    fn kinds_of_criteria_must_all_hold() {
        let checkout = containers(&fixture("pod-deployment-containerd"))
            .remove(0)
            .1;
        let db = containers(&fixture("pod-statefulset-crio")).remove(0).1;
        let report = containers(&fixture("pod-cronjob-docker")).remove(0).1;
        let shop = sel(&["shop"], &[], &[], &[]);
        assert!(shop.matches(&checkout) && shop.matches(&db) && !shop.matches(&report));
        let deployment = sel(&["shop"], &[], &["deployment/checkout"], &[]);
        assert!(deployment.matches(&checkout) && !deployment.matches(&db));
        // Any kind, by glob; the ReplicaSet name matches too.
        assert!(sel(&[], &[], &["checkout-*"], &[]).matches(&checkout));
        assert!(sel(&[], &[], &["cronjob/nightly-*"], &[]).matches(&report));
        assert!(!sel(&[], &[], &["statefulset/checkout"], &[]).matches(&checkout));
        let backend = sel(&[], &["tier=backend", "app=none"], &[], &[]);
        assert!(backend.matches(&checkout) && !backend.matches(&db));
        // Exclusions.
        assert!(sel(&["*"], &[], &[], &["sh*"]).excluded(&checkout));
        assert!(!sel(&["*"], &[], &[], &["kube-system"]).excluded(&checkout));
    }

    #[test]
    fn bad_selectors_are_named() {
        let v = |x: &str| vec![x.to_owned()];
        let e = PodSelectors::new(&[], &[], &v("tier"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("KEY=VALUE") && e.contains("tier"), "{e}");
        let e = PodSelectors::new(&[], &[], &[], &v("pod/x"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown kind") && e.contains("pod/x"), "{e}");
    }
}
