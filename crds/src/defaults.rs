//! Every default of the TrainingJob API, in one place. The CRD carries no schema defaults, so what
//! the API server stores is what the user wrote; the operator, the local runner and the trainer all
//! read optional fields through these accessors. docs/api.md lists the same table.

use crate::run_policy::{
    CheckpointSpec, CleanPodPolicy, FailureAction, FailureReason, ResumePolicy, RunPolicy,
};
use crate::trainer_spec::{
    AugmentSpec, DatasetSpec, Device, EarlyStoppingMetric, EarlyStoppingMode, EarlyStoppingSpec,
    GradientCompression, LrScheduleKind, LrScheduleSpec, ModeKind, ModelKind, ModelSpec,
    OptimizerKind, OptimizerSpec, Precision, TrainerSpec,
};

/// Hidden layer widths of an MLP without `hidden`.
pub const MLP_HIDDEN: [i32; 2] = [256, 128];
/// Training seed.
pub const SEED: i64 = 42;
/// Fraction held out for validation when a dataset has no test set.
pub const VALIDATION_SPLIT: f64 = 0.1;
/// CSV label column.
pub const CSV_LABEL_COLUMN: i32 = 0;
/// Adam/AdamW learning rate.
pub const ADAM_LR: f64 = 1e-3;
/// SGD learning rate.
pub const SGD_LR: f64 = 1e-2;
/// Adam β1, β2.
pub const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
/// Adam ε.
pub const ADAM_EPS: f64 = 1e-8;
/// AdamW decoupled weight decay.
pub const ADAMW_WEIGHT_DECAY: f64 = 0.01;
/// Step schedule decay factor.
pub const STEP_GAMMA: f64 = 0.1;
/// Async mode staleness bound.
pub const MAX_STALENESS: i32 = 4;
/// Early-stopping patience, in evaluations.
pub const PATIENCE: i32 = 3;
/// Checkpoints kept.
pub const CHECKPOINT_KEEP: i32 = 3;
/// S3 region.
pub const S3_REGION: &str = "us-east-1";
/// Secret key holding the access key id.
pub const ACCESS_KEY_ID_KEY: &str = "AWS_ACCESS_KEY_ID";
/// Secret key holding the secret access key.
pub const SECRET_ACCESS_KEY_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Infrastructure restart budget.
pub const MAX_INFRA_RESTARTS: i32 = 10;
/// Application restart budget.
pub const MAX_APP_RESTARTS: i32 = 3;
/// Gang schedule timeout in seconds.
pub const GANG_SCHEDULE_TIMEOUT_SECONDS: i64 = 300;

impl ModelSpec {
    /// MLP hidden widths (empty for other models).
    pub fn hidden_or_default(&self) -> Vec<i32> {
        match self.kind {
            ModelKind::Mlp => self.hidden.clone().unwrap_or_else(|| MLP_HIDDEN.to_vec()),
            ModelKind::Logistic | ModelKind::Lenet => Vec::new(),
        }
    }

    /// Dropout probability.
    pub fn dropout_or_default(&self) -> f64 {
        self.dropout.unwrap_or(0.0)
    }

    /// Whether hidden layers are batch-normalised (never for softmax regression).
    pub fn batch_norm_or_default(&self) -> bool {
        self.batch_norm.unwrap_or(false) && self.kind != ModelKind::Logistic
    }

    /// Whether batch statistics are the whole gang's.
    pub fn sync_batch_norm_or_default(&self) -> bool {
        self.batch_norm_or_default() && self.sync_batch_norm.unwrap_or(false)
    }

    /// The names of the layers that have parameters, from the input to the classifier head: what
    /// `freeze` and `initFrom.layers` name.
    pub fn layer_names(&self) -> Vec<String> {
        let fully_connected = |n: usize| (1..=n).map(|i| format!("fc{i}"));
        match self.kind {
            ModelKind::Logistic => fully_connected(1).collect(),
            ModelKind::Mlp => fully_connected(self.hidden_or_default().len() + 1).collect(),
            ModelKind::Lenet => ["conv1".to_string(), "conv2".to_string()]
                .into_iter()
                .chain(fully_connected(3))
                .collect(),
        }
    }
}

impl DatasetSpec {
    /// CSV label column.
    pub fn label_column_or_default(&self) -> usize {
        usize::try_from(self.label_column.unwrap_or(CSV_LABEL_COLUMN)).unwrap_or(0)
    }

    /// Whether the CSV has a header row.
    pub fn header_or_default(&self) -> bool {
        self.header.unwrap_or(false)
    }

