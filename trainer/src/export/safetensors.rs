//! The safetensors format: an 8-byte little-endian header length, a JSON header naming each
//! tensor's dtype, shape and byte range, then the raw little-endian data. F32 and I8 tensors are
//! written and read; a file read back is untrusted input and checked before any value is used.

use std::collections::BTreeMap;

use crate::export::tensors::Tensor;

/// The largest header read back: far beyond what a model of the trainer's sizes needs.
const MAX_HEADER_BYTES: u64 = 16 * 1024 * 1024;

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// A tensor of 8-bit integers (quantised weights).
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Tensor {
    /// Its name.
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<i8>,
}

/// The file of F32 `tensors`, with `metadata` in the header's `__metadata__`.
pub fn encode(tensors: &[Tensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    encode_mixed(tensors, &[], metadata)
}

/// The file of F32 `tensors` followed by I8 `int8` tensors.
pub fn encode_mixed(
    tensors: &[Tensor],
    int8: &[Int8Tensor],
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0;
    let entries = tensors
        .iter()
        .map(|t| (&t.name, &t.shape, "F32", 4 * t.values.len()))
        .chain(
            int8.iter()
                .map(|t| (&t.name, &t.shape, "I8", t.values.len())),
        );
    for (name, shape, dtype, bytes) in entries {
        let end = offset + bytes;
        let entry = Entry {
            dtype: dtype.into(),
            shape: shape.clone(),
            data_offsets: [offset, end],
        };
        header.insert(
            name.clone(),
            serde_json::to_value(entry).unwrap_or_default(),
        );
        offset = end;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    // The data starts 8-byte aligned, as the format recommends.
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for tensor in tensors {
        for v in &tensor.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    for tensor in int8 {
        out.extend(tensor.values.iter().map(|v| v.to_le_bytes()[0]));
    }
    out
}

/// The F32 tensors of a file; any other dtype is an error.
pub fn decode(bytes: &[u8]) -> Result<Vec<Tensor>, String> {
    let (tensors, int8) = decode_mixed(bytes)?;
    if let Some(t) = int8.first() {
        return Err(format!(
            "tensor {}: dtype I8, only F32 is read here",
            t.name
        ));
    }
    Ok(tensors)
}

/// The F32 and the I8 tensors of a safetensors file, each in the order of their data; every
/// dtype, shape and byte range checked against the file.
pub fn decode_mixed(bytes: &[u8]) -> Result<(Vec<Tensor>, Vec<Int8Tensor>), String> {
    let (length, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or("shorter than the 8-byte header length")?;
    let length = u64::from_le_bytes(*length);
    if length > MAX_HEADER_BYTES || length > rest.len() as u64 {
        return Err(format!(
            "header length {length} exceeds the file or {MAX_HEADER_BYTES} bytes"
        ));
    }
    let (header, data) = rest.split_at(length as usize);
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    let (mut tensors, mut int8) = (Vec::new(), Vec::new());
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let entry: Entry =
            serde_json::from_value(value).map_err(|e| format!("tensor {name}: {e}"))?;
        let width = match entry.dtype.as_str() {
            "F32" => 4,
            "I8" => 1,
            other => {
                return Err(format!(
                    "tensor {name}: dtype {other}, only F32 and I8 are read"
                ));
            }
        };
        let [start, end] = entry.data_offsets;
        let count = entry
            .shape
            .iter()
            .try_fold(1usize, |n, d| n.checked_mul(*d))
            .ok_or_else(|| format!("tensor {name}: shape {:?} overflows", entry.shape))?;
        if start > end || end > data.len() || count.checked_mul(width) != Some(end - start) {
            return Err(format!(
                "tensor {name}: bytes {start}..{end} do not hold shape {:?} within {} data bytes",
                entry.shape,
                data.len()
            ));
        }
        let bytes = &data[start..end];
        if width == 1 {
            let values = bytes.iter().map(|&b| i8::from_le_bytes([b])).collect();
            let shape = entry.shape;
            int8.push((
                start,
                Int8Tensor {
                    name,
                    shape,
                    values,
                },
            ));
        } else {
            let values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let shape = entry.shape;
            tensors.push((
                start,
                Tensor {
                    name,
                    shape,
                    values,
                },
            ));
        }
    }
    tensors.sort_by_key(|(start, _)| *start);
    int8.sort_by_key(|(start, _)| *start);
    Ok((
        tensors.into_iter().map(|(_, t)| t).collect(),
        int8.into_iter().map(|(_, t)| t).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Tensor> {
        vec![
            Tensor {
                name: "fc1.weight".into(),
                shape: vec![2, 3],
                values: vec![1.0, -2.0, 3.5, 0.0, 1e-7, 6.0],
            },
            Tensor {
                name: "fc1.bias".into(),
                shape: vec![2],
                values: vec![0.25, -0.5],
            },
        ]
    }

    #[test]
    fn round_trips_with_an_aligned_header_and_metadata() {
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = encode(&sample(), &metadata);
        let length = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        assert!((8 + length).is_multiple_of(8));
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[8..8 + length as usize]).expect("json header");
        assert_eq!(header["__metadata__"]["format"], "pt");
        assert_eq!(
            header["fc1.bias"]["data_offsets"],
            serde_json::json!([24, 32])
        );
        assert_eq!(decode(&bytes), Ok(sample()));
    }

    #[test]
    fn a_damaged_file_is_refused_not_read_past_its_end() {
        let bytes = encode(&sample(), &BTreeMap::new());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "truncated data");
        assert!(decode(&bytes[..4]).is_err(), "no header length");
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge).is_err(), "a header length past the end");
        let text = String::from_utf8_lossy(&bytes).replace("\"F32\"", "\"F16\"");
        assert!(decode(text.as_bytes()).is_err(), "another dtype");
    }

    #[test]
    fn int8_tensors_travel_beside_float_ones() {
        let int8 = vec![Int8Tensor {
            name: "fc1.weight".into(),
            shape: vec![2, 2],
            values: vec![-127, 0, 5, 127],
        }];
        let scales = vec![Tensor {
            name: "fc1.weight_scale".into(),
            shape: vec![2],
            values: vec![0.5, 0.25],
        }];
        let bytes = encode_mixed(&scales, &int8, &BTreeMap::new());
        assert_eq!(decode_mixed(&bytes), Ok((scales, int8)));
        assert!(decode(&bytes).is_err(), "an F32 reader names the I8 tensor");
    }
}
