//! Test fixtures shared by the builders' and the observers' tests: a job with an overlay and
//! checkpoint credentials, and pod builder settings.

use ferrotrain_crds::TrainingJob;

use crate::cluster::children::Settings;

pub(crate) fn job(extra_spec: &str) -> TrainingJob {
    let mut job: TrainingJob = serde_yaml::from_str(&format!(
        "apiVersion: ferrotrain.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: mnist, namespace: ml, uid: 0b0e}}\nspec:\n  workers:\n    replicas: 2\n    resources: {{limits: {{cpu: '2'}}}}\n    template:\n      labels: {{team: vision}}\n      env: [{{name: OMP_NUM_THREADS, value: '2'}}]\n      priorityClassName: high\n  trainer: {{model: {{type: mlp}}, dataset: {{type: mnist}}, batchSize: 8, epochs: 1}}\n  checkpoint: {{uri: 's3://ckpt/mnist', everySteps: 10, secretRef: {{name: s3, accessKeyIdKey: id}}}}\n{extra_spec}"
    ))
    .expect("job");
    job.metadata.uid = Some("0b0e".into());
    job
}

pub(crate) fn settings() -> Settings {
    Settings {
        default_image: "ferrotrain/trainer:test".into(),
        progress_base_url: "http://ferrotrain.ferrotrain-system:8080/".into(),
        worker_network_policy: true,
        progress_ca: None,
    }
}
