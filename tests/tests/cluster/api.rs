//! The API as the server sees it: the CRD established, printed and explained, offline validation
//! agreeing with the API server's, immutable fields, and the chart under restricted Pod Security.

use super::*;

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn crd_is_established_explained_and_printed() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let explained = cluster.kubectl_eventually(
        &["explain", "trainingjob.spec.trainer"],
        Duration::from_secs(60),
    );
    assert!(
        explained.contains("What to train"),
        "kubectl explain shows our descriptions:\n{explained}"
    );
    let explained = cluster.kubectl_eventually(
        &["explain", "tsw.spec.parameters.path"],
        Duration::from_secs(60),
    );
    assert!(
        explained.contains("The field of `spec.trainer` it sets"),
        "kubectl explain shows the sweep's descriptions:\n{explained}"
    );
    let namespace = test_namespace(&client, "crd", "restricted").await;
    create_job(&client, &namespace, &job_manifest("printed", 1, "")).await;
    let table = cluster.kubectl_ok(&["get", "tj", "-n", &namespace], None);
    let header = table.lines().next().unwrap_or_default().to_string();
    for column in [
        "NAME", "PHASE", "READY", "PROGRESS", "STEP", "LOSS", "ETA", "AGE",
    ] {
        assert!(
            header.contains(column),
            "`kubectl get tj` header {header:?} lacks {column}"
        );
    }
}

/// What the API server says about one manifest sent with dryRun=All and strict field validation.
struct Verdict {
    admitted: bool,
    fields: Vec<String>,
    message: String,
}

async fn server_verdict(client: &Client, namespace: &str, manifest: &serde_json::Value) -> Verdict {
    use http::Request;
    let resource = if manifest["kind"] == "TrainingSweep" {
        "trainingsweeps"
    } else {
        "trainingjobs"
    };
    let uri = format!(
        "/apis/ferrotrain.io/v1alpha1/namespaces/{namespace}/{resource}?dryRun=All&fieldValidation=Strict"
    );
    let request = Request::post(uri)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(
            serde_json::to_vec(manifest).expect("JSON"),
        ))
        .expect("request");
    let response = client.send(request).await.expect("API server answers");
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect_bytes()
        .await
        .expect("response body");
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let message = status["message"].as_str().unwrap_or_default().to_string();
    let mut fields: Vec<String> = status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["field"].as_str().map(str::to_string))
        .collect();
    // Strict decoding names unknown fields only in the message: `unknown field "spec.x"`.
    for part in message.split("unknown field \"").skip(1) {
        if let Some(field) = part.split('"').next() {
            fields.push(field.to_string());
        }
    }
    Verdict {
        admitted: (200..300).contains(&code),
        fields,
        message,
    }
}

/// The API server's field paths write list indices as `[0]`, ours as well; both drop a leading dot.
fn same_field(server: &str, ours: &str) -> bool {
    let server = server.trim_start_matches('.');
    server == ours
        || server.starts_with(&format!("{ours}."))
        || server.starts_with(&format!("{ours}["))
}

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn validation_agrees_with_the_api_server() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let namespace = test_namespace(&client, "parity", "restricted").await;
    let admission = Admission::new().expect("schema compiles");
    let root = workspace_root();
    let mut files: Vec<_> = std::fs::read_dir(root.join("tests/manifests/invalid"))
        .expect("invalid manifests")
        .chain(std::fs::read_dir(root.join("examples")).expect("examples"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    // layer -> (agree, disagree)
    let mut table: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut disagreements = Vec::new();
    for file in &files {
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        let text = std::fs::read_to_string(file).expect("readable");
        for (_, document) in parse_documents(&text) {
            let Ok(mut value) = document else { continue };
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            if !["TrainingJob", "TrainingSweep"].contains(&kind.as_str())
                && !name.contains("invalid")
            {
                continue;
            }
            if let Some(metadata) = value["metadata"].as_object_mut() {
                metadata.remove("namespace");
            }
            let ours = admission.admit_any(&value);
            let server = server_verdict(&client, &namespace, &value).await;
            let (layer, agree) = match &ours {
                Ok(_) => ("valid".to_string(), server.admitted),
                Err(errors) => {
                    let layer = errors[0].layer;
                    let agree = match layer {
                        // Only Ferrotrain checks these: the server admits them.
                        Layer::Semantic => server.admitted,
                        Layer::Document => !server.admitted,
                        Layer::Schema | Layer::Cel => {
                            !server.admitted
                                && errors.iter().all(|e| {
                                    server.fields.iter().any(|f| same_field(f, &e.field))
                                        || server.message.contains(&e.field)
                                })
                        }
                    };
                    (layer.to_string(), agree)
                }
            };
            let row = table.entry(layer.clone()).or_default();
            if agree {
                row.0 += 1;
            } else {
                row.1 += 1;
                disagreements.push(format!(
                    "{name}: ours {layer} {:?}; server admitted={} fields={:?} message={}",
                    ours.as_ref().err().map(|e| e
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()),
                    server.admitted,
                    server.fields,
                    server.message
                ));
            }
        }
    }
    println!("{:<10} {:>6} {:>9}", "LAYER", "AGREE", "DISAGREE");
    for (layer, (agree, disagree)) in &table {
        println!("{layer:<10} {agree:>6} {disagree:>9}");
    }
    for line in &disagreements {
        println!("disagreement: {line}");
    }
    assert!(
        table.values().map(|r| r.0).sum::<usize>() > 60,
        "every case was sent"
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements",
        disagreements.len()
    );
}

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn model_and_dataset_are_immutable_on_the_server() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    let namespace = test_namespace(&client, "immutable", "restricted").await;
    let created = create_job(&client, &namespace, &job_manifest("fixed", 1, "")).await;
    let mut changed = serde_json::to_value(&created).expect("JSON");
    changed["spec"]["trainer"]["model"] = serde_json::json!({"type": "lenet"});
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let job: TrainingJob = serde_json::from_value(changed.clone()).expect("job");
    let refused = jobs
        .replace("fixed", &PostParams::default(), &job)
        .await
        .expect_err("the API server refuses a model change");
    let message = refused.to_string();
    assert!(message.contains("model"), "{message}");
    let old = serde_json::to_value(&created).expect("JSON");
    let ours = Admission::new()
        .expect("schema")
        .admit_update(&changed, Some(&old))
        .expect_err("ferrotrain validate refuses it too");
    assert!(
        ours.iter()
            .any(|e| e.layer == Layer::Cel && e.field.contains("spec.trainer")),
        "{ours:?}"
    );
}

#[tokio::test]
#[ignore = "needs the control plane of scripts/cluster.sh"]
async fn the_chart_is_admitted_in_restricted_namespaces() {
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    let namespace = test_namespace(&client, "chart", "restricted").await;
    let rendered = render_chart("ferrotrain", &namespace, &[]);
    cluster.apply(&rendered);
    // The Deployment controller, the scheduler and kwok run the operator's pods: Pod Security
    // admission let them in.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    wait_for(
        "2 operator pods running",
        Duration::from_secs(60),
        || async {
            let list = pods.list(&Default::default()).await.ok()?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running == 2).then_some(())
        },
    )
    .await;
    let events = cluster.kubectl_ok(&["get", "events", "-n", &namespace], None);
    assert!(!events.contains("violates PodSecurity"), "{events}");
}
