//! What the scenarios need of a job's credentials and the progress endpoint: the job's Secret
//! and token as its workers read them, reports posted as a worker posts them, and TLS files for
//! the endpoint.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

/// The name of a job's progress-token Secret, from the digest the operator recorded on the job.
pub async fn token_secret_name(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<String, String> {
    let job = Api::<ferrotrain_crds::TrainingJob>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| format!("job {name}: {e}"))?;
    let digest = ferrotrain::cluster::job_secret::token_sha256_of(&job)
        .ok_or_else(|| format!("job {name} has no token digest"))?;
    Ok(ferrotrain::cluster::job_secret::token_secret_name(
        name, digest,
    ))
}

/// A job's progress token, as its workers read it; checked against the digest on the job.
pub async fn job_token(client: &Client, namespace: &str, job: &str) -> Result<String, String> {
    let name = token_secret_name(client, namespace, job).await?;
    let token = secret_value(
        client,
        namespace,
        &name,
        ferrotrain::cluster::job_secret::TOKEN_KEY,
    )
    .await?;
    let digest = ferrotrain::progress::token_sha256(&token);
    if ferrotrain::cluster::job_secret::token_secret_name(job, &digest) != name {
        return Err(format!(
            "the token in {name} does not match the job's digest"
        ));
    }
    Ok(token)
}

/// The value of `key` in a Secret, as text.
pub async fn secret_value(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, String> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| format!("secret {name}: {e}"))?;
    secret
        .data
        .and_then(|d| {
            d.get(key)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        })
        .ok_or_else(|| format!("secret {name} has no key {key}"))
}

/// POSTs a progress report to an operator's endpoint; returns the HTTP status code.
pub fn post_progress(address: &str, namespace: &str, job: &str, token: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to operator");
    let request = format!(
        "POST /v1/namespaces/{namespace}/trainingjobs/{job}/progress HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// PEM files for the progress endpoint's TLS in `dir`: a CA (`ca.crt`) and a certificate for
/// `localhost` and 127.0.0.1 (`tls.crt`, `tls.key`) signed by it, made with the openssl tool.
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("TLS directory");
    let san = dir.join("san.ext");
    std::fs::write(&san, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("extension file");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl tool");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &p256,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=ferrotrain-test-ca",
        ],
    ]
    .concat();
    openssl(&ca);
    let request = [
        &["req"][..],
        &p256,
        &[
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat();
    openssl(&request);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"))
}
