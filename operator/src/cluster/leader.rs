//! Leader election on a `coordination.k8s.io/v1` Lease: one replica reconciles and writes status;
//! the others wait. The decision is a pure function; the loop around it does the API calls, and
//! the Lease's resourceVersion settles races (a conflicting update means someone else won).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::cluster::hub::ProgressHub;

/// How long a lease holds without renewal.
pub const LEASE_SECONDS: i32 = 15;
/// How often the holder renews and the others look.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A leader that has not renewed for this long stops acting as leader, before the lease
/// (15 s) can pass to another replica. A lease request that hangs counts as not renewed.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// The Lease annotation with the holder's progress endpoint, so followers can forward reports.
pub const PROGRESS_URL_ANNOTATION: &str = "ferrotrain.io/progress-url";

/// What to do with the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// Nobody holds it: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Its holder stopped renewing (or released it): take it over.
    TakeOver,
    /// Someone else holds it.
    Follow,
}

/// Decides from the current lease. `unchanged_for` is how long this replica has seen the same
/// record (holder and renew time): like client-go, expiry is measured on the local clock from
/// when the record last changed, never by comparing the holder's timestamps with the local clock.
pub fn lease_step(lease: Option<&Lease>, me: &str, unchanged_for: Duration) -> LeaseStep {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return LeaseStep::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => LeaseStep::Renew,
        None | Some("") => LeaseStep::TakeOver,
        Some(_) => {
            let duration =
                u64::try_from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS)).unwrap_or(0);
            if unchanged_for < Duration::from_secs(duration) {
                LeaseStep::Follow
            } else {
                LeaseStep::TakeOver
            }
        }
    }
}

/// The lease this replica writes for `step`, advertising its progress endpoint.
fn desired(
    name: &str,
    me: &str,
    progress_url: Option<&str>,
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
    let mut annotations = previous
        .and_then(|l| l.metadata.annotations.clone())
        .unwrap_or_default();
    match progress_url {
        Some(url) => annotations.insert(PROGRESS_URL_ANNOTATION.to_string(), url.to_string()),
        None => annotations.remove(PROGRESS_URL_ANNOTATION),
    };
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            resource_version: previous.and_then(|l| l.metadata.resource_version.clone()),
            annotations: Some(annotations),
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

/// The lease as a released one: no holder, so any replica takes it over at once.
fn released(current: &Lease) -> Lease {
    let mut lease = current.clone();
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
    }
    if let Some(annotations) = lease.metadata.annotations.as_mut() {
        annotations.remove(PROGRESS_URL_ANNOTATION);
    }
    lease.metadata.managed_fields = None;
    lease
}

/// This replica's view of the lease, kept between rounds.
#[derive(Default)]
struct Observation {
    record: Option<(Option<String>, Option<MicroTime>)>,
    since: Option<Instant>,
}

impl Observation {
    /// How long the same record has been seen, starting the clock when it changes.
    fn unchanged_for(&mut self, lease: Option<&Lease>, now: Instant) -> Duration {
        let record = lease
            .and_then(|l| l.spec.as_ref())
            .map(|s| (s.holder_identity.clone(), s.renew_time.clone()));
        if record != self.record || self.since.is_none() {
            self.record = record;
            self.since = Some(now);
        }
        self.since.map_or(Duration::ZERO, |t| now.duration_since(t))
    }
}

/// One replica's identity in the election.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The Lease's name (one per release).
    pub lease: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// The progress endpoint other replicas forward reports to while this one leads.
    pub progress_url: Option<String>,
}

