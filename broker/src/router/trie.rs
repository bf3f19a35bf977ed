//! The local subscription index: a trie over topic levels.
//!
//! Each node holds the plain subscribers of the filter that ends there and
//! the shared-subscription groups of that filter. Matching walks literal,
//! `+` and `#` children; a `$` first level is never matched by a wildcard
//! (MQTT 5.0 §4.7.2).

/// Topic levels are hashed on every publish: foldhash is several times
/// faster than the standard SipHash, and seeded per map.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use smallvec::SmallVec;
use starling_codec::SubscriptionOptions;

use crate::message::{SessionId, ShareKey};
use crate::session::mailbox::Mailbox;

/// One subscription of one session.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub mailbox: Arc<Mailbox>,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// The members of one `$share/<group>/<filter>`.
#[derive(Debug)]
pub struct ShareGroup {
    pub key: Arc<ShareKey>,
    members: Vec<(SessionId, Subscriber)>,
    /// Round-robin position; atomic because matching runs under a read lock.
    cursor: AtomicUsize,
}

impl ShareGroup {
    /// The member the next message goes to: round-robin, skipping members
    /// whose client is offline while an online one exists.
    pub fn pick(&self, exclude: Option<SessionId>) -> Option<&(SessionId, Subscriber)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let eligible = |m: &&(SessionId, Subscriber)| Some(m.0) != exclude;
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .filter(eligible)
            .find(|m| m.1.mailbox.is_online())
            .or_else(|| {
                (0..n)
                    .map(|i| &self.members[(start + i) % n])
                    .find(eligible)
            })
    }
}

#[derive(Debug, Default)]
struct Node {
    children: Children,
    subscribers: HashMap<SessionId, Subscriber>,
    groups: HashMap<Box<str>, ShareGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.groups.is_empty()
    }

    fn has_subscriptions(&self) -> bool {
        !self.subscribers.is_empty() || !self.groups.is_empty()
    }
}

/// The levels below a node. `+` and `#` are looked for at every level of
/// every publish: kept apart from the literal levels, finding them (or
/// not) costs no hashing — two of every three lookups of a topic's walk.
#[derive(Debug, Default)]
struct Children {
    literal: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    hash: Option<Box<Node>>,
}

impl Children {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.plus.is_none() && self.hash.is_none()
    }

    /// The child for a filter's `level` (`+` and `#` are the wildcards).
    fn get_mut(&mut self, level: &str) -> Option<&mut Node> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.literal.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &str) -> &mut Node {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self.literal.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.literal.remove(level);
            }
        }
    }
}

/// What a match found: plain subscribers and the shared groups to pick from.
/// Inline capacity covers the common publishes without a heap allocation.
#[derive(Default)]
pub struct Matches<'a> {
    pub subscribers: SmallVec<[(SessionId, &'a Subscriber); 8]>,
    pub groups: SmallVec<[&'a ShareGroup; 2]>,
}

impl Matches<'_> {
    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.groups.is_empty()
    }

    pub fn clear(&mut self) {
        self.subscribers.clear();
        self.groups.clear();
    }
}

/// What an insert or removal changed, for the cluster route store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The session already had this subscription (insert) / had it (remove).
    pub existed: bool,
    /// The filter gained its first / lost its last subscription of any kind.
    pub filter_edge: bool,
    /// The route changed: the filter's plain subscriptions (for a plain
    /// subscription) or the share group (for a shared one) gained its first
    /// / lost its last member on this node.
    pub route_edge: bool,
}

#[derive(Debug, Default)]
pub struct Trie {
    root: Node,
    filters: usize,
}

impl Trie {
    /// Number of distinct filters with at least one subscription.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    pub fn insert(
        &mut self,
        filter: &str,
        group: Option<&str>,
        session: SessionId,
        subscriber: Subscriber,
    ) -> Change {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_or_insert(level);
        }
        let was_used = node.has_subscriptions();
        let route_existed = match group {
            None => !node.subscribers.is_empty(),
            Some(group) => node.groups.contains_key(group),
        };
        let existed = match group {
            None => node.subscribers.insert(session, subscriber).is_some(),
            Some(group) => {
                let entry = node
                    .groups
                    .entry(group.into())
                    .or_insert_with(|| ShareGroup {
                        key: Arc::new(ShareKey {
                            group: group.into(),
                            filter: filter.into(),
                        }),
                        members: Vec::new(),
                        cursor: AtomicUsize::new(0),
                    });
                match entry.members.iter_mut().find(|m| m.0 == session) {
                    Some(member) => {
                        member.1 = subscriber;
                        true
                    }
                    None => {
                        entry.members.push((session, subscriber));
                        false
                    }
                }
            }
        };
        if !was_used {
            self.filters += 1;
        }
        Change {
            existed,
            filter_edge: !was_used,
            route_edge: !route_existed,
        }
    }

    pub fn remove(&mut self, filter: &str, group: Option<&str>, session: SessionId) -> Change {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut change = Change {
            existed: false,
            filter_edge: false,
            route_edge: false,
        };
        remove_at(&mut self.root, &levels, group, session, &mut change);
        if change.filter_edge {
            self.filters -= 1;
        }
        change
    }

    /// Appends every subscription matching `topic` to `out`.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Matches<'a>) {
        let levels = starling_codec::topic::levels(topic);
        let dollar = topic.starts_with('$');
        collect(&self.root, levels, true, dollar, out);
    }
}

