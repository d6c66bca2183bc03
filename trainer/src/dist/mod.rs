//! Data parallelism between ranks: rendezvous through rank 0, the ring all-reduce, and the wire
//! protocol both speak. Every message carries the gang attempt, so workers of an old attempt are
//! refused.

pub mod rendezvous;
pub mod ring;
pub mod wire;
