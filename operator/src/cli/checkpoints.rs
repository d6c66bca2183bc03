//! `ferrotrain checkpoints URI`: the checkpoints under a URI, newest first, each verified.

use ferrotrain_trainer::checkpoint::store::CheckpointStore;
use ferrotrain_trainer::storage::{S3Options, open};

use crate::cli::error::{CommandError, doing};

/// `ferrotrain checkpoints URI`: one line per checkpoint, newest first, each verified.
pub fn list(
    uri: &str,
    endpoint: Option<String>,
    region: Option<String>,
) -> Result<String, CommandError> {
    // Listing must not create what it lists: opening a file:// store creates its directory.
    if let Some(path) = uri.strip_prefix("file://") {
        let path = std::path::Path::new(path);
        if path.exists() && !path.is_dir() {
            return Err(doing(format!("listing {uri}"))("it is not a directory"));
        }
        if !path.is_dir() {
            return Ok(format!("no checkpoints under {uri}: no such directory\n"));
        }
    }
    let location =
        open(uri, &S3Options { endpoint, region }).map_err(doing(format!("opening {uri}")))?;
    let store = CheckpointStore::new(location, usize::MAX, "");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(doing("starting the I/O runtime"))?;
    let listed = runtime
        .block_on(store.list())
        .map_err(doing(format!("listing {uri}")))?;
    let mut out = format!(
        "{:>10}  {:<20}  {:>12}  {}\n",
        "STEP", "TIME", "SIZE", "VERIFIED"
    );
    for l in &listed {
        let time = l
            .manifest
            .as_ref()
            .and_then(|m| jiff::Timestamp::from_millisecond(m.created_unix_ms as i64).ok())
            .map_or("-".to_string(), |t| {
                t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
            });
        let size = l.manifest.as_ref().map_or("-".to_string(), |m| {
            format!("{:.1} MB", m.data_bytes() as f64 / 1e6)
        });
        let verified = l
            .problem
            .as_ref()
            .map_or("yes".to_string(), |p| format!("no: {p}"));
        out.push_str(&format!(
            "{:>10}  {:<20}  {:>12}  {verified}\n",
            l.step, time, size
        ));
    }
    if listed.is_empty() {
        out.push_str(&format!("no checkpoints under {uri}\n"));
    }
    Ok(out)
}