    /// Validation fraction when there is no separate test set.
    pub fn validation_split_or_default(&self) -> f64 {
        self.validation_split.unwrap_or(VALIDATION_SPLIT)
    }
}

impl AugmentSpec {
    /// Largest shift in pixels.
    pub fn shift_pixels_or_default(&self) -> usize {
        self.shift_pixels.map_or(0, |s| s.max(0) as usize)
    }

    /// Largest rotation in degrees.
    pub fn rotation_degrees_or_default(&self) -> f64 {
        self.rotation_degrees.unwrap_or(0.0)
    }

    /// Standard deviation of the pixel noise.
    pub fn noise_std_or_default(&self) -> f64 {
        self.noise_std.unwrap_or(0.0)
    }
}

impl crate::compression::PruningSpec {
    /// Step of the first pruning round.
    pub fn start_step_or_default(&self) -> u64 {
        self.start_step.map_or(0, |s| s.max(0) as u64)
    }

    /// Steps between pruning rounds.
    pub fn every_steps_or_default(&self) -> u64 {
        self.every_steps.map_or(100, |s| s.max(1) as u64)
    }
}

impl crate::compression::DistillationSpec {
    /// Softening temperature.
    pub fn temperature_or_default(&self) -> f64 {
        self.temperature.unwrap_or(4.0)
    }

    /// Weight of the teacher's term.
    pub fn alpha_or_default(&self) -> f64 {
        self.alpha.unwrap_or(0.5)
    }
}

impl TrainerSpec {
    /// The optimiser, Adam when unset.
    pub fn optimizer_or_default(&self) -> OptimizerSpec {
        self.optimizer.clone().unwrap_or(OptimizerSpec {
            kind: OptimizerKind::Adam,
            lr: None,
            momentum: None,
            nesterov: None,
            betas: None,
            eps: None,
            weight_decay: None,
            l1: None,
        })
    }

    /// The lr schedule, constant when unset.
    pub fn lr_schedule_or_default(&self) -> LrScheduleSpec {
        self.lr_schedule.clone().unwrap_or(LrScheduleSpec {
            kind: LrScheduleKind::Constant,
            every_steps: None,
            gamma: None,
            warmup_steps: None,
            min_lr: None,
        })
    }

    /// Precision, fp32 when unset.
    pub fn precision_or_default(&self) -> Precision {
        self.precision.unwrap_or(Precision::Fp32)
    }

    /// Data-parallel mode, sync when unset.
    pub fn mode_or_default(&self) -> ModeKind {
        self.mode.as_ref().map_or(ModeKind::Sync, |m| m.kind)
    }

    /// The gradients' wire encoding, fp32 when unset.
    pub fn gradient_compression_or_default(&self) -> GradientCompression {
        self.mode
            .as_ref()
            .and_then(|m| m.gradient_compression)
            .unwrap_or(GradientCompression::None)
    }

    /// Async staleness bound.
    pub fn max_staleness_or_default(&self) -> i32 {
        self.mode
            .as_ref()
            .and_then(|m| m.max_staleness)
            .unwrap_or(MAX_STALENESS)
    }

    /// Seed.
    pub fn seed_or_default(&self) -> u64 {
        u64::try_from(self.seed.unwrap_or(SEED)).unwrap_or(0)
    }

    /// Device selection, auto when unset.
    pub fn device_or_default(&self) -> Device {
        self.device.unwrap_or(Device::Auto)
    }
}

impl OptimizerSpec {
    /// Learning rate.
    pub fn lr_or_default(&self) -> f64 {
        self.lr.unwrap_or(match self.kind {
            OptimizerKind::Sgd => SGD_LR,
            OptimizerKind::Adam | OptimizerKind::Adamw => ADAM_LR,
        })
    }

    /// SGD momentum.
    pub fn momentum_or_default(&self) -> f64 {
        self.momentum.unwrap_or(0.0)
    }

    /// Nesterov momentum.
    pub fn nesterov_or_default(&self) -> bool {
        self.nesterov.unwrap_or(false)
    }

    /// Adam betas.
    pub fn betas_or_default(&self) -> (f64, f64) {
        match self.betas.as_deref() {
            Some([b1, b2]) => (*b1, *b2),
            _ => ADAM_BETAS,
        }
    }

    /// Adam ε.
    pub fn eps_or_default(&self) -> f64 {
        self.eps.unwrap_or(ADAM_EPS)
    }

    /// L1 penalty.
    pub fn l1_or_default(&self) -> f64 {
        self.l1.unwrap_or(0.0)
    }

