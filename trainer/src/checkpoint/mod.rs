//! Checkpoints in object storage: what a checkpoint is made of and how it is committed, listed,
//! verified and loaded.

pub mod layout;
pub mod store;
