//! What the cluster and the local runner say alike about workers: how long a worker has between
//! SIGTERM and SIGKILL, and how a failed worker's last error is read and cut for conditions and
//! events. Both runners import this module, never each other.

/// Seconds a worker has between SIGTERM and SIGKILL (its emergency checkpoint fits in this).
pub const TERMINATION_GRACE_SECONDS: i64 = 30;
/// Longest worker message carried into conditions and events.
pub const MAX_FAILURE_MESSAGE: usize = 300;

/// `text` cut to at most `max` characters, with an ellipsis when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The last error a worker logged: the trainer logs JSON lines; the error's own text is in
/// `fields.error`, else `fields.message`; a line that is not JSON is taken as it is.
pub fn last_error(log: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| {
        l.contains("\"level\":\"ERROR\"")
            || (!l.starts_with('{') && !l.trim().is_empty() && !l.starts_with("--- ferrotrain run"))
    })?;
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
        return Some(line.trim().to_string());
    };
    let fields = &value["fields"];
    let text = match (fields["message"].as_str(), fields["error"].as_str()) {
        (Some(message), Some(error)) => format!("{message}: {error}"),
        (Some(message), None) => message.to_string(),
        (None, Some(error)) => error.to_string(),
        (None, None) => line.trim().to_string(),
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_of_a_worker_log_is_found() {
        let log = "--- ferrotrain run, started 2026-11-28T00:00:00Z ---\n\
            {\"level\":\"INFO\",\"fields\":{\"message\":\"data loaded\"}}\n\
            {\"level\":\"ERROR\",\"fields\":{\"message\":\"training data\",\"error\":\"file:///d.csv: row 3: expected 4 columns\"}}\n\
            {\"level\":\"INFO\",\"fields\":{\"message\":\"bye\"}}\n";
        assert_eq!(
            last_error(log).as_deref(),
            Some("training data: file:///d.csv: row 3: expected 4 columns")
        );
        assert_eq!(
            last_error("thread 'main' panicked at src/x.rs:1\n").as_deref(),
            Some("thread 'main' panicked at src/x.rs:1")
        );
        assert_eq!(last_error("--- ferrotrain run, started x ---\n"), None);
    }
}
