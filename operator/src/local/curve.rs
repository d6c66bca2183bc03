//! The loss/accuracy curve `ferrotrain run` writes next to the checkpoints (training loss and
//! validation accuracy against the global step), and the validation curves of every trial that
//! `ferrotrain sweep` writes at the end.

use std::path::Path;

use plotters::prelude::*;

/// Text font, shipped so that the picture renders the same everywhere (DejaVu Sans, its licence in
/// `operator/assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// One observation of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Global step.
    pub step: f64,
    /// Training loss, if reported.
    pub loss: Option<f64>,
    /// Validation accuracy in [0, 1], if evaluated.
    pub accuracy: Option<f64>,
}

/// Why the curve could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the training curve: {0}")]
pub struct CurveError(String);

fn draw_error(e: impl std::fmt::Display) -> CurveError {
    CurveError(e.to_string())
}

/// Draws `points` into a PNG at `path` (two panels: loss, accuracy).
pub fn write_png(path: &Path, title: &str, points: &[Point]) -> Result<(), CurveError> {
    // Registering twice is harmless; the first registration wins.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let root = BitMapBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(draw_error)?;
    let (left, right) = root.split_horizontally(480);
    let last_step = points.iter().map(|p| p.step).fold(1.0, f64::max);
    let losses: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.loss.map(|l| (p.step, l)))
        .collect();
    let max_loss = losses.iter().map(|(_, l)| *l).fold(0.1, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption("training loss", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..last_step, 0.0..max_loss * 1.05)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .draw()
        .map_err(draw_error)?;
    chart
        .draw_series(LineSeries::new(losses, &RED))
        .map_err(draw_error)?;
    let accuracy: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.accuracy.map(|a| (p.step, a * 100.0)))
        .collect();
    let floor = accuracy
        .iter()
        .map(|(_, a)| *a)
        .fold(100.0, f64::min)
        .min(90.0);
    let mut chart = ChartBuilder::on(&right)
        .caption("validation accuracy (%)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..last_step, floor.floor()..100.0)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .draw()
        .map_err(draw_error)?;
    chart
        .draw_series(LineSeries::new(accuracy.iter().copied(), &BLUE))
        .map_err(draw_error)?;
    chart
        .draw_series(
            accuracy
                .iter()
                .map(|&(s, a)| Circle::new((s, a), 3, BLUE.filled())),
        )
        .map_err(draw_error)?;
    root.present().map_err(draw_error)
}

/// One trial's validation curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (step, metric) in step order.
    pub points: Vec<(f64, f64)>,
}

/// Draws every trial's validation metric against the step into one PNG at `path`, one coloured
/// line per trial with a legend; `percent` scales a [0, 1] metric to percent.
pub fn write_sweep_png(
    path: &Path,
    title: &str,
    metric: &str,
    percent: bool,
    series: &[Series],
) -> Result<(), CurveError> {
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let scale = if percent { 100.0 } else { 1.0 };
    let all = series.iter().flat_map(|s| s.points.iter());
    let last_step = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let values: Vec<f64> = all.map(|p| p.1 * scale).collect();
    let (mut low, mut high) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    if !low.is_finite() || !high.is_finite() {
        (low, high) = (0.0, 1.0);
    }
    if percent {
        // The interesting part of an accuracy curve is near the top.
        low = low.max(high - 20.0).max(0.0);
        high = high.min(100.0);
    }
    let pad = ((high - low) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..last_step, (low - pad)..(high + pad))
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(if percent {
            format!("{metric} (%)")
        } else {
            metric.to_string()
        })
        .draw()
        .map_err(draw_error)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = s.points.iter().map(|(x, y)| (*x, y * scale)).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(draw_error)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let path =
            std::env::temp_dir().join(format!("ferrotrain-curve-{}.png", std::process::id()));
        let points: Vec<Point> = (0..50)
            .map(|i| Point {
                step: f64::from(i * 10),
                loss: Some(2.0 / f64::from(i + 1)),
                accuracy: (i % 10 == 9).then_some(0.9 + f64::from(i) / 1000.0),
            })
            .collect();
        write_png(&path, "mnist", &points).expect("draws");
        let bytes = std::fs::read(&path).expect("written");
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 5_000, "a real picture, not an empty file");
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn writes_a_sweep_png_with_one_line_per_trial() {
        let path =
            std::env::temp_dir().join(format!("ferrotrain-sweep-curve-{}.png", std::process::id()));
        let series: Vec<Series> = (0..12)
            .map(|t| Series {
                label: format!("s-{t:03}"),
                points: (1..=10)
                    .map(|i| (f64::from(i * 100), 0.9 + f64::from(i * t) / 2000.0))
                    .collect(),
            })
            .collect();
        write_sweep_png(&path, "sweep", "valAccuracy", true, &series).expect("draws");
        let bytes = std::fs::read(&path).expect("written");
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 10_000, "a real picture, not an empty file");
        std::fs::remove_file(path).ok();
    }
}
