//! Nodes that lapsed: a node whose lease ran out while it was serving
//! (frozen, partitioned from etcd, killed) loses its record and every
//! route at once, by etcd's hand, not its own. Were its routes dropped from
//! the index, a publish for its subscribers would find no target and be
//! acknowledged as if nobody wanted it: success for a message nobody got.
//! So its routes are kept, as *suspect*, for `peer_lapse_grace_secs`: a
//! publish still targets the node, finds no link to it, and its publisher
//! is told (v5 0x80; 3.1.1: no ack and a close). A node that leaves on
//! purpose drains first, so its record says `draining` when it goes, and
//! its routes go with it.
//!
//! `nodes/` and `routes/` are two watches with no order between them, so a
//! route deletion cannot be judged when it arrives: it stays in the index,
//! *undecided*, until the `nodes/` mirror has reached its revision (a
//! resolver task asks; milliseconds), and is then kept (its node lapsed at
//! or before that revision) or removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a route deletion does to the index now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Its node lapsed: the route stays, suspect.
    Keep,
    /// Not known yet: the route stays until the resolver decides.
    Wait,
}

#[derive(Debug, Default)]
pub struct Lapses {
    /// Node -> the revision its record vanished at while it was serving.
    lapsed: HashMap<Arc<str>, i64>,
    /// Route deletions waiting for the `nodes/` mirror: (node, route) ->
    /// revision. A map: a route written again is taken out by key, and
    /// churn can leave many waiting for a moment.
    undecided: HashMap<(Arc<str>, String), i64>,
    /// Routes kept for lapsed nodes, and until when.
    suspect: HashMap<Arc<str>, (Instant, HashSet<String>)>,
    grace: Duration,
}

impl Lapses {
    pub fn new(grace: Duration) -> Lapses {
        Lapses {
            grace,
            ..Lapses::default()
        }
    }

    /// `node`'s route was deleted from etcd at `revision`.
    pub fn route_deleted(&mut self, node: &Arc<str>, route: &str, revision: i64) -> Decision {
        match self.lapsed.get(node) {
            Some(lapsed_at) if *lapsed_at <= revision => {
                self.keep(node, route.to_string());
                Decision::Keep
            }
            _ => {
                self.undecided
                    .insert((node.clone(), route.to_string()), revision);
                Decision::Wait
            }
        }
    }

    /// `node` (re)wrote `route`: it is a route like any other again.
    pub fn route_put(&mut self, node: &Arc<str>, route: &str) {
        if let Some((_, routes)) = self.suspect.get_mut(node) {
            routes.remove(route);
        }
        self.undecided.remove(&(node.clone(), route.to_string()));
    }

    /// `node`'s record vanished at `revision` while it was serving.
    pub fn lapse(&mut self, node: &Arc<str>, revision: i64) {
        self.lapsed.insert(node.clone(), revision);
        let now_suspect: Vec<(Arc<str>, String)> = self
            .undecided
            .iter()
            .filter(|((n, _), at)| n == node && **at >= revision)
            .map(|(key, _)| key.clone())
            .collect();
        for key in now_suspect {
            self.undecided.remove(&key);
            self.keep(&key.0, key.1);
        }
    }

    /// `node` has a record again: it is back (its routes come back as it
    /// rewrites them; those it does not are dropped when the grace ends).
    pub fn returned(&mut self, node: &Arc<str>) {
        self.lapsed.remove(node);
    }

    fn keep(&mut self, node: &Arc<str>, route: String) {
        let until = Instant::now() + self.grace;
        self.suspect
            .entry(node.clone())
            .or_insert_with(|| (until, HashSet::new()))
            .1
            .insert(route);
    }

    /// The highest revision an undecided deletion waits for.
    pub fn waiting_for(&self) -> Option<i64> {
        self.undecided.values().copied().max()
    }

    /// Whether `node`'s routes are kept for it (it lapsed): a share group
    /// prefers its other members.
    pub fn is_suspect(&self, node: &str) -> bool {
        self.suspect.contains_key(node)
    }

    pub fn any_suspect(&self) -> bool {
        !self.suspect.is_empty()
    }

    /// When the first suspect routes are due to go.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.suspect.values().map(|(until, _)| *until).min()
    }

    /// Decides the deletions up to `revision` (the `nodes/` mirror has
    /// reached it, or stopped being waited for) and drops suspect routes
    /// whose grace ended; returns the routes to remove from the index.
    pub fn resolve(&mut self, revision: i64, now: Instant) -> Vec<(Arc<str>, String)> {
        let due: Vec<((Arc<str>, String), i64)> = self
            .undecided
            .iter()
            .filter(|(_, at)| **at <= revision)
            .map(|(key, at)| (key.clone(), *at))
            .collect();
        let mut remove = Vec::new();
        for ((node, route), at) in due {
            self.undecided.remove(&(node.clone(), route.clone()));
            match self.lapsed.get(&node) {
                Some(lapsed_at) if *lapsed_at <= at => self.keep(&node, route),
                _ => remove.push((node, route)),
            }
        }
        let expired: Vec<Arc<str>> = self
            .suspect
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(node, _)| node.clone())
            .collect();
        for node in expired {
            if let Some((_, routes)) = self.suspect.remove(&node) {
                remove.extend(routes.into_iter().map(|route| (node.clone(), route)));
            }
            self.lapsed.remove(&node);
        }
        remove
    }

    /// Every route the index must hold beyond etcd's (a resync keeps
    /// them): suspect and undecided ones.
    pub fn kept(&self) -> Vec<(Arc<str>, String)> {
        let suspect = self
            .suspect
            .iter()
            .flat_map(|(node, (_, routes))| routes.iter().map(|r| (node.clone(), r.clone())));
        let undecided = self.undecided.keys().cloned();
        suspect.chain(undecided).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_deletion_waits_and_is_removed_when_its_node_did_not_lapse() {
        let mut lapses = Lapses::new(Duration::from_secs(60));
        let n = node("n3");
        assert_eq!(lapses.route_deleted(&n, "a/#", 10), Decision::Wait);
        assert_eq!(lapses.waiting_for(), Some(10));
        assert!(
            lapses.resolve(9, Instant::now()).is_empty(),
            "not reached yet"
        );
        assert_eq!(
            lapses.resolve(10, Instant::now()),
            vec![(n, "a/#".to_string())]
        );
        assert_eq!(lapses.waiting_for(), None);
    }

    #[test]
    fn routes_of_a_lapsed_node_are_kept_until_the_grace_ends_or_they_come_back() {
        let mut lapses = Lapses::new(Duration::from_secs(60));
        let n = node("n3");
        // The route deletion arrives before the node's, then after it.
        assert_eq!(lapses.route_deleted(&n, "a/#", 10), Decision::Wait);
        lapses.lapse(&n, 10);
        assert_eq!(lapses.route_deleted(&n, "b", 10), Decision::Keep);
        assert!(lapses.resolve(10, Instant::now()).is_empty(), "both kept");
        assert_eq!(lapses.kept().len(), 2);
        lapses.returned(&n);
        lapses.route_put(&n, "a/#");
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(lapses.resolve(10, later), vec![(n, "b".to_string())]);
        assert!(lapses.kept().is_empty());
    }

    #[test]
    fn a_deletion_before_the_lapse_is_not_kept() {
        let mut lapses = Lapses::new(Duration::from_secs(60));
        let n = node("n3");
        lapses.route_deleted(&n, "unsubscribed", 5);
        lapses.lapse(&n, 10);
        assert_eq!(
            lapses.resolve(10, Instant::now()),
            vec![(n, "unsubscribed".to_string())]
        );
    }
}
