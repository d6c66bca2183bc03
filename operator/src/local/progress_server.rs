//! The progress endpoint of a local run: rank 0 POSTs its reports with the run's token, exactly
//! as it does to the operator.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jiff::Timestamp;

use crate::progress::{ProgressTracker, bearer};

/// Progress reports received by the local endpoint.
#[derive(Default)]
pub(crate) struct Inbox {
    pub(crate) tracker: ProgressTracker,
    pub(crate) accepted: u64,
    pub(crate) rejected: BTreeMap<&'static str, u64>,
}

/// A minimal HTTP/1.1 endpoint on loopback for the trainer's progress POSTs.
pub(crate) fn serve_progress(
    listener: TcpListener,
    token: &str,
    inbox: &Mutex<Inbox>,
    attempt: &AtomicU32,
) {
    for stream in listener.incoming().flatten() {
        let answer = handle_progress(stream.try_clone(), token, inbox, attempt);
        let mut stream = stream;
        let reason = match answer {
            200 => "OK",
            401 => "Unauthorized",
            413 => "Payload Too Large",
            409 => "Conflict",
            _ => "Bad Request",
        };
        let _ = stream.write_all(
            format!("HTTP/1.1 {answer} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        );
    }
}

pub(crate) fn handle_progress(
    stream: std::io::Result<TcpStream>,
    token: &str,
    inbox: &Mutex<Inbox>,
    attempt: &AtomicU32,
) -> u16 {
    let Ok(stream) = stream else { return 400 };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream);
    let mut headers = BTreeMap::new();
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || !line.starts_with("POST ") {
        return 400;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if length > ferrotrain_crds::progress::MAX_BODY_BYTES {
        return 413;
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return 400;
    }
    let Ok(mut inbox) = inbox.lock() else {
        return 400;
    };
    let result = inbox.tracker.accept(
        bearer(headers.get("authorization").map(String::as_str)),
        token,
        &body,
        attempt.load(Ordering::SeqCst),
        Timestamp::now(),
    );
    match result {
        Ok(()) => {
            inbox.accepted += 1;
            200
        }
        Err(rejection) => {
            *inbox.rejected.entry(rejection.label()).or_default() += 1;
            rejection.http_status()
        }
    }
}
