//! Batch normalisation over channels-last activations: every channel of a batch is shifted to
//! mean 0 and scaled to variance 1 with the batch's own statistics, then scaled and shifted by two
//! learned parameters per channel. Evaluation uses running statistics instead, an exponential
//! average of the batches' (momentum 0.1, the unbiased variance, as PyTorch keeps them).
//!
//! The batch's sums go through `reduce` before they are used: a no-op normalises with each rank's
//! own batch; an all-reduce over the gang normalises with the whole gang's batch (synchronised
//! batch normalisation), in the forward pass and in the backward pass alike. Sums are taken in f64
//! in a fixed order, so the result does not depend on the thread count.

/// Added to the variance before its square root.
pub(crate) const EPSILON: f32 = 1e-5;
/// Weight of a new batch in the running statistics.
pub(crate) const MOMENTUM: f32 = 0.1;

/// Sums a buffer over the ranks that share batch statistics (or leaves it as it is).
pub type Reduce<'r> = &'r mut dyn FnMut(&mut [f32]);

/// Per-channel sums of `x` (rows × channels, row-major) of `f(value, channel)`.
fn channel_sums(x: &[f32], channels: usize, mut f: impl FnMut(f32, usize) -> f64) -> Vec<f64> {
    let mut sums = vec![0.0f64; channels];
    for row in x.chunks_exact(channels) {
        for (c, (&v, sum)) in row.iter().zip(sums.iter_mut()).enumerate() {
            *sum += f(v, c);
        }
    }
    sums
}

/// Training-mode forward pass: writes `y`, the normalised values into `normalised` and, into
/// `saved`, the inverse deviation, the batch mean and the batch's unbiased variance (each one
/// value per channel) for the backward pass and the running statistics.
pub(crate) fn forward_train(
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    y: &mut [f32],
    normalised: &mut Vec<f32>,
    saved: &mut Vec<f32>,
    reduce: Reduce<'_>,
) {
    let channels = scale.len();
    let rows = x.len() / channels;
    // The sums and the row count, summed over the ranks that share statistics.
    let mut sums: Vec<f32> = channel_sums(x, channels, |v, _| f64::from(v))
        .into_iter()
        .map(|s| s as f32)
        .chain([rows as f32])
        .collect();
    reduce(&mut sums);
    let count = f64::from(sums[channels]).max(1.0);
    let mean: Vec<f32> = sums[..channels]
        .iter()
        .map(|&s| (f64::from(s) / count) as f32)
        .collect();
    let mut squares: Vec<f32> = channel_sums(x, channels, |v, c| {
        let d = f64::from(v - mean[c]);
        d * d
    })
    .into_iter()
    .map(|s| s as f32)
    .collect();
    reduce(&mut squares);
    saved.clear();
    saved.extend(
        squares
            .iter()
            .map(|&s| 1.0 / ((f64::from(s) / count) as f32 + EPSILON).sqrt()),
    );
    saved.extend_from_slice(&mean);
    let unbiased = count / (count - 1.0).max(1.0);
    saved.extend(
        squares
            .iter()
            .map(|&s| (f64::from(s) / count * unbiased) as f32),
    );
    let inverse = &saved[..channels];
    normalised.resize(x.len(), 0.0);
    for ((xr, yr), nr) in x
        .chunks_exact(channels)
        .zip(y.chunks_exact_mut(channels))
        .zip(normalised.chunks_exact_mut(channels))
    {
        for c in 0..channels {
            let n = (xr[c] - mean[c]) * inverse[c];
            nr[c] = n;
            yr[c] = scale[c] * n + shift[c];
        }
    }
}

/// Evaluation-mode forward pass with the running statistics.
pub(crate) fn forward_eval(
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
) {
    let channels = scale.len();
    let (multiplier, offset) = folded(scale, shift, running_mean, running_var);
    for (xr, yr) in x.chunks_exact(channels).zip(y.chunks_exact_mut(channels)) {
        for c in 0..channels {
            yr[c] = xr[c] * multiplier[c] + offset[c];
        }
    }
}

