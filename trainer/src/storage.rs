//! Object storage behind one interface: `s3://bucket/prefix` (AWS or any S3-compatible server,
//! path-style, plain HTTP allowed for local servers) and `file://path`.

use std::sync::Arc;

use ferrotrain_crds::validate::{Scheme, parse_storage_uri};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// A store and the key prefix everything lives under.
#[derive(Clone, Debug)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix (empty for the root).
    pub prefix: Path,
    /// The URI it was opened from, for messages.
    pub uri: String,
}

/// Connection settings for S3.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server; unset for AWS.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
}

/// The URI or its settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Not a supported URI.
    #[error("{uri}: {reason}")]
    Uri {
        /// The URI.
        uri: String,
        /// Why.
        reason: String,
    },
    /// The store could not be configured or reached.
    #[error("{uri}: {source}")]
    Store {
        /// The URI.
        uri: String,
        /// The object_store error.
        source: object_store::Error,
    },
}

/// Opens the store a URI points at. Credentials for S3 come from the usual AWS variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`…); explicit options win.
pub fn open(uri: &str, options: &S3Options) -> Result<Location, StorageError> {
    let parsed = parse_storage_uri(uri).map_err(|reason| StorageError::Uri {
        uri: uri.into(),
        reason,
    })?;
    let store_error = |source| StorageError::Store {
        uri: uri.into(),
        source,
    };
    match parsed.scheme {
        Scheme::File => {
            std::fs::create_dir_all(&parsed.path).map_err(|e| StorageError::Uri {
                uri: uri.into(),
                reason: format!("cannot create directory {}: {e}", parsed.path),
            })?;
            let store = LocalFileSystem::new_with_prefix(&parsed.path)
                .map_err(store_error)?
                .with_automatic_cleanup(true);
            Ok(Location {
                store: Arc::new(store),
                prefix: Path::default(),
                uri: uri.into(),
            })
        }
        Scheme::S3 => {
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(&parsed.bucket)
                .with_virtual_hosted_style_request(false);
            if let Some(region) = &options.region {
                builder = builder.with_region(region);
            }
            if let Some(endpoint) = &options.endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            let store = builder.build().map_err(store_error)?;
            Ok(Location {
                store: Arc::new(store),
                prefix: Path::from(parsed.path.as_str()),
                uri: uri.into(),
            })
        }
    }
}

impl Location {
    /// The full key of `name` under the prefix.
    pub fn key(&self, name: &str) -> Path {
        let mut key = self.prefix.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            key = key.clone().join(part);
        }
        key
    }

    /// Reads a whole object.
    pub async fn read(&self, name: &str) -> Result<bytes::Bytes, object_store::Error> {
        self.store.get(&self.key(name)).await?.bytes().await
    }
}

/// Reads a whole object given by URI (datasets): `file://` from disk, `s3://` through S3.
pub async fn read_uri(uri: &str, options: &S3Options) -> Result<bytes::Bytes, StorageError> {
    let parsed = parse_storage_uri(uri).map_err(|reason| StorageError::Uri {
        uri: uri.into(),
        reason,
    })?;
    match parsed.scheme {
        Scheme::File => std::fs::read(&parsed.path)
            .map(bytes::Bytes::from)
            .map_err(|e| StorageError::Uri {
                uri: uri.into(),
                reason: e.to_string(),
            }),
        Scheme::S3 => {
            let (dir, name) = parsed
                .path
                .rsplit_once('/')
                .unwrap_or(("", parsed.path.as_str()));
            let location = open(&format!("s3://{}/{dir}", parsed.bucket), options)?;
            location
                .read(name)
                .await
                .map_err(|source| StorageError::Store {
                    uri: uri.into(),
                    source,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_locations_read_and_write() {
        let dir = std::env::temp_dir().join(format!("ferrotrain-storage-{}", std::process::id()));
        let uri = format!("file://{}", dir.join("ckpt").display());
        let loc = open(&uri, &S3Options::default()).expect("opens");
        loc.store
            .put(&loc.key("a/b.bin"), vec![1u8, 2, 3].into())
            .await
            .expect("put");
        assert_eq!(loc.read("a/b.bin").await.expect("get").as_ref(), &[1, 2, 3]);
        let file_uri = format!("{uri}/a/b.bin");
        assert_eq!(
            read_uri(&file_uri, &S3Options::default())
                .await
                .expect("read")
                .as_ref(),
            &[1, 2, 3]
        );
        assert!(matches!(
            open("ftp://x/y", &S3Options::default()),
            Err(StorageError::Uri { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn s3_locations_keep_the_prefix() {
        let loc = open(
            "s3://bucket/jobs/mnist",
            &S3Options {
                endpoint: Some("http://127.0.0.1:1".into()),
                region: None,
            },
        )
        .expect("builds without contacting the server");
        assert_eq!(
            loc.key("manifests/x.json").as_ref(),
            "jobs/mnist/manifests/x.json"
        );
    }
}
