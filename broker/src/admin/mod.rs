//! The admin HTTP API: liveness, readiness, node status and drain.
//!
//! | route | answer | token |
//! |---|---|---|
//! | `GET /healthz` | 200 while the process serves | no |
//! | `GET /readyz` | 200 while serving, 503 once draining | no |
//! | `GET /api/v1/node` | JSON: node, state, counts, counters | no |
//! | `POST /api/v1/node/drain` | 202: the drain started (or was running) | yes |
//! | `POST /api/v1/reload` | 200: the authentication files were read again; 422: refused, the old ones stay | yes |
//! | `GET /api/v1/clients/{client_id}` | JSON: the node that has the client's session (`null`: none) | yes |
//!
//! Calls that change state or reveal client data need the admin token
//! (`access`); the HTTP connections themselves are bounded in number and
//! in how long a request may take to arrive (`server`).

mod access;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use serde::Serialize;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::connection::Frontend;
use crate::metrics::MetricsSnapshot;
use crate::node::NodeState;
use crate::session::registry::Owner;

#[derive(Clone)]
struct Admin {
    broker: Arc<Broker>,
    cluster: Option<Arc<Cluster>>,
    /// What client connections share: the authenticator, for reloads.
    frontend: Arc<Frontend>,
}

#[derive(Serialize)]
struct NodeView {
    node: String,
    cluster: Option<String>,
    version: &'static str,
    state: &'static str,
    connections: u64,
    sessions: u64,
    subscriptions: usize,
    retained: usize,
    /// Payload and topic bytes of the retained messages.
    retained_bytes: usize,
    /// What read buffers hold beyond 64 KiB each (`max_read_buffer_bytes`).
    read_buffer_bytes: usize,
    peers: usize,
    remote_routes: usize,
    unwritten_routes: usize,
    /// Client ids this node is home to (`client_directory = "home"`).
    directory_entries: usize,
    counters: MetricsSnapshot,
}

/// Serves the admin API on `addr` until the broker shuts down.
pub async fn serve(
    addr: SocketAddr,
    frontend: Arc<Frontend>,
    cluster: Option<Arc<Cluster>>,
) -> std::io::Result<()> {
    let broker = frontend.broker.clone();
    let token = match broker.config.admin_token() {
        Ok(token) => token,
        Err(error) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, error)),
    };
    if token.is_none() {
        warn!(
            "no admin token (admin.token_file or STARLING_ADMIN_TOKEN): drain, reloads and client lookups over the admin API are refused"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "admin API listening");
    let shutdown = broker.shutdown.clone();
    let guarded = axum::Router::new()
        .route("/api/v1/node/drain", post(start_drain))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/clients/{client_id}", get(client))
        .route_layer(middleware::from_fn_with_state(
            access::Token::new(token),
            access::require_token,
        ));
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/node", get(node))
        .merge(guarded)
        .layer(middleware::from_fn(access::refuse_non_json_posts))
        .with_state(Admin {
            broker,
            cluster,
            frontend,
        });
    tokio::spawn(server::serve(listener, app, shutdown));
    Ok(())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.broker.state() {
        NodeState::Serving => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
    }
}

async fn node(State(admin): State<Admin>) -> Json<NodeView> {
    Json(view(&admin))
}

async fn start_drain(State(admin): State<Admin>) -> impl IntoResponse {
    crate::drain::start(
        admin.broker.clone(),
        admin.cluster.clone(),
        crate::drain::REQUESTED_DRAIN_PATIENCE,
    );
    (StatusCode::ACCEPTED, Json(view(&admin)))
}

/// Reads the authentication files again (as SIGHUP does): 200 with what
/// was read, or 422 with why the files were refused (the loaded ones
/// stay).
async fn reload(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.frontend.auth.reload() {
        Ok(reloaded) => (
            StatusCode::OK,
            Json(
                serde_json::json!({ "reloaded": true, "password_file_users": reloaded.password_file_users }),
            ),
        ),
        Err(error) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({ "reloaded": false, "error": error.to_string() })),
        ),
    }
}

#[derive(Serialize)]
struct ClientView {
    client_id: String,
    /// The node that has the session, `None` when no node has one.
    node: Option<String>,
}

/// Where a client's session is: this node, if it has it; otherwise what
/// the cluster's client directory says.
async fn client(
    State(admin): State<Admin>,
    Path(client_id): Path<String>,
) -> Result<Json<ClientView>, (StatusCode, String)> {
    let here = admin
        .broker
        .sessions
        .lookup(&client_id)
        .is_some_and(|slot| !matches!(slot.inner.lock().owner, Owner::Vacant));
    let node = if here {
        Some(admin.broker.config.cluster.node_id.clone())
    } else if let Some(directory) = admin.broker.directory.as_ref() {
        directory.locate(&client_id).await.map_err(|why| {
            (
                StatusCode::BAD_GATEWAY,
                format!("cannot locate the client: {why}\n"),
            )
        })?
    } else {
        None
    };
    Ok(Json(ClientView { client_id, node }))
}

fn view(admin: &Admin) -> NodeView {
    let broker = &admin.broker;
    let cluster = admin.cluster.as_ref();
    NodeView {
        node: broker.config.cluster.node_id.clone(),
        cluster: cluster.map(|_| broker.config.cluster.name.clone()),
        version: env!("CARGO_PKG_VERSION"),
        state: broker.state().as_str(),
        connections: broker.metrics.connections.load(Ordering::Relaxed),
        sessions: broker.metrics.sessions.load(Ordering::Relaxed),
        subscriptions: broker.router.filter_count(),
        retained: broker.router.retained_count(),
        retained_bytes: broker.router.retained_bytes(),
        read_buffer_bytes: broker.read_budget.used(),
        peers: cluster.map_or(0, |c| c.forwarder.peer_count()),
        remote_routes: cluster.map_or(0, |c| c.index.len()),
        unwritten_routes: cluster.map_or(0, |c| c.routes.unwritten()),
        directory_entries: cluster
            .and_then(|c| c.home.as_ref())
            .map_or(0, |home| home.len()),
        counters: broker.metrics.snapshot(),
    }
}
