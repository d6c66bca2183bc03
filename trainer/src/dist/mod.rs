//! Data parallelism between ranks: rendezvous through rank 0, the ring all-reduce, and the wire
//! protocol both speak. Every connection is authenticated with the job's gang key and carries the
//! gang attempt, so outsiders and workers of an old attempt are refused.

pub mod handshake;
pub mod rendezvous;
pub mod ring;
pub mod wire;
