//! The per-job NetworkPolicy: a job's workers accept connections only from the same job's pods,
//! so no pod of another job or namespace can reach the rendezvous or ring ports (the gang key's
//! handshake is the second wall). Egress stays open: workers reach storage and the operator.

use std::collections::BTreeMap;

use ferrotrain_crds::TrainingJob;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Resource;

use crate::cluster::labels::{LABEL_JOB, base_labels};

/// The NetworkPolicy of `job`, named after it.
pub fn worker_network_policy(job: &TrainingJob) -> NetworkPolicy {
    let name = job.metadata.name.clone().unwrap_or_default();
    let same_job = LabelSelector {
        match_labels: Some(BTreeMap::from([(LABEL_JOB.to_string(), name.clone())])),
        ..LabelSelector::default()
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: job.metadata.namespace.clone(),
            labels: Some(base_labels(&name)),
            owner_references: job.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(same_job.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            // A peer with only a pod selector means pods of this namespace only.
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(same_job),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: None,
            }]),
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_jobs_own_pods_may_connect_to_its_workers() {
        let job = crate::cluster::fixtures::job("");
        let policy = serde_json::to_value(worker_network_policy(&job)).expect("json");
        let selector = serde_json::json!({"matchLabels": {"ferrotrain.io/job": "mnist"}});
        assert_eq!(policy["spec"]["podSelector"], selector);
        assert_eq!(
            policy["spec"]["policyTypes"],
            serde_json::json!(["Ingress"])
        );
        assert_eq!(
            policy["spec"]["ingress"],
            serde_json::json!([{"from": [{"podSelector": selector}]}])
        );
        assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], "0b0e");
        assert_eq!(policy["metadata"]["ownerReferences"][0]["controller"], true);
    }
}
