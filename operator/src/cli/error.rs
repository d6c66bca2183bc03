//! Why a command could not do its work: what it was doing, and the error underneath.

/// Any underlying error.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// A command failed while doing something.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {source}")]
pub struct CommandError {
    /// What the command was doing.
    pub doing: String,
    /// The error that stopped it.
    #[source]
    pub source: Source,
}

/// Wraps an error with what was being done: `.map_err(doing("listening on …"))`.
pub fn doing<E: Into<Source>>(what: impl Into<String>) -> impl FnOnce(E) -> CommandError {
    let doing = what.into();
    move |e| CommandError {
        doing,
        source: e.into(),
    }
}