    /// Weight decay.
    pub fn weight_decay_or_default(&self) -> f64 {
        self.weight_decay.unwrap_or(match self.kind {
            OptimizerKind::Adamw => ADAMW_WEIGHT_DECAY,
            OptimizerKind::Sgd | OptimizerKind::Adam => 0.0,
        })
    }
}

impl LrScheduleSpec {
    /// Step decay factor.
    pub fn gamma_or_default(&self) -> f64 {
        self.gamma.unwrap_or(STEP_GAMMA)
    }

    /// Cosine warmup steps.
    pub fn warmup_steps_or_default(&self) -> i64 {
        self.warmup_steps.unwrap_or(0)
    }

    /// Cosine final learning rate.
    pub fn min_lr_or_default(&self) -> f64 {
        self.min_lr.unwrap_or(0.0)
    }
}

impl EarlyStoppingSpec {
    /// Direction of improvement: the metric's natural one when unset.
    pub fn mode_or_default(&self) -> EarlyStoppingMode {
        self.mode.unwrap_or(match self.metric {
            EarlyStoppingMetric::ValLoss => EarlyStoppingMode::Min,
            EarlyStoppingMetric::ValAccuracy => EarlyStoppingMode::Max,
        })
    }

    /// Patience in evaluations.
    pub fn patience_or_default(&self) -> i32 {
        self.patience.unwrap_or(PATIENCE)
    }

    /// Smallest improvement.
    pub fn min_delta_or_default(&self) -> f64 {
        self.min_delta.unwrap_or(0.0)
    }
}

impl CheckpointSpec {
    /// Checkpoints kept.
    pub fn keep_or_default(&self) -> usize {
        usize::try_from(self.keep.unwrap_or(CHECKPOINT_KEEP)).unwrap_or(1)
    }

    /// S3 region.
    pub fn region_or_default(&self) -> &str {
        self.region.as_deref().unwrap_or(S3_REGION)
    }

    /// Resume policy.
    pub fn resume_or_default(&self) -> ResumePolicy {
        self.resume.unwrap_or(ResumePolicy::Auto)
    }
}

impl RunPolicy {
    /// Whether the job is suspended.
    pub fn suspend_or_default(&self) -> bool {
        self.suspend.unwrap_or(false)
    }

    /// Which pods to delete at the end.
    pub fn clean_pod_policy_or_default(&self) -> CleanPodPolicy {
        self.clean_pod_policy.unwrap_or(CleanPodPolicy::Running)
    }

    /// Infrastructure restart budget.
    pub fn max_infra_restarts_or_default(&self) -> i32 {
        self.max_infra_restarts.unwrap_or(MAX_INFRA_RESTARTS)
    }

    /// Application restart budget.
    pub fn max_app_restarts_or_default(&self) -> i32 {
        self.max_app_restarts.unwrap_or(MAX_APP_RESTARTS)
    }

    /// Gang schedule timeout in seconds.
    pub fn schedule_timeout_seconds_or_default(&self) -> i64 {
        self.gang
            .as_ref()
            .and_then(|g| g.schedule_timeout_seconds)
            .unwrap_or(GANG_SCHEDULE_TIMEOUT_SECONDS)
    }

    /// What a worker failure does: the first of `failurePolicy.rules` that matches it, else the
    /// first matching default rule ([`DEFAULT_FAILURE_RULES`]), else a gang restart charged to
    /// the failure's budget.
    pub fn failure_action(&self, failure: Failure) -> (FailureAction, RuleSource) {
        let user = self.failure_policy.iter().flat_map(|p| p.rules.iter());
        for (index, rule) in user.enumerate() {
            let matches = match failure {
                Failure::ExitCode(code) => rule.on_exit_codes.iter().flatten().any(|c| *c == code),
                Failure::Reason(reason) => rule.on_reasons.iter().flatten().any(|r| *r == reason),
                Failure::Other => false,
            };
            if matches {
                return (rule.action, RuleSource::User(index));
            }
        }
        DEFAULT_FAILURE_RULES
            .iter()
            .find(|rule| failure == Failure::ExitCode(rule.exit_code))
            .map_or(
                (FailureAction::RestartGang, RuleSource::Fallthrough),
                |rule| (rule.action, RuleSource::Default(rule)),
            )
    }
}

/// A worker failure as failure-policy rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The container exited with this code.
    ExitCode(i32),
    /// The platform reported this reason.
    Reason(FailureReason),
    /// Neither (a local process killed by a signal): only the fall-through applies.
    Other,
}

/// Which rule decided a failure's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleSource {
    /// `spec.runPolicy.failurePolicy.rules[i]`.
    User(usize),
    /// A built-in default rule.
    Default(&'static DefaultFailureRule),
    /// No rule: restart the gang, charged to the failure's budget.
    Fallthrough,
}

