//! Data augmentation of training images: a random shift and rotation (one affine map, sampled
//! bilinearly, background outside the image) followed by Gaussian pixel noise. Each sample draws
//! from a stream keyed by (seed, step, rank), so a resumed run sees exactly the images an
//! uninterrupted run saw, and the ranks of a gang see different transformations.

use ferrotrain_crds::AugmentSpec;

use crate::data::ImageShape;
use crate::rng::Rng;

/// The transformations of `dataset.augment` for images of one shape.
#[derive(Clone, Debug)]
pub struct Augmenter {
    shape: ImageShape,
    shift: usize,
    /// Largest rotation, in radians.
    rotation: f32,
    noise_std: f32,
    scratch: Vec<f32>,
}

impl Augmenter {
    /// `None` when every transformation is off: the batches stay untouched.
    pub fn new(spec: &AugmentSpec, shape: ImageShape) -> Option<Self> {
        let augmenter = Self {
            shape,
            shift: spec.shift_pixels_or_default(),
            rotation: spec.rotation_degrees_or_default().to_radians() as f32,
            noise_std: spec.noise_std_or_default() as f32,
            scratch: Vec::new(),
        };
        (augmenter.shift > 0 || augmenter.rotation > 0.0 || augmenter.noise_std > 0.0)
            .then_some(augmenter)
    }

    /// Transforms every image of a row-major batch in place.
    pub fn apply(&mut self, batch: &mut [f32], rng: &mut Rng) {
        let ImageShape {
            height,
            width,
            channels,
        } = self.shape;
        let size = height * width * channels;
        if size == 0 {
            return;
        }
        for image in batch.chunks_exact_mut(size) {
            // Drawn in a fixed order whatever is enabled, so turning one transformation on
            // does not change what the others draw.
            let span = 2 * self.shift + 1;
            let dy = rng.below(span) as isize - self.shift as isize;
            let dx = rng.below(span) as isize - self.shift as isize;
            let angle = (2.0 * rng.next_f32() - 1.0) * self.rotation;
            if angle != 0.0 {
                self.rotate_and_shift(image, angle, dy as f32, dx as f32);
            } else if dy != 0 || dx != 0 {
                self.shift_by(image, dy, dx);
            }
            if self.noise_std > 0.0 {
                for value in image.iter_mut() {
                    *value = (*value + self.noise_std * gaussian(rng)).clamp(0.0, 1.0);
                }
            }
        }
    }

