//! Kubernetes metadata through the API, with no cluster: a stand-in API
//! server (`fixtures/fake_kube_api.py`) serves pods shaped as the real one
//! does, and real servers run in cgroups named as kubelet and the
//! container runtimes name them. The agent finds each process's pod from
//! its cgroup, decorates its spans, and selects processes by namespace,
//! even when the pod reaches the API after the process started.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use zerospan_tests::{
    curl, procs::fixture, require_root, Agent, Cgroup, Collector, Fixture, FlatSpan, TempDir,
};

const NODE: &str = "node-a";

/// A running pod: its object for the API and a server in its cgroup.
struct FakePod {
    object: Value,
    server: Fixture,
    _group: Cgroup,
}

/// A pod object as the API serves it; `n` picks its uid and container id.
fn pod_object(n: u8, namespace: &str, name: &str, owner: (&str, &str), labels: Value) -> Value {
    let uid = format!("{n:08x}-1111-4222-8333-{n:012x}");
    let id = format!("{n:02x}").repeat(32);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": owner.0, "name": owner.1,
                "uid": "00000000-0000-4000-8000-000000000000", "controller": true
            }]
        },
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "web", "image": "python:3.11"}]
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": "web", "containerID": format!("containerd://{id}"),
                "image": "python:3.11", "imageID": "", "ready": true, "restartCount": 0
            }]
        }
    })
}

/// A server started inside a new cgroup `relative`, born there.
fn server_in(relative: &str, web: &Path) -> (Fixture, Cgroup) {
    let group = Cgroup::new(
        relative,
        "this test needs one to stand in for the container runtime's cgroups",
    );
    (Fixture::http_server_in(&group, web, &[]), group)
}

impl FakePod {
    /// Starts a server in the cgroup containerd and kubelet (systemd
    /// driver) would give this pod's container.
    fn start(object: Value, root: &str, web: &Path) -> FakePod {
        let uid = object["metadata"]["uid"].as_str().unwrap().to_owned();
        let id = object["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap()
            .trim_start_matches("containerd://")
            .to_owned();
        let (server, group) = server_in(
            &format!(
                "{root}/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
                uid.replace('-', "_")
            ),
            web,
        );
        FakePod {
            object,
            server,
            _group: group,
        }
    }

    fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap()
    }

    fn url(&self) -> String {
        self.server.index_url()
    }
}

/// The stand-in API server, its pod directory and its request log.
struct FakeApi {
    _server: Fixture,
    pods: TempDir,
    log: std::path::PathBuf,
    kubeconfig: String,
}

impl FakeApi {
    fn start() -> FakeApi {
        let pods = TempDir::new("k8s-pods");
        let state = TempDir::new("k8s-api");
        let log = state.0.join("requests.log");
        let server = Fixture::start(
            Command::new("python3")
                .arg(fixture("fake_kube_api.py"))
                .arg(&pods.0)
                .arg(&log),
        );
        let kubeconfig = state.0.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_for(server.port)).unwrap();
        std::mem::forget(state);
        FakeApi {
            _server: server,
            pods,
            log,
            kubeconfig: kubeconfig.display().to_string(),
        }
    }

    fn publish(&self, pod: &FakePod) {
        let tmp = self.pods.0.join(format!("{}.tmp", pod.name()));
        std::fs::write(&tmp, pod.object.to_string()).unwrap();
        std::fs::rename(tmp, self.pods.0.join(format!("{}.json", pod.name()))).unwrap();
    }

    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn kubeconfig_for(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    )
}

/// Requests `url` until a server span for it arrives: a server already
/// waiting in `accept()` when it is attached loses that first connection
/// (a known gap).
fn spans_for(collector: &Collector, url: &str, port: u16) -> Vec<FlatSpan> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let of_port = |s: &FlatSpan| s.is_server() && s.int("server.port") == Some(i64::from(port));
    while Instant::now() < deadline {
        curl(&["-s", "-o", "/dev/null", url]);
        let got = collector.wait_for(1, Duration::from_millis(300), of_port);
        if !got.is_empty() {
            return got;
        }
    }
    Vec::new()
}

fn server_spans(collector: &Collector, server: &Fixture) -> usize {
    collector
        .spans()
        .iter()
        .filter(|s| s.is_server() && s.int("server.port") == Some(i64::from(server.port)))
        .count()
}

