//! The checkpoint location's writer lease: one job, and one attempt of it, writes and prunes a
//! checkpoint location at a time, wherever its workers run (two local runs with different state
//! directories, two jobs in two namespaces, a partitioned old attempt). The lease lives in the
//! store itself as a chain of objects `lease/<generation>.json`, each created with a conditional
//! create; the newest generation says who holds it until when. Taking or renewing the lease is
//! creating the next generation: of two writers racing for it, exactly one succeeds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::storage::{self, Location, now_unix_ms};

/// Folder of the lease's generations under the checkpoint location.
pub const LEASE_DIR: &str = "lease";

/// How long a lease lasts without renewal, how often its holder renews it, and how often a
/// waiting writer looks again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTerms {
    /// Lifetime of one generation.
    pub duration: Duration,
    /// Interval between renewals (a third of the duration).
    pub renew_every: Duration,
    /// Interval between looks while another holder's lease runs out.
    pub poll_every: Duration,
}

impl Default for LeaseTerms {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            poll_every: Duration::from_secs(2),
        }
    }
}

/// Who writes: the job (its UID on a cluster, its state directory's identity under
/// `ferrotrain run`) and the attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Identity of the job; the same for every attempt of it.
    pub id: String,
    /// The job as people name it (`namespace/name`), for messages.
    pub job: String,
    /// Attempt of the gang: a newer attempt of the same job takes the lease over, an older one
    /// never does.
    pub attempt: u32,
}

/// One generation of the lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    /// [`Holder::id`].
    pub holder: String,
    /// [`Holder::job`].
    pub job: String,
    /// [`Holder::attempt`].
    pub attempt: u32,
    /// Tells this process's generations from another process of the same attempt.
    pub nonce: String,
    /// When it was written, milliseconds since the Unix epoch.
    pub renewed_unix_ms: u64,
    /// Until when it holds without renewal.
    pub expires_unix_ms: u64,
    /// The holder finished and gave the location up.
    #[serde(default)]
    pub released: bool,
}

/// The lease could not be taken or was lost.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another job writes here now.
    #[error(
        "checkpoint location {uri} is in use by job {job} (attempt {attempt}), which renewed its lease {seconds_ago}s ago; two jobs must not write one checkpoint location: give this job its own checkpoint.uri, or stop the other"
    )]
    HeldByAnother {
        /// The location.
        uri: String,
        /// The other job.
        job: String,
        /// Its attempt.
        attempt: u32,
        /// Seconds since its latest renewal.
        seconds_ago: u64,
    },
    /// A newer attempt of this job holds it: this attempt is stale and must not write.
    #[error(
        "checkpoint location {uri} is held by attempt {newer} of this job; attempt {ours} is stale and stops"
    )]
    Superseded {
        /// The location.
        uri: String,
        /// The newer attempt.
        newer: u32,
        /// This one.
        ours: u32,
    },
    /// The store failed.
    #[error("checkpoint lease at {uri}: {source}")]
    Store {
        /// The location.
        uri: String,
        /// The object_store error.
        source: object_store::Error,
    },
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    location: Location,
    holder: Holder,
    terms: LeaseTerms,
    nonce: String,
    generation: u64,
    expires_unix_ms: u64,
}

