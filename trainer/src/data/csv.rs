//! CSV datasets: numeric feature columns and one integer class label column, with an optional
//! header row. Fields may be quoted as RFC 4180 has it (`"a,b"`, `"say ""hi"""`, line breaks
//! inside quotes). Errors name the file, the 1-based row and column, and the cause.
use super::{DataError, Dataset};

/// Largest class index a label may have.
pub const MAX_LABEL: u32 = 255;

/// Parses CSV text into a dataset (features not yet standardised).
pub fn parse(
    file: &str,
    text: &str,
    label_column: usize,
    header: bool,
) -> Result<Dataset, DataError> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut width: Option<usize> = None;
    let at_row = |row: usize, cause: String| DataError {
        file: file.to_string(),
        offset: None,
        row: Some(row),
        cause,
        unreadable: false,
    };
    for (index, record) in records(text).enumerate() {
        let (row, cells) = record.map_err(|(row, cause)| at_row(row, cause))?;
        if (header && index == 0) || cells.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        let cells: Vec<&str> = cells.iter().map(|c| c.trim()).collect();
        match width {
            None if label_column >= cells.len() => {
                return Err(at_row(
                    row,
                    format!(
                        "label column {label_column} does not exist: the row has {} columns",
                        cells.len()
                    ),
                ));
            }
            None if cells.len() < 2 => {
                return Err(at_row(
                    row,
                    "a row needs a label and at least one feature".into(),
                ));
            }
            None => width = Some(cells.len()),
            Some(w) if w != cells.len() => {
                return Err(at_row(
                    row,
                    format!(
                        "ragged row: {} columns where the first data row has {w}",
                        cells.len()
                    ),
                ));
            }
            Some(_) => {}
        }
        for (column, cell) in cells.iter().enumerate() {
            if column == label_column {
                let label: u32 = cell.parse().map_err(|_| {
                    at_row(
                        row,
                        format!(
                            "column {}: label {cell:?} is not a non-negative integer class index",
                            column + 1
                        ),
                    )
                })?;
                if label > MAX_LABEL {
                    return Err(at_row(
                        row,
                        format!(
                            "column {}: label {label} is out of range 0..={MAX_LABEL}",
                            column + 1
                        ),
                    ));
                }
                labels.push(label as u8);
            } else {
                let value: f32 = cell
                    .parse()
                    .ok()
                    .filter(|v: &f32| v.is_finite())
                    .ok_or_else(|| {
                        at_row(
                            row,
                            format!("column {}: {cell:?} is not a finite number", column + 1),
                        )
                    })?;
                features.push(value);
            }
        }
    }
    let Some(width) = width else {
        return Err(DataError::file(file, "no data rows"));
    };
    let classes = labels
        .iter()
        .copied()
        .max()
        .map_or(0, |m| usize::from(m) + 1);
    Ok(Dataset {
        features,
        labels,
        dim: width - 1,
        classes,
        image: None,
    })
}

/// The records of CSV text, each with the 1-based line it starts on and its fields unquoted
/// (RFC 4180: a quoted field may hold commas, line breaks and `""` for a quote). A quote left
/// open is an error naming the line it opened on.
fn records(text: &str) -> impl Iterator<Item = Result<(usize, Vec<String>), (usize, String)>> + '_ {
    let mut chars = text.chars().peekable();
    let mut line = 1;
    std::iter::from_fn(move || {
        chars.peek()?;
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (false, '"') if field.trim().is_empty() => {
                    field.clear();
                    quoted = true;
                }
                (false, ',') => fields.push(std::mem::take(&mut field)),
                (false, '\r') if chars.peek() == Some(&'\n') => {}
                (false, '\n') => {
                    line += 1;
                    fields.push(field);
                    return Some(Ok((start, fields)));
                }
                (_, c) => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
        }
        if quoted {
            return Some(Err((start, "a quoted field is never closed".to_string())));
        }
        fields.push(field);
        Some(Ok((start, fields)))
    })
}

