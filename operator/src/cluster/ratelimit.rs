//! Client-side rate limiting of API requests (client-go's QPS and burst): a token bucket as a
//! tower layer under the Kubernetes client, so that a burst of reconciles or progress writes
//! queues in the operator instead of drawing 429s from the API server's priority and fairness.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

// tokio's clock, so that tests can pause it.
use tokio::time::Instant;

use tower::{Layer, Service};

/// A token bucket: `qps` tokens a second, at most `burst` saved.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `qps` is clamped to at least 0.01 and `burst` to at least 1.
    pub fn new(qps: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps: if qps.is_finite() { qps.max(0.01) } else { 0.01 },
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.qps))
        }
    }
}

/// How often and how long a client was held back by its limit (for `/metrics`).
#[derive(Debug, Default)]
pub struct ThrottleStats {
    held: AtomicU64,
    held_nanos: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl ThrottleStats {
    /// Requests sent that read (GET, including watches and lists).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Requests sent that change something (POST, PUT, PATCH, DELETE).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Requests that had to wait for a token.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Seconds the client spent waiting for tokens: near the elapsed time, it runs at its limit.
    pub fn held_seconds(&self) -> f64 {
        self.held_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// Whether a request changes something, for the request counts.
pub trait Verb {
    /// POST, PUT, PATCH, DELETE.
    fn is_write(&self) -> bool;
}

impl<B> Verb for axum::http::Request<B> {
    fn is_write(&self) -> bool {
        !matches!(
            *self.method(),
            axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
        )
    }
}

/// Layer that limits the requests of every service it wraps to one shared bucket.
#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Mutex<TokenBucket>>,
    stats: Arc<ThrottleStats>,
}

impl RateLimitLayer {
    /// `qps` requests a second on average, `burst` at once.
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(TokenBucket::new(qps, burst, Instant::now()))),
            stats: Arc::default(),
        }
    }

    /// The layer's throttling figures.
    pub fn stats(&self) -> Arc<ThrottleStats> {
        Arc::clone(&self.stats)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            bucket: Arc::clone(&self.bucket),
            stats: Arc::clone(&self.stats),
            wait: None,
            waiting_since: None,
            granted: false,
        }
    }
}

/// A service that is ready only when the bucket grants a token.
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<Mutex<TokenBucket>>,
    stats: Arc<ThrottleStats>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting_since: Option<Instant>,
    granted: bool,
}

impl<S, R> Service<R> for RateLimit<S>
where
    S: Service<R>,
    R: Verb,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.granted {
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            let now = Instant::now();
            let taken = self
                .bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(now);
            match taken {
                Ok(()) => {
                    self.granted = true;
                    if let Some(since) = self.waiting_since.take() {
                        let nanos = now.duration_since(since).as_nanos();
                        self.stats
                            .held_nanos
                            .fetch_add(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
                    }
                }
                Err(delay) => {
                    if self.waiting_since.is_none() {
                        self.waiting_since = Some(now);
                        self.stats.held.fetch_add(1, Ordering::Relaxed);
                    }
                    self.wait = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.granted = false;
        let counter = if request.is_write() {
            &self.stats.writes
        } else {
            &self.stats.reads
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_granted_then_requests_are_paced() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(bucket.take(t0), Ok(()));
        }
        let wait = bucket.take(t0).expect_err("the burst is spent");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.take(t0 + Duration::from_millis(100)), Ok(()));
        // A long pause saves at most `burst` tokens.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_holds_requests_back_to_the_rate() {
        let layer = RateLimitLayer::new(5.0, 2);
        let mut service =
            layer.layer(tower::service_fn(
                |r: axum::http::Request<u32>| async move {
                    Ok::<_, std::convert::Infallible>(*r.body())
                },
            ));
        let start = tokio::time::Instant::now();
        for n in 0..12 {
            let method = if n % 3 == 0 {
                axum::http::Method::PATCH
            } else {
                axum::http::Method::GET
            };
            let request = axum::http::Request::builder()
                .method(method)
                .body(n)
                .expect("request");
            let answer = tower::ServiceExt::ready(&mut service)
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("answer");
            assert_eq!(answer, n);
        }
        assert_eq!((layer.stats().reads(), layer.stats().writes()), (8, 4));
        // Two at once, then ten more at five a second, each held back.
        let elapsed = start.elapsed().as_secs_f64();
        assert!((elapsed - 2.0).abs() < 0.01, "{elapsed}");
        let stats = layer.stats();
        assert_eq!(stats.held(), 10);
        assert!(
            (stats.held_seconds() - 2.0).abs() < 0.01,
            "{}",
            stats.held_seconds()
        );
    }
}
