//! Prometheus metrics over HTTP (`GET /metrics`). Figures are read from the store at
//! scrape time — the same numbers the monitor's gRPC calls give — and carry facility
//! ids and reasons as labels, never patient data.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hrx_ports::{EventLog, PortResult, Store};
use hrx_rpc::observe::RpcMetrics;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
struct Sources {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    rpc: RpcMetrics,
}

/// Renders every metric in the Prometheus text format: the store's figures, and this
/// process's RPC counters and latencies.
pub async fn render(log: &dyn EventLog, store: &dyn Store, rpc: &RpcMetrics) -> PortResult<String> {
    let mut registry = Registry::with_prefix("hrx");
    rpc.register(&mut registry);
    let accepted = Family::<Labels, Counter>::default();
    let duplicates = Family::<Labels, Counter>::default();
    let rejected = Family::<Labels, Counter>::default();
    let head = Family::<Labels, Gauge>::default();
    for s in store.facility_stats().await? {
        let f = s.facility_id.to_string();
        accepted
            .get_or_create(&vec![("facility", f.clone())])
            .inc_by(s.accepted);
        duplicates
            .get_or_create(&vec![("facility", f.clone())])
            .inc_by(s.duplicates);
        head.get_or_create(&vec![("facility", f.clone())])
            .set(s.head_seq as i64);
        for (reason, n) in s.rejected {
            rejected
                .get_or_create(&vec![
                    ("facility", f.clone()),
                    ("reason", reason.name().to_owned()),
                ])
                .inc_by(n);
        }
    }
    registry.register(
        "events_accepted",
        "Events accepted and projected, per facility",
        accepted,
    );
    registry.register(
        "events_duplicate",
        "Idempotent duplicates acknowledged, per facility",
        duplicates,
    );
    registry.register(
        "events_rejected",
        "Events rejected, per facility and reason",
        rejected,
    );
    registry.register(
        "facility_head_seq",
        "Last projected seq of each facility's chain",
        head,
    );

    let exchanged = Family::<Labels, Counter>::default();
    for c in store.exchange_matrix().await? {
        exchanged
            .get_or_create(&vec![
                ("reader", c.reader.to_string()),
                ("author", c.author.to_string()),
            ])
            .inc_by(c.records);
    }
    registry.register(
        "exchange_records",
        "Records read, per reader and author facility",
        exchanged,
    );

    let uses = store.break_glass_uses(None).await?;
    let glass = Counter::<u64>::default();
    glass.inc_by(uses.len() as u64);
    registry.register("break_glass", "Break-glass declarations", glass);
    let by_facility = Family::<Labels, Counter>::default();
    for u in &uses {
        by_facility
            .get_or_create(&vec![("facility", u.window.facility_id.to_string())])
            .inc();
    }
    registry.register(
        "break_glass_declarations",
        "Break-glass declarations, per declaring facility",
        by_facility,
    );

    let lag = super::lag(log, store).await?;
    let behind = Family::<Labels, Gauge>::default();
    for (p, end, next) in &lag.partitions {
        behind
            .get_or_create(&vec![("partition", p.to_string())])
            .set(end.saturating_sub(*next) as i64);
    }
    registry.register(
        "projector_lag_entries",
        "Log entries not yet projected, per partition",
        behind,
    );
    let oldest = Gauge::<i64>::default();
    oldest.set(lag.oldest_unprojected_ms as i64);
    registry.register(
        "projector_oldest_unprojected_milliseconds",
        "Age of the oldest log entry not yet projected",
        oldest,
    );

    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    Ok(out)
}

async fn metrics(State(s): State<Sources>) -> impl IntoResponse {
    match render(&*s.log, &*s.store, &s.rpc).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics scrape failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
    }
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    rpc: RpcMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Sources { log, store, rpc });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
