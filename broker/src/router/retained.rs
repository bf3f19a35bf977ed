//! Retained messages, indexed by topic level so that a wildcard
//! subscription finds its retained messages without scanning them all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::message::Message;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    count: usize,
    /// Payload and topic bytes of the messages held (`weight`).
    bytes: usize,
    /// Bumped by every change: a reader can tell that nothing changed since
    /// it last looked without looking again.
    version: u64,
}

impl Drop for Node {
    /// Takes a subtree apart level by level: the derived drop would recurse
    /// once per level of its deepest topic (the store's, or a branch that
    /// `remove` cuts off).
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
        }
    }
}

/// What a retained message counts against `max_retained_bytes`.
fn weight(message: &Message) -> usize {
    message.payload.len() + message.topic.len()
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.count
    }

    /// Payload and topic bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether storing `message` keeps the store within `max_messages` and
    /// `max_bytes` (a clear always does).
    pub fn admits(&self, message: &Message, max_messages: usize, max_bytes: usize) -> bool {
        if message.payload.is_empty() {
            return true;
        }
        let (count, bytes) = match self.find(&message.topic) {
            Some(old) => (self.count, self.bytes - weight(old) + weight(message)),
            None => (self.count + 1, self.bytes + weight(message)),
        };
        count <= max_messages && bytes <= max_bytes
    }

    /// The message stored for `topic`, expired or not.
    fn find(&self, topic: &str) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores, replaces, or (empty payload) clears the retained message of
    /// the message's topic (MQTT 5.0 §3.3.1.3).
    pub fn set(&mut self, message: Arc<Message>) {
        if message.payload.is_empty() {
            self.remove(&message.topic);
            return;
        }
        self.version += 1;
        let topic = message.topic.clone();
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        self.bytes += weight(&message);
        match node.message.replace(message) {
            Some(old) => self.bytes -= weight(&old),
            None => self.count += 1,
        }
    }

    /// Every unexpired retained message whose topic matches `filter`.
    pub fn matching(&self, filter: &str, now: Instant, out: &mut Vec<Arc<Message>>) {
        let levels: Vec<&str> = filter.split('/').collect();
        // An explicit stack, not recursion: a walk's depth is never the
        // stack's business, whatever the topics stored.
        let mut stack: Vec<(&Node, usize)> = vec![(&self.root, 0)];
        while let Some((node, at)) = stack.pop() {
            let first = at == 0;
            // A leading wildcard does not match "$" topics (MQTT-4.7.2-1).
            let visible = |name: &str| !(first && name.starts_with('$'));
            match levels.get(at).copied() {
                None => push_live(node, now, out),
                Some("#") => {
                    // "a/#" includes "a" itself.
                    if !first {
                        push_live(node, now, out);
                    }
                    for (name, child) in &node.children {
                        if visible(name) {
                            collect_all(child, now, out);
                        }
                    }
                }
                Some("+") => {
                    for (name, child) in &node.children {
                        if visible(name) {
                            stack.push((child, at + 1));
                        }
                    }
                }
                Some(literal) => {
                    if let Some(child) = node.children.get(literal) {
                        stack.push((child, at + 1));
                    }
                }
            }
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Takes `next`'s messages, and a version newer than this one's (a
    /// reader that compares versions must see the change); returns the
    /// messages it had.
    pub fn replace_with(&mut self, mut next: RetainedStore) -> RetainedStore {
        next.version = self.version + 1;
        std::mem::replace(self, next)
    }

    /// Clears the retained message of `topic`, if any, and the levels
    /// that held nothing else.
    pub fn remove(&mut self, topic: &str) {
        self.version += 1;
        // First a look down the path: the shallowest level from which it
        // holds nothing but this message is where it is cut off. Both walks
        // are loops: the depth of a topic is never the stack's business.
        let mut node = &self.root;
        let mut cut_at = None;
        let levels = topic.split('/').count();
        for (at, level) in topic.split('/').enumerate() {
            let Some(child) = node.children.get(level) else {
                return;
            };
            let leaf = at + 1 == levels;
            let only_this = if leaf {
                child.children.is_empty()
            } else {
                child.message.is_none() && child.children.len() == 1
            };
            cut_at = match (only_this, cut_at) {
                (false, _) => None,
                (true, None) => Some(at),
                (true, kept) => kept,
            };
            node = child;
        }
        let Some(old) = &node.message else {
            return;
        };
        self.count -= 1;
        self.bytes -= weight(old);
        let mut node = &mut self.root;
        for (at, level) in topic.split('/').enumerate() {
            if cut_at == Some(at) {
                node.children.remove(level);
                return;
            }
            let Some(child) = node.children.get_mut(level) else {
                return;
            };
            node = child;
        }
        node.message = None;
    }

    /// The unexpired retained message of `topic` (a topic name, not a
    /// filter).
    pub fn get(&self, topic: &str, now: Instant) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref().filter(|m| !m.is_expired(now))
    }

    /// Drops expired messages; returns how many.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        let mut expired = Vec::new();
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some(message) = &node.message
                && message.is_expired(now)
            {
                expired.push(message.topic.clone());
            }
            stack.extend(node.children.values());
        }
        for topic in &expired {
            self.remove(topic);
        }
        expired.len()
    }
}

