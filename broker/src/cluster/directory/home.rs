//! The home side of the client directory: for the client ids this node is
//! home to, which node has the session. Held in memory only; the owners
//! are the source of truth and register their sessions again whenever a
//! membership change gives an id a new home (`client_directory`).
//!
//! Claims are answered only in the caller's view, and only once every
//! member has re-registered its sessions in that view ("settled"): a home
//! that answered earlier could miss a session whose registration is on its
//! way, and let the same client id live on two nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::cluster::directory::view::{SharedView, View};
use crate::node::NodeId;

/// How long a claim waits for this home to reach the caller's view.
const VIEW_PATIENCE: Duration = Duration::from_secs(1);
/// How long a claim waits for every member to re-register; beyond it a
/// member is taken to be unreachable (it cannot be told where its clients
/// went either) and the home answers with what it knows.
const SETTLE_PATIENCE: Duration = Duration::from_secs(3);

/// Orders the registrations of one client id: the view label at the home
/// that issued it, then that home's counter. Labels grow from view to view,
/// so a claim made in a later view outranks whatever an earlier one left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub label: i64,
    pub counter: u64,
}

impl Stamp {
    /// Not registered yet (no home issued a stamp).
    pub const PENDING: Stamp = Stamp {
        label: 0,
        counter: 0,
    };
}

/// One claimed client id: who had it before, and the caller's new stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub previous_owner: Option<NodeId>,
    pub stamp: Stamp,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The caller's view is not this home's: claim again in the next view.
    Retry,
    Claimed(Vec<Claimed>),
}

struct Entry {
    owner: NodeId,
    lease: i64,
    stamp: Stamp,
}

struct HomeState {
    view: SharedView,
    entries: HashMap<Box<str>, Entry>,
    /// The view hash each member last said it re-registered in.
    synced: HashMap<NodeId, u64>,
    counter: u64,
    /// The view a settle timeout was already logged for.
    warned: u64,
}

impl HomeState {
    fn settled(&self) -> bool {
        self.view
            .members
            .iter()
            .all(|m| self.synced.get(&m.node) == Some(&self.view.hash))
    }

    /// A stamp above any this home issued and above `existing`.
    fn next_stamp(&mut self, existing: Option<Stamp>) -> Stamp {
        self.counter += 1;
        let fresh = Stamp {
            label: self.view.label,
            counter: self.counter,
        };
        match existing {
            Some(old) if old >= fresh => {
                self.counter = old.counter + 1;
                Stamp {
                    label: old.label,
                    counter: self.counter,
                }
            }
            _ => fresh,
        }
    }
}

pub struct HomeDirectory {
    node: NodeId,
    state: Mutex<HomeState>,
    /// Bumped whenever the view or a member's sync changes.
    changed: watch::Sender<u64>,
}

