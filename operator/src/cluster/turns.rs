//! Reconciles take their turns in the order they became due. kube-runtime's controller, at its
//! own concurrency limit, keeps due reconciles in a hash set and takes the first one it finds, so
//! under a sustained load (gangs restarting, looked at every second) the same jobs keep winning
//! and the jobs that hash after them wait without end. The controller therefore runs without a
//! limit, and each reconcile waits here for one of a fixed number of slots, first come first
//! served, then reads the job as the cache holds it at that moment.
//!
//! Starting a gang costs many requests (Service, NetworkPolicy, Secret, every pod); following a
//! started one costs a status write. A quarter of the slots (at least one) is kept from starts,
//! so that a burst of new jobs does not keep the gangs that already run from being written
//! Running; the rest serve both.

use std::sync::Arc;

use ferrotrain_crds::TrainingJob;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Semaphore, SemaphorePermit};

/// A fixed number of reconcile slots handed out in order, and the job cache to read from.
pub struct Turns {
    slots: Semaphore,
    starts: Semaphore,
    jobs: Store<TrainingJob>,
}

/// A reconcile's turn: its slots are free again when it is dropped.
pub struct Turn<'a> {
    _start: Option<SemaphorePermit<'a>>,
    _slot: Option<SemaphorePermit<'a>>,
}

impl Turns {
    /// `concurrency` slots (at least 1; starts may hold all but a quarter of them, at least one)
    /// over the job cache `jobs`.
    pub fn new(concurrency: u16, jobs: Store<TrainingJob>) -> Self {
        let slots = usize::from(concurrency.max(1));
        let kept_from_starts = (slots / 4).max(1);
        Self {
            slots: Semaphore::new(slots),
            starts: Semaphore::new(slots.saturating_sub(kept_from_starts).max(1)),
            jobs,
        }
    }

    /// Waits for a slot (and, for a reconcile that may start a gang, a start's share: tokio's
    /// semaphores are fair, first asked, first served), then returns the turn with the job as
    /// the cache holds it now (`None`: deleted while it waited).
    pub async fn take(
        &self,
        job: &TrainingJob,
        starting: bool,
    ) -> (Turn<'_>, Option<Arc<TrainingJob>>) {
        // Never closed: an error cannot happen, and would only mean running without a slot.
        let start = if starting {
            self.starts.acquire().await.ok()
        } else {
            None
        };
        let slot = self.slots.acquire().await.ok();
        let turn = Turn {
            _start: start,
            _slot: slot,
        };
        (turn, self.jobs.get(&ObjectRef::from_obj(job)))
    }
}
