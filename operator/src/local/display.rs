//! What a local run shows: a progress bar with the job's status, or one JSON object a line
//! (throttled, but every change of phase or attempt at once and the final status last).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrotrain_crds::{Phase, TrainingJobStatus};

/// Holds a stream of JSON status lines to one per period without losing what matters: a
/// change of phase or attempt goes out at once, and the newest line held back goes out on
/// [`flush`](Self::flush) when the run ends.
pub(crate) struct StatusThrottle {
    period: Duration,
    /// When the last line went out, the line and its phase key.
    last: Option<(Instant, String, String)>,
    held: Option<String>,
}

impl StatusThrottle {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            held: None,
        }
    }

    /// The line to print now, if any. `key` names the phase (and attempt) of `line`.
    pub(crate) fn offer(&mut self, now: Instant, key: &str, line: String) -> Option<String> {
        if let Some((at, text, last_key)) = &self.last {
            if *text == line {
                self.held = None;
                return None;
            }
            if last_key == key && now.saturating_duration_since(*at) < self.period {
                self.held = Some(line);
                return None;
            }
        }
        self.held = None;
        self.last = Some((now, line.clone(), key.to_string()));
        Some(line)
    }

    /// The newest line held back, once.
    pub(crate) fn flush(&mut self) -> Option<String> {
        let line = self.held.take()?;
        if let Some(last) = &mut self.last {
            last.1.clone_from(&line);
        }
        Some(line)
    }
}

/// Terminal output: a progress bar, or JSON lines.
pub(crate) struct Display {
    json: bool,
    bar: indicatif::ProgressBar,
    status_lines: Mutex<StatusThrottle>,
    /// Counted as one Ctrl-C when the reader of stdout goes away (`… | head -1`).
    interrupts: Arc<AtomicUsize>,
    stdout_closed: std::sync::atomic::AtomicBool,
    /// The terminal's settings before the bar turned off its echo of control characters.
    terminal: Option<nix::sys::termios::Termios>,
}