/// Per-feature mean and standard deviation of a training set.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl Standardizer {
    /// Statistics of `train` (only the training split: evaluation data must not leak in).
    pub fn fit(train: &Dataset) -> Self {
        let n = train.len().max(1) as f64;
        let mut sum = vec![0f64; train.dim];
        let mut sq = vec![0f64; train.dim];
        for row in train.features.chunks_exact(train.dim) {
            for ((s, q), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(row) {
                *s += f64::from(v);
                *q += f64::from(v) * f64::from(v);
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let inv_std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let var = (q / n - m * m).max(0.0);
                if var > 1e-12 {
                    (1.0 / var.sqrt()) as f32
                } else {
                    1.0
                }
            })
            .collect();
        Self {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            inv_std,
        }
    }

    /// Standardises a dataset in place.
    pub fn apply(&self, data: &mut Dataset) {
        for row in data.features.chunks_exact_mut(self.mean.len()) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.inv_std) {
                *v = (*v - m) * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_header_and_label_column() {
        let ds = parse("iris.csv", "a,b,label,c\n1,2,0,3\n4,5,2,6\n", 2, true).expect("parses");
        assert_eq!(ds.dim, 3);
        assert_eq!(ds.labels, vec![0, 2]);
        assert_eq!(ds.classes, 3);
        assert_eq!(ds.features, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn bad_rows_are_named() {
        // RFC 4180 quoting: quoted numbers, a quoted header with a comma and a line break.
        let ds = parse(
            "q.csv",
            "\"label\",\"petal, \"\"long\"\"\nside\",w\r\n\"1\",\"2.5\",3\r\n0, \"4\" ,5\n",
            0,
            true,
        )
        .expect("quoted fields parse");
        assert_eq!(
            (ds.labels.clone(), ds.features.clone()),
            (vec![1, 0], vec![2.5, 3.0, 4.0, 5.0])
        );
        // A quoted field with a comma in it is one field (here not a number), never a ragged row.
        let err = parse("q.csv", "\"1\",\"2,5\"\n", 0, false).expect_err("not a number");
        assert_eq!(
            err.to_string(),
            "q.csv: row 1: column 2: \"2,5\" is not a finite number"
        );
        let err = parse("q.csv", "1,2\n0,\"3\n", 0, false).expect_err("open quote");
        assert_eq!(
            err.to_string(),
            "q.csv: row 2: a quoted field is never closed"
        );
        let err = parse("d.csv", "0,1,2\n1,3\n", 0, false).expect_err("ragged");
        assert_eq!(
            err.to_string(),
            "d.csv: row 2: ragged row: 2 columns where the first data row has 3"
        );
        let err = parse("d.csv", "0,1\n1,x\n", 0, false).expect_err("text");
        assert_eq!(
            err.to_string(),
            "d.csv: row 2: column 2: \"x\" is not a finite number"
        );
        let err = parse("d.csv", "h\n0,1\n-1,2\n", 0, true).expect_err("negative label");
        assert_eq!(err.row, Some(3));
        let err = parse("d.csv", "300,1\n", 0, false).expect_err("too big");
        assert!(err.cause.contains("out of range"), "{err}");
        assert!(
            parse("d.csv", "0,1\n", 5, false)
                .expect_err("no column")
                .cause
                .contains("label column 5")
        );
        assert!(
            parse("d.csv", "h\n", 0, true)
                .expect_err("empty")
                .cause
                .contains("no data")
        );
    }

    #[test]
    fn standardizes_with_training_statistics() {
        let train = parse("t", "0,1,10\n1,3,10\n", 0, false).expect("parses");
        let scaler = Standardizer::fit(&train);
        let mut test = parse("v", "0,2,10\n", 0, false).expect("parses");
        scaler.apply(&mut test);
        assert_eq!(test.features, vec![0.0, 0.0]);
        let mut train2 = train.clone();
        scaler.apply(&mut train2);
        assert_eq!(train2.features, vec![-1.0, 0.0, 1.0, 0.0]);
    }
}
