//! Convolution and pooling over channels-last activations (`[batch, height, width, channels]`).
//!
//! A convolution is im2col + one matrix product per fixed group of images: the columns of a
//! group are built and multiplied while they are still in cache, and groups run in parallel.
//! The weight gradient sums over the whole batch; each group's share is computed on its own and
//! the shares are added in group order, so the result is the same for any thread count (a group's
//! size does not depend on the threads).

use rayon::prelude::*;

/// Images per group: enough rows for an efficient product, few enough that the group's columns
/// stay in the core's cache.
const IMAGES_PER_GROUP: usize = 8;

/// A stride-1 square convolution's shapes.
pub(crate) struct ConvGeometry {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub pad: usize,
}

impl ConvGeometry {
    fn out_h(&self) -> usize {
        self.height + 2 * self.pad + 1 - self.kernel
    }
    fn out_w(&self) -> usize {
        self.width + 2 * self.pad + 1 - self.kernel
    }
    /// Output positions of one image: the rows its columns contribute.
    fn image_rows(&self) -> usize {
        self.out_h() * self.out_w()
    }
    fn image_inputs(&self) -> usize {
        self.height * self.width * self.in_channels
    }
    /// Values of one column row: kernel × kernel × in_channels.
    pub fn patch(&self) -> usize {
        self.kernel * self.kernel * self.in_channels
    }
    fn weights(&self) -> usize {
        self.out_channels * self.patch()
    }
    fn groups(&self) -> usize {
        self.batch.div_ceil(IMAGES_PER_GROUP)
    }

    fn padded_width(&self) -> usize {
        self.width + 2 * self.pad
    }
    fn padded_inputs(&self) -> usize {
        (self.height + 2 * self.pad) * self.padded_width() * self.in_channels
    }
    /// Offset of input row h's first value in the padded image.
    fn padded_offset(&self, h: usize) -> usize {
        ((h + self.pad) * self.padded_width() + self.pad) * self.in_channels
    }
}

/// `y = conv(x) + bias` for the whole batch; leaves the columns in `cols` for the backward pass.
/// `transposed` is scratch for the rearranged weights.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    transposed: &mut Vec<[f32; LANES]>,
    cols: &mut Vec<f32>,
    y: &mut [f32],
) {
    let (k, oc) = (g.patch(), g.out_channels);
    cols.resize(g.batch * g.image_rows() * k, 0.0);
    transpose_in_blocks(weight, bias, oc, k, transposed);
    let transposed = &transposed[..];
    let simd = pulp::Arch::new();
    let group_rows = IMAGES_PER_GROUP * g.image_rows();
    cols.par_chunks_mut(group_rows * k)
        .zip(y.par_chunks_mut(group_rows * oc))
        .zip(x.par_chunks(IMAGES_PER_GROUP * g.image_inputs()))
        .for_each(|((cols, y), x)| {
            let mut padded = Vec::new();
            for (image, cols) in x
                .chunks_exact(g.image_inputs())
                .zip(cols.chunks_exact_mut(g.image_rows() * k))
            {
                im2col(g, image, &mut padded, cols);
            }
            simd.dispatch(Kernel::Product {
                cols,
                k,
                transposed,
                y,
                oc,
            });
        });
}

/// A fully connected layer's `y = x · weightᵀ + bias` (`weight` is outputs × inputs), rows split
/// across the pool's threads. The same kernel as the convolutions: no packing of the weights.
pub(crate) fn linear_forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    transposed: &mut Vec<[f32; LANES]>,
    y: &mut [f32],
) {
    let (outputs, inputs) = (bias.len(), weight.len() / bias.len());
    transpose_in_blocks(weight, bias, outputs, inputs, transposed);
    let rows = y.len() / outputs;
    let per_thread = rows.div_ceil(rayon::current_num_threads()).max(1);
    let simd = pulp::Arch::new();
    y.par_chunks_mut(per_thread * outputs)
        .zip(x.par_chunks(per_thread * inputs))
        .for_each(|(y, x)| {
            simd.dispatch(Kernel::Product {
                cols: x,
                k: inputs,
                transposed,
                y,
                oc: outputs,
            });
        });
}

