//! The Kubernetes "restricted" Pod Security Standard, checked on a pod spec (as JSON).

use serde_json::Value;

const ALLOWED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Every way `spec` (a PodSpec) breaks the restricted profile, as `field: problem`.
pub fn restricted_violations(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host] == Value::Bool(true) {
            out.push(format!("spec.{host}: must not be true"));
        }
    }
    for (i, volume) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let kind = volume
            .as_object()
            .and_then(|v| v.keys().find(|k| *k != "name").cloned())
            .unwrap_or_default();
        if !ALLOWED_VOLUMES.contains(&kind.as_str()) {
            out.push(format!(
                "spec.volumes[{i}]: volume type {kind} is not allowed"
            ));
        }
    }
    let pod = &spec["securityContext"];
    let containers = ["containers", "initContainers"].into_iter().flat_map(|k| {
        spec[k]
            .as_array()
            .into_iter()
            .flatten()
            .map(move |c| (k, c))
    });
    for (kind, c) in containers {
        let name = format!("spec.{kind}[{}]", c["name"].as_str().unwrap_or("?"));
        let sc = &c["securityContext"];
        if sc["privileged"] == Value::Bool(true) {
            out.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"] != Value::Bool(false) {
            out.push(format!("{name}: allowPrivilegeEscalation must be false"));
        }
        let drops: Vec<&str> = sc["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !drops.contains(&"ALL") {
            out.push(format!("{name}: capabilities must drop ALL"));
        }
        for added in sc["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if added != "NET_BIND_SERVICE" {
                out.push(format!("{name}: adds capability {added}"));
            }
        }
        let non_root = sc["runAsNonRoot"] == Value::Bool(true)
            || (sc["runAsNonRoot"].is_null() && pod["runAsNonRoot"] == Value::Bool(true));
        if !non_root {
            out.push(format!("{name}: runAsNonRoot must be true"));
        }
        if sc["runAsUser"] == 0 || (sc["runAsUser"].is_null() && pod["runAsUser"] == 0) {
            out.push(format!("{name}: runAsUser 0"));
        }
        let seccomp = if sc["seccompProfile"].is_null() {
            &pod["seccompProfile"]
        } else {
            &sc["seccompProfile"]
        };
        if !matches!(
            seccomp["type"].as_str(),
            Some("RuntimeDefault" | "Localhost")
        ) {
            out.push(format!(
                "{name}: seccompProfile must be RuntimeDefault or Localhost"
            ));
        }
        for port in c["ports"].as_array().into_iter().flatten() {
            if port["hostPort"].as_i64().is_some_and(|p| p != 0) {
                out.push(format!("{name}: hostPort"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn flags_each_rule() {
        let good = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "s", "emptyDir": {}}]});
        assert_eq!(restricted_violations(&good), Vec::<String>::new());
        let bad = json!({"hostNetwork": true, "containers": [{"name": "c", "ports": [{"containerPort": 1, "hostPort": 80}],
            "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}]});
        let v = restricted_violations(&bad);
        for needle in [
            "hostNetwork",
            "hostPath",
            "privileged",
            "allowPrivilegeEscalation",
            "drop ALL",
            "SYS_ADMIN",
            "runAsNonRoot",
            "seccompProfile",
            "hostPort",
        ] {
            assert!(
                v.iter().any(|x| x.contains(needle)),
                "{needle} not flagged: {v:?}"
            );
        }
    }
}