impl Lease {
    /// Takes the lease of `location` for `holder`. A lease of an earlier attempt of the same job,
    /// a released or an expired one is taken over at once; another job's is waited on until it
    /// expires, and refused as soon as that job renews it (it is alive).
    pub async fn acquire(
        location: Location,
        holder: Holder,
        terms: LeaseTerms,
    ) -> Result<Self, LeaseError> {
        let nonce = storage::unique_nonce();
        let mut seen_renewal: Option<u64> = None;
        let waiting_since = std::time::Instant::now();
        loop {
            let latest = read_latest(&location).await?;
            let now = now_unix_ms();
            if let Some((generation, record)) = &latest
                && !record.released
            {
                // A holder that has not renewed for two lease durations is gone, whatever expiry
                // a clock far ahead of ours wrote.
                let live =
                    record.expires_unix_ms > now && waiting_since.elapsed() < 2 * terms.duration;
                if record.holder == holder.id && record.attempt > holder.attempt {
                    return Err(LeaseError::Superseded {
                        uri: location.uri.clone(),
                        newer: record.attempt,
                        ours: holder.attempt,
                    });
                }
                if record.holder != holder.id && live {
                    // A renewal seen while waiting: the other writer is alive.
                    if seen_renewal.is_some_and(|g| g != *generation) {
                        return Err(LeaseError::HeldByAnother {
                            uri: location.uri.clone(),
                            job: record.job.clone(),
                            attempt: record.attempt,
                            seconds_ago: now.saturating_sub(record.renewed_unix_ms) / 1000,
                        });
                    }
                    seen_renewal = Some(*generation);
                    let wait = Duration::from_millis(record.expires_unix_ms - now)
                        .min(terms.poll_every)
                        .max(Duration::from_millis(50));
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            let next = latest.as_ref().map_or(1, |(g, _)| g + 1);
            let mut lease = Self {
                location: location.clone(),
                holder: holder.clone(),
                terms,
                nonce: nonce.clone(),
                generation: next - 1,
                expires_unix_ms: 0,
            };
            match lease.write_next(false).await {
                Ok(()) => return Ok(lease),
                // Someone else created that generation first: look again.
                Err(LeaseError::Store {
                    source: object_store::Error::AlreadyExists { .. },
                    ..
                }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The generation held now.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The terms it was taken with.
    pub fn terms(&self) -> LeaseTerms {
        self.terms
    }

    /// Renews the lease. `Ok(false)`: the store failed, the lease still runs (try again at the
    /// next renewal); an error: the lease is lost (another writer took it, or it expired while
    /// the store failed) and this process must not write again.
    pub async fn renew(&mut self) -> Result<bool, String> {
        match self.write_next(false).await {
            Ok(()) => Ok(true),
            Err(LeaseError::Store {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => {
                let taken = read_generation(&self.location, self.generation + 1).await;
                match taken {
                    Ok(Some(record)) if record.nonce == self.nonce => {
                        // Our own write whose answer was lost.
                        self.generation += 1;
                        self.expires_unix_ms = record.expires_unix_ms;
                        Ok(true)
                    }
                    Ok(Some(record)) => Err(format!(
                        "the checkpoint lease of {} was taken by job {} (attempt {})",
                        self.location.uri, record.job, record.attempt
                    )),
                    _ => Err(format!(
                        "the checkpoint lease of {} was taken by another writer",
                        self.location.uri
                    )),
                }
            }
            Err(e) if now_unix_ms() >= self.expires_unix_ms => Err(format!(
                "the checkpoint lease of {} expired while it could not be renewed ({e})",
                self.location.uri
            )),
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint lease not renewed; trying again");
                Ok(false)
            }
        }
    }

    /// Gives the location up (the job finished or stopped after its checkpoint): the next writer
    /// need not wait for the lease to expire.
    pub async fn release(mut self) {
        if let Err(e) = self.write_next(true).await {
            tracing::warn!(error = %e, "checkpoint lease not released; it expires by itself");
        }
    }

    async fn write_next(&mut self, released: bool) -> Result<(), LeaseError> {
        let now = now_unix_ms();
        let expires = if released {
            now
        } else {
            now + self.terms.duration.as_millis() as u64
        };
        let record = LeaseRecord {
            holder: self.holder.id.clone(),
            job: self.holder.job.clone(),
            attempt: self.holder.attempt,
            nonce: self.nonce.clone(),
            renewed_unix_ms: now,
            expires_unix_ms: expires,
            released,
        };
        let next = self.generation + 1;
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        self.location
            .store
            .put_opts(
                &self.location.key(&generation_key(next)),
                PutPayload::from(bytes),
                PutOptions::from(PutMode::Create),
            )
            .await
            .map_err(|source| LeaseError::Store {
                uri: self.location.uri.clone(),
                source,
            })?;
        self.generation = next;
        self.expires_unix_ms = expires;
        // Older generations are history: keep the one before for a reader that listed a moment
        // ago, delete the rest.
        if next > 2 {
            let _ = self
                .location
                .store
                .delete(&self.location.key(&generation_key(next - 2)))
                .await;
        }
        Ok(())
    }
}

/// Whether this process may still write to the location: lost for good once its lease is.
#[derive(Debug, Default)]
pub struct Fence {
    lost: Mutex<Option<String>>,
}

impl Fence {
    /// `Err` with the reason once the lease is lost.
    pub fn check(&self) -> Result<(), String> {
        match &*self.lost.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn lose(&self, why: String) {
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
    }
}

/// A lease renewed in the background for as long as the run writes.
pub struct Keeper {
    fence: Arc<Fence>,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Option<Lease>>,
}

impl Lease {
    /// Renews the lease every [`LeaseTerms::renew_every`] on `runtime` until
    /// [`Keeper::finish`]; a lost lease closes the fence.
    pub fn keep(mut self, runtime: &tokio::runtime::Handle) -> Keeper {
        let fence = Arc::new(Fence::default());
        let stop = Arc::new(tokio::sync::Notify::new());
        let (task_fence, task_stop) = (Arc::clone(&fence), Arc::clone(&stop));
        let task = runtime.spawn(async move {
            loop {
                tokio::select! {
                    () = task_stop.notified() => return Some(self),
                    () = tokio::time::sleep(self.terms.renew_every) => {}
                }
                if let Err(why) = self.renew().await {
                    tracing::error!(%why, "checkpoint lease lost; this process writes no more checkpoints");
                    task_fence.lose(why);
                    return None;
                }
            }
        });
        Keeper { fence, stop, task }
    }
}

impl Keeper {
    /// The fence the checkpoint store checks before every write.
    pub fn fence(&self) -> Arc<Fence> {
        Arc::clone(&self.fence)
    }

    /// Stops renewing; with `release`, gives the location up for the next writer.
    pub async fn finish(self, release: bool) {
        self.stop.notify_one();
        if let Ok(Some(lease)) = self.task.await
            && release
        {
            lease.release().await;
        }
    }
}

fn generation_key(generation: u64) -> String {
    format!("{LEASE_DIR}/{generation:012}.json")
}

async fn read_generation(
    location: &Location,
    generation: u64,
) -> Result<Option<LeaseRecord>, object_store::Error> {
    match location.read(&generation_key(generation)).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The newest generation and its record, if any. A generation that does not parse counts as
/// expired: whoever wrote it is not a Ferrotrain writer.
async fn read_latest(location: &Location) -> Result<Option<(u64, LeaseRecord)>, LeaseError> {
    let store_error = |source| LeaseError::Store {
        uri: location.uri.clone(),
        source,
    };
    let prefix = location.key(LEASE_DIR);
    let metas: Vec<_> = storage::retry_reads(LEASE_DIR, || {
        location.store.list(Some(&prefix)).try_collect::<Vec<_>>()
    })
    .await
    .map_err(store_error)?;
    let Some(newest) = metas
        .iter()
        .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
        .max()
    else {
        return Ok(None);
    };
    let record = read_generation(location, newest)
        .await
        .map_err(store_error)?
        .unwrap_or(LeaseRecord {
            holder: String::new(),
            job: "an unknown writer".into(),
            attempt: 0,
            nonce: String::new(),
            renewed_unix_ms: 0,
            expires_unix_ms: 0,
            released: true,
        });
    Ok(Some((newest, record)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(name: &str) -> (std::path::PathBuf, Location) {
        crate::storage::temp_location("lease", name)
    }

    fn holder(id: &str, attempt: u32) -> Holder {
        Holder {
            id: id.into(),
            job: format!("default/{id}"),
            attempt,
        }
    }

    fn short() -> LeaseTerms {
        LeaseTerms {
            duration: Duration::from_millis(1500),
            renew_every: Duration::from_millis(500),
            poll_every: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn a_live_writer_of_another_job_is_refused_and_an_expired_one_is_taken_over() {
        let (dir, loc) = location("other");
        let mut first = Lease::acquire(loc.clone(), holder("a", 1), short())
            .await
            .expect("free");
        // Renewed while the second job waits: refused, naming the first.
        let renewing = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            first.renew().await
        };
        let (second, renewed) = tokio::join!(
            Lease::acquire(loc.clone(), holder("b", 1), short()),
            renewing
        );
        assert_eq!(renewed, Ok(true));
        let refused = second.expect_err("a live writer holds it");
        assert!(
            matches!(&refused, LeaseError::HeldByAnother { job, .. } if job == "default/a"),
            "{refused}"
        );
        assert!(refused.to_string().contains("checkpoint.uri"), "{refused}");
        // Not renewed any more (a killed run): taken over once it expires.
        let started = std::time::Instant::now();
        let second = Lease::acquire(loc.clone(), holder("b", 1), short())
            .await
            .expect("expired");
        assert!(started.elapsed() >= Duration::from_millis(800));
        // The first writer learns it lost the location at its next renewal.
        let lost = first.renew().await.expect_err("lost");
        assert!(lost.contains("default/b"), "{lost}");
        second.release().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_newer_attempt_takes_over_and_an_older_one_is_fenced_off() {
        let (dir, loc) = location("attempts");
        let mut old = Lease::acquire(loc.clone(), holder("job", 1), short())
            .await
            .expect("free");
        let new = Lease::acquire(loc.clone(), holder("job", 2), short())
            .await
            .expect("the same job's next attempt takes over at once");
        assert!(old.renew().await.is_err(), "attempt 1 lost it");
        let stale = Lease::acquire(loc.clone(), holder("job", 1), short())
            .await
            .expect_err("attempt 1 may not come back");
        assert!(matches!(
            stale,
            LeaseError::Superseded {
                newer: 2,
                ours: 1,
                ..
            }
        ));
        // Released: another job takes it without waiting.
        new.release().await;
        let started = std::time::Instant::now();
        let other = Lease::acquire(loc.clone(), holder("other", 1), LeaseTerms::default())
            .await
            .expect("released");
        assert!(started.elapsed() < Duration::from_secs(1));
        // Old generations are deleted as new ones are written.
        let generations = std::fs::read_dir(dir.join(LEASE_DIR)).expect("dir").count();
        assert!(generations <= 2, "{generations} generations kept");
        assert!(other.generation() >= 4);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A dead holder whose clock ran an hour ahead wrote an expiry an hour away: it is taken
    /// over once it has not renewed for two lease durations.
    #[tokio::test]
    async fn a_holder_that_never_renews_is_gone_whatever_expiry_it_wrote() {
        let (dir, loc) = location("skew");
        let far = LeaseRecord {
            holder: "ahead".into(),
            job: "default/ahead".into(),
            attempt: 1,
            nonce: "n".into(),
            renewed_unix_ms: now_unix_ms() + 3_600_000,
            expires_unix_ms: now_unix_ms() + 3_600_000,
            released: false,
        };
        loc.store
            .put(
                &loc.key(&generation_key(7)),
                PutPayload::from(serde_json::to_vec(&far).expect("json")),
            )
            .await
            .expect("write");
        let started = std::time::Instant::now();
        let lease = Lease::acquire(loc.clone(), holder("b", 1), short())
            .await
            .expect("taken over");
        assert!(started.elapsed() >= 2 * short().duration);
        assert_eq!(lease.generation(), 8);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn of_two_writers_racing_for_a_free_location_exactly_one_wins() {
        let (dir, loc) = location("race");
        let terms = LeaseTerms {
            poll_every: Duration::from_millis(20),
            ..LeaseTerms::default()
        };
        // The loser waits for the winner's lease to run out (30 s): within a second exactly one
        // of them holds the location.
        let limit = Duration::from_secs(1);
        let (a, b) = tokio::join!(
            tokio::time::timeout(limit, Lease::acquire(loc.clone(), holder("a", 1), terms)),
            tokio::time::timeout(limit, Lease::acquire(loc.clone(), holder("b", 1), terms))
        );
        let held = [&a, &b].iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(held, 1, "{a:?} {b:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
