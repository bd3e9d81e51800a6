//! What the shipped deployment grants, read from its manifest, so that
//! tests can run the agent exactly as deployed.

use serde_json::Value;

use crate::procs::workspace;

/// The YAML documents of a multi-document file, as JSON values.
pub fn parse_documents(text: &str) -> Vec<Value> {
    text.split("\n---")
        .map(|doc| doc.trim_start_matches('\n'))
        .filter(|doc| {
            doc.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .map(|doc| serde_norway::from_str(doc).unwrap_or_else(|e| panic!("{e}:\n{doc}")))
        .collect()
}

/// `deploy/kubernetes/zerospan.yaml`, parsed.
pub fn manifest() -> Vec<Value> {
    let path = workspace().join("deploy/kubernetes/zerospan.yaml");
    parse_documents(&std::fs::read_to_string(path).unwrap())
}

/// The capabilities the DaemonSet's container adds (it drops all others),
/// as the manifest spells them: `BPF`, `PERFMON`, …
pub fn manifest_capabilities() -> Vec<String> {
    let docs = manifest();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("the manifest has a DaemonSet");
    let sc = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "the DaemonSet drops every capability it does not add"
    );
    sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add is a list")
        .iter()
        .map(|v| v.as_str().expect("a capability name").to_owned())
        .collect()
}

/// A command prefix that runs what follows with exactly the manifest's
/// capabilities (as root, the bounding set is what an exec keeps).
pub fn as_deployed() -> Vec<String> {
    let caps: Vec<String> = manifest_capabilities()
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", caps.join(",")),
        "--".into(),
    ]
}

/// The mask (`CapEff` in /proc/PID/status) of `capabilities`.
pub fn capability_mask(capabilities: &[String]) -> u64 {
    capabilities
        .iter()
        .map(|c| match c.as_str() {
            "DAC_READ_SEARCH" => 2,
            "NET_ADMIN" => 12,
            "SYS_PTRACE" => 19,
            "SYS_ADMIN" => 21,
            "PERFMON" => 38,
            "BPF" => 39,
            "CHECKPOINT_RESTORE" => 40,
            other => panic!("capability {other} is not known to the tests: add its number"),
        })
        .fold(0, |m, bit: u32| m | 1 << bit)
}

/// The DaemonSet's host mounts: (host path, path in the container,
/// read-only). Other volumes (a Secret) are not the host's.
pub fn manifest_mounts() -> Vec<(String, String, bool)> {
    let docs = manifest();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("the manifest has a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().expect("volumes");
    pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .filter_map(|m| {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .expect("every mount's volume is declared");
            let host = volume["hostPath"]["path"].as_str()?;
            Some((
                host.to_owned(),
                m["mountPath"].as_str().unwrap().to_owned(),
                m["readOnly"] == true,
            ))
        })
        .collect()
}

/// The capability mask (`CapEff` in /proc/PID/status) of the manifest's set.
pub fn manifest_mask() -> u64 {
    capability_mask(&manifest_capabilities())
}
