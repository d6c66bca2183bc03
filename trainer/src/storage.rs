//! Object storage behind one interface: `s3://bucket/prefix` (AWS or any S3-compatible server,
//! path-style, plain HTTP allowed for local servers) and `file://path`.

use std::sync::Arc;
use std::time::Duration;

use ferrotrain_crds::formats::{Scheme, parse_storage_uri};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, RetryConfig};

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

/// Variables that give the S3 client credentials without an access key: web identity (IRSA),
/// a container credentials endpoint (ECS, EKS Pod Identity), a profile.
const OTHER_CREDENTIAL_SOURCES: [&str; 4] = [
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_PROFILE",
];

/// An S3-compatible endpoint (not AWS) with no credentials at all would make the client ask
/// EC2's instance metadata service, and the user would read that service's `403`: say what is
/// missing instead.
pub fn check_credentials(
    endpoint: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    let endpoint = endpoint
        .map(str::to_string)
        .or_else(|| env("AWS_ENDPOINT_URL").filter(|v| !v.is_empty()));
    if endpoint.is_none()
        || set(ferrotrain_crds::env::ACCESS_KEY_ID)
        || OTHER_CREDENTIAL_SOURCES.iter().any(|k| set(k))
    {
        return Ok(());
    }
    Err(format!(
        "no S3 credentials: set {} and {} (on a cluster, spec.checkpoint.secretRef names the Secret that holds them)",
        ferrotrain_crds::env::ACCESS_KEY_ID,
        ferrotrain_crds::env::SECRET_ACCESS_KEY
    ))
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
            check_credentials(options.endpoint.as_deref(), |k| std::env::var(k).ok()).map_err(
                |reason| StorageError::Uri {
                    uri: uri.into(),
                    reason,
                },
            )?;
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(&parsed.bucket)
                .with_virtual_hosted_style_request(false)
                .with_retry(store_retries());
            if let Some(region) = &options.region {
                builder = builder.with_region(region);
            }
            if let Some(endpoint) = &options.endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            crate::tls::install_crypto_provider();
            let store = builder.build().map_err(store_error)?;
            Ok(Location {
                store: Arc::new(store),
                prefix: Path::from(parsed.path.as_str()),
                uri: uri.into(),
            })
        }
    }
}

/// Wall-clock time in milliseconds since the Unix epoch (what manifests and leases record).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh local directory as a `file://` location for tests, named after `kind` and `name`;
/// returns the directory to remove afterwards.
#[cfg(test)]
pub(crate) fn temp_location(kind: &str, name: &str) -> (std::path::PathBuf, Location) {
    let dir = std::env::temp_dir().join(format!("ferrotrain-{kind}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let location =
        open(&format!("file://{}", dir.display()), &S3Options::default()).expect("opens");
    (dir, location)
}

/// 64 random bits in hex: keys and records no other writer produces.
pub fn unique_nonce() -> String {
    let mut seed = [0u8; 8];
    let random =
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).is_ok();
    let value = if random {
        u64::from_le_bytes(seed)
    } else {
        now_unix_ms() ^ u64::from(std::process::id())
    };
    format!("{value:016x}")
}

/// How long the S3 client keeps retrying a request (throttling, 5xx, refused or reset
/// connections) before the trainer sees an error. The client's default (10 retries, backoff from
/// 100 ms with base 2 and decorrelated jitter) gives up after 2 to 3 seconds of a store that is
/// down; this rides out an outage or a restart of the store of up to about two minutes, with
/// waits growing to 10 s.
pub fn store_retries() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            base: 3.0,
        },
        max_retries: 25,
        retry_timeout: Duration::from_secs(120),
    }
}

/// How many times [`retry_reads`] tries a read.
pub const READ_ATTEMPTS: u32 = 3;

