//! Client certificates taken back: revoked serials (registry `CertificateRevoked`) and
//! certificates past their `notAfter`, refused on every call and ended on open streams.
//!
//! rustls checks a certificate's chain and validity once, at the handshake. A
//! connection may then live for hours (a clinic's follow streams do), across a
//! revocation or the certificate's expiry, so the handshake alone cannot take a
//! certificate back. [`RevocationLayer`] therefore checks the connection's leaf
//! certificate on every call (UNAUTHENTICATED if revoked or expired) and wraps each
//! response body so that a stream still open when its certificate is revoked or
//! expires ends with UNAUTHENTICATED.
//!
//! The revoked set comes from the store (`RegistryStore::revoked_certificates`, what
//! the projector projected), refreshed by [`Revocations::follow_store`] whenever the
//! store signals a change and at least every [`REFRESH`]: every process that serves
//! gRPC enforces a revocation within seconds of its projection, whichever backend and
//! whatever role. Calls without a client certificate (the patients' port) are not
//! concerned.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hrx_domain::event::CertificateSerial;
use hrx_ports::Store;
use tokio::sync::watch;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// The longest a revocation waits for a process that missed the store's change signal.
pub const REFRESH: Duration = Duration::from_secs(2);

const REVOKED: &str = "the client certificate has been revoked";
const EXPIRED: &str = "the client certificate has expired";

type Serials = Arc<HashSet<CertificateSerial>>;

/// The revoked serials this process enforces; [`Self::layer`] enforces them.
#[derive(Clone, Debug)]
pub struct Revocations {
    tx: Arc<watch::Sender<Serials>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(Serials::default())),
        }
    }
}

impl Revocations {
    /// The tower layer that refuses revoked and expired certificates.
    pub fn layer(&self) -> RevocationLayer {
        RevocationLayer {
            rx: self.tx.subscribe(),
        }
    }

    /// Replaces the revoked set (revocations are never undone, so it only grows; a
    /// reset store is the exception, and then the set follows it).
    pub fn set(&self, serials: impl IntoIterator<Item = CertificateSerial>) {
        let new: HashSet<_> = serials.into_iter().collect();
        self.tx.send_if_modified(|current| {
            if **current == new {
                return false;
            }
            *current = Arc::new(new);
            true
        });
    }

    /// Whether `serial` is revoked here now.
    pub fn is_revoked(&self, serial: &CertificateSerial) -> bool {
        self.tx.borrow().contains(serial)
    }

    /// Sets the revoked set to the store's.
    pub async fn load(&self, store: &dyn Store) -> hrx_ports::PortResult<()> {
        let list = store.revoked_certificates().await?;
        self.set(list.into_iter().map(|c| c.serial));
        Ok(())
    }

    /// Keeps the set equal to the store's until `stop` turns true: reloaded on every
    /// change the store signals, and every [`REFRESH`] in case a signal was missed (a
    /// PostgreSQL listener reconnecting). A failed read keeps the set it had.
    pub async fn follow_store(self, store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
        let mut changes = Some(store.changes());
        loop {
            if let Err(e) = self.load(store.as_ref()).await {
                tracing::warn!(error = %e, "cannot read revoked certificates; keeping the last set");
            }
            let changed = async {
                match changes.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            changes = None;
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(REFRESH) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// See the module doc.
#[derive(Clone, Debug)]
pub struct RevocationLayer {
    rx: watch::Receiver<Serials>,
}

impl<S> Layer<S> for RevocationLayer {
    type Service = Revocation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Revocation {
            inner,
            rx: self.rx.clone(),
        }
    }
}

/// The service [`RevocationLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct Revocation<S> {
    inner: S,
    rx: watch::Receiver<Serials>,
}

fn refused(why: &'static str) -> http::Response<tonic::body::Body> {
    tonic::Status::unauthenticated(why).into_http()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl<S, B> Service<http::Request<B>> for Revocation<S>
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
        let leaf = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().cloned());
        let Some(leaf) = leaf else {
            // No client certificate: nothing to take back (the patients' port).
            return Box::pin(inner.call(request));
        };
        let facts = match hrx_identity::certificate_facts(&leaf) {
            Ok(f) => f,
            Err(_) => {
                return Box::pin(async {
                    Ok(tonic::Status::unauthenticated("invalid client certificate").into_http())
                });
            }
        };
        let left = facts.not_after_unix.saturating_sub(unix_now());
        if left <= 0 {
            return Box::pin(async { Ok(refused(EXPIRED)) });
        }
        if self.rx.borrow().contains(&facts.serial) {
            return Box::pin(async { Ok(refused(REVOKED)) });
        }
        let mut rx = self.rx.clone();
        let call = inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            if http_body::Body::is_end_stream(response.body()) {
                return Ok(response);
            }
            let serial = facts.serial;
            let taken_back = Box::pin(async move {
                let expiry = tokio::time::sleep(Duration::from_secs(left.unsigned_abs()));
                let revoked = async {
                    if rx.wait_for(|set| set.contains(&serial)).await.is_err() {
                        // The process is stopping; its server ends the stream.
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    () = expiry => EXPIRED,
                    () = revoked => REVOKED,
                }
            });
            Ok(response.map(|body| {
                tonic::body::Body::new(Revocable {
                    inner: body,
                    taken_back,
                    state: State::Open,
                })
            }))
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The inner body sent its trailers: the call is over, nothing more to end.
    Finished,
    /// We sent UNAUTHENTICATED trailers in its place.
    Ended,
}

/// A response body that ends with UNAUTHENTICATED once its certificate is taken back.
struct Revocable {
    inner: tonic::body::Body,
    taken_back: Pin<Box<dyn Future<Output = &'static str> + Send>>,
    state: State,
}

impl http_body::Body for Revocable {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match this.state {
            State::Ended => return Poll::Ready(None),
            State::Finished => return Pin::new(&mut this.inner).poll_frame(cx),
            State::Open => {}
        }
        if let Poll::Ready(why) = this.taken_back.as_mut().poll(cx) {
            this.state = State::Ended;
            let mut trailers = http::HeaderMap::new();
            return Poll::Ready(Some(
                match tonic::Status::unauthenticated(why).add_header(&mut trailers) {
                    Ok(()) => Ok(http_body::Frame::trailers(trailers)),
                    Err(status) => Err(status),
                },
            ));
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame
            && f.is_trailers()
        {
            this.state = State::Finished;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
