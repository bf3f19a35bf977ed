//! The owner side of the home-node client directory (`client_directory =
//! "home"`, docs/adr/0003-home-node-client-directory.md).
//!
//! Every client id has a home node ([`View::home_of`]) whose
//! [`HomeDirectory`] knows which node has the id's session. A connect
//! claims the id at its home (one call, batched with the connects of the
//! same moment) and takes the session over from whoever the home says had
//! it. This node remembers the stamp of each session it owns; when the
//! membership changes it registers again, at their new homes, the sessions
//! whose home changed, then tells every member it is done ("synced"), which
//! is what lets the new homes answer claims.
//!
//! etcd holds only membership: connects write nothing there, and the
//! directory's size is spread over the nodes' memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use starling_proto::v1::{
    ClaimClientsRequest, ClientRegistration, DirectoryStamp, DirectorySyncedRequest,
    LocateClientRequest, RegisterClientsRequest, ReleaseClientsRequest,
};
use tokio::sync::{Notify, RwLock, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::cluster::directory::home::{ClaimAnswer, Claimed, HomeDirectory, Stamp};
use crate::cluster::directory::moves;
use crate::cluster::directory::view::{SharedView, View};
use crate::cluster::peer::links::PeerForwarder;
use crate::cluster::peer::{PeerCallError, answer_within};
use crate::cluster::tasks::Tasks;
use crate::node::NodeId;
use crate::session::directory::{Claim, Located, SessionDirectory};

/// Claims sent to one home in one call.
const CLAIM_BATCH: usize = 256;
/// Claim calls in flight at once.
const PARALLEL_CLAIMS: usize = 8;
/// Registrations sent in one call (a re-registration after a membership
/// change can be hundreds of thousands).
const REGISTER_BATCH: usize = 10_000;
/// A claim's call to its home, which may wait for the home to settle.
const CALL_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a connect whose home is in another view waits for the views
/// to agree before it serves the client locally (a node cut off from etcd
/// keeps an old view until it is back).
const VIEW_AGREEMENT_PATIENCE: Duration = Duration::from_secs(1);
/// Before a registration the home could not take is sent again.
const REGISTER_RETRY: Duration = Duration::from_secs(1);

/// A connect waiting for its claim's batch.
struct RemoteClaim {
    home: NodeId,
    lease: i64,
    view: (u64, i64),
    client_id: String,
    /// `Ok(None)`: the home is in another view.
    reply: oneshot::Sender<Result<Option<Claimed>, PeerCallError>>,
}

#[derive(Default)]
struct Updates {
    /// Sessions to register without a stamp (adopted, or served while the
    /// home was unreachable).
    register: Vec<String>,
    release: Vec<(String, Stamp)>,
}

pub struct HomeClientDirectory {
    node: NodeId,
    home: Arc<HomeDirectory>,
    forwarder: Arc<PeerForwarder>,
    /// The view this node has re-registered its sessions in: claims are
    /// made in it.
    synced: watch::Sender<SharedView>,
    /// The sessions this node owns, with their stamps
    /// ([`Stamp::PENDING`] until a home has issued one).
    owned: Mutex<HashMap<Box<str>, Stamp>>,
    /// Claims hold it (read) from their call to the home until their stamp
    /// is in `owned`; a re-registration holds it (write), so that it sees
    /// every session the new view's homes must learn of.
    gate: RwLock<()>,
    claims: mpsc::Sender<RemoteClaim>,
    updates: Mutex<Updates>,
    updates_ready: Notify,
}

impl HomeClientDirectory {
    /// Starts following `views` (the membership, from `nodes/`).
    pub fn start(
        node: &str,
        home: Arc<HomeDirectory>,
        forwarder: Arc<PeerForwarder>,
        views: watch::Receiver<SharedView>,
        tasks: &Tasks,
    ) -> Arc<HomeClientDirectory> {
        let (claims, pending) = mpsc::channel(4 * CLAIM_BATCH);
        let directory = Arc::new(HomeClientDirectory {
            node: Arc::from(node),
            home,
            forwarder,
            synced: watch::Sender::new(Arc::new(View::empty())),
            owned: Mutex::new(HashMap::new()),
            gate: RwLock::new(()),
            claims,
            updates: Mutex::default(),
            updates_ready: Notify::new(),
        });
        tasks.spawn(send_claims(
            directory.node.clone(),
            directory.forwarder.clone(),
            pending,
        ));
        tasks.spawn(directory.clone().follow_views(views));
        tasks.spawn(directory.clone().send_updates());
        directory
    }

    fn own_lease(&self, view: &View) -> i64 {
        view.member(&self.node).map_or(0, |m| m.lease)
    }

    /// Claims `client_id` at its home in `view`. `Ok(None)`: the home is in
    /// another view.
    async fn claim_at_home(
        &self,
        view: &View,
        client_id: &str,
    ) -> Result<Option<Claimed>, PeerCallError> {
        let home = view
            .home_of(client_id)
            .map(|m| m.node.clone())
            .ok_or(PeerCallError::NoServingNode)?;
        let lease = self.own_lease(view);
        if home == self.node {
            let ids = [client_id.to_string()];
            let caller_view = (view.hash, view.label);
            return Ok(
                match self.home.claim(&self.node, lease, caller_view, &ids).await {
                    ClaimAnswer::Retry => None,
                    ClaimAnswer::Claimed(mut claimed) => claimed.pop(),
                },
            );
        }
        let (reply, answer) = oneshot::channel();
        let claim = RemoteClaim {
            home,
            lease,
            view: (view.hash, view.label),
            client_id: client_id.to_string(),
            reply,
        };
        let call = "ClaimClients";
        let abandoned = PeerCallError::Abandoned { call };
        self.claims
            .send(claim)
            .await
            .map_err(|_| abandoned.clone())?;
        tokio::time::timeout(CALL_TIMEOUT, answer)
            .await
            .map_err(|_| PeerCallError::NoAnswer {
                call,
                after: CALL_TIMEOUT,
            })?
            .map_err(|_| abandoned)?
    }

    /// Follows the membership: each new view's homes are told of the
    /// sessions they are now home to.
    async fn follow_views(self: Arc<Self>, mut views: watch::Receiver<SharedView>) {
        loop {
            let view = views.borrow_and_update().clone();
            if view.hash != self.synced.borrow().hash {
                self.sync(view).await;
            }
            if views.changed().await.is_err() {
                return;
            }
        }
    }

    /// Registers again every session whose home changed (all of them if
    /// this node came back under a new lease: the homes forgot it), then
    /// tells every member.
    async fn sync(&self, view: SharedView) {
        self.home.set_view(view.clone());
        let _gate = self.gate.write().await;
        let old = self.synced.borrow().clone();
        let rejoined = self.own_lease(&old) != self.own_lease(&view);
        let mut moves: HashMap<NodeId, Vec<(String, Option<Stamp>)>> = HashMap::new();
        {
            let owned = self.owned.lock();
            for (id, stamp) in owned.iter() {
                let Some(home) = view.home_of(id) else {
                    continue;
                };
                let pending = *stamp == Stamp::PENDING;
                if rejoined || pending || old.home_of(id) != Some(home) {
                    moves
                        .entry(home.node.clone())
                        .or_default()
                        .push((id.to_string(), (!pending).then_some(*stamp)));
                }
            }
        }
        let moved: usize = moves.values().map(Vec::len).sum();
        let lease = self.own_lease(&view);
        for (home, registrations) in moves {
            for chunk in registrations.chunks(REGISTER_BATCH) {
                if let Err(error) = self.register_at(&home, lease, chunk).await {
                    warn!(%home, %error, "cannot register sessions at their new home");
                }
            }
        }
        let mut calls = JoinSet::new();
        for member in &view.members {
            if member.node == self.node {
                self.home.synced(&self.node, view.hash);
                continue;
            }
            let Ok(mut peer) = self.forwarder.client_of(&member.node) else {
                continue;
            };
            let request = DirectorySyncedRequest {
                node: self.node.to_string(),
                view: view.hash,
            };
            let node = member.node.clone();
            calls.spawn(async move {
                match tokio::time::timeout(CALL_TIMEOUT, peer.directory_synced(request)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(status)) => {
                        warn!(%node, %status, "cannot tell a member this node re-registered")
                    }
                    Err(_) => warn!(%node, "telling a member this node re-registered timed out"),
                }
            });
        }
        while calls.join_next().await.is_some() {}
        info!(
            members = view.members.len(),
            sessions_moved = moved,
            "client directory in a new membership view"
        );
        self.synced.send_replace(view);
    }

    /// Registers `registrations` at `home` and keeps the stamps it issued.
    async fn register_at(
        &self,
        home: &NodeId,
        lease: i64,
        registrations: &[(String, Option<Stamp>)],
    ) -> Result<(), PeerCallError> {
        let stamps = if *home == self.node {
            self.home.register(&self.node, lease, registrations).await
        } else {
            let mut peer = self.forwarder.client_of(home)?;
            let request = RegisterClientsRequest {
                node: self.node.to_string(),
                lease,
                clients: registrations
                    .iter()
                    .map(|(id, stamp)| ClientRegistration {
                        client_id: id.clone(),
                        stamp: stamp.map(stamp_to_wire),
                    })
                    .collect(),
            };
            let call = "RegisterClients";
            let stamps = answer_within(call, CALL_TIMEOUT, peer.register_clients(request))
                .await?
                .stamps;
            if stamps.len() != registrations.len() {
                return Err(PeerCallError::BadAnswer {
                    call,
                    problem: format!(
                        "the home answered for {} sessions, not {}",
                        stamps.len(),
                        registrations.len()
                    ),
                });
            }
            stamps
                .into_iter()
                .map(|s| (s.label != 0 || s.counter != 0).then(|| stamp_from_wire(&s)))
                .collect()
        };
        let mut late_releases = Vec::new();
        {
            let mut owned = self.owned.lock();
            for ((id, _), stamp) in registrations.iter().zip(stamps) {
                let Some(stamp) = stamp else { continue };
                match owned.get_mut(id.as_str()) {
                    Some(held) => *held = (*held).max(stamp),
                    // The session ended while its registration was on the
                    // way: take the entry back.
                    None => late_releases.push((id.clone(), stamp)),
                }
            }
        }
        if !late_releases.is_empty() {
            self.updates.lock().release.extend(late_releases);
            self.updates_ready.notify_one();
        }
        Ok(())
    }

    /// Sends queued registrations and releases to their homes.
    async fn send_updates(self: Arc<Self>) {
        loop {
            self.updates_ready.notified().await;
            let updates = std::mem::take(&mut *self.updates.lock());
            let view = self.synced.borrow().clone();
            let lease = self.own_lease(&view);
            // Without a home, the next view's sync registers them.
            let registers = by_home(&view, updates.register.into_iter().map(|id| (id, None)));
            let releases = by_home(&view, updates.release);
            for (home, registrations) in registers {
                if let Err(error) = self.register_at(&home, lease, &registrations).await {
                    warn!(%home, %error, sessions = registrations.len(), "cannot register sessions at their home; retrying");
                    self.retry_registrations(registrations);
                }
            }
            for (home, released) in releases {
                if let Err(error) = self.release_at(&home, &released).await {
                    // What stays is a stale entry: a connect elsewhere asks
                    // this node for a session it no longer has, and is told so.
                    debug!(%home, %error, "cannot release sessions at their home");
                }
            }
        }
    }

    fn retry_registrations(self: &Arc<Self>, registrations: Vec<(String, Option<Stamp>)>) {
        let directory = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REGISTER_RETRY).await;
            let still_pending: Vec<String> = {
                let owned = directory.owned.lock();
                registrations
                    .into_iter()
                    .map(|(id, _)| id)
                    .filter(|id| owned.get(id.as_str()) == Some(&Stamp::PENDING))
                    .collect()
            };
            if !still_pending.is_empty() {
                directory.updates.lock().register.extend(still_pending);
                directory.updates_ready.notify_one();
            }
        });
    }

    async fn release_at(
        &self,
        home: &NodeId,
        released: &[(String, Stamp)],
    ) -> Result<(), PeerCallError> {
        if *home == self.node {
            self.home.release(&self.node, released);
            return Ok(());
        }
        let mut peer = self.forwarder.client_of(home)?;
        let request = ReleaseClientsRequest {
            node: self.node.to_string(),
            clients: released
                .iter()
                .map(|(id, stamp)| ClientRegistration {
                    client_id: id.clone(),
                    stamp: Some(stamp_to_wire(*stamp)),
                })
                .collect(),
        };
        answer_within(
            "ReleaseClients",
            CALL_TIMEOUT,
            peer.release_clients(request),
        )
        .await?;
        Ok(())
    }
}