/// Evaluation-mode normalisation as one multiply-add per channel: `y = x · multiplier + offset`.
/// This is also how an exported model folds it into the layer before it.
pub(crate) fn folded(
    scale: &[f32],
    shift: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let multiplier: Vec<f32> = scale
        .iter()
        .zip(running_var)
        .map(|(&g, &v)| g / (v + EPSILON).sqrt())
        .collect();
    let offset = shift
        .iter()
        .zip(running_mean)
        .zip(&multiplier)
        .map(|((&b, &m), &k)| b - m * k)
        .collect();
    (multiplier, offset)
}

/// Backward pass: writes the gradients of the scale and shift of this rank's batch and dLoss/dx.
/// `inverse` is the first part of `saved` of the forward pass.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dy: &[f32],
    normalised: &[f32],
    inverse: &[f32],
    scale: &[f32],
    grad_scale: &mut [f32],
    grad_shift: &mut [f32],
    dx: &mut [f32],
    reduce: Reduce<'_>,
) {
    let channels = scale.len();
    let rows = dy.len() / channels;
    let d_shift = channel_sums(dy, channels, |g, _| f64::from(g));
    let mut d_scale = vec![0.0f64; channels];
    for (gr, nr) in dy
        .chunks_exact(channels)
        .zip(normalised.chunks_exact(channels))
    {
        for c in 0..channels {
            d_scale[c] += f64::from(gr[c]) * f64::from(nr[c]);
        }
    }
    for c in 0..channels {
        grad_shift[c] = d_shift[c] as f32;
        grad_scale[c] = d_scale[c] as f32;
    }
    // dx depends on the sums over every row that shared the statistics.
    let mut sums: Vec<f32> = grad_shift
        .iter()
        .chain(grad_scale.iter())
        .copied()
        .chain([rows as f32])
        .collect();
    reduce(&mut sums);
    let count = sums[2 * channels].max(1.0);
    let (sum_dy, sum_dy_n) = sums[..2 * channels].split_at(channels);
    for ((gr, nr), dr) in dy
        .chunks_exact(channels)
        .zip(normalised.chunks_exact(channels))
        .zip(dx.chunks_exact_mut(channels))
    {
        for c in 0..channels {
            let k = scale[c] * inverse[c] / count;
            dr[c] = k * (count * gr[c] - sum_dy[c] - nr[c] * sum_dy_n[c]);
        }
    }
}

/// Moves running statistics towards a batch's: `running ← (1 − momentum) · running + momentum ·
/// batch`.
pub(crate) fn update_running(running: &mut [f32], batch: &[f32]) {
    for (r, &b) in running.iter_mut().zip(batch) {
        *r = (1.0 - MOMENTUM) * *r + MOMENTUM * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_normalised_per_channel_and_evaluation_matches_with_its_statistics() {
        let x: Vec<f32> = (0..24).map(|i| (i * i % 7) as f32 - 2.0).collect();
        let (scale, shift) = (vec![2.0, 0.5, 1.0], vec![0.1, -0.3, 0.0]);
        let (mut y, mut n, mut saved) = (vec![0.0; 24], Vec::new(), Vec::new());
        forward_train(&x, &scale, &shift, &mut y, &mut n, &mut saved, &mut |_| {});
        for c in 0..3 {
            let column: Vec<f32> = n.iter().skip(c).step_by(3).copied().collect();
            let mean = column.iter().sum::<f32>() / 8.0;
            let var = column.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 8.0;
            assert!(
                mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-3,
                "{c}: {mean} {var}"
            );
        }
        // With the batch's statistics as running statistics (biased variance), evaluation
        // computes what training did.
        let (mean, unbiased) = (&saved[3..6], &saved[6..9]);
        let biased: Vec<f32> = unbiased.iter().map(|v| v * 7.0 / 8.0).collect();
        let mut z = vec![0.0; 24];
        forward_eval(&x, &scale, &shift, mean, &biased, &mut z);
        for (a, b) in y.iter().zip(&z) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
    }

    #[test]
    fn running_statistics_move_by_the_momentum() {
        let mut running = vec![0.0, 1.0];
        update_running(&mut running, &[1.0, 3.0]);
        assert!((running[0] - 0.1).abs() < 1e-7 && (running[1] - 1.2).abs() < 1e-6);
    }
}