/// The DaemonSet's own selection: every container but kube-system's.
#[test]
fn pods_from_the_api_decorate_spans_and_exclusions_hold() {
    require_root();
    let api = FakeApi::start();
    let web = TempDir::new("k8s-web");
    std::fs::write(web.0.join("index.html"), "hello from a pod\n").unwrap();
    let root = format!("zerospan-k8s-{}", std::process::id());
    let checkout = FakePod::start(
        pod_object(
            0xa1,
            "shop",
            "checkout-7c9d8b5f4d-x2x7q",
            ("ReplicaSet", "checkout-7c9d8b5f4d"),
            json!({"app.kubernetes.io/name": "checkout-api", "pod-template-hash": "7c9d8b5f4d"}),
        ),
        &root,
        &web.0,
    );
    let system = FakePod::start(
        pod_object(
            0xb2,
            "kube-system",
            "dns-x8k2p",
            ("DaemonSet", "dns"),
            json!({}),
        ),
        &root,
        &web.0,
    );
    // A container that is no pod (`docker run` on the node).
    let docker_id = "e5".repeat(32);
    let (docker, _docker_group) = server_in(&format!("{root}/docker-{docker_id}.scope"), &web.0);
    api.publish(&checkout);
    api.publish(&system);
    let collector = Collector::start();
    let mut agent = Agent::start(
        &[
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--containers-only",
            "--exclude-k8s-namespace",
            "kube-system",
            "--k8s-node-name",
            NODE,
        ],
        &[("KUBECONFIG", &api.kubeconfig)],
    );

    let spans = spans_for(&collector, &checkout.url(), checkout.server.port);
    assert!(
        !spans.is_empty(),
        "no span from the pod:\n{}",
        agent.stderr()
    );
    let s = &spans[0];
    let id = "a1".repeat(32);
    for (key, want) in [
        ("service.name", "checkout-api"),
        ("service.namespace", "shop"),
        ("service.instance.id", "shop.checkout-7c9d8b5f4d-x2x7q.web"),
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "checkout-7c9d8b5f4d-x2x7q"),
        ("k8s.pod.uid", "000000a1-1111-4222-8333-0000000000a1"),
        ("k8s.container.name", "web"),
        ("k8s.node.name", NODE),
        ("k8s.deployment.name", "checkout"),
        ("k8s.replicaset.name", "checkout-7c9d8b5f4d"),
        ("container.id", id.as_str()),
    ] {
        assert_eq!(s.res_str(key).as_deref(), Some(want), "{key}");
    }

    let spans = spans_for(&collector, &docker.index_url(), docker.port);
    assert!(!spans.is_empty(), "a container that is no pod is traced");
    assert_eq!(spans[0].res_str("container.id"), Some(docker_id));
    assert_eq!(spans[0].res_str("k8s.pod.name"), None);

    // A pod whose process starts before the API knows the pod: not judged
    // (it might be excluded) until the watch tells of it, then traced.
    let late = FakePod::start(
        pod_object(
            0xc3,
            "shop",
            "orders-db-0",
            ("StatefulSet", "orders-db"),
            json!({}),
        ),
        &root,
        &web.0,
    );
    for _ in 0..3 {
        curl(&["-s", "-o", "/dev/null", &late.url()]);
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        server_spans(&collector, &late.server),
        0,
        "traced before its pod was known"
    );
    api.publish(&late);
    let spans = spans_for(&collector, &late.url(), late.server.port);
    assert!(
        !spans.is_empty(),
        "the late pod was not picked up:\n{}",
        agent.stderr()
    );
    assert_eq!(
        spans[0].res_str("k8s.statefulset.name").as_deref(),
        Some("orders-db")
    );
    assert_eq!(
        spans[0].res_str("service.name").as_deref(),
        Some("orders-db"),
        "no label: the workload names the service"
    );

    // Excluded: never traced, though it is in a container.
    for _ in 0..3 {
        curl(&["-s", "-o", "/dev/null", &system.url()]);
    }
    std::thread::sleep(Duration::from_millis(700));
    assert!(agent.stop().success());
    assert_eq!(server_spans(&collector, &system.server), 0);

    // Metrics carry the workload, not the pod (pods churn); this is the
    // export the agent sends as it stops.
    let points = collector.metric("grpc", "http.server.request.duration");
    let p = points
        .iter()
        .find(|p| p.service == "checkout-api")
        .unwrap_or_else(|| panic!("{points:#?}"));
    for (key, want) in [
        ("service.namespace", "shop"),
        ("k8s.namespace.name", "shop"),
        ("k8s.deployment.name", "checkout"),
        ("k8s.container.name", "web"),
        ("k8s.node.name", NODE),
    ] {
        assert_eq!(p.res_str(key).as_deref(), Some(want), "{key}");
    }
    assert_eq!(p.res_str("k8s.pod.name"), None);
    assert_eq!(p.res_str("k8s.replicaset.name"), None);

    // Only this node's pods were asked for, in the list and the watch.
    let requests = api.requests();
    let on_node = format!("fieldSelector=spec.nodeName%3D{NODE}");
    let lists = requests.lines().filter(|l| !l.contains("watch=")).count();
    let watches = requests
        .lines()
        .filter(|l| l.contains("watch=true"))
        .count();
    assert!(lists >= 1 && watches >= 1, "{requests}");
    assert!(requests.lines().all(|l| l.contains(&on_node)), "{requests}");
    drop((checkout, system, late, docker));
    std::thread::sleep(Duration::from_millis(200));
}

