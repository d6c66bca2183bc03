//! Where a run starts from: the newest verified checkpoint of this job (bit-exact resume), or a
//! warm start from another job's checkpoint; and the snapshot encoding both read and write.

use ferrotrain_crds::progress::RejectedCheckpoints;
use tokio::runtime::Handle;

use crate::checkpoint::layout::{Snapshot, TrainingState};
use crate::dist::ring::Ring;
use crate::nn::pruning::Pruner;
use crate::optim::Optimizer;
use crate::train::job::{CheckpointPlan, TrainError, WarmStart};

/// Rank 0 reads the newest valid checkpoint and passes it around the ring, so that every rank
/// resumes from the same one.
/// Rank 0 finds the newest checkpoint that verifies and broadcasts it; it also returns what it
/// had to pass over (peers return none), for the progress reports.
pub(crate) fn load_resume_point(
    plan: &CheckpointPlan,
    ring: &mut Ring,
    runtime: &Handle,
) -> Result<(Option<Snapshot>, Option<RejectedCheckpoints>), TrainError> {
    let mut bytes = Vec::new();
    if ring.rank() == 0 {
        // An unreadable store is fatal to the whole gang: tell the peers by sending nothing.
        let loaded = runtime.block_on(plan.store.load_latest_noting_rejects());
        if let Ok((Some((snapshot, _)), _)) = &loaded {
            bytes = encode_snapshot(snapshot);
        }
        ring.broadcast(&mut bytes)?;
        let (latest, rejected) = loaded?;
        let snapshot = latest.map(|(snapshot, _)| snapshot);
        let rejected = rejected.first().map(|(newest_step, problem)| {
            let report = RejectedCheckpoints {
                count: u32::try_from(rejected.len()).unwrap_or(u32::MAX),
                newest_step: *newest_step,
                problem: problem.clone(),
                resumed_from: snapshot.as_ref().map(|s| s.state.step),
            };
            tracing::warn!("{}", report.describe());
            report
        });
        return Ok((snapshot, rejected));
    }
    ring.broadcast(&mut bytes)?;
    Ok((decode_snapshot(&bytes), None))
}

/// Rank 0 reads the warm-start checkpoint and passes it around the ring; it also returns the
/// description of the model that wrote it (peers return none).
pub(crate) fn load_warm_start(
    warm: &WarmStart,
    ring: &mut Ring,
    runtime: &Handle,
) -> Result<(Snapshot, Option<String>), TrainError> {
    let mut bytes = Vec::new();
    if ring.rank() == 0 {
        let loaded = runtime.block_on(warm.store.load_for_warm_start(warm.manifest_key.as_deref()));
        if let Ok(Ok((snapshot, _))) = &loaded {
            bytes = encode_snapshot(snapshot);
        }
        ring.broadcast(&mut bytes)?;
        return match loaded? {
            Ok((snapshot, manifest)) => Ok((snapshot, manifest.model)),
            Err(problem) => Err(TrainError::Config(format!(
                "spec.trainer.initFrom.uri {}: {problem}",
                warm.uri
            ))),
        };
    }
    ring.broadcast(&mut bytes)?;
    decode_snapshot(&bytes).map(|s| (s, None)).ok_or_else(|| {
        TrainError::Config(format!(
            "spec.trainer.initFrom.uri {}: rank 0 could not read the checkpoint",
            warm.uri
        ))
    })
}

pub(crate) fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let state = serde_json::to_vec(&s.state).unwrap_or_default();
    let mut out = Vec::new();
    for part in [
        &state[..],
        bytemuck::cast_slice(&s.params),
        bytemuck::cast_slice(&s.moment1),
        bytemuck::cast_slice(&s.moment2),
        bytemuck::cast_slice(&s.mask),
    ] {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

pub(crate) fn decode_snapshot(bytes: &[u8]) -> Option<Snapshot> {
    let mut parts = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 8 {
        let (len, tail) = rest.split_at(8);
        let len = u64::from_le_bytes(len.try_into().ok()?) as usize;
        if tail.len() < len {
            return None;
        }
        parts.push(&tail[..len]);
        rest = &tail[len..];
    }
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    match parts.as_slice() {
        [state, params, m1, m2, mask] => Some(Snapshot {
            state: serde_json::from_slice(state).ok()?,
            params: floats(params),
            moment1: floats(m1),
            moment2: floats(m2),
            mask: floats(mask),
        }),
        _ => None,
    }
}

pub(crate) fn snapshot(
    state: &TrainingState,
    params: &[f32],
    optimizer: &Optimizer,
    pruner: Option<&Pruner>,
) -> Snapshot {
    Snapshot {
        state: state.clone(),
        params: params.to_vec(),
        moment1: optimizer.m.clone(),
        moment2: optimizer.v.clone(),
        mask: pruner.map(|p| p.mask.clone()).unwrap_or_default(),
    }
}