/// Gradients of a convolution from dLoss/dy: writes the weight and bias gradients and, with
/// `dx`, dLoss/dx. Overwrites `cols` (the forward pass's columns) and uses `shares` as scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    g: &ConvGeometry,
    dy: &[f32],
    weight: &[f32],
    cols: &mut [f32],
    grad_weight: &mut [f32],
    grad_bias: &mut [f32],
    dx: Option<&mut [f32]>,
    shares: &mut Vec<f32>,
) {
    let (k, oc) = (g.patch(), g.out_channels);
    let share = g.weights() + oc;
    shares.resize(g.groups() * share, 0.0);
    let simd = pulp::Arch::new();
    let group_rows = IMAGES_PER_GROUP * g.image_rows();
    let group = |share: &mut [f32], cols: &mut [f32], dy: &[f32], dx: Option<&mut [f32]>| {
        let (gw, gb) = share.split_at_mut(g.weights());
        simd.dispatch(Kernel::WeightGradient {
            dy,
            cols,
            oc,
            k,
            grad: gw,
        });
        column_sums(dy, oc, gb);
        if let Some(dx) = dx {
            // The columns are no longer needed: reuse them for dLoss/dcolumns.
            simd.dispatch(Kernel::ColumnGradient {
                dy,
                weight,
                oc,
                k,
                dcols: cols,
            });
            let mut padded = Vec::new();
            for (image, cols) in dx
                .chunks_exact_mut(g.image_inputs())
                .zip(cols.chunks_exact(g.image_rows() * k))
            {
                col2im(g, cols, &mut padded, image);
            }
        }
    };
    let shares_cols_dy = shares
        .par_chunks_mut(share)
        .zip(cols.par_chunks_mut(group_rows * k))
        .zip(dy.par_chunks(group_rows * oc));
    match dx {
        Some(dx) => shares_cols_dy
            .zip(dx.par_chunks_mut(IMAGES_PER_GROUP * g.image_inputs()))
            .for_each(|(((share, cols), dy), dx)| group(share, cols, dy, Some(dx))),
        None => shares_cols_dy.for_each(|((share, cols), dy)| group(share, cols, dy, None)),
    }
    let (gw, gb) = (grad_weight, grad_bias);
    gw.copy_from_slice(&shares[..g.weights()]);
    gb.copy_from_slice(&shares[g.weights()..share]);
    for next in shares.chunks_exact(share).skip(1) {
        let (nw, nb) = next.split_at(g.weights());
        for (s, v) in gw.iter_mut().zip(nw).chain(gb.iter_mut().zip(nb)) {
            *s += v;
        }
    }
}

/// The matrix products, each compiled for the best vector instructions this CPU has (AVX2 where
/// it exists). The sums are written without fused multiply-adds and each output's terms are added
/// in one fixed order, so every instruction set gives the same bits.
enum Kernel<'a> {
    Product {
        cols: &'a [f32],
        k: usize,
        transposed: &'a [[f32; LANES]],
        y: &'a mut [f32],
        oc: usize,
    },
    WeightGradient {
        dy: &'a [f32],
        cols: &'a [f32],
        oc: usize,
        k: usize,
        grad: &'a mut [f32],
    },
    ColumnGradient {
        dy: &'a [f32],
        weight: &'a [f32],
        oc: usize,
        k: usize,
        dcols: &'a mut [f32],
    },
}

impl pulp::WithSimd for Kernel<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        match self {
            Kernel::Product {
                cols,
                k,
                transposed,
                y,
                oc,
            } => product(cols, k, transposed, y, oc),
            Kernel::WeightGradient {
                dy,
                cols,
                oc,
                k,
                grad,
            } => weight_gradient(dy, cols, oc, k, grad),
            Kernel::ColumnGradient {
                dy,
                weight,
                oc,
                k,
                dcols,
            } => column_gradient(dy, weight, oc, k, dcols),
        }
    }
}

