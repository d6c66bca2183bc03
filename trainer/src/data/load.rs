//! Loads a `spec.trainer.dataset` into a training split and an evaluation split: MNIST from the
//! data directory, IDX pairs and CSV files from `file://` or `s3://`.

use std::path::Path;

use ferrotrain_crds::{DatasetKind, DatasetSpec};

use super::{DataError, Dataset, csv, idx};
use crate::rng::{Rng, Stream};
use crate::storage::{self, S3Options};

/// Training and evaluation data.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    /// Training rows.
    pub train: Dataset,
    /// Evaluation rows (the test set, or a held-out split of the training data).
    pub eval: Dataset,
}

impl Splits {
    /// Classes across both splits.
    pub fn classes(&self) -> usize {
        self.train.classes.max(self.eval.classes)
    }
}

const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// Loads the dataset; `data_dir` holds the built-in MNIST files.
pub async fn load(
    spec: &DatasetSpec,
    data_dir: &Path,
    seed: u64,
    s3: &S3Options,
) -> Result<Splits, DataError> {
    // Each format reads its training set and, if given, its test set (with the files that
    // hold their labels); the class count is checked and the split made once, below.
    let (labels_file, train, test): (&str, Dataset, Option<(&str, Dataset)>) = match spec.kind {
        DatasetKind::Mnist => {
            let dir = data_dir.join("mnist");
            let read = |name: &str| {
                let path = dir.join(name);
                std::fs::read(&path).map_err(|e| {
                    DataError::unreadable(
                        &path.display().to_string(),
                        format!("{e}; the built-in MNIST lives in $FERROTRAIN_DATA_DIR/mnist"),
                    )
                })
            };
            let [ti, tl, ei, el] = MNIST_FILES;
            let train = idx_pair(ti, &read(ti)?, tl, &read(tl)?)?;
            let eval = idx_pair(ei, &read(ei)?, el, &read(el)?)?;
            (tl, train, Some((el, eval)))
        }
        DatasetKind::Idx => {
            let (images, labels) = (
                required(&spec.images, "images")?,
                required(&spec.labels, "labels")?,
            );
            let train = idx_pair(
                images,
                &fetch(images, s3).await?,
                labels,
                &fetch(labels, s3).await?,
            )?;
            let test = match (&spec.test_images, &spec.test_labels) {
                (Some(ti), Some(tl)) => Some((
                    tl.as_str(),
                    idx_pair(ti, &fetch(ti, s3).await?, tl, &fetch(tl, s3).await?)?,
                )),
                _ => None,
            };
            (labels, train, test)
        }
        DatasetKind::Csv => {
            let uri = required(&spec.uri, "uri")?;
            let (column, header) = (spec.label_column_or_default(), spec.header_or_default());
            let train = csv::parse(uri, &text(uri, &fetch(uri, s3).await?)?, column, header)?;
            let test = match &spec.test_uri {
                Some(test) => {
                    let eval =
                        csv::parse(test, &text(test, &fetch(test, s3).await?)?, column, header)?;
                    if eval.dim != train.dim {
                        return Err(DataError::file(
                            test,
                            format!(
                                "{} feature columns, the training file has {}",
                                eval.dim, train.dim
                            ),
                        ));
                    }
                    Some((test.as_str(), eval))
                }
                None => None,
            };
            (uri, train, test)
        }
    };
    let classes = class_count(
        labels_file,
        &train,
        test.as_ref().map(|(file, eval)| (*file, eval)),
        spec.classes,
    )?;
    let mut splits = match test {
        Some((_, eval)) => Splits { train, eval },
        None => split(train, spec.validation_split_or_default(), seed),
    };
    splits.train.classes = classes;
    splits.eval.classes = classes;
    if spec.kind == DatasetKind::Csv {
        let scaler = csv::Standardizer::fit(&splits.train);
        scaler.apply(&mut splits.train);
        scaler.apply(&mut splits.eval);
    }
    if splits.train.is_empty() {
        return Err(DataError::file("dataset", "the training split is empty"));
    }
    if spec.augment.is_some() && splits.train.image.is_none() {
        return Err(DataError::file(
            spec.images.as_deref().unwrap_or("dataset"),
            format!(
                "dataset.augment transforms images, and these items are {} values without a \
                 height and width (IDX items of two or three dimensions are images)",
                splits.train.dim
            ),
        ));
    }
    Ok(splits)
}