/// A built-in rule for the trainer's own exit codes.
#[derive(Debug, PartialEq, Eq)]
pub struct DefaultFailureRule {
    /// Exit code it matches.
    pub exit_code: i32,
    /// Action taken.
    pub action: FailureAction,
    /// Why, for conditions and events.
    pub why: &'static str,
}

/// Exit codes that no retry can fix: the trainer's configuration or its data is wrong, and a new
/// attempt would fail the same way. A user rule for the same code (for a custom image that uses
/// it differently) takes precedence. Exit 6 (data unreachable) and 5 (checkpoint storage) are
/// transient and restart as any other failure.
pub const DEFAULT_FAILURE_RULES: [DefaultFailureRule; 2] = [
    DefaultFailureRule {
        exit_code: crate::env::EXIT_BAD_CONFIG,
        action: FailureAction::FailJob,
        why: "the trainer's configuration is invalid or training diverged",
    },
    DefaultFailureRule {
        exit_code: crate::env::EXIT_DATA_ERROR,
        action: FailureAction::FailJob,
        why: "the training data is malformed",
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer_spec::{DatasetKind, ModeSpec};

    fn trainer() -> TrainerSpec {
        TrainerSpec {
            model: ModelSpec {
                kind: ModelKind::Mlp,
                hidden: None,
                dropout: None,
                batch_norm: None,
                sync_batch_norm: None,
            },
            dataset: DatasetSpec {
                kind: DatasetKind::Mnist,
                images: None,
                labels: None,
                test_images: None,
                test_labels: None,
                uri: None,
                test_uri: None,
                label_column: None,
                header: None,
                validation_split: None,
                classes: None,
                augment: None,
            },
            batch_size: 64,
            epochs: Some(1),
            max_steps: None,
            optimizer: None,
            lr_schedule: None,
            grad_clip_norm: None,
            precision: None,
            mode: None,
            early_stopping: None,
            eval_every_steps: None,
            seed: None,
            device: None,
            init_from: None,
            compression: None,
            freeze: None,
            distillation: None,
        }
    }

    #[test]
    fn unset_fields_take_documented_defaults() {
        let t = trainer();
        assert_eq!(t.model.hidden_or_default(), vec![256, 128]);
        let opt = t.optimizer_or_default();
        assert_eq!(opt.kind, OptimizerKind::Adam);
        assert_eq!(opt.lr_or_default(), 1e-3);
        assert_eq!(opt.betas_or_default(), (0.9, 0.999));
        assert_eq!(t.lr_schedule_or_default().kind, LrScheduleKind::Constant);
        assert_eq!(t.mode_or_default(), ModeKind::Sync);
        assert_eq!(t.seed_or_default(), 42);
        assert_eq!(t.precision_or_default(), Precision::Fp32);
        let policy = RunPolicy::default();
        assert_eq!(policy.max_app_restarts_or_default(), 3);
        assert_eq!(policy.max_infra_restarts_or_default(), 10);
        assert_eq!(
            policy.clean_pod_policy_or_default(),
            CleanPodPolicy::Running
        );
        assert_eq!(policy.schedule_timeout_seconds_or_default(), 300);
    }

    #[test]
    fn defaults_depend_on_the_chosen_type() {
        let sgd = OptimizerSpec {
            kind: OptimizerKind::Sgd,
            lr: None,
            momentum: None,
            nesterov: None,
            betas: None,
            eps: None,
            weight_decay: None,
            l1: None,
        };
        assert_eq!(sgd.lr_or_default(), 0.01);
        assert_eq!(sgd.l1_or_default(), 0.0);
        let adamw = OptimizerSpec {
            kind: OptimizerKind::Adamw,
            ..sgd
        };
        assert_eq!(adamw.weight_decay_or_default(), 0.01);
        let mut t = trainer();
        t.model.kind = ModelKind::Lenet;
        assert!(t.model.hidden_or_default().is_empty());
        assert_eq!(
            t.gradient_compression_or_default(),
            GradientCompression::None
        );
        t.mode = Some(ModeSpec {
            kind: ModeKind::Async,
            max_staleness: None,
            gradient_compression: None,
        });
        assert_eq!(t.max_staleness_or_default(), 4);
        let acc = EarlyStoppingSpec {
            metric: EarlyStoppingMetric::ValAccuracy,
            mode: None,
            patience: None,
            min_delta: None,
        };
        assert_eq!(acc.mode_or_default(), EarlyStoppingMode::Max);
    }
}
