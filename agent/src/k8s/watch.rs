//! Keeps [`Pods`] current: a list of this node's pods, then a watch from
//! that list's version, re-listed when the watch falls too far behind or
//! the API goes away. Only pods with `spec.nodeName` equal to this node are
//! asked for, so the cache holds the node's pods and nothing else.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{ListParams, WatchEvent, WatchParams},
    Api, Client,
};

use super::{Pods, Shared};
use crate::stats::Stats;

/// Where the API is and which node this is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub node_name: String,
}

/// Longest wait between attempts while the API is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts the watch; returns at once. The API being unreachable is
/// logged and retried with back-off, never fatal.
pub fn start(settings: Settings, stats: Arc<Stats>) -> Shared {
    let pods: Shared = Arc::default();
    let shared = pods.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        let mut warned = false;
        loop {
            match follow(&settings.node_name, &pods, &stats).await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    Stats::inc(&stats.k8s_api_errors);
                    if !warned {
                        log::warn!(
                            "Kubernetes API: {e:#}; spans keep container.id but lack pod names \
                             until it answers (retrying)"
                        );
                        warned = true;
                    } else {
                        log::debug!("Kubernetes API: {e:#}");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    });
    shared
}

/// One list, then watches until the API says the version is too old (a
/// clean return: re-list) or fails (an error).
async fn follow(node: &str, pods: &Pods, stats: &Stats) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let client = Client::try_default()
        .await
        .context("no in-cluster service account or KUBECONFIG")?;
    let api: Api<Pod> = Api::all(client);
    let on_node = format!("spec.nodeName={node}");
    let list = api
        .list(&ListParams::default().fields(&on_node))
        .await
        .context("listing this node's pods")?;
    let first = !pods.is_synced();
    pods.replace_all(&list.items);
    stats_gauges(pods, stats);
    if first {
        log::info!(
            "Kubernetes: {} containers in the pods of node {node}",
            pods.len()
        );
    }
    let mut version = list
        .metadata
        .resource_version
        .context("the pod list has no resourceVersion")?;
    loop {
        let params = WatchParams::default().fields(&on_node).timeout(290);
        let mut events = api
            .watch(&params, &version)
            .await
            .context("watching this node's pods")?
            .boxed();
        while let Some(event) = events.next().await {
            match event.context("reading the pod watch")? {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    if let Some(v) = &pod.metadata.resource_version {
                        version.clone_from(v);
                    }
                    pods.upsert(&pod);
                }
                WatchEvent::Deleted(pod) => {
                    if let Some(v) = &pod.metadata.resource_version {
                        version.clone_from(v);
                    }
                    pods.remove(&pod);
                }
                WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                // 410 Gone: our version is too old to watch from.
                WatchEvent::Error(e) if e.code == 410 => return Ok(()),
                WatchEvent::Error(e) => anyhow::bail!("the pod watch failed: {e}"),
            }
            stats_gauges(pods, stats);
        }
        // The server ended the watch (its timeout): go on from here.
    }
}

fn stats_gauges(pods: &Pods, stats: &Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    stats.k8s_containers_known.store(pods.len() as u64, Relaxed);
    stats.k8s_pods_overflowed.store(pods.overflowed(), Relaxed);
}
