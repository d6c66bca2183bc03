//! Process exit codes of `ferrotrain-trainer`. The operator classifies failures by them: 75 is an
//! infrastructure event (charged to maxInfraRestarts), other non-zero codes are application
//! failures (charged to maxAppRestarts).

/// Training finished.
pub const SUCCESS: u8 = 0;
/// An unexpected internal error.
pub const INTERNAL: u8 = 1;
/// The configuration or env contract is invalid, or training diverged; retrying cannot help.
pub const BAD_CONFIG: u8 = ferrotrain_crds::env::EXIT_BAD_CONFIG as u8;
/// The training data is malformed; retrying cannot help.
pub const DATA_ERROR: u8 = ferrotrain_crds::env::EXIT_DATA_ERROR as u8;
/// The training data could not be read (missing, unreachable, denied); a retry may succeed.
pub const DATA_UNAVAILABLE: u8 = ferrotrain_crds::env::EXIT_DATA_UNAVAILABLE as u8;
/// A peer rank died or stopped answering within the timeout.
pub const PEER_LOST: u8 = ferrotrain_crds::env::EXIT_PEER_LOST as u8;
/// Checkpoint storage failed (unreachable, denied, or no compatible checkpoint).
pub const CHECKPOINT_ERROR: u8 = 5;
/// SIGTERM received; an emergency checkpoint was committed before exiting (EX_TEMPFAIL).
pub const PREEMPTED_AFTER_CHECKPOINT: u8 =
    ferrotrain_crds::env::EXIT_PREEMPTED_AFTER_CHECKPOINT as u8;