/// Output channels computed together: one accumulator row per column row.
pub(crate) const LANES: usize = 8;

/// The weights as `[block][k][LANES]` (block b holds output channels 8b..8b+8, zero-padded),
/// each block followed by its biases, for `product`.
fn transpose_in_blocks(
    weight: &[f32],
    bias: &[f32],
    oc: usize,
    k: usize,
    out: &mut Vec<[f32; LANES]>,
) {
    let blocks = oc.div_ceil(LANES);
    out.clear();
    out.resize(blocks * (k + 1), [0.0; LANES]);
    out.par_chunks_mut(k + 1)
        .zip(weight.par_chunks(LANES * k).zip(bias.par_chunks(LANES)))
        .for_each(|(rows, (weights, biases))| {
            for (lane, (w, &b)) in weights.chunks_exact(k).zip(biases).enumerate() {
                for (row, &v) in rows.iter_mut().zip(w) {
                    row[lane] = v;
                }
                rows[k][lane] = b;
            }
        });
}

/// `y[r][o] = bias[o] + Σ_j cols[r][j] · weight[o][j]`, four rows at a time so that each loaded
/// weight row serves four accumulators; the sum runs over j in order.
#[inline(always)]
fn product(cols: &[f32], k: usize, transposed: &[[f32; LANES]], y: &mut [f32], oc: usize) {
    let mut out: Vec<[f32; LANES]> = vec![[0.0; LANES]; y.len() / oc];
    for (block, weights) in transposed.chunks_exact(k + 1).enumerate() {
        let (weights, bias) = weights.split_at(k);
        let mut rows = cols.chunks_exact(4 * k);
        let mut outs = out.chunks_exact_mut(4);
        for (four, dst) in rows.by_ref().zip(outs.by_ref()) {
            let (r0, rest) = four.split_at(k);
            let (r1, rest) = rest.split_at(k);
            let (r2, r3) = rest.split_at(k);
            let [mut s0, mut s1, mut s2, mut s3] = [bias[0]; 4];
            for ((((w, &a0), &a1), &a2), &a3) in weights.iter().zip(r0).zip(r1).zip(r2).zip(r3) {
                for l in 0..LANES {
                    s0[l] += a0 * w[l];
                    s1[l] += a1 * w[l];
                    s2[l] += a2 * w[l];
                    s3[l] += a3 * w[l];
                }
            }
            dst.copy_from_slice(&[s0, s1, s2, s3]);
        }
        for (row, dst) in rows.remainder().chunks_exact(k).zip(outs.into_remainder()) {
            let mut acc = bias[0];
            for (w, &a) in weights.iter().zip(row) {
                for l in 0..LANES {
                    acc[l] += a * w[l];
                }
            }
            *dst = acc;
        }
        let lanes = (oc - block * LANES).min(LANES);
        for (y, acc) in y.chunks_exact_mut(oc).zip(&out) {
            y[block * LANES..block * LANES + lanes].copy_from_slice(&acc[..lanes]);
        }
    }
}

/// `grad[o][j] = Σ_r dy[r][o] · cols[r][j]`, rows four at a time in order.
#[inline(always)]
fn weight_gradient(dy: &[f32], cols: &[f32], oc: usize, k: usize, grad: &mut [f32]) {
    grad.fill(0.0);
    let mut dys = dy.chunks_exact(4 * oc);
    let mut rows = cols.chunks_exact(4 * k);
    for (d, four) in dys.by_ref().zip(rows.by_ref()) {
        let (r0, rest) = four.split_at(k);
        let (r1, rest) = rest.split_at(k);
        let (r2, r3) = rest.split_at(k);
        for (o, g) in grad.chunks_exact_mut(k).enumerate() {
            let (d0, d1, d2, d3) = (d[o], d[oc + o], d[2 * oc + o], d[3 * oc + o]);
            for ((((g, &a0), &a1), &a2), &a3) in g.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                *g += d0 * a0 + d1 * a1 + d2 * a2 + d3 * a3;
            }
        }
    }
    for (d, row) in dys
        .remainder()
        .chunks_exact(oc)
        .zip(rows.remainder().chunks_exact(k))
    {
        for (g, &d) in grad.chunks_exact_mut(k).zip(d) {
            for (g, &a) in g.iter_mut().zip(row) {
                *g += d * a;
            }
        }
    }
}

