//! What `ferrotrain sweep` shows: one line per running trial (or JSON lines), then the results
//! table, the best trial and every trial's validation curve.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferrotrain_crds::sweep::{TrainingSweep, TrialState};

use crate::decide::sweep::sampling::{describe_parameters, format_value, planned_trials};
use crate::local::display::StatusThrottle;
use crate::local::trial::LocalTrial;

/// One line per running trial while the sweep runs.
pub(crate) struct SweepDisplay {
    json: bool,
    multi: indicatif::MultiProgress,
    bars: Mutex<BTreeMap<String, indicatif::ProgressBar>>,
    status_lines: Mutex<StatusThrottle>,
}

impl SweepDisplay {
    pub(crate) fn new(json: bool) -> Self {
        let multi = indicatif::MultiProgress::new();
        if json {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Self {
            json,
            multi,
            bars: Mutex::new(BTreeMap::new()),
            status_lines: Mutex::new(StatusThrottle::new(Duration::from_secs(2))),
        }
    }

    pub(crate) fn line(&self, text: &str) {
        let line = if self.json {
            serde_json::json!({"event": "message", "message": text}).to_string()
        } else {
            text.to_string()
        };
        // Printed above the bars, or plainly when there are none (not a terminal).
        self.multi.suspend(|| println!("{line}"));
    }

    /// Prints the newest status line the throttle held back: the stream ends on the final one.
    pub(crate) fn flush_status(&self) {
        let held = self.status_lines.lock().ok().and_then(|mut l| l.flush());
        if let Some(line) = held {
            self.multi.suspend(|| println!("{line}"));
        }
    }

    pub(crate) fn trials(
        &self,
        status: &ferrotrain_crds::sweep::TrainingSweepStatus,
        trials: &BTreeMap<String, LocalTrial>,
        key: &str,
    ) {
        if self.json {
            let running: Vec<serde_json::Value> = status
                .trials
                .iter()
                .filter(|t| t.state == Some(TrialState::Running))
                .map(|t| serde_json::json!({"name": t.name, "step": t.steps, key: t.metric}))
                .collect();
            let line = serde_json::json!({
                "event": "status",
                "phase": status.phase,
                "trials": status.trials_summary,
                "running": running,
                "best": status.best.as_ref().map(|b| serde_json::json!({"trial": b.trial, key: b.metric})),
            })
            .to_string();
            let due = self.status_lines.lock().ok().and_then(|mut lines| {
                lines.offer(Instant::now(), &format!("{:?}", status.phase), line)
            });
            if let Some(line) = due {
                self.multi.suspend(|| println!("{line}"));
            }
            return;
        }
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        for trial in &status.trials {
            let active = trial.state == Some(TrialState::Running)
                || trial.state == Some(TrialState::Pending);
            match (active, bars.get(&trial.name)) {
                (true, None) => {
                    let bar = self.multi.add(indicatif::ProgressBar::new(1));
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix} [{bar:20}] {pos}/{len} {wide_msg}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(trial.name.clone());
                    bars.insert(trial.name.clone(), bar);
                }
                (false, Some(_)) => {
                    if let Some(bar) = bars.remove(&trial.name) {
                        bar.finish_and_clear();
                        self.multi.remove(&bar);
                    }
                }
                _ => {}
            }
            if let Some(bar) = bars.get(&trial.name) {
                if let Some(total) = trials.get(&trial.name).and_then(|t| t.total_steps) {
                    bar.set_length(total.max(1) as u64);
                }
                bar.set_position(trial.steps.max(0) as u64);
                bar.set_message(format!(
                    "{} {key} {}",
                    describe_parameters(&trial.parameters),
                    trial.metric.map_or("-".into(), |m| format!("{m:.4}"))
                ));
            }
        }
    }
}

impl Drop for SweepDisplay {
    fn drop(&mut self) {
        if let Ok(bars) = self.bars.lock() {
            for bar in bars.values() {
                bar.finish_and_clear();
            }
        }
        let _ = self.multi.clear();
    }
}

