//! Pure decisions: no Kubernetes client, no I/O, no clock. The TrainingJob state machine and the
//! TrainingSweep search, each one function from what was observed to what to do, shared by the
//! cluster and the local runners.

pub mod job;
pub mod status;
pub mod sweep;
