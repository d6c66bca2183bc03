//! Training data: decoding, normalisation and the errors that name the bad file and place.

pub mod augment;
pub mod csv;
pub mod idx;
pub mod load;

use std::fmt;

/// Bad or unreadable training data, with the file and where in it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DataError {
    /// File (or URI) the data came from.
    pub file: String,
    /// Byte offset, when the problem has one.
    pub offset: Option<usize>,
    /// 1-based row, for text formats.
    pub row: Option<usize>,
    /// What is wrong.
    pub cause: String,
    /// The data could not be read at all (missing, unreachable, denied) rather than being
    /// malformed: a later attempt may succeed.
    pub unreadable: bool,
}

impl DataError {
    /// An error at a byte offset.
    pub fn at(file: &str, offset: usize, cause: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            offset: Some(offset),
            row: None,
            cause: cause.into(),
            unreadable: false,
        }
    }

    /// A file or object that could not be read.
    pub fn unreadable(file: &str, cause: impl Into<String>) -> Self {
        Self {
            unreadable: true,
            ..Self::file(file, cause)
        }
    }

    /// An error about a whole file.
    pub fn file(file: &str, cause: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            offset: None,
            row: None,
            cause: cause.into(),
            unreadable: false,
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(row) = self.row {
            write!(f, ": row {row}")?;
        }
        if let Some(offset) = self.offset {
            write!(f, ": byte {offset}")?;
        }
        write!(f, ": {}", self.cause)
    }
}

/// A classification dataset held in memory: features as f32 rows, labels as class indices.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Row-major features, `len() * dim` values.
    pub features: Vec<f32>,
    /// One class index per row.
    pub labels: Vec<u8>,
    /// Features per row.
    pub dim: usize,
    /// Number of classes.
    pub classes: usize,
    /// The geometry of each row when the rows are images (IDX items of two or three dimensions).
    pub image: Option<ImageShape>,
}

/// Height, width and channels of an image stored channels-last (`[height, width, channels]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    /// Rows of pixels.
    pub height: usize,
    /// Pixels per row.
    pub width: usize,
    /// Values per pixel.
    pub channels: usize,
}

impl Dataset {
    /// Rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The rows at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut features = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            features.extend_from_slice(&self.features[i * self.dim..(i + 1) * self.dim]);
        }
        Self {
            features,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            dim: self.dim,
            classes: self.classes,
            image: self.image,
        }
    }

    /// Copies the rows at `indices` into `features` and `labels` (reusing their allocations).
    pub fn gather(&self, indices: &[usize], features: &mut Vec<f32>, labels: &mut Vec<u8>) {
        features.clear();
        labels.clear();
        for &i in indices {
            features.extend_from_slice(&self.features[i * self.dim..(i + 1) * self.dim]);
            labels.push(self.labels[i]);
        }
    }
}
