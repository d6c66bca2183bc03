//! What can go wrong in a reconcile, with a label for metrics and a pause before the next try.

use std::time::Duration;

/// A reconcile failure, with a label for metrics and events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a call.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The client error.
        source: kube::Error,
    },
    /// The object has no namespace or name.
    #[error("TrainingJob without {0}")]
    Incomplete(&'static str),
    /// The status write lost a race: the job changed since the cached copy was read.
    #[error("the job changed since it was read (status write conflict); reconciling again")]
    Conflict,
    /// The pod cache has not completed its first list: nothing can be decided yet.
    #[error("the pod cache is not yet filled")]
    CacheNotReady,
    /// An object the job would write is held by another owner under the same name.
    #[error("{0} exists and is not controlled by this TrainingJob; it is left alone")]
    NameConflict(String),
    /// This replica's leadership lapsed (its renew deadline passed) while it reconciled.
    #[error("no longer the leader; the new leader reconciles")]
    NotLeader,
}

impl Error {
    /// Metric label of the error category.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Incomplete(_) => "invalid_object",
            Error::Conflict => "conflict",
            Error::CacheNotReady => "cache_not_ready",
            Error::NameConflict(_) => "name_conflict",
            Error::NotLeader => "not_leader",
        }
    }

    /// How long to wait before reconciling again.
    pub fn retry_after(&self) -> Duration {
        match self {
            // The watch delivers the newer object within moments.
            Error::Conflict => Duration::from_millis(500),
            Error::CacheNotReady => Duration::from_secs(1),
            Error::NotLeader => crate::cluster::leader::RENEW_EVERY,
            Error::Kube { .. } | Error::Incomplete(_) | Error::NameConflict(_) => {
                Duration::from_secs(15)
            }
        }
    }
}

pub(crate) fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}