/// The class count of a training set and its test set: `dataset.classes` when declared, every
/// label below it; else one more than the largest training label, and then every class up to
/// it must occur, so that one stray label (200 among digits) cannot make 201 classes.
fn class_count(
    train_file: &str,
    train: &Dataset,
    test: Option<(&str, &Dataset)>,
    declared: Option<i32>,
) -> Result<usize, DataError> {
    let first_at_or_above = |data: &Dataset, limit: usize| {
        data.labels
            .iter()
            .enumerate()
            .find(|(_, l)| usize::from(**l) >= limit)
            .map(|(i, l)| (i, *l))
    };
    let classes = match declared {
        Some(declared) => {
            let declared = usize::try_from(declared).unwrap_or(0);
            if let Some((i, label)) = first_at_or_above(train, declared) {
                return Err(DataError::file(
                    train_file,
                    format!(
                        "label {label} of example {} is not below dataset.classes ({declared})",
                        i + 1
                    ),
                ));
            }
            declared
        }
        None => {
            let mut seen = [false; 256];
            for label in &train.labels {
                seen[usize::from(*label)] = true;
            }
            let inferred = train.classes;
            let occurring = seen[..inferred.min(256)].iter().filter(|s| **s).count();
            if occurring < inferred {
                let largest = inferred - 1;
                let example = train
                    .labels
                    .iter()
                    .position(|l| usize::from(*l) == largest)
                    .map_or(0, |i| i + 1);
                return Err(DataError::file(
                    train_file,
                    format!(
                        "label {largest} of example {example} makes {inferred} classes, but only {occurring} of them occur in the training labels; fix the label, or set dataset.classes to {inferred} if classes without examples are intended"
                    ),
                ));
            }
            inferred
        }
    };
    if let Some((test_file, test)) = test
        && let Some((i, label)) = first_at_or_above(test, classes)
    {
        return Err(DataError::file(
            test_file,
            format!(
                "label {label} of example {} is not one of the {classes} classes of the training data",
                i + 1
            ),
        ));
    }
    Ok(classes)
}

fn required<'a>(value: &'a Option<String>, field: &str) -> Result<&'a str, DataError> {
    value
        .as_deref()
        .ok_or_else(|| DataError::file("dataset", format!("{field} is not set")))
}

async fn fetch(uri: &str, s3: &S3Options) -> Result<bytes::Bytes, DataError> {
    storage::read_uri(uri, s3)
        .await
        .map_err(|e| DataError::unreadable(uri, format!("cannot read: {e}")))
}

fn text(uri: &str, bytes: &[u8]) -> Result<String, DataError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| DataError::at(uri, e.utf8_error().valid_up_to(), "not UTF-8 text"))
}

fn idx_pair(
    images_file: &str,
    images: &[u8],
    labels_file: &str,
    labels: &[u8],
) -> Result<Dataset, DataError> {
    Dataset::from_idx(
        images_file,
        &idx::parse(images_file, images)?,
        labels_file,
        &idx::parse(labels_file, labels)?,
    )
}