fn remove_at(
    node: &mut Node,
    levels: &[&str],
    group: Option<&str>,
    session: SessionId,
    change: &mut Change,
) {
    match levels.split_first() {
        None => {
            change.existed = match group {
                None => node.subscribers.remove(&session).is_some(),
                Some(group) => match node.groups.get_mut(group) {
                    Some(g) => {
                        let before = g.members.len();
                        g.members.retain(|m| m.0 != session);
                        let removed = g.members.len() != before;
                        if g.members.is_empty() {
                            node.groups.remove(group);
                        }
                        removed
                    }
                    None => false,
                },
            };
            change.filter_edge = change.existed && !node.has_subscriptions();
            change.route_edge = change.existed
                && match group {
                    None => node.subscribers.is_empty(),
                    Some(group) => !node.groups.contains_key(group),
                };
        }
        Some((level, rest)) => {
            if let Some(child) = node.children.get_mut(level) {
                remove_at(child, rest, group, session, change);
                if child.is_empty() {
                    node.children.remove(level);
                }
            }
        }
    }
}

fn collect<'a, 'b>(
    node: &'a Node,
    mut levels: impl Iterator<Item = &'b str> + Clone,
    first: bool,
    dollar: bool,
    out: &mut Matches<'a>,
) {
    let wildcards_allowed = !(first && dollar);
    match levels.next() {
        None => {
            add(node, out);
            // "a/#" also matches "a" (MQTT 5.0 §4.7.1.2).
            if let Some(hash) = &node.children.hash {
                add(hash, out);
            }
        }
        Some(level) => {
            if let Some(child) = node.children.literal.get(level) {
                collect(child, levels.clone(), false, dollar, out);
            }
            if wildcards_allowed {
                if let Some(plus) = &node.children.plus {
                    collect(plus, levels, false, dollar, out);
                }
                if let Some(hash) = &node.children.hash {
                    add(hash, out);
                }
            }
        }
    }
}

fn add<'a>(node: &'a Node, out: &mut Matches<'a>) {
    out.subscribers
        .extend(node.subscribers.iter().map(|(id, s)| (*id, s)));
    out.groups.extend(node.groups.values());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DropPolicy;

    fn sub(id: u64) -> (SessionId, Subscriber) {
        (
            SessionId(id),
            Subscriber {
                mailbox: Arc::new(Mailbox::new(SessionId(id), 10, DropPolicy::Oldest, true)),
                options: SubscriptionOptions::default(),
                identifier: None,
            },
        )
    }

    fn matched(trie: &Trie, topic: &str) -> Vec<u64> {
        let mut m = Matches::default();
        trie.matches(topic, &mut m);
        let mut ids: Vec<u64> = m.subscribers.iter().map(|(id, _)| id.0).collect();
        ids.sort();
        ids
    }

    #[test]
    fn wildcards_match_per_section_4_7() {
        let mut t = Trie::default();
        for (i, f) in ["a/b", "a/+", "a/#", "#", "+/b", "+", "$SYS/#", "/+"]
            .iter()
            .enumerate()
        {
            let (id, s) = sub(i as u64);
            t.insert(f, None, id, s);
        }
        assert_eq!(matched(&t, "a/b"), vec![0, 1, 2, 3, 4]);
        assert_eq!(matched(&t, "a"), vec![2, 3, 5]);
        assert_eq!(matched(&t, "$SYS/x"), vec![6]);
        assert_eq!(matched(&t, "/x"), vec![3, 7]);
        assert_eq!(matched(&t, "a/b/c"), vec![2, 3]);
    }

    #[test]
    fn filter_edges_are_reported_once() {
        let mut t = Trie::default();
        let (a, sa) = sub(1);
        let (b, sb) = sub(2);
        assert!(t.insert("x/+", None, a, sa.clone()).filter_edge);
        assert!(!t.insert("x/+", None, b, sb).filter_edge);
        assert!(t.insert("x/+", None, a, sa).existed);
        assert_eq!(t.filter_count(), 1);
        assert!(!t.remove("x/+", None, a).filter_edge);
        let last = t.remove("x/+", None, b);
        assert!(last.existed && last.filter_edge);
        assert_eq!(t.filter_count(), 0);
        assert!(t.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn wildcard_levels_are_kept_apart_and_pruned() {
        let mut t = Trie::default();
        for (i, f) in ["a/+", "a/#", "a/+/#", "+/+", "#"].iter().enumerate() {
            let (id, s) = sub(i as u64);
            t.insert(f, None, id, s);
        }
        // "a/+/#" matches "a/b" too (MQTT 5.0 §4.7.1.2).
        assert_eq!(matched(&t, "a/b"), [0, 1, 2, 3, 4]);
        assert_eq!(matched(&t, "a/b/c"), [1, 2, 4]);
        t.remove("a/+", None, SessionId(0));
        assert_eq!(matched(&t, "a/b"), [1, 2, 3, 4]);
        assert_eq!(matched(&t, "a/b/c"), [1, 2, 4]);
        for (i, f) in ["a/#", "a/+/#", "+/+", "#"].iter().enumerate() {
            assert!(t.remove(f, None, SessionId(i as u64 + 1)).existed, "{f}");
        }
        assert!(t.root.is_empty(), "wildcard children are pruned too");
    }

    #[test]
    fn shared_group_round_robins() {
        let mut t = Trie::default();
        for i in 0..3 {
            let (id, s) = sub(i);
            s.mailbox.set_online(true);
            t.insert("s/#", Some("g"), id, s);
        }
        let mut m = Matches::default();
        t.matches("s/1", &mut m);
        assert_eq!(m.groups.len(), 1);
        let picks: Vec<u64> = (0..6)
            .filter_map(|_| m.groups[0].pick(None).map(|p| p.0.0))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_ne!(
            m.groups[0].pick(Some(SessionId(1))).map(|p| p.0),
            Some(SessionId(1))
        );
    }
}