/// `--k8s-owner` picks one workload of a namespace.
#[test]
fn an_owner_criterion_selects_one_workload() {
    require_root();
    let api = FakeApi::start();
    let web = TempDir::new("k8s-owner-web");
    std::fs::write(web.0.join("index.html"), "one of two\n").unwrap();
    let root = format!("zerospan-k8s-owner-{}", std::process::id());
    let checkout = FakePod::start(
        pod_object(
            0xa5,
            "shop",
            "checkout-5f4d7c9d8b-q9w8e",
            ("ReplicaSet", "checkout-5f4d7c9d8b"),
            json!({"pod-template-hash": "5f4d7c9d8b"}),
        ),
        &root,
        &web.0,
    );
    let orders = FakePod::start(
        pod_object(
            0xa6,
            "shop",
            "orders-0",
            ("StatefulSet", "orders"),
            json!({}),
        ),
        &root,
        &web.0,
    );
    api.publish(&checkout);
    api.publish(&orders);
    let collector = Collector::start();
    let mut agent = Agent::start(
        &[
            "--otlp-endpoint",
            &collector.grpc_endpoint,
            "--k8s-owner",
            "deployment/checkout",
            "--k8s-node-name",
            NODE,
        ],
        &[("KUBECONFIG", &api.kubeconfig)],
    );
    let spans = spans_for(&collector, &checkout.url(), checkout.server.port);
    assert!(!spans.is_empty(), "{}", agent.stderr());
    assert_eq!(
        spans[0].res_str("service.name").as_deref(),
        Some("checkout"),
        "no label: the Deployment, not its ReplicaSet, names it"
    );
    for _ in 0..3 {
        curl(&["-s", "-o", "/dev/null", &orders.url()]);
    }
    std::thread::sleep(Duration::from_millis(700));
    assert!(agent.stop().success());
    assert_eq!(server_spans(&collector, &orders.server), 0);
    drop((checkout, orders));
    std::thread::sleep(Duration::from_millis(200));
}

/// With the API unreachable, nothing fails: spans keep what the cgroup
/// says, and the agent says why the names are missing.
#[test]
fn without_the_api_spans_keep_the_container_id() {
    require_root();
    let state = TempDir::new("k8s-down");
    let closed = zerospan_tests::procs::free_port();
    let kubeconfig = state.0.join("kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_for(closed)).unwrap();
    let web = TempDir::new("k8s-down-web");
    std::fs::write(web.0.join("index.html"), "no API\n").unwrap();
    let pod = FakePod::start(
        pod_object(0xd4, "shop", "web-0", ("StatefulSet", "web"), json!({})),
        &format!("zerospan-k8s-down-{}", std::process::id()),
        &web.0,
    );
    let collector = Collector::start();
    let mut agent = Agent::for_pids(
        &[pod.server.pid()],
        &collector,
        &[("KUBECONFIG", &kubeconfig.display().to_string())],
    );
    let spans = spans_for(&collector, &pod.url(), pod.server.port);
    assert!(agent.stop().success());
    assert!(!spans.is_empty(), "{}", agent.stderr());
    let s = &spans[0];
    assert_eq!(s.res_str("container.id"), Some("d4".repeat(32)));
    assert_eq!(
        s.res_str("k8s.pod.uid").as_deref(),
        Some("000000d4-1111-4222-8333-0000000000d4")
    );
    assert_eq!(s.res_str("k8s.pod.name"), None);
    assert!(
        agent.stderr().contains("Kubernetes API:"),
        "{}",
        agent.stderr()
    );
    assert!(agent.stat("k8s_api_errors").unwrap_or(0) >= 1);
    drop(pod);
    std::thread::sleep(Duration::from_millis(200));
}
