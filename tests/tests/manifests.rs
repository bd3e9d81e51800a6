//! The shipped Kubernetes manifest: every document parses, the DaemonSet
//! runs unprivileged with exactly the capabilities the agent needs, and
//! its service account has read-only access to what the agent reads.
//! (Validation against the Kubernetes API types with k8s-openapi, and a
//! run on a real cluster, are still to come.)

use serde_json::Value;

fn documents() -> Vec<Value> {
    let path = zerospan_tests::procs::workspace().join("deploy/kubernetes/zerospan.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    text.split("\n---\n")
        .map(|doc| serde_norway::from_str(doc).unwrap_or_else(|e| panic!("{e}:\n{doc}")))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

#[test]
fn the_daemonset_is_unprivileged_with_the_minimal_capabilities() {
    let docs = documents();
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["metadata"]["name"].is_string(),
            "{d}"
        );
    }
    let ds = of_kind(&docs, "DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
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
    assert!(!serde_json::to_string(&docs)
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
    // The agent's flags in the manifest are ones it has.
    let help = std::process::Command::new(zerospan_tests::procs::agent_binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in c["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        if arg.starts_with("--") {
            assert!(help.contains(arg), "{arg} is not an agent option");
        }
    }
}

#[test]
fn the_service_account_only_reads() {
    let docs = documents();
    let sa = of_kind(&docs, "ServiceAccount");
    let ds = of_kind(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
    let role = of_kind(&docs, "ClusterRole");
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(verbs, ["get", "list", "watch"], "{rule}");
    }
    let binding = of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        sa["metadata"]["namespace"]
    );
}
