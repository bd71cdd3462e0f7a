//! Per-call bounds as tower layers: a deadline on every call ([`DeadlineLayer`]), and
//! calls in flight per caller ([`PerCallerLimitLayer`]).
//!
//! Calls in flight per caller: a tower layer that gives every principal (the client
//! certificate's facility or the national center) at most N calls at once, across all
//! its connections, and answers RESOURCE_EXHAUSTED to the next, so one facility's
//! runaway integration cannot take every worker from the others. Tower's own
//! `ConcurrencyLimit` bounds a whole service (tonic applies it per connection); this is
//! the same with one semaphore per caller.
//!
//! Calls without a client certificate (the patients' port) all share one bucket. A
//! stream holds its place until its response headers are sent; open follow streams
//! have their own limit.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// See the module doc.
#[derive(Clone, Debug)]
pub struct PerCallerLimitLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    max: usize,
    callers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl PerCallerLimitLayer {
    /// At most `max` calls in flight per caller.
    pub fn new(max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                max: max.max(1),
                callers: Mutex::default(),
            }),
        }
    }
}

impl<S> Layer<S> for PerCallerLimitLayer {
    type Service = PerCallerLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PerCallerLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`PerCallerLimitLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct PerCallerLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Who is calling: the principal of the connection's client certificate, `""` without
/// one (a certificate that names no principal is refused later, by the service).
fn caller<B>(request: &http::Request<B>) -> String {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .and_then(|certs| {
            let leaf = certs.first()?;
            hrx_identity::principal_from_der(leaf).ok()
        })
        .map(|p| p.uri())
        .unwrap_or_default()
}

impl<S, B> Service<http::Request<B>> for PerCallerLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let semaphore = self
            .shared
            .callers
            .lock()
            .expect("caller table poisoned")
            .entry(caller(&request))
            .or_insert_with(|| Arc::new(Semaphore::new(self.shared.max)))
            .clone();
        let Ok(permit) = semaphore.try_acquire_owned() else {
            let max = self.shared.max;
            return Box::pin(async move {
                Ok(tonic::Status::resource_exhausted(format!(
                    "at most {max} calls in flight per caller; retry when one is answered"
                ))
                .into_http())
            });
        };
        let call = inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(permit);
            response
        })
    }
}

/// A deadline on every call: not answered within it, a call is answered
/// DEADLINE_EXCEEDED (tonic's own server timeout answers CANCELLED, which a client
/// cannot tell from its own cancellation). It bounds the time to the response headers,
/// so a stream, once answered, is not cut by it. Work the call had done stays done: an
/// append either happened whole or not at all, and a client that retries sees its
/// events as duplicates.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    after: std::time::Duration,
}

impl DeadlineLayer {
    pub fn new(after: std::time::Duration) -> Self {
        Self { after }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            after: self.after,
        }
    }
}

/// The service [`DeadlineLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    after: std::time::Duration,
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let after = self.after;
        let call = inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(after, call).await {
                Ok(response) => response,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "not answered within {} ms",
                    after.as_millis()
                ))
                .into_http()),
            }
        })
    }
}
