//! The training losses over a batch's logits and their gradients: softmax cross-entropy against
//! labels, and knowledge distillation, which adds the divergence from a teacher's softened
//! outputs: `alpha × T² × KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) ×
//! cross-entropy`. The T² keeps the soft term's gradient on the scale of the hard one's.

/// Loss and accuracy counts over a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchStats {
    /// Sum of per-sample losses (cross-entropy, or the distillation loss while distilling).
    pub loss_sum: f64,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Samples.
    pub count: usize,
}

impl BatchStats {
    fn record(&mut self, loss: f32, predicted: usize, label: u8) {
        self.loss_sum += f64::from(loss);
        self.correct += usize::from(predicted == usize::from(label));
        self.count += 1;
    }
}

/// What a batch is trained towards.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// Class labels: softmax cross-entropy.
    Labels(&'a [u8]),
    /// Labels and a teacher's logits for the same rows (`classes` per row).
    Distilled {
        /// Class labels.
        labels: &'a [u8],
        /// The teacher's logits.
        teacher: &'a [f32],
        /// Softening temperature T (> 0).
        temperature: f32,
        /// Weight of the teacher's term; 1 − alpha goes to the labels.
        alpha: f32,
    },
}

impl Targets<'_> {
    /// The class labels.
    pub fn labels(&self) -> &[u8] {
        match self {
            Targets::Labels(labels) | Targets::Distilled { labels, .. } => labels,
        }
    }
}

/// The loss statistics of `logits` against `targets`; writes dLoss/dlogits (mean over the batch)
/// into `grad`.
pub fn loss_and_grad(
    logits: &[f32],
    classes: usize,
    targets: Targets,
    grad: &mut Vec<f32>,
) -> BatchStats {
    grad.resize(logits.len(), 0.0);
    let labels = targets.labels();
    let scale = 1.0 / labels.len().max(1) as f32;
    let mut stats = BatchStats::default();
    let rows = logits
        .chunks_exact(classes)
        .zip(grad.chunks_exact_mut(classes))
        .zip(labels);
    for (i, ((row, row_grad), &label)) in rows.enumerate() {
        let (hard, predicted) = softmax_loss(row, usize::from(label), Some((row_grad, scale)));
        let loss = match targets {
            Targets::Labels(_) => hard,
            Targets::Distilled {
                teacher,
                temperature,
                alpha,
                ..
            } => {
                let soft_targets = softened(&teacher[i * classes..(i + 1) * classes], temperature);
                let student = softened(row, temperature);
                let mut divergence = 0.0;
                for j in 0..classes {
                    let (p, q) = (soft_targets[j], student[j]);
                    if p > 0.0 {
                        divergence += p * (p.ln() - q.max(f32::MIN_POSITIVE).ln());
                    }
                    // d(T² KL)/d(student logit) = T (q − p).
                    row_grad[j] =
                        (1.0 - alpha) * row_grad[j] + alpha * temperature * (q - p) * scale;
                }
                alpha * temperature * temperature * divergence + (1.0 - alpha) * hard
            }
        };
        stats.record(loss, predicted, label);
    }
    stats
}

/// softmax(logits / temperature).
fn softened(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exps: Vec<f32> = logits
        .iter()
        .map(|&v| ((v - max) / temperature).exp())
        .collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Loss and accuracy of a batch from its logits (`classes` per row).
pub(crate) fn logit_stats(logits: &[f32], classes: usize, labels: &[u8]) -> BatchStats {
    let mut stats = BatchStats::default();
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let (loss, predicted) = softmax_loss(row, usize::from(label), None);
        stats.record(loss, predicted, label);
    }
    stats
}

/// Loss of one row and its arg-max; with `grad`, writes (softmax − one-hot) × scale.
pub(crate) fn softmax_loss(
    logits: &[f32],
    label: usize,
    grad: Option<(&mut [f32], f32)>,
) -> (f32, usize) {
    let (mut predicted, mut max) = (0, f32::NEG_INFINITY);
    for (j, &v) in logits.iter().enumerate() {
        if v > max {
            max = v;
            predicted = j;
        }
    }
    let sum: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    let loss = log_sum - (logits.get(label).copied().unwrap_or(max) - max);
    if let Some((grad, scale)) = grad {
        for (j, (g, &v)) in grad.iter_mut().zip(logits).enumerate() {
            let p = (v - max - log_sum).exp();
            *g = (p - if j == label { 1.0 } else { 0.0 }) * scale;
        }
    }
    (loss, predicted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mean loss of the batch, for finite differences.
    fn mean_loss(logits: &[f32], targets: Targets) -> f64 {
        let mut grad = Vec::new();
        let stats = loss_and_grad(logits, 3, targets, &mut grad);
        stats.loss_sum / stats.count as f64
    }

    #[test]
    fn the_distillation_gradient_matches_finite_differences() {
        let logits = [0.5f32, -1.0, 2.0, 0.1, 0.3, -0.7];
        let teacher = [1.5f32, 0.2, -0.3, -1.0, 2.5, 0.4];
        let labels = [2u8, 1];
        let targets = Targets::Distilled {
            labels: &labels,
            teacher: &teacher,
            temperature: 3.0,
            alpha: 0.7,
        };
        let mut grad = Vec::new();
        loss_and_grad(&logits, 3, targets, &mut grad);
        for i in 0..logits.len() {
            let h = 1e-3f32;
            let (mut up, mut down) = (logits, logits);
            up[i] += h;
            down[i] -= h;
            let numeric =
                (mean_loss(&up, targets) - mean_loss(&down, targets)) / (2.0 * f64::from(h));
            assert!(
                (numeric - f64::from(grad[i])).abs() < 2e-3,
                "logit {i}: numeric {numeric}, analytic {}",
                grad[i]
            );
        }
    }

    #[test]
    fn alpha_zero_is_cross_entropy_and_a_teacher_agreeing_with_the_student_adds_nothing() {
        let logits = [0.5f32, -1.0, 2.0];
        let labels = [0u8];
        let (mut plain, mut distilled) = (Vec::new(), Vec::new());
        let hard = loss_and_grad(&logits, 3, Targets::Labels(&labels), &mut plain);
        let none = Targets::Distilled {
            labels: &labels,
            teacher: &[9.0, 9.0, 9.0],
            temperature: 2.0,
            alpha: 0.0,
        };
        assert_eq!(loss_and_grad(&logits, 3, none, &mut distilled), hard);
        assert_eq!(plain, distilled);
        let agreeing = Targets::Distilled {
            labels: &labels,
            teacher: &logits,
            temperature: 2.0,
            alpha: 1.0,
        };
        let stats = loss_and_grad(&logits, 3, agreeing, &mut distilled);
        assert!(stats.loss_sum.abs() < 1e-6, "{stats:?}");
        assert!(distilled.iter().all(|g| g.abs() < 1e-6), "{distilled:?}");
    }
}
