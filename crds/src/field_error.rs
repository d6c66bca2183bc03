//! The error every validation layer reports: a field path and how to fix it.

use std::fmt;

/// One problem with a manifest: the full field path and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path from the object root, for example `spec.workers.replicas`.
    pub field: String,
    /// What is wrong and what to do instead.
    pub message: String,
}

impl FieldError {
    /// A new error at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
