//! Ownership: the operator changes or deletes only objects whose controller ownerReference
//! carries the job's UID. A name proves nothing: another team's object may already hold it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::error::{Error, kube_error};

/// Whether `meta` names the object with `uid` as its controller.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    !uid.is_empty()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.controller == Some(true) && owner.uid == uid)
}

/// `Some("Kind namespace/name")` when an object named `name` exists and is not controlled by
/// `uid`; `None` when the name is free or already the job's.
pub async fn held_by_another<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    uid: &str,
) -> Result<Option<String>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(read(api, kind, name)
        .await?
        .and_then(|object| holder_other_than(&object, kind, uid)))
}

/// Creates `object` unless its name is taken: `None` when it was created or already is the job's
/// (one request where the name is free; the holder is read only when the create is refused),
/// `Some("Kind namespace/name")` when another owner holds the name, which stays untouched.
pub async fn create_unless_held<K>(
    api: &Api<K>,
    kind: &str,
    object: &K,
    uid: &str,
) -> Result<Option<String>, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.name_any();
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            match read(api, kind, &name).await? {
                // Deleted between the two requests: the next look creates it.
                None => Err(Error::Conflict),
                Some(held) => Ok(holder_other_than(&held, kind, uid)),
            }
        }
        Err(e) => Err(kube_error(format!("create {kind} {name}"))(e)),
    }
}

async fn read<K>(api: &Api<K>, kind: &str, name: &str) -> Result<Option<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(kube_error(format!("read {kind} {name}")))
}

/// `Some("Kind namespace/name")` of `object` unless `uid` controls it.
fn holder_other_than<K: Resource>(object: &K, kind: &str, uid: &str) -> Option<String> {
    (!controlled_by(object.meta(), uid)).then(|| {
        format!(
            "{kind} {}/{}",
            object.meta().namespace.as_deref().unwrap_or_default(),
            object.meta().name.as_deref().unwrap_or_default()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owned(uid: &str, controller: Option<bool>) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                api_version: "ferrotrain.io/v1alpha1".into(),
                kind: "TrainingJob".into(),
                name: "web".into(),
                uid: uid.into(),
                controller,
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_the_controller_reference_with_the_same_uid_counts() {
        assert!(controlled_by(&owned("u1", Some(true)), "u1"));
        // Same name, another job (a recreated job has a new UID).
        assert!(!controlled_by(&owned("u0", Some(true)), "u1"));
        // An owner that is not the controller does not make it ours.
        assert!(!controlled_by(&owned("u1", None), "u1"));
        assert!(!controlled_by(&ObjectMeta::default(), "u1"));
        assert!(!controlled_by(&owned("", Some(true)), ""));
    }
}
