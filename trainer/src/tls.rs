//! The process's TLS crypto provider: rustls with ring, the only provider compiled in (S3 over
//! HTTPS, the progress client). HTTP clients refuse to start without one, so every place that
//! builds a client calls [`install_crypto_provider`] first.

/// Makes ring the process's rustls provider; a provider already installed is kept.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
