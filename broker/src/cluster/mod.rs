//! Cluster mode: membership, routes and retained messages in etcd, and
//! publish forwarding between nodes over gRPC (docs/architecture.md,
//! "Cluster mode").
//!
//! - [`etcd`]: the key schema, the node's lease, the keys it owns under
//!   it, and mirrors of other nodes' keys;
//! - [`membership`]: `nodes/<id>` and the peer set;
//! - [`routes`]: `routes/<node>/<filter>`, written in batches, mirrored
//!   from every node into the index each publish reads;
//! - [`retained`]: `retained/<topic>`, shared by every node;
//! - [`peer`]: links to the other nodes (forwarding, calls, mutual TLS,
//!   the wire form of a message);
//! - [`service`]: the gRPC service this node offers the others;
//! - [`directory`]: where each client's session is (its home node, or
//!   etcd), and moving sessions between nodes;
//! - [`backoff`]: how long a task waits before it tries again.
//! - [`tasks`]: the cluster's background tasks, stopped together on leave.

/// How long leaving waits for the cluster's tasks to end.
const TASKS_PATIENCE: Duration = Duration::from_secs(5);

/// Largest HTTP/2 frame a peer may send this node (see `start`).
const PEER_MAX_FRAME: u32 = 1 << 20;

pub mod backoff;
pub mod directory;
pub mod etcd;
pub mod membership;
pub mod peer;
pub mod retained;
pub mod routes;
pub mod service;
pub mod tasks;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use starling_proto::v1::NodeRecord;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::{Broker, ClusterParts};
use crate::config::{ClientDirectoryKind, Config};
use crate::metrics::Metrics;
use crate::node::NodeState;
use crate::session::directory::SessionDirectory;
use directory::{home, owner, view};
use etcd::keys::Keys;
use etcd::leased_keys::LeasedKeys;
use etcd::{lease, mirror};
use peer::client::PeerCredentials;
use peer::links::PeerForwarder;
use peer::tls as peer_tls;
use routes::index::RouteIndex;
use routes::store::EtcdRouteStore;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("cannot read {key} ({path}): {source}")]
    TlsFile {
        key: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    PeerTls(#[from] peer_tls::PeerTlsError),
    #[error("cannot listen for peers on {addr}: {source}")]
    PeerBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// What a `Drain` call from another node does. Given by whoever runs the
/// cluster: how a node drains (`crate::drain`) builds on the cluster, so
/// the cluster cannot call it itself.
pub type OnDrainRequest = Arc<dyn Fn() + Send + Sync>;

/// The cluster side of a node, created before the broker (whose router uses
/// the route store and forwarder) and started after it.
pub struct Cluster {
    /// Every background task of the cluster, stopped by [`Cluster::leave`].
    tasks: tasks::Tasks,
    pub keys: Keys,
    pub client: Client,
    pub lease: lease::LeaseWatch,
    pub index: Arc<RouteIndex>,
    pub routes: Arc<EtcdRouteStore>,
    pub forwarder: Arc<PeerForwarder>,
    /// Where the session of each client id is.
    pub directory: Arc<dyn SessionDirectory>,
    /// The client ids this node is home to (`client_directory = "home"`).
    pub home: Option<Arc<home::HomeDirectory>>,
    /// The membership view, fed from `nodes/` once started.
    views: watch::Sender<view::SharedView>,
    /// How far the route index has caught up with etcd.
    pub routes_progress: Arc<mirror::MirrorProgress>,
    /// How far the retained index has caught up with etcd.
    pub retained_progress: Arc<mirror::MirrorProgress>,
    /// Shares this node's retained messages through etcd.
    retained_writer: Arc<retained::RetainedWriter>,
    record: watch::Sender<NodeRecord>,
    /// Mutual TLS on the peer port, when configured.
    peer_tls: Option<Arc<peer_tls::PeerTls>>,
}

/// TLS settings for etcd from the configured PEM files, if any.
fn etcd_tls(config: &Config) -> Result<Option<etcd_client::TlsOptions>, ClusterError> {
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ClusterError::TlsFile {
            key,
            path: path.to_path_buf(),
            source,
        })
    };
    let Some(ca) = &config.etcd.ca_file else {
        return Ok(None);
    };
    let mut tls = etcd_client::TlsOptions::new().ca_certificate(
        etcd_client::Certificate::from_pem(read("etcd_ca_file", ca)?),
    );
    if let (Some(cert), Some(key)) = (&config.etcd.cert_file, &config.etcd.key_file) {
        let identity = etcd_client::Identity::from_pem(
            read("etcd_cert_file", cert)?,
            read("etcd_key_file", key)?,
        );
        tls = tls.identity(identity);
    }
    Ok(Some(tls))
}

