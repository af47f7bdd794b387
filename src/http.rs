//! `/metrics`, `/healthz`, `/readyz`.
//!
//! `/healthz` answers while the process serves requests. `/readyz` answers 200
//! when the configuration is loaded (it is, or the server would not run) and the
//! primary answers a query; followers are ready too, leadership is not required.
//! The primary is probed on request, at most once a second, so a burst of
//! probes costs one query.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

const PROBE_SQL: &str = "SELECT 1";
const PROBE_CACHE: Duration = Duration::from_secs(1);

/// Why the primary did not answer the readiness probe. Shared (`Arc`) so a
/// cached answer is handed to every request of the next second.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Connect(Arc<deadpool_postgres::PoolError>),
    #[error("{}", crate::pg::server_message(.0))]
    Query(Arc<tokio_postgres::Error>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Whether the primary answers, probed lazily and cached briefly.
pub struct PrimaryProbe {
    pool: deadpool_postgres::Pool,
    timeout: Duration,
    last: Mutex<Option<(Instant, Result<(), ProbeError>)>>,
}

impl PrimaryProbe {
    pub fn new(pool: deadpool_postgres::Pool, timeout: Duration) -> PrimaryProbe {
        PrimaryProbe {
            pool,
            timeout,
            last: Mutex::new(None),
        }
    }

    pub async fn check(&self) -> Result<(), ProbeError> {
        // Holding the lock across the probe makes concurrent requests share it.
        let mut last = self.last.lock().await;
        if let Some((at, r)) = last.as_ref() {
            if at.elapsed() < PROBE_CACHE {
                return r.clone();
            }
        }
        let r = match tokio::time::timeout(self.timeout, async {
            let client = self
                .pool
                .get()
                .await
                .map_err(|e| ProbeError::Connect(Arc::new(e)))?;
            client
                .simple_query(PROBE_SQL)
                .await
                .map(|_| ())
                .map_err(|e| ProbeError::Query(Arc::new(e)))
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout(self.timeout)),
        };
        *last = Some((Instant::now(), r.clone()));
        r
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub probe: Arc<PrimaryProbe>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    match s.probe.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: primary does not answer: {e}\n"),
        ),
    }
}

/// Binds `addr` now (so a taken port fails start-up) and returns the server
/// future, which ends after `cancel` once in-flight requests are done.
pub async fn bind(
    addr: SocketAddr,
    state: HttpState,
    cancel: CancellationToken,
) -> Result<impl std::future::Future<Output = std::io::Result<()>>, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "http listening");
    let app = router(state);
    Ok(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
    })
}
