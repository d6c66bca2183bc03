//! Checkpoint commits in the background: the training loop hands over a snapshot and goes on; at
//! most one commit is in flight, and a newer snapshot replaces one still waiting.

use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::checkpoint::layout::Snapshot;
use crate::checkpoint::store::{CheckpointError, CheckpointStore, Committed};
use crate::train::job::CheckpointStats;

/// An upload in progress: its step, start time and task.
pub(crate) type Upload = (u64, Instant, JoinHandle<Result<Committed, CheckpointError>>);

/// Background checkpoint uploads, at most one in flight.
pub(crate) struct Uploader {
    pub(crate) runtime: Handle,
    pub(crate) in_flight: Option<Upload>,
    pub(crate) latest: Option<Committed>,
    pub(crate) stats: CheckpointStats,
}

impl Uploader {
    pub(crate) fn busy(&mut self) -> Result<bool, CheckpointError> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|(_, _, h)| h.is_finished())
        {
            self.finish(None)?;
        }
        Ok(self.in_flight.is_some())
    }

    pub(crate) fn start(&mut self, store: &CheckpointStore, snapshot: Snapshot) {
        let store = store.clone();
        let step = snapshot.state.step;
        self.in_flight = Some((
            step,
            Instant::now(),
            self.runtime
                .spawn(async move { store.commit(&snapshot).await }),
        ));
    }

    /// Waits for the in-flight upload, if any, at most `limit`.
    pub(crate) fn finish(&mut self, limit: Option<Duration>) -> Result<(), CheckpointError> {
        let Some((step, started, mut handle)) = self.in_flight.take() else {
            return Ok(());
        };
        let joined = match limit {
            None => self.runtime.block_on(&mut handle),
            Some(limit) => match self
                .runtime
                .block_on(async { tokio::time::timeout(limit, &mut handle).await })
            {
                Ok(joined) => joined,
                Err(_) => {
                    handle.abort();
                    return Err(CheckpointError::Timeout {
                        step,
                        seconds: limit.as_secs(),
                    });
                }
            },
        };
        let committed = joined.map_err(|e| CheckpointError::Task(e.to_string()))??;
        self.stats.upload_seconds += started.elapsed().as_secs_f64();
        self.stats.committed += 1;
        self.stats.bytes += committed.bytes;
        tracing::info!(step = committed.step, uri = %committed.manifest_uri, "checkpoint committed");
        self.latest = Some(committed);
        Ok(())
    }
}