/// The median of the trials' final objective values.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// The results table, the steps trained against running every trial to completion, the best
/// trial and the median.
pub(crate) fn print_results(
    sweep: &TrainingSweep,
    status: &ferrotrain_crds::sweep::TrainingSweepStatus,
    trials: &BTreeMap<String, LocalTrial>,
    json: bool,
) {
    let key = sweep.spec.objective.metric.key();
    let pbt = sweep.spec.algorithm.kind == ferrotrain_crds::sweep::AlgorithmKind::Pbt;
    // A pbt trial is one interval: its members train maxSteps each.
    let full = if pbt {
        sweep
            .spec
            .template
            .trainer
            .max_steps
            .map(|steps| steps * sweep.spec.algorithm.population_or_default() as i64)
    } else {
        trials
            .values()
            .filter_map(|t| t.total_steps)
            .max()
            .map(|per_trial| per_trial * planned_trials(sweep) as i64)
    };
    let trained = status.trained_steps.unwrap_or(0);
    let last_generation = status.trials.iter().filter_map(|t| t.generation).max();
    let mut finals: Vec<f64> = status
        .trials
        .iter()
        .filter(|t| !pbt || t.generation == last_generation)
        .filter_map(|t| t.metric)
        .collect();
    let median = median(&mut finals);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "results",
                "phase": status.phase,
                "trials": status.trials,
                "best": status.best,
                "trainedSteps": trained,
                "stepsToCompleteEveryTrial": full,
                "median": median,
            })
        );
        return;
    }
    let paths: Vec<&str> = sweep
        .spec
        .parameters
        .iter()
        .map(|p| p.path.as_str())
        .collect();
    let mut header = format!("{:<24}", "trial");
    for path in &paths {
        header.push_str(&format!(" {path:>14}"));
    }
    if pbt {
        header.push_str(&format!(" {:<24}", "from"));
    }
    header.push_str(&format!(" {:<10} {:>7} {:>12}", "state", "steps", key));
    println!("{header}");
    let best = status.best.as_ref().map(|b| b.trial.as_str());
    for trial in &status.trials {
        let mut row = format!("{:<24}", trial.name);
        for path in &paths {
            let value = trial
                .parameters
                .get(*path)
                .map_or("-".into(), |v| format_value(*v));
            row.push_str(&format!(" {value:>14}"));
        }
        if pbt {
            row.push_str(&format!(" {:<24}", trial.parent.as_deref().unwrap_or("-")));
        }
        row.push_str(&format!(
            " {:<10} {:>7} {:>12}{}",
            format!("{:?}", trial.state.unwrap_or(TrialState::Pending)),
            trial.steps,
            trial.metric.map_or("-".into(), |m| format!("{m:.4}")),
            if best == Some(trial.name.as_str()) {
                "  best"
            } else {
                ""
            }
        ));
        println!("{row}");
    }
    match full {
        Some(full) if full > 0 => println!(
            "trained steps: {trained} of {full} for every trial to run to completion ({:.1} %)",
            trained as f64 / full as f64 * 100.0
        ),
        _ => println!("trained steps: {trained}"),
    }
    if let Some(median) = median {
        let which = if pbt { "members at the end" } else { "trials" };
        println!("median {key} of the {which}: {median:.4}");
    }
    if let Some(best) = &status.best {
        println!(
            "best: {} with {key} {:.4} ({}){}",
            best.trial,
            best.metric,
            describe_parameters(&best.parameters),
            best.checkpoint
                .as_ref()
                .map(|c| format!(", checkpoint {c}"))
                .unwrap_or_default()
        );
    }
}

pub(crate) fn write_curves(
    path: &Path,
    sweep: &TrainingSweep,
    trials: &BTreeMap<String, LocalTrial>,
    json: bool,
) {
    let key = sweep.spec.objective.metric.key();
    let series: Vec<crate::local::curve::Series> = trials
        .iter()
        .map(|(name, t)| crate::local::curve::Series {
            label: name.clone(),
            points: t.curve.iter().map(|(s, v)| (*s as f64, *v)).collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let title = sweep.metadata.name.clone().unwrap_or_default();
    let percent = key == "valAccuracy";
    let line = match crate::local::curve::write_sweep_png(path, &title, key, percent, &series) {
        Ok(()) => format!("validation curves: {}", path.display()),
        Err(e) => e.to_string(),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "message", "message": line})
        );
    } else {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [0.3, 0.1, 0.2]), Some(0.2));
        assert_eq!(median(&mut [0.4, 0.1, 0.2, 0.3]), Some(0.25));
        assert_eq!(median(&mut []), None);
    }
}