/// `dcols[r][j] = Σ_o dy[r][o] · weight[o][j]`, output channels four at a time in order.
#[inline(always)]
fn column_gradient(dy: &[f32], weight: &[f32], oc: usize, k: usize, dcols: &mut [f32]) {
    for (d, out) in dy.chunks_exact(oc).zip(dcols.chunks_exact_mut(k)) {
        out.fill(0.0);
        let mut ws = weight.chunks_exact(4 * k);
        let mut ds = d.chunks_exact(4);
        for (four, d) in ws.by_ref().zip(ds.by_ref()) {
            let (w0, rest) = four.split_at(k);
            let (w1, rest) = rest.split_at(k);
            let (w2, w3) = rest.split_at(k);
            for ((((o, &a0), &a1), &a2), &a3) in out.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                *o += d[0] * a0 + d[1] * a1 + d[2] * a2 + d[3] * a3;
            }
        }
        for (w, &d) in ws.remainder().chunks_exact(k).zip(ds.remainder()) {
            for (o, &a) in out.iter_mut().zip(w) {
                *o += d * a;
            }
        }
    }
}

/// One image's columns: a row per output position, kernel rows one after another, each a
/// contiguous run of kernel × in_channels input values (zeros in the padding). `padded` is
/// scratch for the zero-padded image.
fn im2col(g: &ConvGeometry, x: &[f32], padded: &mut Vec<f32>, cols: &mut [f32]) {
    let source = if g.pad == 0 {
        x
    } else {
        padded.clear();
        padded.resize(g.padded_inputs(), 0.0);
        for (h, row) in x.chunks_exact(g.width * g.in_channels).enumerate() {
            let at = g.padded_offset(h);
            padded[at..at + row.len()].copy_from_slice(row);
        }
        padded
    };
    // Constant run lengths for LeNet's two layers let the copies inline.
    match g.kernel * g.in_channels {
        5 => windows(g, source, cols, 5),
        30 => windows(g, source, cols, 30),
        run => windows(g, source, cols, run),
    }
}

#[inline(always)]
fn windows(g: &ConvGeometry, source: &[f32], cols: &mut [f32], run: usize) {
    let (row_len, c) = (g.padded_width() * g.in_channels, g.in_channels);
    let mut rows = cols.chunks_exact_mut(g.patch());
    for oh in 0..g.out_h() {
        for ow in 0..g.out_w() {
            let Some(row) = rows.next() else { return };
            for (kh, dst) in row.chunks_exact_mut(run).enumerate() {
                let at = (oh + kh) * row_len + ow * c;
                dst.copy_from_slice(&source[at..at + run]);
            }
        }
    }
}

/// Adds one image's column gradients back onto the input positions they were copied from.
/// `padded` is scratch for the gradient of the zero-padded image.
fn col2im(g: &ConvGeometry, cols: &[f32], padded: &mut Vec<f32>, dx: &mut [f32]) {
    padded.clear();
    padded.resize(g.padded_inputs(), 0.0);
    match g.kernel * g.in_channels {
        5 => add_windows(g, cols, padded, 5),
        30 => add_windows(g, cols, padded, 30),
        run => add_windows(g, cols, padded, run),
    }
    for (h, row) in dx.chunks_exact_mut(g.width * g.in_channels).enumerate() {
        let at = g.padded_offset(h);
        row.copy_from_slice(&padded[at..at + row.len()]);
    }
}