impl SessionDirectory for HomeClientDirectory {
    /// Claims the id at its home, then takes the session from the node the
    /// home names. The home orders concurrent claims of one id (the last
    /// wins, and takes the session from the one before), so no second
    /// round is needed unless the membership view changed under the claim.
    fn claim<'a>(&'a self, client_id: &'a str) -> Claim<'a> {
        Box::pin(async move {
            let give_up = tokio::time::Instant::now() + VIEW_AGREEMENT_PATIENCE;
            loop {
                let gate = self.gate.read().await;
                let view = self.synced.borrow().clone();
                match self.claim_at_home(&view, client_id).await {
                    Ok(Some(claimed)) => {
                        self.owned.lock().insert(client_id.into(), claimed.stamp);
                        drop(gate);
                        let previous = claimed.previous_owner?;
                        return moves::take_into(
                            &self.forwarder,
                            &self.node,
                            &previous,
                            client_id,
                            None,
                        )
                        .await;
                    }
                    Ok(None) => {
                        drop(gate);
                        let mut synced = self.synced.subscribe();
                        let changed = tokio::time::timeout_at(
                            give_up,
                            synced.wait_for(|v| v.hash != view.hash),
                        )
                        .await;
                        if changed.is_err() {
                            warn!(
                                client_id,
                                "this node's membership view is not its home's; serving the client locally"
                            );
                            return None;
                        }
                    }
                    Err(error) => {
                        warn!(client_id, %error, "cannot claim the client at its home; serving it locally");
                        return None;
                    }
                }
            }
        })
    }

