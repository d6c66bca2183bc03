//! Leader election on a `coordination.k8s.io/v1` Lease: one replica reconciles and writes status;
//! the others wait. The decision is a pure function; the loop around it does the API calls, and
//! the Lease's resourceVersion settles races (a conflicting update means someone else won).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::server::ProgressHub;

/// How long a lease holds without renewal.
pub const LEASE_SECONDS: i32 = 15;
/// How often the holder renews and the others look.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// What to do with the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// Nobody holds it: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Its holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds it.
    Follow,
}

/// Decides from the current lease.
pub fn lease_step(lease: Option<&Lease>, me: &str, now: Timestamp) -> LeaseStep {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return LeaseStep::Create;
    };
    if spec.holder_identity.as_deref() == Some(me) {
        return LeaseStep::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    match renewed {
        Some(at) if now.duration_since(at).as_secs() < duration => LeaseStep::Follow,
        _ => LeaseStep::TakeOver,
    }
}

fn desired(
    name: &str,
    me: &str,
    now: Timestamp,
    previous: Option<&Lease>,
    step: LeaseStep,
) -> Lease {
    let old = previous.and_then(|l| l.spec.clone()).unwrap_or_default();
    let transitions = old.lease_transitions.unwrap_or(0) + i32::from(step == LeaseStep::TakeOver);
    let acquired = if step == LeaseStep::Renew {
        old.acquire_time.clone()
    } else {
        Some(MicroTime(now))
    };
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            resource_version: previous.and_then(|l| l.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: acquired,
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
    }
}

/// Keeps `hub.leader` up to date until the process ends.
pub async fn run(leases: Api<Lease>, name: String, me: String, hub: Arc<ProgressHub>) {
    loop {
        let leading = match attempt(&leases, &name, &me).await {
            Ok(leading) => leading,
            Err(e) => {
                tracing::warn!(error = %e, "leader election: lease unavailable");
                false
            }
        };
        if hub.leader.swap(leading, Ordering::SeqCst) != leading {
            tracing::info!(leading, identity = %me, "leadership changed");
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

async fn attempt(leases: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = leases.get_opt(name).await?;
    let step = lease_step(current.as_ref(), me, now);
    let lease = desired(name, me, now, current.as_ref(), step);
    let result = match step {
        LeaseStep::Follow => return Ok(false),
        LeaseStep::Create => leases.create(&PostParams::default(), &lease).await,
        LeaseStep::Renew | LeaseStep::TakeOver => {
            leases.replace(name, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => Ok(true),
        // Someone else created or updated it first.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn held_by(holder: &str, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(at(renewed))),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn lease_decisions() {
        assert_eq!(lease_step(None, "a", at(0)), LeaseStep::Create);
        assert_eq!(
            lease_step(Some(&held_by("a", 0)), "a", at(100)),
            LeaseStep::Renew
        );
        assert_eq!(
            lease_step(Some(&held_by("b", 0)), "a", at(10)),
            LeaseStep::Follow
        );
        assert_eq!(
            lease_step(Some(&held_by("b", 0)), "a", at(15)),
            LeaseStep::TakeOver
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let old = held_by("b", 0);
        let taken = desired("l", "a", at(20), Some(&old), LeaseStep::TakeOver);
        let spec = taken.spec.clone().expect("spec");
        assert_eq!(
            (spec.holder_identity.as_deref(), spec.lease_transitions),
            (Some("a"), Some(1))
        );
        let renewed = desired("l", "a", at(25), Some(&taken), LeaseStep::Renew)
            .spec
            .expect("spec");
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(25))));
    }
}