    /// An exact shift by whole pixels: the output at (y, x) is the input at (y - dy, x - dx).
    fn shift_by(&mut self, image: &mut [f32], dy: isize, dx: isize) {
        let ImageShape {
            height,
            width,
            channels,
        } = self.shape;
        self.scratch.clear();
        self.scratch.extend_from_slice(image);
        for y in 0..height {
            for x in 0..width {
                let (sy, sx) = (y as isize - dy, x as isize - dx);
                let inside =
                    (0..height as isize).contains(&sy) && (0..width as isize).contains(&sx);
                let out = (y * width + x) * channels;
                for c in 0..channels {
                    image[out + c] = if inside {
                        self.scratch[(sy as usize * width + sx as usize) * channels + c]
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    /// Rotation by `angle` about the centre, then a shift; each output pixel samples the input
    /// bilinearly at the inverse-mapped position.
    fn rotate_and_shift(&mut self, image: &mut [f32], angle: f32, dy: f32, dx: f32) {
        let ImageShape {
            height,
            width,
            channels,
        } = self.shape;
        self.scratch.clear();
        self.scratch.extend_from_slice(image);
        let (sin, cos) = angle.sin_cos();
        let (cy, cx) = ((height as f32 - 1.0) / 2.0, (width as f32 - 1.0) / 2.0);
        let at = |y: isize, x: isize, c: usize| -> f32 {
            if (0..height as isize).contains(&y) && (0..width as isize).contains(&x) {
                self.scratch[(y as usize * width + x as usize) * channels + c]
            } else {
                0.0
            }
        };
        for y in 0..height {
            for x in 0..width {
                let (oy, ox) = (y as f32 - dy - cy, x as f32 - dx - cx);
                let sy = cos * oy - sin * ox + cy;
                let sx = sin * oy + cos * ox + cx;
                let (y0, x0) = (sy.floor(), sx.floor());
                let (fy, fx) = (sy - y0, sx - x0);
                let (y0, x0) = (y0 as isize, x0 as isize);
                let out = (y * width + x) * channels;
                for c in 0..channels {
                    let top = at(y0, x0, c) * (1.0 - fx) + at(y0, x0 + 1, c) * fx;
                    let bottom = at(y0 + 1, x0, c) * (1.0 - fx) + at(y0 + 1, x0 + 1, c) * fx;
                    image[out + c] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
    }
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut Rng) -> f32 {
    let u1 = 1.0 - rng.next_f32();
    let u2 = rng.next_f32();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    const SQUARE: ImageShape = ImageShape {
        height: 8,
        width: 8,
        channels: 1,
    };

    fn spec(shift: i32, rotation: f64, noise: f64) -> AugmentSpec {
        AugmentSpec {
            shift_pixels: Some(shift),
            rotation_degrees: Some(rotation),
            noise_std: Some(noise),
        }
    }

    /// One bright pixel at (row, column).
    fn dot(row: usize, column: usize) -> Vec<f32> {
        let mut image = vec![0.0; 64];
        image[row * 8 + column] = 1.0;
        image
    }

    #[test]
    fn nothing_enabled_is_no_augmenter() {
        assert!(Augmenter::new(&AugmentSpec::default(), SQUARE).is_none());
        assert!(Augmenter::new(&spec(0, 0.0, 0.0), SQUARE).is_none());
    }

    #[test]
    fn a_shift_moves_every_pixel_by_at_most_the_bound_and_keeps_it_whole() {
        let mut augmenter = Augmenter::new(&spec(2, 0.0, 0.0), SQUARE).expect("enabled");
        let mut rng = Rng::derive(7, Stream::Augment, &[0, 0]);
        let mut moves = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut image = dot(4, 4);
            augmenter.apply(&mut image, &mut rng);
            let lit: Vec<usize> = (0..64).filter(|&i| image[i] != 0.0).collect();
            assert_eq!(lit.len(), 1, "a whole-pixel shift keeps the dot one pixel");
            assert_eq!(image[lit[0]], 1.0);
            let (dy, dx) = (lit[0] as isize / 8 - 4, lit[0] as isize % 8 - 4);
            assert!(dy.abs() <= 2 && dx.abs() <= 2, "shift ({dy}, {dx})");
            moves.insert((dy, dx));
        }
        assert_eq!(moves.len(), 25, "every shift in [-2, 2]² occurs");
        // Pixels shifted in from outside are background.
        let mut edge = dot(0, 0);
        let mut rng = Rng::derive(1, Stream::Augment, &[0, 0]);
        for _ in 0..50 {
            augmenter.apply(&mut edge, &mut rng);
        }
        assert!(edge.iter().all(|v| *v == 0.0 || *v == 1.0));
    }

    #[test]
    fn quarter_turns_of_a_dot_land_where_geometry_says() {
        let shape = ImageShape {
            height: 9,
            width: 9,
            channels: 1,
        };
        let mut augmenter = Augmenter::new(&spec(0, 90.0, 0.0), shape).expect("enabled");
        let brightest = |augmenter: &mut Augmenter, angle: f32, dy: f32, dx: f32| {
            // One pixel right of the centre.
            let mut image = vec![0.0; 81];
            image[4 * 9 + 5] = 1.0;
            augmenter.rotate_and_shift(&mut image, angle, dy, dx);
            let at = (0..81)
                .max_by(|&a, &b| image[a].total_cmp(&image[b]))
                .unwrap_or_default();
            assert!(image[at] > 0.99, "sampled on the grid: {image:?}");
            (at / 9, at % 9)
        };
        let quarter = std::f32::consts::FRAC_PI_2;
        let left = brightest(&mut augmenter, quarter, 0.0, 0.0);
        let right = brightest(&mut augmenter, -quarter, 0.0, 0.0);
        assert_eq!(
            [left, right]
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>(),
            [(3, 4), (5, 4)].into_iter().collect(),
            "a quarter turn either way puts the dot above or below the centre"
        );
        assert_eq!(
            brightest(&mut augmenter, quarter, 1.0, 2.0),
            (left.0 + 1, left.1 + 2),
            "the shift applies after the rotation"
        );
    }

    #[test]
    fn noise_has_the_asked_spread_and_stays_in_range() {
        let mut augmenter = Augmenter::new(&spec(0, 0.0, 0.1), SQUARE).expect("enabled");
        let mut rng = Rng::derive(3, Stream::Augment, &[0, 0]);
        let mut batch = vec![0.5f32; 64 * 100];
        augmenter.apply(&mut batch, &mut rng);
        let n = batch.len() as f32;
        let mean = batch.iter().sum::<f32>() / n;
        let std = (batch.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!((std - 0.1).abs() < 0.01, "std {std}");
        let mut white = vec![1.0f32; 64 * 10];
        augmenter.apply(&mut white, &mut rng);
        assert!(white.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn the_same_stream_gives_the_same_images_and_another_rank_others() {
        let mut augmenter = Augmenter::new(&spec(2, 15.0, 0.05), SQUARE).expect("enabled");
        let base: Vec<f32> = (0..64 * 4).map(|i| (i % 7) as f32 / 7.0).collect();
        let run = |augmenter: &mut Augmenter, rank: u64| {
            let mut batch = base.clone();
            augmenter.apply(&mut batch, &mut Rng::derive(9, Stream::Augment, &[5, rank]));
            batch
        };
        let first = run(&mut augmenter, 0);
        assert_eq!(first, run(&mut augmenter, 0));
        assert_ne!(first, run(&mut augmenter, 1));
        assert_ne!(first, base);
    }
}