    fn register(&self, client_id: &str) {
        {
            let mut owned = self.owned.lock();
            if owned.contains_key(client_id) {
                return;
            }
            owned.insert(client_id.into(), Stamp::PENDING);
        }
        self.updates.lock().register.push(client_id.to_string());
        self.updates_ready.notify_one();
    }

    fn locate<'a>(&'a self, client_id: &'a str) -> Located<'a> {
        Box::pin(async move {
            let view = self.synced.borrow().clone();
            let home = view
                .home_of(client_id)
                .map(|m| m.node.clone())
                .ok_or(PeerCallError::NoServingNode)?;
            if home == self.node {
                return Ok(self.home.owner_of(client_id).map(|node| node.to_string()));
            }
            let mut peer = self.forwarder.client_of(&home)?;
            let request = LocateClientRequest {
                client_id: client_id.to_string(),
            };
            let node = answer_within("LocateClient", CALL_TIMEOUT, peer.locate_client(request))
                .await?
                .node;
            Ok((!node.is_empty()).then_some(node))
        })
    }

    fn unregister(&self, client_id: &str) {
        let Some(stamp) = self.owned.lock().remove(client_id) else {
            return;
        };
        // A pending registration is taken back when its stamp comes.
        if stamp != Stamp::PENDING {
            self.updates
                .lock()
                .release
                .push((client_id.to_string(), stamp));
            self.updates_ready.notify_one();
        }
    }
}

