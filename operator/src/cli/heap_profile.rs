//! The operator's heap profile (feature `heap-profile`, a benchmark build): dhat records the site
//! of every allocation, and the profile goes to the path in `FERROTRAIN_HEAP_PROFILE` as soon as
//! the operator is asked to stop (SIGTERM), before anything is torn down, so that it shows what
//! the running operator held as well as its peak.

use std::sync::Mutex;

static PROFILER: Mutex<Option<dhat::Profiler>> = Mutex::new(None);

/// Starts recording where `FERROTRAIN_HEAP_PROFILE` names a file; the binary's global allocator
/// must be `dhat::Alloc`.
pub fn start() {
    if let Some(path) = std::env::var_os("FERROTRAIN_HEAP_PROFILE")
        && let Ok(mut profiler) = PROFILER.lock()
    {
        *profiler = Some(dhat::Profiler::builder().file_name(path).build());
    }
}

/// Writes the profile at the first SIGTERM (only then: the profiler lives in a static, which is
/// never dropped).
pub fn write_on_sigterm() {
    tokio::spawn(async {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        terminate.recv().await;
        let profiler = PROFILER.lock().ok().and_then(|mut p| p.take());
        // Dropping the profiler writes its file.
        drop(profiler);
    });
}