/// Keeps `hub.leader` and `hub`'s leader URL up to date until the task is aborted.
pub async fn run(leases: Api<Lease>, me: Candidate, hub: Arc<ProgressHub>) {
    let mut observation = Observation::default();
    let mut last_renewal: Option<Instant> = None;
    loop {
        let outcome =
            tokio::time::timeout(RENEW_DEADLINE, attempt(&leases, &me, &mut observation)).await;
        // A leader that cannot reach the lease keeps leading until its renew deadline, and stops
        // before another replica may take over; an answer from the API server decides at once.
        let still_within_deadline = || {
            hub.leader.load(Ordering::SeqCst)
                && last_renewal.is_some_and(|t| t.elapsed() < RENEW_DEADLINE)
        };
        let leading = match outcome {
            Ok(Ok(Round {
                leading,
                leader_url,
            })) => {
                hub.set_leader_url(leader_url);
                if leading {
                    last_renewal = Some(Instant::now());
                }
                leading
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leader election: lease unavailable");
                still_within_deadline()
            }
            Err(_) => {
                tracing::warn!("leader election: lease request hung past the renew deadline");
                still_within_deadline()
            }
        };
        let was_leading = hub.leader.load(Ordering::SeqCst);
        // Good until the renew deadline after the last renewal, on the monotonic clock.
        hub.lead_until(
            leading
                .then(|| last_renewal.map(|t| t + RENEW_DEADLINE))
                .flatten(),
        );
        if was_leading != leading {
            tracing::info!(leading, identity = %me.identity, "leadership changed");
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

/// Gives the lease up (on SIGTERM) so another replica leads at once instead of after expiry.
pub async fn release(leases: &Api<Lease>, me: &Candidate) {
    let Ok(Some(current)) = leases.get_opt(&me.lease).await else {
        return;
    };
    let holder = current
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    if holder != Some(me.identity.as_str()) {
        return;
    }
    match leases
        .replace(&me.lease, &PostParams::default(), &released(&current))
        .await
    {
        Ok(_) => tracing::info!(identity = %me.identity, "released the leader lease"),
        Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
    }
}

struct Round {
    leading: bool,
    leader_url: Option<String>,
}

async fn attempt(
    leases: &Api<Lease>,
    me: &Candidate,
    observation: &mut Observation,
) -> Result<Round, kube::Error> {
    let current = leases.get_opt(&me.lease).await?;
    let unchanged_for = observation.unchanged_for(current.as_ref(), Instant::now());
    let step = lease_step(current.as_ref(), &me.identity, unchanged_for);
    let lease = desired(
        &me.lease,
        &me.identity,
        me.progress_url.as_deref(),
        Timestamp::now(),
        current.as_ref(),
        step,
    );
    let result = match step {
        LeaseStep::Follow => {
            let leader_url = current
                .and_then(|l| l.metadata.annotations)
                .and_then(|a| a.get(PROGRESS_URL_ANNOTATION).cloned());
            return Ok(Round {
                leading: false,
                leader_url,
            });
        }
        LeaseStep::Create => leases.create(&PostParams::default(), &lease).await,
        LeaseStep::Renew | LeaseStep::TakeOver => {
            leases
                .replace(&me.lease, &PostParams::default(), &lease)
                .await
        }
    };
    match result {
        Ok(_) => Ok(Round {
            leading: true,
            leader_url: None,
        }),
        // Someone else created or updated it first.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Round {
            leading: false,
            leader_url: None,
        }),
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
        let seen = Duration::from_secs;
        assert_eq!(lease_step(None, "a", seen(0)), LeaseStep::Create);
        assert_eq!(
            lease_step(Some(&held_by("a", 0)), "a", seen(100)),
            LeaseStep::Renew
        );
        assert_eq!(
            lease_step(Some(&held_by("b", 0)), "a", seen(10)),
            LeaseStep::Follow
        );
        assert_eq!(
            lease_step(Some(&held_by("b", 0)), "a", seen(15)),
            LeaseStep::TakeOver
        );
        let released = released(&held_by("b", 0));
        assert_eq!(
            lease_step(Some(&released), "a", seen(0)),
            LeaseStep::TakeOver
        );
    }

    #[test]
    fn expiry_is_measured_from_when_the_record_changed_on_the_local_clock() {
        // The holder's clock is an hour behind ours: its renewTime looks ancient, but the record
        // keeps changing, so it is alive.
        let start = Instant::now();
        let mut observation = Observation::default();
        let renewed_at = |s: i64| held_by("b", s - 3600);
        assert_eq!(
            observation.unchanged_for(Some(&renewed_at(0)), start),
            Duration::ZERO
        );
        let later = start + Duration::from_secs(12);
        assert_eq!(
            observation.unchanged_for(Some(&renewed_at(10)), later),
            Duration::ZERO
        );
        let d = observation.unchanged_for(Some(&renewed_at(10)), later + Duration::from_secs(14));
        assert_eq!(lease_step(Some(&renewed_at(10)), "a", d), LeaseStep::Follow);
        let d = observation.unchanged_for(Some(&renewed_at(10)), later + Duration::from_secs(16));
        assert_eq!(
            lease_step(Some(&renewed_at(10)), "a", d),
            LeaseStep::TakeOver
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let old = held_by("b", 0);
        let taken = desired(
            "l",
            "a",
            Some("http://10.0.0.7:8080"),
            at(20),
            Some(&old),
            LeaseStep::TakeOver,
        );
        let spec = taken.spec.clone().expect("spec");
        assert_eq!(
            (spec.holder_identity.as_deref(), spec.lease_transitions),
            (Some("a"), Some(1))
        );
        assert_eq!(
            taken
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PROGRESS_URL_ANNOTATION))
                .map(String::as_str),
            Some("http://10.0.0.7:8080")
        );
        let renewed = desired("l", "a", None, at(25), Some(&taken), LeaseStep::Renew)
            .spec
            .expect("spec");
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(25))));
    }
}
