//! The IDX format of MNIST (big-endian magic, dimension sizes, then raw values), optionally
//! gzipped. Truncated or malformed files are reported with the file name and byte offset.

use std::io::Read;

use flate2::read::GzDecoder;

use super::{DataError, Dataset, ImageShape};

/// An unsigned-byte IDX array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimension sizes, outermost first (for example `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<u8>,
}

impl IdxArray {
    /// Number of items along the first dimension.
    pub fn len(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }

    /// Whether the array holds no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per item (product of the inner dimensions).
    pub fn item_size(&self) -> usize {
        self.dims.iter().skip(1).product()
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UNSIGNED_BYTE: u8 = 0x08;

/// The largest IDX file decompressed: a small gzip stream may expand without bound.
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;

/// Decodes IDX bytes (gzipped or plain) read from `file`.
pub fn parse(file: &str, bytes: &[u8]) -> Result<IdxArray, DataError> {
    parse_bounded(file, bytes, MAX_DECOMPRESSED_BYTES)
}

/// [`parse`], refusing a gzip stream that expands past `max_bytes`.
pub fn parse_bounded(file: &str, bytes: &[u8], max_bytes: u64) -> Result<IdxArray, DataError> {
    let raw;
    let bytes = if bytes.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::with_capacity(bytes.len() * 4);
        GzDecoder::new(bytes)
            .take(max_bytes.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| {
                DataError::at(file, 0, format!("gzip stream is corrupt or truncated: {e}"))
            })?;
        if out.len() as u64 > max_bytes {
            return Err(DataError::file(
                file,
                format!("decompresses to more than {max_bytes} bytes"),
            ));
        }
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    if bytes.len() < 4 {
        return Err(DataError::at(
            file,
            bytes.len(),
            "truncated: the 4-byte IDX magic number is incomplete",
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::at(
            file,
            0,
            "not an IDX file: the magic number must start with two zero bytes",
        ));
    }
    if bytes[2] != UNSIGNED_BYTE {
        return Err(DataError::at(
            file,
            2,
            format!(
                "IDX element type 0x{:02x} is not supported; only unsigned bytes (0x08)",
                bytes[2]
            ),
        ));
    }
    let rank = usize::from(bytes[3]);
    if rank == 0 {
        return Err(DataError::at(
            file,
            3,
            "IDX arrays need at least one dimension",
        ));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(DataError::at(
            file,
            bytes.len(),
            format!("truncated: header of {rank} dimensions needs {header} bytes"),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    // The item size on its own: with no items the total is 0 whatever the inner dimensions,
    // and an overflowing item size would surface later as a wrong feature count.
    let item = dims[1..]
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| DataError::at(file, 8, "dimension sizes overflow"))?;
    if item == 0 {
        return Err(DataError::at(
            file,
            8,
            format!("dimensions {dims:?} describe items of zero values"),
        ));
    }
    let expected = dims[0]
        .checked_mul(item)
        .ok_or_else(|| DataError::at(file, 4, "dimension sizes overflow"))?;
    let body = &bytes[header..];
    if body.len() < expected {
        return Err(DataError::at(
            file,
            bytes.len(),
            format!(
                "truncated: dimensions {dims:?} need {expected} data bytes after the header, found {}",
                body.len()
            ),
        ));
    }
    if body.len() > expected {
        return Err(DataError::at(
            file,
            header + expected,
            format!(
                "{} unexpected bytes after the data of dimensions {dims:?}",
                body.len() - expected
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Encodes an array as plain IDX (used by tests and tools that write datasets).
pub fn encode(array: &IdxArray) -> Vec<u8> {
    let mut out = vec![0, 0, UNSIGNED_BYTE, array.dims.len() as u8];
    for d in &array.dims {
        out.extend_from_slice(&(*d as u32).to_be_bytes());
    }
    out.extend_from_slice(&array.data);
    out
}

impl Dataset {
    /// Builds a dataset from an IDX image array and an IDX label array, scaling pixels to [0, 1].
    pub fn from_idx(
        images_file: &str,
        images: &IdxArray,
        labels_file: &str,
        labels: &IdxArray,
    ) -> Result<Self, DataError> {
        if labels.dims.len() != 1 {
            return Err(DataError::file(
                labels_file,
                format!(
                    "labels must be one-dimensional, found dimensions {:?}",
                    labels.dims
                ),
            ));
        }
        if images.len() != labels.len() {
            return Err(DataError::file(
                labels_file,
                format!(
                    "{} labels for {} images in {images_file}",
                    labels.len(),
                    images.len()
                ),
            ));
        }
        let classes = usize::from(labels.data.iter().copied().max().unwrap_or(0)) + 1;
        // Items of two dimensions are single-channel images, of three channels-last ones.
        let image = match images.dims.get(1..) {
            Some(&[height, width]) => Some(ImageShape {
                height,
                width,
                channels: 1,
            }),
            Some(&[height, width, channels]) => Some(ImageShape {
                height,
                width,
                channels,
            }),
            _ => None,
        };
        Ok(Self {
            features: images.data.iter().map(|&p| f32::from(p) / 255.0).collect(),
            labels: labels.data.clone(),
            dim: images.item_size(),
            classes,
            image,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    /// Found by the `idx` fuzz target: no items, but inner dimensions whose product overflows.
    /// The size check multiplied all dimensions, so the zero hid the overflow, and the item size
    /// computed later overflowed (a panic in checked builds, a wrong feature count otherwise).
    #[test]
    fn inner_dimensions_that_overflow_are_refused_even_with_no_items() {
        let mut bytes = vec![0, 0, 0x08, 6];
        for dim in [0u32, 2, 2, 0x0001_ff03, 0x0405_0607, 0x0809_0a0b] {
            bytes.extend_from_slice(&dim.to_be_bytes());
        }
        let err = parse("x.idx", &bytes).expect_err("an item size beyond usize");
        assert!(
            err.to_string().contains("dimension sizes overflow"),
            "{err}"
        );
        // Items with no values are refused too: nothing to train on.
        let mut bytes = vec![0, 0, 0x08, 2];
        for dim in [3u32, 0] {
            bytes.extend_from_slice(&dim.to_be_bytes());
        }
        let err = parse("y.idx", &bytes).expect_err("empty items");
        assert!(err.to_string().contains("items of zero values"), "{err}");
    }

    fn sample() -> IdxArray {
        IdxArray {
            dims: vec![2, 2, 3],
            data: (0..12).collect(),
        }
    }

    #[test]
    fn a_gzip_stream_that_expands_past_the_bound_is_refused() {
        let array = sample();
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&encode(&array)).expect("gzip");
        let bytes = gz.finish().expect("gzip");
        let size = encode(&array).len() as u64;
        assert_eq!(parse_bounded("x.gz", &bytes, size), Ok(array));
        let err = parse_bounded("x.gz", &bytes, size - 1).expect_err("one byte over");
        assert!(
            err.to_string().contains("decompresses to more than"),
            "{err}"
        );
    }

    #[test]
    fn round_trips_plain_and_gzipped() {
        let plain = encode(&sample());
        assert_eq!(parse("a.idx", &plain), Ok(sample()));
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&plain).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let parsed = parse("a.idx.gz", &gz).expect("gzipped parses");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed.item_size(), 6);
    }

    #[test]
    fn truncation_and_bad_headers_name_file_and_offset() {
        let plain = encode(&sample());
        let err = parse("imgs.idx", &plain[..plain.len() - 1]).expect_err("truncated");
        assert_eq!(err.file, "imgs.idx");
        assert_eq!(err.offset, Some(plain.len() - 1));
        assert!(err.cause.contains("truncated"), "{err}");
        let err = parse("imgs.idx", &plain[..6]).expect_err("short header");
        assert!(err.cause.contains("header"), "{err}");
        let mut wrong_type = plain.clone();
        wrong_type[2] = 0x0d;
        assert_eq!(parse("f", &wrong_type).expect_err("float").offset, Some(2));
        let mut extra = plain.clone();
        extra.push(7);
        assert!(
            parse("f", &extra)
                .expect_err("trailing")
                .cause
                .contains("unexpected")
        );
        assert!(parse("f", b"PK\x03\x04").is_err());
        assert!(
            parse("f", &[0x1f, 0x8b, 0, 1])
                .expect_err("bad gzip")
                .cause
                .contains("gzip")
        );
    }

    #[test]
    fn idx_pair_becomes_a_scaled_dataset() {
        let images = IdxArray {
            dims: vec![2, 2],
            data: vec![0, 255, 51, 102],
        };
        let labels = IdxArray {
            dims: vec![2],
            data: vec![3, 1],
        };
        let ds = Dataset::from_idx("i", &images, "l", &labels).expect("pairs");
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.dim, 2);
        assert_eq!(ds.classes, 4);
        assert_eq!(ds.features, vec![0.0, 1.0, 0.2, 0.4]);
        let short = IdxArray {
            dims: vec![1],
            data: vec![3],
        };
        let err = Dataset::from_idx("i", &images, "l", &short).expect_err("count mismatch");
        assert_eq!(err.to_string(), "l: 1 labels for 2 images in i");
    }
}
