//! Per-RPC observability, as a tower layer on every gRPC server: a tracing span per call
//! and, per method and outcome, a request counter and a latency histogram.
//!
//! Labels are the method's path (only when it is one of this exchange's services or
//! gRPC's own; anything else a client sends is `other`, so a client cannot mint label
//! values) and the gRPC status code's name: never anything from the request's body.
//! The outcome is the status a handler answered with (its `grpc-status` header); a
//! response without one is `OK`, including streams, whose latency is the time to their
//! first response headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::codegen::http;
use tower::{Layer, Service};
use tracing::Instrument;

/// One method and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// The counters and histograms of every server of a process, shared by their layers and
/// read by the metrics endpoint.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    requests: Family<RpcLabels, Counter>,
    seconds: HistogramFamily,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            // 0.25 ms to ~8 s.
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        }
        Self {
            requests: Family::default(),
            seconds: Family::new_with_constructor(histogram as fn() -> Histogram),
        }
    }
}

impl RpcMetrics {
    /// Adds them to a registry (their values are shared, not copied).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rpc_requests",
            "gRPC calls answered, per method and status code",
            self.requests.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "Time to answer a gRPC call (to the first response headers), per method and status code",
            self.seconds.clone(),
        );
    }

    /// The number of calls answered for `method` with `code`.
    pub fn count(&self, method: &str, code: &str) -> u64 {
        self.requests
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .get()
    }

    fn record(&self, labels: RpcLabels, seconds: f64) {
        self.requests.get_or_create(&labels).inc();
        self.seconds.get_or_create(&labels).observe(seconds);
    }

    /// The layer that records into these.
    pub fn layer(&self) -> ObserveLayer {
        ObserveLayer {
            metrics: Arc::new(self.clone()),
        }
    }
}

/// See the module doc.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    metrics: Arc<RpcMetrics>,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`ObserveLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

/// The label for a request path: the path of a known service's method, else `other`.
fn method_label(path: &str) -> String {
    let known = ["/hrx.v1.", "/grpc.health.v1.", "/grpc.reflection."];
    let well_formed = path.len() <= 128
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._".contains(&b));
    if well_formed && known.iter().any(|k| path.starts_with(k)) {
        path.to_owned()
    } else {
        "other".to_owned()
    }
}

/// The name of the gRPC status a response carries in its headers (`OK` without one).
fn code_label<B>(response: &http::Response<B>) -> String {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    format!("{code:?}")
}

impl<S, B, RB> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
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
        // The clone that was made ready is the one called (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let method = method_label(request.uri().path());
        let span = tracing::info_span!("rpc", method = %method, code = tracing::field::Empty);
        let started = Instant::now();
        let call = inner.call(request);
        Box::pin(
            async move {
                let result = call.await;
                let code = match &result {
                    Ok(response) => code_label(response),
                    Err(_) => "transport".to_owned(),
                };
                tracing::Span::current().record("code", code.as_str());
                tracing::debug!("answered");
                metrics.record(RpcLabels { method, code }, started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_become_labels() {
        assert_eq!(
            method_label("/hrx.v1.IngestService/SubmitEvents"),
            "/hrx.v1.IngestService/SubmitEvents"
        );
        assert_eq!(method_label("/evil/026062001234"), "other");
        assert_eq!(method_label("/hrx.v1.X/a b"), "other");
        assert_eq!(
            method_label(&format!("/hrx.v1.{}", "a".repeat(200))),
            "other"
        );
    }

    #[test]
    fn the_code_is_read_from_the_response_headers() {
        let ok = http::Response::new(());
        assert_eq!(code_label(&ok), "Ok");
        let mut denied = http::Response::new(());
        denied
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("7"));
        assert_eq!(code_label(&denied), "PermissionDenied");
    }
}