/// Every unexpired message at or below `node`.
fn collect_all(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>) {
    let mut stack = vec![node];
    while let Some(node) = stack.pop() {
        push_live(node, now, out);
        stack.extend(node.children.values());
    }
}

fn push_live(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>) {
    if let Some(m) = &node.message
        && !m.is_expired(now)
    {
        out.push(m.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use starling_codec::{PublishProperties, QoS};

    fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            topic.into(),
            Bytes::from_static(payload.as_bytes()),
            QoS::AtMostOnce,
            true,
            PublishProperties::default(),
            None,
        ))
    }

    fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(filter, Instant::now(), &mut out);
        let mut t: Vec<String> = out.iter().map(|m| m.topic.to_string()).collect();
        t.sort();
        t
    }

    #[test]
    fn get_finds_a_topics_current_message_and_version_counts_changes() {
        let mut s = RetainedStore::default();
        let now = Instant::now();
        assert_eq!(s.version(), 0);
        s.set(msg("a/b", "1"));
        s.set(msg("a/b", "2"));
        assert_eq!(s.version(), 2);
        assert_eq!(s.get("a/b", now).map(|m| &m.payload[..]), Some(&b"2"[..]));
        assert!(
            s.get("a", now).is_none(),
            "a level with no message of its own"
        );
        assert!(s.get("a/b/c", now).is_none());
        s.set(msg("a/b", ""));
        assert_eq!(s.version(), 3);
        assert!(s.get("a/b", now).is_none());
    }

    #[test]
    fn set_replace_clear() {
        let mut s = RetainedStore::default();
        s.set(msg("a/b", "1"));
        s.set(msg("a/b", "2"));
        assert_eq!(s.len(), 1);
        let mut out = Vec::new();
        s.matching("a/b", Instant::now(), &mut out);
        assert_eq!(out[0].payload, Bytes::from_static(b"2"));
        s.set(msg("a/b", ""));
        assert_eq!(s.len(), 0);
        assert!(topics(&s, "#").is_empty());
    }

    #[test]
    fn removing_prunes_only_levels_that_hold_nothing_else() {
        let mut s = RetainedStore::default();
        for t in ["a/b/c/d", "a/b", "a/x"] {
            s.set(msg(t, "v"));
        }
        s.remove("a/b/c/d");
        assert_eq!(topics(&s, "#"), vec!["a/b", "a/x"]);
        assert!(s.root.children["a"].children["b"].children.is_empty());
        s.remove("a/b");
        s.remove("a/nothing/here");
        assert_eq!(s.len(), 1);
        assert_eq!(topics(&s, "#"), vec!["a/x"]);
        s.remove("a/x");
        assert!(s.root.children.is_empty());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn a_topic_deeper_than_any_stack_is_stored_walked_purged_and_dropped() {
        // 100,000 levels: each walk that recursed per level overflowed the
        // stack on this (2 MiB test thread, like a tokio worker).
        let deep = vec!["l"; 100_000].join("/");
        let mut s = RetainedStore::default();
        s.set(msg(&deep, "v"));
        s.set(msg("a", "v"));
        assert_eq!(topics(&s, "#").len(), 2);
        assert_eq!(s.purge_expired(Instant::now()), 0);
        let expiring = Arc::new(Message::new(
            format!("{deep}/x").into(),
            Bytes::from_static(b"v"),
            QoS::AtMostOnce,
            true,
            PublishProperties {
                message_expiry_interval: Some(0),
                ..PublishProperties::default()
            },
            None,
        ));
        s.set(expiring);
        assert_eq!(
            s.purge_expired(Instant::now() + std::time::Duration::from_secs(1)),
            1
        );
        assert_eq!(s.len(), 2);
        s.remove(&deep);
        assert_eq!(s.len(), 1);
        s.set(msg(&deep, "again"));
        drop(s);
    }

    #[test]
    fn count_and_bytes_follow_every_change_and_bound_new_messages() {
        let mut s = RetainedStore::default();
        s.set(msg("a", "12345"));
        s.set(msg("b/c", "1"));
        assert_eq!((s.len(), s.bytes()), (2, 6 + 4));
        s.set(msg("a", "1"));
        assert_eq!((s.len(), s.bytes()), (2, 2 + 4));
        assert!(
            s.admits(&msg("a", "123"), 2, 8),
            "a replacement within both"
        );
        assert!(
            !s.admits(&msg("a", "1234"), 2, 8),
            "a replacement over the bytes"
        );
        assert!(
            !s.admits(&msg("d", "1"), 2, 100),
            "a new topic over the count"
        );
        assert!(s.admits(&msg("d", ""), 0, 0), "a clear always");
        s.remove("b/c");
        assert_eq!((s.len(), s.bytes()), (1, 2));
        s.set(msg("a", ""));
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }

    #[test]
    fn wildcards_find_retained() {
        let mut s = RetainedStore::default();
        for t in ["a", "a/b", "a/b/c", "x/b", "$SYS/up"] {
            s.set(msg(t, "v"));
        }
        assert_eq!(topics(&s, "a/#"), vec!["a", "a/b", "a/b/c"]);
        assert_eq!(topics(&s, "+/b"), vec!["a/b", "x/b"]);
        assert_eq!(topics(&s, "#"), vec!["a", "a/b", "a/b/c", "x/b"]);
        assert_eq!(topics(&s, "$SYS/#"), vec!["$SYS/up"]);
    }
}
