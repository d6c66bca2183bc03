//! Data parallelism between ranks: rendezvous through rank 0 and the ring all-reduce.

pub mod ring;
