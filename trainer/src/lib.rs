//! `ferrotrain-trainer`: the training runtime that runs in every worker.
//!
//! One process per rank: it loads its data shard, forms a ring with the other ranks, trains with
//! synchronous data parallelism (gradients all-reduced every step), checkpoints to object storage
//! and reports progress. Everything works on flat parameter and gradient vectors; an `engine`
//! computes the passes: Ferrotrain's own CPU kernels (`model`), or burn on a GPU (feature `cuda`).

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod dist;
pub mod engine;
pub mod exit;
pub mod export;
pub mod nn;
pub mod optim;
pub mod progress;
pub mod rng;
pub mod run;
pub mod storage;
pub mod tls;
pub mod train;