/// Runs an idempotent read (a whole object, a listing) up to [`READ_ATTEMPTS`] times, waiting
/// 0.5 s and then 1 s between tries, with a warning for each failure: the S3 client retries
/// requests that fail, but not a response whose body breaks off part-way. A missing object is
/// an answer, not a failure.
pub async fn retry_reads<T, F, Fut>(what: &str, mut read: F) -> Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, object_store::Error>>,
{
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match read().await {
            Ok(value) => return Ok(value),
            Err(e @ object_store::Error::NotFound { .. }) => return Err(e),
            Err(e) if attempt >= READ_ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::warn!(%what, attempt, error = %e, "storage read failed; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
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
        let key = self.key(name);
        retry_reads(name, || async { self.store.get(&key).await?.bytes().await }).await
    }

    /// Removes the directory `name` of a `file://` location if it is empty (object stores have
    /// no directories; a local one keeps those a failed write created). Anything else: nothing.
    pub fn remove_empty_dir(&self, name: &str) {
        if let Ok(parsed) = parse_storage_uri(&self.uri)
            && parsed.scheme == Scheme::File
        {
            let mut dir = std::path::PathBuf::from(&parsed.path);
            dir.extend(name.split('/').filter(|p| !p.is_empty()));
            // Fails, as it should, when the directory is not empty or not there.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Reads a whole object given by URI (datasets): `file://` from disk, `s3://` through S3.
pub async fn read_uri(uri: &str, options: &S3Options) -> Result<bytes::Bytes, StorageError> {
    read_uri_bounded(uri, options, MAX_DATA_BYTES).await
}

/// The largest data file read: beyond what a worker holds in memory.
pub const MAX_DATA_BYTES: u64 = 4 << 30;

/// [`read_uri`], refusing an object of more than `max_bytes` before reading it.
pub async fn read_uri_bounded(
    uri: &str,
    options: &S3Options,
    max_bytes: u64,
) -> Result<bytes::Bytes, StorageError> {
    let parsed = parse_storage_uri(uri).map_err(|reason| StorageError::Uri {
        uri: uri.into(),
        reason,
    })?;
    let too_large = |size: u64| StorageError::Uri {
        uri: uri.into(),
        reason: format!("{size} bytes, more than the {max_bytes} a data file may have"),
    };
    match parsed.scheme {
        Scheme::File => {
            let failed = |e: std::io::Error| StorageError::Uri {
                uri: uri.into(),
                reason: e.to_string(),
            };
            let size = std::fs::metadata(&parsed.path).map_err(failed)?.len();
            if size > max_bytes {
                return Err(too_large(size));
            }
            std::fs::read(&parsed.path)
                .map(bytes::Bytes::from)
                .map_err(failed)
        }
        Scheme::S3 => {
            let (dir, name) = parsed
                .path
                .rsplit_once('/')
                .unwrap_or(("", parsed.path.as_str()));
            let location = open(&format!("s3://{}/{dir}", parsed.bucket), options)?;
            let store_error = |source| StorageError::Store {
                uri: uri.into(),
                source,
            };
            let key = location.key(name);
            let size = retry_reads(name, || async { location.store.head(&key).await })
                .await
                .map_err(store_error)?
                .size;
            if size > max_bytes {
                return Err(too_large(size));
            }
            location.read(name).await.map_err(store_error)
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
        let refused = read_uri_bounded(&file_uri, &S3Options::default(), 2).await;
        assert!(
            refused.is_err_and(|e| e.to_string().contains("3 bytes, more than the 2")),
            "a data file over the bound is refused before it is read"
        );
        assert!(matches!(
            open("ftp://x/y", &S3Options::default()),
            Err(StorageError::Uri { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_endpoint_without_credentials_is_named_as_such() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let refused =
            check_credentials(Some("http://127.0.0.1:8333"), env(&[])).expect_err("no credentials");
        assert!(
            refused.starts_with("no S3 credentials: set AWS_ACCESS_KEY_ID"),
            "{refused}"
        );
        let from_env = check_credentials(None, env(&[("AWS_ENDPOINT_URL", "http://s3:9000")]));
        assert!(from_env.is_err());
        assert_eq!(
            check_credentials(
                Some("http://s3:9000"),
                env(&[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")])
            ),
            Ok(())
        );
        assert_eq!(
            check_credentials(
                Some("http://s3:9000"),
                env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token")])
            ),
            Ok(())
        );
        // AWS itself: its own credential chain (instance roles included) applies.
        assert_eq!(check_credentials(None, env(&[])), Ok(()));
    }

    #[test]
    fn s3_locations_keep_the_prefix() {
        let loc = open(
            "s3://bucket/jobs/mnist",
            &S3Options {
                endpoint: None,
                region: Some("eu-west-1".into()),
            },
        )
        .expect("builds without contacting the server");
        assert_eq!(
            loc.key("manifests/x.json").as_ref(),
            "jobs/mnist/manifests/x.json"
        );
    }
}
