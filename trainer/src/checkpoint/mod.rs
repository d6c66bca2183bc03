//! Checkpoints in object storage: what a checkpoint is made of and how it is committed, listed,
//! verified and loaded, and the lease that makes one job at a time their writer.

pub mod layout;
pub mod lease;
pub mod store;