/// Holds out `fraction` of the rows (a seeded random choice) for evaluation.
pub fn split(data: Dataset, fraction: f64, seed: u64) -> Splits {
    let mut order: Vec<usize> = (0..data.len()).collect();
    Rng::derive(seed, Stream::Split, &[]).shuffle(&mut order);
    let held_out = ((data.len() as f64) * fraction).round() as usize;
    let (eval_rows, train_rows) = order.split_at(held_out.min(data.len()));
    let mut train_rows = train_rows.to_vec();
    let mut eval_rows = eval_rows.to_vec();
    train_rows.sort_unstable();
    eval_rows.sort_unstable();
    Splits {
        train: data.subset(&train_rows),
        eval: data.subset(&eval_rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mnist_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
    }

    fn spec(kind: DatasetKind) -> DatasetSpec {
        DatasetSpec {
            kind,
            images: None,
            labels: None,
            test_images: None,
            test_labels: None,
            uri: None,
            test_uri: None,
            label_column: None,
            header: None,
            validation_split: None,
            classes: None,
            augment: None,
        }
    }

    #[tokio::test]
    async fn augmentation_of_items_that_are_not_images_names_the_file() {
        let dir = std::env::temp_dir().join(format!("ferrotrain-flat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let write = |name: &str, dims: Vec<usize>, data: Vec<u8>| {
            let path = dir.join(name);
            std::fs::write(&path, idx::encode(&idx::IdxArray { dims, data })).expect("write");
            format!("file://{}", path.display())
        };
        let mut flat = spec(DatasetKind::Idx);
        flat.images = Some(write("x.idx", vec![20, 4], vec![1; 80]));
        flat.labels = Some(write("y.idx", vec![20], (0..20).map(|i| i % 2).collect()));
        flat.augment = Some(ferrotrain_crds::AugmentSpec {
            shift_pixels: Some(1),
            ..Default::default()
        });
        let err = load(&flat, &dir, 1, &S3Options::default())
            .await
            .expect_err("rows of 4 values are no images");
        assert!(err.file.ends_with("x.idx"), "{err}");
        assert!(err.cause.contains("dataset.augment"), "{err}");
        flat.augment = None;
        assert!(load(&flat, &dir, 1, &S3Options::default()).await.is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn builtin_mnist_has_its_canonical_shape() {
        let splits = load(
            &spec(DatasetKind::Mnist),
            &mnist_dir(),
            42,
            &S3Options::default(),
        )
        .await
        .expect("loads");
        assert_eq!((splits.train.len(), splits.eval.len()), (60_000, 10_000));
        assert_eq!((splits.train.dim, splits.classes()), (784, 10));
        assert_eq!(
            splits.train.image,
            Some(crate::data::ImageShape {
                height: 28,
                width: 28,
                channels: 1
            })
        );
        let err = load(
            &spec(DatasetKind::Mnist),
            Path::new("/nonexistent"),
            42,
            &S3Options::default(),
        )
        .await
        .expect_err("missing");
        assert!(
            err.file.contains("/nonexistent/mnist/train-images"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn csv_splits_and_standardizes_from_training_rows_only() {
        let dir = std::env::temp_dir().join(format!("ferrotrain-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let rows: String = (0..100)
            .map(|i| format!("{},{},{}\n", i % 2, i, 100 - i))
            .collect();
        std::fs::write(dir.join("d.csv"), format!("label,a,b\n{rows}")).expect("write");
        let mut s = spec(DatasetKind::Csv);
        s.uri = Some(format!("file://{}", dir.join("d.csv").display()));
        s.header = Some(true);
        s.validation_split = Some(0.2);
        let splits = load(&s, &dir, 7, &S3Options::default())
            .await
            .expect("loads");
        assert_eq!(
            (splits.train.len(), splits.eval.len(), splits.train.dim),
            (80, 20, 2)
        );
        let mean: f32 = splits.train.features.iter().step_by(2).sum::<f32>() / 80.0;
        assert!(mean.abs() < 1e-4, "training features are centred: {mean}");
        s.uri = Some(format!("file://{}", dir.join("absent.csv").display()));
        let err = load(&s, &dir, 7, &S3Options::default())
            .await
            .expect_err("missing file");
        assert!(err.to_string().contains("absent.csv: cannot read"), "{err}");
        assert!(err.unreadable, "a missing file may appear later: {err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn labels_are_checked_against_the_class_count() {
        let dir = std::env::temp_dir().join(format!("ferrotrain-classes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // Digits 0..9 and one stray 200: without a check this made 201 classes.
        let mut rows: String = (0..50).map(|i| format!("{},{i}\n", i % 10)).collect();
        rows.push_str("200,7\n");
        std::fs::write(dir.join("stray.csv"), &rows).expect("write");
        let mut s = spec(DatasetKind::Csv);
        s.uri = Some(format!("file://{}", dir.join("stray.csv").display()));
        let err = load(&s, &dir, 7, &S3Options::default())
            .await
            .expect_err("a stray label");
        assert!(!err.unreadable);
        assert!(
            err.to_string()
                .contains("label 200 of example 51 makes 201 classes, but only 11 of them occur"),
            "{err}"
        );
        s.classes = Some(10);
        let err = load(&s, &dir, 7, &S3Options::default())
            .await
            .expect_err("above the declared count");
        assert!(
            err.to_string()
                .contains("label 200 of example 51 is not below dataset.classes (10)"),
            "{err}"
        );
        // Declared classes may have no examples; the count is the declared one.
        s.classes = Some(256);
        let splits = load(&s, &dir, 7, &S3Options::default())
            .await
            .expect("declared");
        assert_eq!(splits.classes(), 256);
        // A test set's labels must be classes of the training data.
        let digits: String = (0..50).map(|i| format!("{},{i}\n", i % 10)).collect();
        std::fs::write(dir.join("digits.csv"), &digits).expect("write");
        std::fs::write(dir.join("test.csv"), "3,1\n12,2\n").expect("write");
        let mut s = spec(DatasetKind::Csv);
        s.uri = Some(format!("file://{}", dir.join("digits.csv").display()));
        s.test_uri = Some(format!("file://{}", dir.join("test.csv").display()));
        let err = load(&s, &dir, 7, &S3Options::default())
            .await
            .expect_err("test label 12");
        assert!(
            err.to_string().contains(
                "test.csv: label 12 of example 2 is not one of the 10 classes of the training data"
            ),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let data = Dataset {
            features: (0..50).map(|i| i as f32).collect(),
            labels: vec![0; 50],
            dim: 1,
            classes: 1,
            image: None,
        };
        let a = split(data.clone(), 0.2, 1);
        let b = split(data.clone(), 0.2, 1);
        assert_eq!(a, b);
        assert_eq!((a.train.len(), a.eval.len()), (40, 10));
        let mut all: Vec<f32> = a
            .train
            .features
            .iter()
            .chain(&a.eval.features)
            .copied()
            .collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, data.features);
        assert_ne!(split(data, 0.2, 2).eval, a.eval);
    }
}