/// Mutual TLS for the peer port from the configured PEM files, if set
/// (the configuration checks that the three come together).
fn peer_tls_of(config: &Config) -> Result<Option<Arc<peer_tls::PeerTls>>, ClusterError> {
    let (Some(cert), Some(key), Some(ca)) = (
        &config.peer_tls.cert_file,
        &config.peer_tls.key_file,
        &config.peer_tls.ca_file,
    ) else {
        return Ok(None);
    };
    let files = peer_tls::PeerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: ca.clone(),
    };
    Ok(Some(peer_tls::PeerTls::load(
        files,
        config.peer_tls.server_name.as_deref(),
        Duration::from_secs(config.peer_tls.reload_secs),
    )?))
}

/// Serves the peer service on the connections `incoming` yields until
/// shutdown.
async fn serve_peers<I, IO, IE>(
    router: tonic::transport::server::Router,
    incoming: I,
    shutdown: tokio_util::sync::CancellationToken,
) where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let result = router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(error) = result {
        warn!(%error, "peer server stopped");
    }
}

/// How long start-up keeps trying to reach etcd before giving up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

impl Cluster {
    /// Connects to etcd, takes a lease, and starts mirroring routes.
    pub async fn connect(config: &Config, metrics: Arc<Metrics>) -> Result<Cluster, ClusterError> {
        // Bad certificate files fail the start at once, not after etcd.
        let peer_tls = peer_tls_of(config)?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let (Some(user), Some(password)) = (&config.etcd.username, &config.etcd.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = etcd_tls(config)? {
            options = options.with_tls(tls);
        }
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        let client = loop {
            match Client::connect(config.etcd.endpoints.clone(), Some(options.clone())).await {
                Ok(client) => break client,
                Err(source) if tokio::time::Instant::now() >= deadline => {
                    return Err(ClusterError::Etcd {
                        endpoints: config.etcd.endpoints.join(","),
                        source,
                    });
                }
                Err(error) => {
                    warn!(%error, "etcd not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        info!(endpoints = %config.etcd.endpoints.join(","), cluster = %config.cluster.name, node = %config.cluster.node_id, "connected to etcd");

        let keys = Keys::new(&config.cluster.name);
        let tasks = tasks::Tasks::default();
        let lease = lease::start(client.clone(), config.cluster.lease_ttl_secs, &tasks);
        let index = RouteIndex::new(
            &config.cluster.node_id,
            keys.clone(),
            config.topic_limits(),
            Duration::from_secs(config.cluster.peer_lapse_grace_secs),
        );
        let credentials = PeerCredentials {
            token: config.cluster.peer_token.clone(),
            tls: peer_tls.clone(),
        };
        let forwarder = PeerForwarder::new(
            &config.cluster.node_id,
            credentials,
            metrics.clone(),
            tasks.clone(),
        );
        let owned_routes = LeasedKeys::new(Vec::new(), false);
        let route_sync = config.cluster.route_sync.then(|| {
            routes::sync::RouteSync::new(
                owned_routes.clone(),
                forwarder.clone(),
                metrics,
                Duration::from_secs(config.cluster.route_sync_timeout_secs),
            )
        });
        let routes = EtcdRouteStore::new(
            &config.cluster.node_id,
            keys.clone(),
            index.clone(),
            config.cluster.route_aggregates.clone(),
            owned_routes,
            route_sync.clone(),
        );
        let retained_writer = retained::RetainedWriter::new(keys.clone(), route_sync);
        let (record, _) = watch::channel(NodeRecord {
            node: config.cluster.node_id.clone(),
            mqtt_endpoint: config
                .listeners
                .listen
                .first()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            peer_endpoint: config.peer_endpoint(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: NodeState::Serving.as_str().to_string(),
            // Filled in by publish_self with the lease it writes under.
            lease: 0,
        });

        let views = watch::Sender::new(Arc::new(view::View::empty()));
        let (directory, home): (Arc<dyn SessionDirectory>, _) =
            match config.cluster.client_directory {
                ClientDirectoryKind::Home => {
                    let home = home::HomeDirectory::new(&config.cluster.node_id);
                    let directory = owner::HomeClientDirectory::start(
                        &config.cluster.node_id,
                        home.clone(),
                        forwarder.clone(),
                        views.subscribe(),
                        &tasks,
                    );
                    (directory, Some(home))
                }
                ClientDirectoryKind::Etcd => {
                    let sessions = directory::etcd::ClusterSessions::new(
                        &config.cluster.node_id,
                        keys.clone(),
                        client.clone(),
                        forwarder.clone(),
                        lease.clone(),
                        &tasks,
                    );
                    tasks.spawn(
                        sessions
                            .registrations
                            .clone()
                            .run(client.clone(), lease.clone()),
                    );
                    (sessions, None)
                }
            };
        tasks.spawn(routes.owned.clone().run(client.clone(), lease.clone()));
        let routes_progress = mirror::MirrorProgress::new();
        tasks.spawn(mirror::run(
            client.clone(),
            keys.routes_prefix(),
            index.sink(),
            routes_progress.clone(),
        ));
        Ok(Cluster {
            tasks,
            keys,
            client,
            lease,
            index,
            routes,
            forwarder,
            directory,
            home,
            views,
            routes_progress,
            retained_progress: mirror::MirrorProgress::new(),
            retained_writer,
            record,
            peer_tls,
        })
    }

    /// What the broker reaches the other nodes through, for
    /// [`Broker::clustered`].
    pub fn parts(&self) -> ClusterParts {
        ClusterParts {
            routes: self.routes.clone(),
            forwarder: self.forwarder.clone(),
            retained: self.retained_writer.clone(),
            directory: self.directory.clone(),
        }
    }

    /// Serves the peer gRPC service, announces this node and starts
    /// following the other nodes. `on_drain_request` is what a `Drain`
    /// call from another node does.
    pub async fn start(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        on_drain_request: OnDrainRequest,
    ) -> Result<(), ClusterError> {
        let config = &broker.config;
        let listener = tokio::net::TcpListener::bind(config.cluster.peer_listen)
            .await
            .map_err(|source| ClusterError::PeerBind {
                addr: config.cluster.peer_listen,
                source,
            })?;
        info!(addr = %config.cluster.peer_listen, "listening for peers");
        let service = service::server(
            broker.clone(),
            self.clone(),
            on_drain_request,
            config.cluster.peer_token.clone(),
        );
        let shutdown = broker.shutdown.clone();
        // HTTP/2's default largest frame is 16 KiB: a forwarded batch of
        // 256 small messages (about 25 KiB) then came as two DATA frames,
        // each handled on its own by both ends. Frames up to a whole batch
        // (link_queue's BATCH_BYTES) cut the receiving node's CPU per
        // message by about a tenth; a peer only sends what it has, so
        // nothing waits to fill a frame.
        let server = tonic::transport::Server::builder()
            .max_frame_size(Some(PEER_MAX_FRAME))
            .add_service(service);
        match self.peer_tls.clone() {
            Some(tls) => {
                info!("peer port requires mutual TLS");
                self.tasks.spawn(tls.clone().keep_fresh(shutdown.clone()));
                let incoming = peer_tls::accept(listener, tls);
                self.tasks.spawn(serve_peers(server, incoming, shutdown));
            }
            None => {
                // The builder's tcp_nodelay only applies to listeners it
                // binds itself: set it on each accepted stream, or small
                // answers (forward acks, AwaitRoutes) wait for delayed ACKs
                // (40 ms).
                let incoming = tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |accepted| {
                        accepted.inspect(|stream| {
                            let _ = stream.set_nodelay(true);
                        })
                    },
                );
                self.tasks.spawn(serve_peers(server, incoming, shutdown));
            }
        }

        // Retained messages: share this node's, mirror everyone's.
        let writer = self.retained_writer.clone();
        self.tasks.spawn(writer.clone().run(self.client.clone()));
        let sink = retained::RetainedSink {
            broker: broker.clone(),
            keys: self.keys.clone(),
            writer: writer.clone(),
        };
        self.tasks.spawn(mirror::run(
            self.client.clone(),
            self.keys.retained_prefix(),
            sink,
            self.retained_progress.clone(),
        ));

        self.tasks.spawn(membership::publish_self(
            self.client.clone(),
            self.keys.clone(),
            self.lease.clone(),
            self.record.subscribe(),
        ));
        let peers = membership::PeersSink::new(
            &config.cluster.node_id,
            self.keys.clone(),
            self.forwarder.clone(),
            self.views.clone(),
            self.index.clone(),
        );
        let nodes_progress = mirror::MirrorProgress::new();
        self.tasks.spawn(mirror::run(
            self.client.clone(),
            self.keys.nodes_prefix(),
            peers,
            nodes_progress.clone(),
        ));
        self.tasks
            .spawn(self.index.clone().resolve_lapses(nodes_progress));
        Ok(())
    }

    /// Leaves the cluster at once: revoking the lease deletes this node's
    /// record, routes and registrations without waiting for the TTL.
    pub async fn leave(&self) {
        // Mirrors, writers, links and the lease keeper stop first: nothing
        // of this node's may run on once the cluster forgets it.
        let lease = *self.lease.borrow();
        let running = self.tasks.stop(TASKS_PATIENCE).await;
        if running > 0 {
            warn!(
                running,
                "cluster tasks still running after {TASKS_PATIENCE:?}"
            );
        }
        let Some(lease) = lease else {
            return;
        };
        let mut client = self.client.clone();
        match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await {
            Ok(Ok(_)) => info!("left the cluster"),
            Ok(Err(error)) => {
                warn!(%error, "cannot revoke the lease; the cluster forgets this node within its TTL")
            }
            Err(_) => {
                warn!("lease revocation timed out; the cluster forgets this node within its TTL")
            }
        }
    }

    /// Announces a new state (draining) in this node's record.
    pub fn set_state(&self, state: NodeState) {
        self.record
            .send_modify(|r| r.state = state.as_str().to_string());
    }
}
