//! Intra-process parallelism over the threads of the current rayon pool (`RAYON_NUM_THREADS`,
//! default: the CPUs this process may use). Work is only ever split by output element, never along
//! a sum, so every result is bit-for-bit the same whatever the thread count: a job resumed on a
//! node with more or fewer cores continues exactly where it stopped.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};

/// Products with fewer multiply-adds than this run on one thread: a split would cost more.
const MIN_SPLIT_WORK: usize = 1 << 17;
/// Split points fall on multiples of the GEMM micro-kernel's 8-wide tiles.
const TILE: usize = 8;
/// Element-wise passes hand out chunks of this many elements.
pub const CHUNK: usize = 1 << 14;

/// `c = a · b`, split across the threads of the pool this runs on (`ThreadPool::install`); on
/// any other thread it runs single-threaded rather than queue work on the global pool and wait.
pub fn gemm(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>, c: ArrayViewMut2<'_, f32>) {
    let pieces = rayon::current_thread_index().map_or(1, |_| rayon::current_num_threads());
    gemm_in_pieces(a, b, c, pieces);
}

fn gemm_in_pieces(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    mut c: ArrayViewMut2<'_, f32>,
    pieces: usize,
) {
    let (m, n) = c.dim();
    let work = m * n * a.ncols();
    let left = pieces / 2;
    // Split the longer side of the output; the other operand is shared.
    let (axis, len) = if n >= m { (1, n) } else { (0, m) };
    let mid = (len * left / pieces.max(1)) / TILE * TILE;
    if pieces < 2 || work < MIN_SPLIT_WORK || mid == 0 || mid >= len {
        general_mat_mul(1.0, &a, &b, 0.0, &mut c);
        return;
    }
    let right = pieces - left;
    if axis == 1 {
        let (b1, b2) = b.split_at(Axis(1), mid);
        let (c1, c2) = c.split_at(Axis(1), mid);
        rayon::join(
            || gemm_in_pieces(a, b1, c1, left),
            || gemm_in_pieces(a, b2, c2, right),
        );
    } else {
        let (a1, a2) = a.split_at(Axis(0), mid);
        let (c1, c2) = c.split_at(Axis(0), mid);
        rayon::join(
            || gemm_in_pieces(a1, b, c1, left),
            || gemm_in_pieces(a2, b, c2, right),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn matrix(rows: usize, cols: usize, seed: u32) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            let x = (i as u32).wrapping_mul(2_654_435_761) ^ (j as u32).wrapping_mul(40_503) ^ seed;
            (x % 1000) as f32 / 997.0 - 0.5
        })
    }

    fn product(a: &Array2<f32>, b: &Array2<f32>, threads: usize) -> Array2<f32> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let mut c = Array2::zeros((a.nrows(), b.ncols()));
        pool.install(|| gemm(a.view(), b.view(), c.view_mut()));
        c
    }

    #[test]
    fn split_products_are_bit_identical_to_one_thread() {
        // Wide and tall outputs, ragged edges, transposed operands.
        for (m, k, n) in [
            (64, 784, 256),
            (256, 64, 784),
            (50_176 / 8, 25, 6),
            (67, 129, 61),
        ] {
            let (a, b) = (matrix(m, k, 1), matrix(k, n, 2));
            let one = product(&a, &b, 1);
            for threads in [2, 3, 4] {
                assert_eq!(
                    product(&a, &b, threads),
                    one,
                    "{m}×{k}×{n} on {threads} threads"
                );
            }
            let bt = b.t().to_owned();
            let mut c = Array2::zeros((m, n));
            gemm(a.view(), bt.t(), c.view_mut());
            assert_eq!(c, one);
        }
    }

    #[test]
    fn the_product_is_correct() {
        let (a, b) = (matrix(37, 300, 3), matrix(300, 45, 4));
        let c = product(&a, &b, 2);
        for i in [0, 17, 36] {
            for j in [0, 22, 44] {
                let expected: f64 = (0..300)
                    .map(|t| f64::from(a[[i, t]]) * f64::from(b[[t, j]]))
                    .sum();
                assert!((f64::from(c[[i, j]]) - expected).abs() < 1e-3);
            }
        }
    }
}
