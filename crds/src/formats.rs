//! The syntax of what a TrainingJob names outside itself, as the API server and object stores
//! read it: resource quantities, DNS labels, label values and qualified names, bucket names and
//! storage URIs.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Longest DNS label, and so longest pod hostname.
pub(crate) const MAX_DNS_LABEL: usize = 63;

/// Storage back-ends the trainer reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// S3 or an S3-compatible server.
    S3,
    /// A local or mounted file system.
    File,
}

/// A parsed `s3://bucket/prefix` or `file://path` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageUri {
    /// The back-end.
    pub scheme: Scheme,
    /// Bucket name (empty for `file://`).
    pub bucket: String,
    /// Key prefix within the bucket, or the file-system path.
    pub path: String,
}

/// Parses a storage URI, explaining what is wrong in the error.
pub fn parse_storage_uri(uri: &str) -> Result<StorageUri, String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "{uri:?} has no scheme; use s3://bucket/prefix or file:///path"
        ));
    };
    match scheme {
        "s3" => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !is_bucket_name(bucket) {
                return Err(format!(
                    "bucket {bucket:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.' and '-')"
                ));
            }
            Ok(StorageUri {
                scheme: Scheme::S3,
                bucket: bucket.to_string(),
                path: prefix.trim_end_matches('/').to_string(),
            })
        }
        "file" => {
            if rest.is_empty() {
                return Err("file:// needs a path, e.g. file:///data/checkpoints".into());
            }
            Ok(StorageUri {
                scheme: Scheme::File,
                bucket: String::new(),
                path: rest.to_string(),
            })
        }
        other => Err(format!(
            "scheme {other:?} is not supported; use s3:// or file://"
        )),
    }
}

/// Parses a Kubernetes quantity (`500m`, `2`, `1.5Gi`, `1e3`) into its numeric value.
pub fn parse_quantity(quantity: &Quantity) -> Option<f64> {
    let s = quantity.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "." {
        return None;
    }
    let base: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    Some(base * multiplier)
}

pub(crate) fn is_dns1035_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_DNS_LABEL
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

pub(crate) fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= MAX_DNS_LABEL
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

pub(crate) fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    prefix_ok && !name.is_empty() && is_label_value(name)
}

pub(crate) fn is_bucket_name(s: &str) -> bool {
    (3..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        let q = |s: &str| parse_quantity(&Quantity(s.into()));
        assert_eq!(q("500m"), Some(0.5));
        assert_eq!(q("2"), Some(2.0));
        assert_eq!(q("1Gi"), Some(1073741824.0));
        assert_eq!(q("1e3"), Some(1000.0));
        assert_eq!(q("1.5k"), Some(1500.0));
        assert_eq!(q("lots"), None);
        assert_eq!(q("2X"), None);
    }

    #[test]
    fn storage_uris() {
        assert_eq!(
            parse_storage_uri("s3://bucket/a/b/"),
            Ok(StorageUri {
                scheme: Scheme::S3,
                bucket: "bucket".into(),
                path: "a/b".into()
            })
        );
        assert_eq!(
            parse_storage_uri("file://./ckpt").map(|u| u.path),
            Ok("./ckpt".into())
        );
        assert!(parse_storage_uri("s3://Bad_Bucket/x").is_err());
        assert!(parse_storage_uri("/no/scheme").is_err());
        assert!(parse_storage_uri("file://").is_err());
    }

    #[test]
    fn names_and_keys() {
        assert!(is_dns1035_label("mnist-2"));
        assert!(!is_dns1035_label("2mnist"));
        assert!(!is_dns1035_label("mnist-"));
        assert!(is_qualified_name("team.example.com/owner"));
        assert!(!is_qualified_name("Team.example.com/owner"));
        assert!(!is_qualified_name("/owner"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
    }
}