impl HomeDirectory {
    pub fn new(node: &str) -> Arc<HomeDirectory> {
        Arc::new(HomeDirectory {
            node: Arc::from(node),
            state: Mutex::new(HomeState {
                view: Arc::new(View::empty()),
                entries: HashMap::new(),
                synced: HashMap::new(),
                counter: 0,
                warned: 0,
            }),
            changed: watch::Sender::new(0),
        })
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// How many client ids this node is home to.
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves to a new view: forgets the ids it is no longer home to (their
    /// owners register them at the new home) and the entries of nodes that
    /// left or came back under a new lease (their sessions are gone).
    pub fn set_view(&self, view: SharedView) {
        {
            let mut state = self.state.lock();
            if state.view.hash == view.hash {
                state.view = view;
                return;
            }
            let own = &self.node;
            state.entries.retain(|id, entry| {
                view.has(&entry.owner, entry.lease)
                    && view.home_of(id).is_some_and(|home| home.node == *own)
            });
            state.synced.retain(|node, _| view.member(node).is_some());
            state.view = view;
        }
        self.bump();
    }

    /// `node` re-registered its sessions in the view of hash `view`.
    pub fn synced(&self, node: &str, view: u64) {
        self.state.lock().synced.insert(Arc::from(node), view);
        self.bump();
    }

    /// Makes `node` the owner of each of `client_ids` and says who had
    /// them, once this home is in the caller's view (hash `view`, seen at
    /// revision `label`) and settled.
    pub async fn claim(
        &self,
        node: &str,
        lease: i64,
        (view, label): (u64, i64),
        client_ids: &[String],
    ) -> ClaimAnswer {
        let start = tokio::time::Instant::now();
        let mut changed = self.changed.subscribe();
        loop {
            let patience = {
                let mut state = self.state.lock();
                let now = tokio::time::Instant::now();
                if state.view.hash != view {
                    // The caller is behind (a later view has a later label
                    // on every node), or this home did not catch up.
                    if label < state.view.label || now >= start + VIEW_PATIENCE {
                        return ClaimAnswer::Retry;
                    }
                    VIEW_PATIENCE
                } else if state.settled() {
                    break;
                } else if now >= start + SETTLE_PATIENCE {
                    if state.warned != view {
                        state.warned = view;
                        let missing: Vec<String> = state
                            .view
                            .members
                            .iter()
                            .filter(|m| state.synced.get(&m.node) != Some(&view))
                            .map(|m| m.node.to_string())
                            .collect();
                        warn!(
                            ?missing,
                            "members did not re-register their clients in time; answering claims with what this home knows"
                        );
                    }
                    break;
                } else {
                    SETTLE_PATIENCE
                }
            };
            let _ = tokio::time::timeout_at(start + patience, changed.changed()).await;
        }
        let mut state = self.state.lock();
        if state.view.hash != view {
            return ClaimAnswer::Retry;
        }
        let node: NodeId = Arc::from(node);
        let claimed = client_ids
            .iter()
            .map(|id| {
                let existing = state.entries.get(id.as_str()).map(|e| e.stamp);
                let stamp = state.next_stamp(existing);
                let previous = state.entries.insert(
                    id.as_str().into(),
                    Entry {
                        owner: node.clone(),
                        lease,
                        stamp,
                    },
                );
                Claimed {
                    previous_owner: previous.map(|e| e.owner).filter(|owner| *owner != node),
                    stamp,
                }
            })
            .collect();
        ClaimAnswer::Claimed(claimed)
    }

    /// Records that `node` owns these sessions. A registration without a
    /// stamp takes the id whatever this home knew (a session adopted, or
    /// served while the home was unreachable) and gets a new stamp; one
    /// with a stamp (a re-registration after a membership change) stays
    /// only if no newer one is here. Returns the stamp held for `node`.
    ///
    /// Waits (a bounded while) until this home's view has `node` under
    /// `lease`. A node that came back under a new lease registers in a view
    /// this home may not have reached: stored at once, the entries would be
    /// dropped by the view that still shows the old lease or none (it says
    /// the owner's sessions are gone), and the owner, already done with
    /// that view, would never register them again.
    pub async fn register(
        &self,
        node: &str,
        lease: i64,
        registrations: &[(String, Option<Stamp>)],
    ) -> Vec<Option<Stamp>> {
        self.wait_for_member(node, lease).await;
        let node: NodeId = Arc::from(node);
        let mut state = self.state.lock();
        registrations
            .iter()
            .map(|(id, stamp)| {
                let existing = state.entries.get(id.as_str()).map(|e| e.stamp);
                let stamp = match stamp {
                    None => state.next_stamp(existing),
                    Some(stamp) if existing.is_none_or(|old| old < *stamp) => *stamp,
                    Some(_) => return None,
                };
                state.entries.insert(
                    id.as_str().into(),
                    Entry {
                        owner: node.clone(),
                        lease,
                        stamp,
                    },
                );
                Some(stamp)
            })
            .collect()
    }

    /// Waits until this home's view has `node` under `lease`, or
    /// `VIEW_PATIENCE` passed (a home ahead of the caller, which already
    /// saw it go, never will; the next view's sync registers again).
    async fn wait_for_member(&self, node: &str, lease: i64) {
        let deadline = tokio::time::Instant::now() + VIEW_PATIENCE;
        let mut changed = self.changed.subscribe();
        while !self.state.lock().view.has(node, lease) {
            let woken = tokio::time::timeout_at(deadline, changed.changed()).await;
            if !matches!(woken, Ok(Ok(()))) {
                debug!(
                    node,
                    lease, "registering sessions of a node this home's view does not show"
                );
                return;
            }
        }
    }

    /// Forgets the ids `node` no longer has, unless a newer owner's entry
    /// replaced its own.
    pub fn release(&self, node: &str, releases: &[(String, Stamp)]) {
        let mut state = self.state.lock();
        for (id, stamp) in releases {
            let ours = state
                .entries
                .get(id.as_str())
                .is_some_and(|e| *e.owner == *node && e.stamp == *stamp);
            if ours {
                state.entries.remove(id.as_str());
            }
        }
    }

    /// The node this home knows has the session of `client_id`.
    pub fn owner_of(&self, client_id: &str) -> Option<NodeId> {
        self.state
            .lock()
            .entries
            .get(client_id)
            .map(|e| e.owner.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::directory::view::Member;

    fn view(label: i64, nodes: &[(&str, i64)]) -> SharedView {
        Arc::new(View::new(
            label,
            nodes
                .iter()
                .map(|(node, lease)| Member {
                    node: Arc::from(*node),
                    lease: *lease,
                    serving: true,
                })
                .collect(),
        ))
    }

    /// The only serving member of its view (every id is its own), settled.
    /// The nodes the tests register from are members that do not serve
    /// (draining, say): a home waits for a registering node to show up in
    /// its view.
    fn lone_home() -> (Arc<HomeDirectory>, SharedView) {
        let home = HomeDirectory::new("h");
        let mut members = vec![Member {
            node: Arc::from("h"),
            lease: 1,
            serving: true,
        }];
        members.extend(["x", "y", "adopter"].map(|node| Member {
            node: Arc::from(node),
            lease: 1,
            serving: false,
        }));
        let v = Arc::new(View::new(10, members));
        home.set_view(v.clone());
        for member in &v.members {
            home.synced(&member.node, v.hash);
        }
        (home, v)
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn claimed(answer: ClaimAnswer) -> Vec<Claimed> {
        match answer {
            ClaimAnswer::Claimed(claims) => claims,
            ClaimAnswer::Retry => panic!("unexpected retry"),
        }
    }

    #[tokio::test]
    async fn the_last_claim_wins_and_learns_who_had_the_id() {
        let (home, v) = lone_home();
        let first = claimed(home.claim("a", 1, (v.hash, v.label), &ids(&["c"])).await);
        assert_eq!(first[0].previous_owner, None);
        let second = claimed(home.claim("b", 1, (v.hash, v.label), &ids(&["c"])).await);
        assert_eq!(second[0].previous_owner.as_deref(), Some("a"));
        assert!(second[0].stamp > first[0].stamp);
        // A reconnect on the same node: nobody to take over from.
        let third = claimed(home.claim("b", 1, (v.hash, v.label), &ids(&["c"])).await);
        assert_eq!(third[0].previous_owner, None);
    }

    #[tokio::test]
    async fn a_claim_in_another_view_is_sent_back() {
        let (home, _) = lone_home();
        assert_eq!(
            home.claim("a", 1, (12345, 99), &ids(&["c"])).await,
            ClaimAnswer::Retry
        );
    }

    #[tokio::test]
    async fn claims_wait_until_every_member_has_re_registered() {
        let home = HomeDirectory::new("h");
        let v = view(10, &[("h", 1), ("x", 1)]);
        home.set_view(v.clone());
        home.synced("h", v.hash);
        // The id is homed at h only if rendezvous says so; pick one that is.
        let id = (0..)
            .map(|i| format!("c{i}"))
            .find(|id| v.home_of(id).is_some_and(|m| &*m.node == "h"))
            .unwrap_or_default();
        let hash = v.hash;
        let pending = {
            let home = home.clone();
            let id = id.clone();
            tokio::spawn(async move { home.claim("b", 1, (hash, 10), &[id]).await })
        };
        tokio::task::yield_now().await;
        // x's re-registration arrives before its "synced": the claim that
        // waited learns x had the client.
        assert_eq!(
            home.register(
                "x",
                1,
                &[(
                    id.clone(),
                    Some(Stamp {
                        label: 3,
                        counter: 9
                    })
                )]
            )
            .await,
            vec![Some(Stamp {
                label: 3,
                counter: 9
            })]
        );
        home.synced("x", hash);
        let answer = claimed(pending.await.unwrap_or(ClaimAnswer::Retry));
        assert_eq!(answer[0].previous_owner.as_deref(), Some("x"));
        assert!(
            answer[0].stamp
                > Stamp {
                    label: 3,
                    counter: 9
                }
        );
    }

    #[tokio::test]
    async fn a_stale_re_registration_or_release_does_not_undo_a_newer_claim() {
        let (home, v) = lone_home();
        let old = claimed(home.claim("x", 1, (v.hash, v.label), &ids(&["c"])).await)[0].stamp;
        let new = claimed(home.claim("y", 1, (v.hash, v.label), &ids(&["c"])).await)[0].stamp;
        assert_eq!(
            home.register("x", 1, &[("c".into(), Some(old))]).await,
            vec![None]
        );
        home.release("x", &[("c".into(), old)]);
        assert_eq!(home.owner_of("c").as_deref(), Some("y"));
        home.release("y", &[("c".into(), new)]);
        assert_eq!(home.owner_of("c"), None);
    }

    #[tokio::test]
    async fn an_unstamped_registration_takes_the_id() {
        let (home, v) = lone_home();
        claimed(home.claim("x", 1, (v.hash, v.label), &ids(&["c"])).await);
        let stamps = home.register("adopter", 1, &[("c".into(), None)]).await;
        assert!(stamps[0].is_some());
        assert_eq!(home.owner_of("c").as_deref(), Some("adopter"));
    }

    #[tokio::test]
    async fn a_new_view_forgets_departed_owners_and_ids_homed_elsewhere() {
        let (home, v) = lone_home();
        home.register("x", 1, &[("gone".into(), None)]).await;
        claimed(
            home.claim(
                "h",
                1,
                (v.hash, v.label),
                &ids(&["c0", "c1", "c2", "c3", "c4", "c5"]),
            )
            .await,
        );
        // x left; n2 joined and is home to some of h's ids.
        let next = view(20, &[("h", 1), ("n2", 1)]);
        home.set_view(next.clone());
        assert_eq!(home.owner_of("gone"), None);
        for i in 0..6 {
            let id = format!("c{i}");
            let homed_here = next.home_of(&id).is_some_and(|m| &*m.node == "h");
            assert_eq!(home.owner_of(&id).is_some(), homed_here, "{id}");
        }
    }

    /// n2 came back under lease 2 and re-registers before this home saw
    /// the view without its old lease: the entries must outlive that view.
    #[tokio::test]
    async fn a_registration_ahead_of_the_homes_view_waits_for_it() {
        let home = HomeDirectory::new("h");
        home.set_view(view(10, &[("h", 1), ("n2", 1)]));
        let registering = {
            let home = home.clone();
            tokio::spawn(async move { home.register("n2", 2, &[("c".into(), None)]).await })
        };
        tokio::task::yield_now().await;
        home.set_view(view(11, &[("h", 1)]));
        home.set_view(view(12, &[("h", 1), ("n2", 2)]));
        let stamps = registering.await.unwrap_or_default();
        assert!(stamps.first().is_some_and(Option::is_some));
        assert_eq!(home.owner_of("c").as_deref(), Some("n2"));
    }
}