#[inline(always)]
fn add_windows(g: &ConvGeometry, cols: &[f32], padded: &mut [f32], run: usize) {
    let (row_len, c) = (g.padded_width() * g.in_channels, g.in_channels);
    let mut rows = cols.chunks_exact(g.patch());
    for oh in 0..g.out_h() {
        for ow in 0..g.out_w() {
            let Some(row) = rows.next() else { return };
            for (kh, src) in row.chunks_exact(run).enumerate() {
                let at = (oh + kh) * row_len + ow * c;
                for (d, s) in padded[at..at + run].iter_mut().zip(src) {
                    *d += s;
                }
            }
        }
    }
}

/// Sums of the columns of the row-major `matrix` (`cols` wide), rows added in order: a bias
/// gradient.
pub(crate) fn column_sums(matrix: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in matrix.chunks_exact(cols) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// 2×2 max pooling with stride 2; keeps each output's source offset for the backward pass.
pub(crate) fn max_pool(
    x: &[f32],
    batch: usize,
    height: usize,
    width: usize,
    channels: usize,
    y: &mut [f32],
    argmax: &mut Vec<u32>,
) {
    let (oh, ow) = (height / 2, width / 2);
    argmax.resize(batch * oh * ow * channels, 0);
    let mut out = 0;
    for b in 0..batch {
        for i in 0..oh {
            for j in 0..ow {
                for ch in 0..channels {
                    let mut best = f32::NEG_INFINITY;
                    let mut best_at = 0;
                    for (di, dj) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let at = ((b * height + 2 * i + di) * width + 2 * j + dj) * channels + ch;
                        if x[at] > best {
                            best = x[at];
                            best_at = at;
                        }
                    }
                    y[out] = best;
                    argmax[out] = best_at as u32;
                    out += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution written out as its definition, for checking the fast path.
    #[allow(clippy::needless_range_loop)]
    fn reference(g: &ConvGeometry, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f64> {
        let mut y = Vec::new();
        for b in 0..g.batch {
            for oh in 0..g.out_h() {
                for ow in 0..g.out_w() {
                    for o in 0..g.out_channels {
                        let mut sum = f64::from(bias[o]);
                        for kh in 0..g.kernel {
                            for kw in 0..g.kernel {
                                let (Some(ih), Some(iw)) =
                                    ((oh + kh).checked_sub(g.pad), (ow + kw).checked_sub(g.pad))
                                else {
                                    continue;
                                };
                                if ih >= g.height || iw >= g.width {
                                    continue;
                                }
                                for c in 0..g.in_channels {
                                    let xi =
                                        ((b * g.height + ih) * g.width + iw) * g.in_channels + c;
                                    let wi =
                                        ((o * g.kernel + kh) * g.kernel + kw) * g.in_channels + c;
                                    sum += f64::from(x[xi]) * f64::from(weight[wi]);
                                }
                            }
                        }
                        y.push(sum);
                    }
                }
            }
        }
        y
    }

    /// Padded and unpadded, one and several channels, batches that do not fill their last group
    /// and row counts that are not multiples of four.
    fn cases() -> Vec<ConvGeometry> {
        [(3, 7, 1, 2, 2), (11, 6, 3, 4, 0), (9, 5, 2, 9, 1)]
            .into_iter()
            .map(
                |(batch, side, in_channels, out_channels, pad)| ConvGeometry {
                    batch,
                    height: side,
                    width: side,
                    in_channels,
                    out_channels,
                    kernel: 5.min(side),
                    pad,
                },
            )
            .collect()
    }

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| (((i + seed) * 7919) % 613) as f32 / 613.0 - 0.5)
            .collect()
    }

    #[test]
    fn the_grouped_convolution_matches_its_definition() {
        for g in cases() {
            let x = values(g.batch * g.image_inputs(), 0);
            let weight = values(g.weights(), 5);
            let bias = values(g.out_channels, 11);
            let mut y = vec![0.0; g.batch * g.image_rows() * g.out_channels];
            forward(
                &g,
                &x,
                &weight,
                &bias,
                &mut Vec::new(),
                &mut Vec::new(),
                &mut y,
            );
            for (got, want) in y.iter().zip(reference(&g, &x, &weight, &bias)) {
                assert!((f64::from(*got) - want).abs() < 1e-4, "{got} vs {want}");
            }
        }
    }

    /// The convolution is linear in each argument, so a unit step of one weight, bias or input
    /// changes Σ dy·y by exactly that coordinate's gradient.
    #[test]
    fn the_grouped_gradients_match_the_definition() {
        for g in cases() {
            let x = values(g.batch * g.image_inputs(), 0);
            let weight = values(g.weights(), 5);
            let bias = values(g.out_channels, 11);
            let dy = values(g.batch * g.image_rows() * g.out_channels, 17);
            let objective = |x: &[f32], weight: &[f32], bias: &[f32]| -> f64 {
                let y = reference(&g, x, weight, bias);
                y.iter().zip(&dy).map(|(y, &d)| y * f64::from(d)).sum()
            };
            let base = objective(&x, &weight, &bias);
            let step = |values: &[f32], i: usize| {
                let mut stepped = values.to_vec();
                stepped[i] += 1.0;
                stepped
            };
            let mut cols = Vec::new();
            let mut y = vec![0.0; dy.len()];
            forward(&g, &x, &weight, &bias, &mut Vec::new(), &mut cols, &mut y);
            let (mut gw, mut gb, mut dx) = (
                vec![0.0; weight.len()],
                vec![0.0; bias.len()],
                vec![0.0; x.len()],
            );
            backward(
                &g,
                &dy,
                &weight,
                &mut cols,
                &mut gw,
                &mut gb,
                Some(&mut dx),
                &mut Vec::new(),
            );
            let close = |got: f32, want: f64, what: &str| {
                assert!(
                    (f64::from(got) - want).abs() < 1e-3,
                    "{what}: {got} vs {want}"
                );
            };
            for (i, &got) in gw.iter().enumerate() {
                close(
                    got,
                    objective(&x, &step(&weight, i), &bias) - base,
                    "weight",
                );
            }
            for (i, &got) in gb.iter().enumerate() {
                close(got, objective(&x, &weight, &step(&bias, i)) - base, "bias");
            }
            for (i, &got) in dx.iter().enumerate() {
                close(got, objective(&step(&x, i), &weight, &bias) - base, "input");
            }
        }
    }

    /// The kernels compiled for this CPU's vector instructions give the same bits as the
    /// baseline build of the same code.
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let (rows, k, oc) = (37, 29, 11);
        let cols = values(rows * k, 1);
        let weight = values(oc * k, 2);
        let bias = values(oc, 3);
        let dy = values(rows * oc, 4);
        let mut transposed = Vec::new();
        transpose_in_blocks(&weight, &bias, oc, k, &mut transposed);
        let run = |vectorized: bool| {
            let (mut y, mut grad, mut dcols) =
                (vec![0.0; rows * oc], vec![0.0; oc * k], vec![0.0; rows * k]);
            let kernels = [
                Kernel::Product {
                    cols: &cols,
                    k,
                    transposed: &transposed,
                    y: &mut y,
                    oc,
                },
                Kernel::WeightGradient {
                    dy: &dy,
                    cols: &cols,
                    oc,
                    k,
                    grad: &mut grad,
                },
                Kernel::ColumnGradient {
                    dy: &dy,
                    weight: &weight,
                    oc,
                    k,
                    dcols: &mut dcols,
                },
            ];
            for kernel in kernels {
                if vectorized {
                    pulp::Arch::new().dispatch(kernel);
                } else {
                    pulp::WithSimd::with_simd(kernel, pulp::Scalar);
                }
            }
            (y, grad, dcols)
        };
        assert_eq!(run(true), run(false));
    }
}