/// Sends the connects' claims to their homes, batched per home.
async fn send_claims(
    node: NodeId,
    forwarder: Arc<PeerForwarder>,
    mut pending: mpsc::Receiver<RemoteClaim>,
) {
    let slots = Arc::new(Semaphore::new(PARALLEL_CLAIMS));
    let mut batch = Vec::with_capacity(CLAIM_BATCH);
    while pending.recv_many(&mut batch, CLAIM_BATCH).await > 0 {
        let mut groups: HashMap<(NodeId, i64, (u64, i64)), Vec<RemoteClaim>> = HashMap::new();
        for claim in batch.drain(..) {
            groups
                .entry((claim.home.clone(), claim.lease, claim.view))
                .or_default()
                .push(claim);
        }
        for ((home, lease, (view, label)), claims) in groups {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let request = ClaimClientsRequest {
                node: node.to_string(),
                lease,
                view,
                client_ids: claims.iter().map(|c| c.client_id.clone()).collect(),
                label,
            };
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                let answer = call_claim(&forwarder, &home, request).await;
                answer_claims(claims, answer);
                drop(slot);
            });
        }
    }
}

async fn call_claim(
    forwarder: &PeerForwarder,
    home: &str,
    request: ClaimClientsRequest,
) -> Result<ClaimAnswer, PeerCallError> {
    let expected = request.client_ids.len();
    let mut peer = forwarder.client_of(home)?;
    let response = answer_within("ClaimClients", CALL_TIMEOUT, peer.claim_clients(request)).await?;
    if response.retry {
        return Ok(ClaimAnswer::Retry);
    }
    if response.claims.len() != expected {
        return Err(PeerCallError::BadAnswer {
            call: "ClaimClients",
            problem: format!(
                "the home answered for {} clients, not {expected}",
                response.claims.len()
            ),
        });
    }
    Ok(ClaimAnswer::Claimed(
        response
            .claims
            .into_iter()
            .map(|c| Claimed {
                previous_owner: (!c.previous_owner.is_empty())
                    .then(|| Arc::from(c.previous_owner.as_str())),
                stamp: c.stamp.as_ref().map(stamp_from_wire).unwrap_or_default(),
            })
            .collect(),
    ))
}

