//! The job's Secret of each attempt: the progress token (the workers' bearer token for their
//! reports) and the gang key (the ranks authenticate each other with it; it never leaves the
//! pods), and the annotations on the job that record which Secret is current. The operator never
//! reads a Secret: the endpoint checks tokens against the recorded digest.

use std::collections::BTreeMap;

use ferrotrain_crds::TrainingJob;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::cluster::labels::{base_labels, child_meta};

/// Where the progress token is mounted.
pub const TOKEN_DIR: &str = "/var/run/ferrotrain";

/// Key of the token in its Secret.
pub const TOKEN_KEY: &str = "token";

/// Key of the gang key in the same Secret: the workers authenticate each other with it; it is
/// never sent anywhere.
pub const GANG_KEY: &str = "gang-key";

/// Annotation on a TrainingJob: the SHA-256 (hex) of its progress token. The progress endpoint
/// authenticates against it from the job cache, so the operator never reads a Secret.
pub const ANNOTATION_TOKEN_SHA256: &str = "ferrotrain.io/progress-token-sha256";

/// Annotation on a TrainingJob: the attempt its current token and gang key are for. Each attempt
/// gets new ones, so nothing an earlier attempt's pods hold still works.
pub const ANNOTATION_TOKEN_ATTEMPT: &str = "ferrotrain.io/progress-token-attempt";

/// Annotation on a TrainingJob: the UID of the Secret of its current token, so that the Secret
/// is deleted when the next attempt's replaces it, and nothing else of that name.
pub const ANNOTATION_TOKEN_SECRET_UID: &str = "ferrotrain.io/progress-token-secret-uid";

/// The attempt the job's current token is for.
pub fn token_attempt_of(job: &TrainingJob) -> Option<u32> {
    job.annotations()
        .get(ANNOTATION_TOKEN_ATTEMPT)?
        .parse()
        .ok()
}

/// The UID of the Secret of the job's current token.
pub fn token_secret_uid_of(job: &TrainingJob) -> Option<&str> {
    job.annotations()
        .get(ANNOTATION_TOKEN_SECRET_UID)
        .map(String::as_str)
        .filter(|uid| !uid.is_empty())
}

/// The job's recorded token digest, if it is one (64 lowercase hex digits).
pub fn token_sha256_of(job: &TrainingJob) -> Option<&str> {
    let digest = job.annotations().get(ANNOTATION_TOKEN_SHA256)?;
    (digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(digest.as_str())
}

/// Name of the progress-token Secret of the token with this digest. Each token gets a Secret of
/// its own name, so creating one never meets an older one (of this job or of an earlier job with
/// the same name) whose token the operator could not read. Without a digest: `<job>-progress-token`.
pub fn token_secret_name(job: &str, token_sha256: &str) -> String {
    match token_sha256.get(..12) {
        Some(prefix) => format!("{job}-progress-{prefix}"),
        None => format!("{job}-progress-token"),
    }
}

/// The job's Secret: the progress `token` and the `gang_key` (256 random bits each, hex).
pub fn token_secret(job: &TrainingJob, token: &str, gang_key: &str) -> Secret {
    let name = job.metadata.name.clone().unwrap_or_default();
    Secret {
        metadata: child_meta(
            job,
            token_secret_name(&name, &crate::progress::token_sha256(token)),
            base_labels(&name),
        ),
        string_data: Some(BTreeMap::from([
            (TOKEN_KEY.to_string(), token.to_string()),
            (GANG_KEY.to_string(), gang_key.to_string()),
        ])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fixtures::job;

    #[test]
    fn the_secret_holds_the_token_and_the_gang_key() {
        let secret = token_secret(&job(""), "abc", "def");
        // SHA-256("abc") begins ba7816bf8f01.
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("mnist-progress-ba7816bf8f01")
        );
        let data = secret.string_data.unwrap_or_default();
        assert_eq!(
            (data.get(TOKEN_KEY), data.get(GANG_KEY)),
            (Some(&"abc".to_string()), Some(&"def".to_string()))
        );
        assert_eq!(
            secret.metadata.owner_references.map(|o| o[0].uid.clone()),
            Some("0b0e".into())
        );
    }

    #[test]
    fn the_recorded_attempt_is_read_back() {
        let mut annotated = job("");
        assert_eq!(token_attempt_of(&annotated), None);
        annotated.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_TOKEN_ATTEMPT.to_string(),
            "3".to_string(),
        )]));
        assert_eq!(token_attempt_of(&annotated), Some(3));
    }
}
