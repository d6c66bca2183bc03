//! The networks and their numeric kernels: models with hand-written forward and backward passes
//! over one flat parameter vector, convolutions and pooling, and the parallel matrix products.

pub mod batch_norm;
mod conv;
pub mod describe;
pub mod kernels;
pub mod layers;
pub mod loss;
pub mod model;
pub mod pruning;
