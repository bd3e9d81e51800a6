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

/// How long the server keeps a watch open, and how long we wait for any
/// event (bookmarks come about every minute) before taking the connection
/// for dead: a half-open connection would otherwise stall the index for
/// good, silently.
const WATCH_SECS: u32 = 290;
const EVENT_PATIENCE: Duration = Duration::from_secs(WATCH_SECS as u64 + 30);
const LIST_PATIENCE: Duration = Duration::from_secs(60);

/// Starts the watch; returns at once. The API being unreachable is
/// logged and retried with back-off, never fatal.
pub fn start(settings: Settings, stats: Arc<Stats>) -> Shared {
    let pods: Shared = Arc::default();
    let shared = pods.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        let mut failing = false;
        // Built once (it reads the kubeconfig or service account and sets up
        // TLS), again only if building it failed.
        let mut client = None;
        loop {
            let mut healthy = false;
            let result = match built(&mut client).await {
                Ok(c) => follow(c, &settings.node_name, &pods, &stats, &mut healthy).await,
                Err(e) => Err(e),
            };
            if healthy {
                backoff = Duration::from_secs(1);
                if failing {
                    log::info!("Kubernetes API: watching again");
                    failing = false;
                }
            }
            match result {
                // 410 Gone: re-list, but never in a tight loop.
                Ok(()) => tokio::time::sleep(Duration::from_secs(1)).await,
                Err(e) => {
                    Stats::inc(&stats.k8s_api_errors);
                    if !failing {
                        log::warn!(
                            "Kubernetes API: {e:#}; spans keep container.id but lack pod \
                             names until it answers (retrying)"
                        );
                        failing = true;
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

async fn built(slot: &mut Option<Client>) -> anyhow::Result<&Client> {
    use anyhow::Context as _;
    if slot.is_none() {
        let client = Client::try_default()
            .await
            .context("no in-cluster service account or KUBECONFIG")?;
        *slot = Some(client);
    }
    Ok(slot.as_ref().expect("set above"))
}

/// One list, then watches until the API says the version is too old (a
/// clean return: re-list) or fails (an error). `healthy` tells the caller
/// a watch worked (an event came, or it stayed open 30 s): a list that
/// works followed by a watch that fails at once is still a failure, and
/// keeps backing off.
async fn follow(
    client: &Client,
    node: &str,
    pods: &Pods,
    stats: &Stats,
    healthy: &mut bool,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let api: Api<Pod> = Api::all(client.clone());
    let on_node = format!("spec.nodeName={node}");
    // Any version will do, from the API server's cache: a fleet of agents
    // re-listing after an API restart must not all read through to etcd.
    let list = tokio::time::timeout(
        LIST_PATIENCE,
        api.list(&ListParams::default().fields(&on_node).match_any()),
    )
    .await
    .context("listing this node's pods: no answer")?
    .context("listing this node's pods")?;
    let first = !pods.is_synced();
    pods.replace_all(&list.items);
    stats_gauges(pods, stats);
    if first {
        log::info!(
            "Kubernetes: {} containers in {} pods of node {node}",
            pods.len(),
            list.items.len()
        );
        if list.items.is_empty() {
            log::warn!(
                "Kubernetes: no pods on node {node:?}: if the agent runs in a pod, \
                 --k8s-node-name (ZEROSPAN_K8S_NODE_NAME) must be the node's name"
            );
        }
    }
    let mut version = list
        .metadata
        .resource_version
        .context("the pod list has no resourceVersion")?;
    loop {
        let params = WatchParams::default().fields(&on_node).timeout(WATCH_SECS);
        let started = tokio::time::Instant::now();
        let mut events = api
            .watch(&params, &version)
            .await
            .context("watching this node's pods")?
            .boxed();
        loop {
            let event = match tokio::time::timeout(EVENT_PATIENCE, events.next()).await {
                Ok(Some(event)) => event.context("reading the pod watch")?,
                Ok(None) => break,
                Err(_) => anyhow::bail!("the pod watch went silent"),
            };
            if !matches!(event, WatchEvent::Error(_)) {
                *healthy = true;
            }
            match event {
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
        // The server ended the watch (its timeout): go on from here, but
        // not in a tight loop if it ends every watch at once.
        if started.elapsed() >= Duration::from_secs(30) {
            *healthy = true;
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn stats_gauges(pods: &Pods, stats: &Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    stats.k8s_containers_known.store(pods.len() as u64, Relaxed);
    stats
        .k8s_pods_left_out
        .store(pods.left_out() as u64, Relaxed);
}