impl Display {
    pub(crate) fn new(json: bool, quiet: bool, interrupts: Arc<AtomicUsize>) -> Self {
        // A hidden bar prints nothing, its `println` lines included.
        let json = json && !quiet;
        let bar = if json || quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(1)
        };
        let style =
            // wide_msg: the message is cut to the terminal's width instead of wrapping.
            indicatif::ProgressStyle::with_template("{spinner} [{bar:20}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            json,
            bar,
            status_lines: Mutex::new(StatusThrottle::new(Duration::from_secs(1))),
            interrupts,
            stdout_closed: std::sync::atomic::AtomicBool::new(false),
            terminal: if json || quiet {
                None
            } else {
                quiet_control_echo()
            },
        }
    }

    /// Writes one line to stdout. A reader that went away stops the run as Ctrl-C does (the
    /// workers checkpoint and stop) instead of a panic that would orphan them.
    pub(crate) fn emit(&self, line: &str) {
        use std::io::Write;
        if self.stdout_closed.load(Ordering::SeqCst) {
            return;
        }
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            self.stdout_closed.store(true, Ordering::SeqCst);
            self.interrupts.fetch_max(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn line(&self, text: &str) {
        if self.json {
            self.emit(&serde_json::json!({"event": "message", "message": text}).to_string());
        } else {
            self.bar.println(text);
        }
    }

    pub(crate) fn event(&self, warning: bool, reason: &str, message: &str) {
        if self.json {
            self.emit(
                &serde_json::json!({"event": "event", "type": if warning { "Warning" } else { "Normal" }, "reason": reason, "message": message})
                    .to_string(),
            );
        } else {
            self.bar.println(format!(
                "{} {reason}: {message}",
                if warning { "!" } else { "-" }
            ));
        }
    }

    /// Prints the newest status line the throttle held back: the stream ends on the final one.
    pub(crate) fn flush_status(&self) {
        let held = self.status_lines.lock().ok().and_then(|mut l| l.flush());
        if let Some(line) = held {
            self.emit(&line);
        }
    }

    pub(crate) fn status(&self, status: &TrainingJobStatus) {
        let progress = status.progress.clone().unwrap_or_default();
        let restarts = status.restarts.clone().unwrap_or_default();
        if self.json {
            let line = serde_json::json!({
                "event": "status",
                "phase": status.phase,
                "attempt": status.attempt,
                "step": progress.step,
                "totalSteps": progress.total_steps,
                "epoch": progress.epoch,
                "loss": progress.loss,
                "metrics": progress.metrics,
                "samplesPerSecond": progress.samples_per_second,
                "etaSeconds": progress.eta_seconds,
                "restarts": restarts,
            })
            .to_string();
            let key = format!("{:?}/{}", status.phase, status.attempt.unwrap_or(1));
            let due = self
                .status_lines
                .lock()
                .ok()
                .and_then(|mut lines| lines.offer(Instant::now(), &key, line));
            if let Some(line) = due {
                self.emit(&line);
            }
            return;
        }
        if let Some(total) = progress.total_steps {
            self.bar.set_length(total.max(1) as u64);
        }
        self.bar.set_position(progress.step.max(0) as u64);
        let accuracy = progress
            .metrics
            .get("valAccuracy")
            .map(|a| format!(" acc {:.2}%", a * 100.0))
            .unwrap_or_default();
        self.bar.set_message(format!(
            "{:?} epoch {} loss {}{} {} samples/s ETA {} attempt {} restarts {}",
            status.phase.unwrap_or(Phase::Pending),
            progress.epoch.unwrap_or(0),
            progress.loss.map_or("-".into(), |l| format!("{l:.4}")),
            accuracy,
            progress
                .samples_per_second
                .map_or("-".into(), |s| format!("{s:.0}")),
            progress.eta.unwrap_or_else(|| "-".into()),
            status.attempt.unwrap_or(1),
            restarts.infra + restarts.app,
        ));
    }
}

/// Turns off the terminal's echo of control characters (`stty -echoctl`) and returns the
/// settings to restore. The echoed `^C` of a Ctrl-C lands on the bar's line behind the bar's
/// back, which then cannot clear that line and leaves a stale copy of itself on screen.
pub(crate) fn quiet_control_echo() -> Option<nix::sys::termios::Termios> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return None;
    }
    let original = tcgetattr(&stdin).ok()?;
    if !original.local_flags.contains(LocalFlags::ECHOCTL) {
        return None;
    }
    let mut quiet = original.clone();
    quiet.local_flags.remove(LocalFlags::ECHOCTL);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).ok()?;
    Some(original)
}

impl Drop for Display {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        if let Some(original) = &self.terminal {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                original,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_status_stream_is_throttled_but_keeps_every_phase_and_the_last_line() {
        let period = Duration::from_secs(1);
        let mut throttle = StatusThrottle::new(period);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(
            throttle.offer(at(0), "Running", "step 1".into()).as_deref(),
            Some("step 1")
        );
        assert_eq!(throttle.offer(at(10), "Running", "step 1".into()), None);
        assert_eq!(throttle.offer(at(100), "Running", "step 2".into()), None);
        assert_eq!(throttle.offer(at(200), "Running", "step 3".into()), None);
        // A phase change is never held back, however soon it comes.
        assert_eq!(
            throttle
                .offer(at(300), "Succeeded", "done".into())
                .as_deref(),
            Some("done")
        );
        assert_eq!(
            throttle.flush(),
            None,
            "nothing held after the phase change"
        );
        assert_eq!(
            throttle.offer(at(400), "Succeeded", "done, final".into()),
            None
        );
        // The run ends: the newest line held back is printed, once.
        assert_eq!(throttle.flush().as_deref(), Some("done, final"));
        assert_eq!(throttle.flush(), None);
        assert_eq!(
            throttle.offer(at(500), "Succeeded", "done, final".into()),
            None
        );
        // After the period a new line goes out and nothing older is held.
        assert_eq!(throttle.offer(at(600), "Succeeded", "later".into()), None);
        assert_eq!(
            throttle
                .offer(at(1500), "Succeeded", "latest".into())
                .as_deref(),
            Some("latest")
        );
        assert_eq!(throttle.flush(), None);
    }
}