fn answer_claims(claims: Vec<RemoteClaim>, answer: Result<ClaimAnswer, PeerCallError>) {
    match answer {
        Ok(ClaimAnswer::Retry) => {
            for claim in claims {
                let _ = claim.reply.send(Ok(None));
            }
        }
        Ok(ClaimAnswer::Claimed(claimed)) => {
            for (claim, claimed) in claims.into_iter().zip(claimed) {
                let _ = claim.reply.send(Ok(Some(claimed)));
            }
        }
        Err(error) => {
            for claim in claims {
                let _ = claim.reply.send(Err(error.clone()));
            }
        }
    }
}

/// `items` (client id first) grouped by the id's home in `view`; ids
/// without a home (no serving node) are left out.
fn by_home<T>(
    view: &View,
    items: impl IntoIterator<Item = (String, T)>,
) -> HashMap<NodeId, Vec<(String, T)>> {
    let mut groups: HashMap<NodeId, Vec<(String, T)>> = HashMap::new();
    for (id, item) in items {
        if let Some(home) = view.home_of(&id) {
            groups
                .entry(home.node.clone())
                .or_default()
                .push((id, item));
        }
    }
    groups
}

pub fn stamp_to_wire(stamp: Stamp) -> DirectoryStamp {
    DirectoryStamp {
        label: stamp.label,
        counter: stamp.counter,
    }
}

pub fn stamp_from_wire(stamp: &DirectoryStamp) -> Stamp {
    Stamp {
        label: stamp.label,
        counter: stamp.counter,
    }
}
