//! Reconciles take their turns in the order they became due. kube-runtime's controller, at its
//! own concurrency limit, keeps due reconciles in a hash set and takes the first one it finds, so
//! under a sustained load (gangs restarting, looked at every second) the same jobs keep winning
//! and the jobs that hash after them wait without end. The controller therefore runs without a
//! limit, and each reconcile waits here for one of a fixed number of slots, first come first
//! served, then reads the job as the cache holds it at that moment.

use std::sync::Arc;

use ferrotrain_crds::TrainingJob;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Semaphore, SemaphorePermit};

/// A fixed number of reconcile slots handed out in order, and the job cache to read from.
pub struct Turns {
    slots: Semaphore,
    jobs: Store<TrainingJob>,
}

impl Turns {
    /// `concurrency` slots (at least 1) over the job cache `jobs`.
    pub fn new(concurrency: u16, jobs: Store<TrainingJob>) -> Self {
        Self {
            slots: Semaphore::new(usize::from(concurrency.max(1))),
            jobs,
        }
    }

    /// Waits for a slot (tokio's semaphore is fair: first asked, first served), then returns it
    /// with the job as the cache holds it now (`None`: deleted while it waited). The slot is
    /// free again when the returned permit is dropped.
    pub async fn take(
        &self,
        job: &TrainingJob,
    ) -> (Option<SemaphorePermit<'_>>, Option<Arc<TrainingJob>>) {
        // Never closed: an error cannot happen, and would only mean running without a slot.
        let slot = self.slots.acquire().await.ok();
        (slot, self.jobs.get(&ObjectRef::from_obj(job)))
    }
}
