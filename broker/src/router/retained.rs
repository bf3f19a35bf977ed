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
    /// Bumped by every change: a reader can tell that nothing changed since
    /// it last looked without looking again.
    version: u64,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores, replaces, or (empty payload) clears the retained message of
    /// the message's topic (MQTT 5.0 §3.3.1.3).
    pub fn set(&mut self, message: Arc<Message>) {
        self.version += 1;
        let topic = message.topic.clone();
        let levels: Vec<&str> = topic.split('/').collect();
        if message.payload.is_empty() {
            if remove(&mut self.root, &levels) {
                self.count -= 1;
            }
            return;
        }
        let mut node = &mut self.root;
        for level in levels {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            self.count += 1;
        }
    }

    /// Every unexpired retained message whose topic matches `filter`.
    pub fn matching(&self, filter: &str, now: Instant, out: &mut Vec<Arc<Message>>) {
        let levels: Vec<&str> = filter.split('/').collect();
        collect(&self.root, &levels, true, now, out);
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

    /// Clears the retained message of `topic`, if any.
    pub fn remove(&mut self, topic: &str) {
        let levels: Vec<&str> = topic.split('/').collect();
        self.version += 1;
        if remove(&mut self.root, &levels) {
            self.count -= 1;
        }
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
        let removed = purge(&mut self.root, now);
        self.count -= removed;
        removed
    }
}

fn remove(node: &mut Node, levels: &[&str]) -> bool {
    match levels.split_first() {
        None => node.message.take().is_some(),
        Some((level, rest)) => {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            let removed = remove(child, rest);
            if child.message.is_none() && child.children.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

fn collect(node: &Node, levels: &[&str], first: bool, now: Instant, out: &mut Vec<Arc<Message>>) {
    let Some((level, rest)) = levels.split_first() else {
        push_live(node, now, out);
        return;
    };
    match *level {
        "#" => {
            // "a/#" includes "a" itself; a leading wildcard skips "$" topics.
            if !first {
                push_live(node, now, out);
            }
            for (name, child) in &node.children {
                if !(first && name.starts_with('$')) {
                    collect_all(child, now, out);
                }
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if !(first && name.starts_with('$')) {
                    collect(child, rest, false, now, out);
                }
            }
        }
        literal => {
            if let Some(child) = node.children.get(literal) {
                collect(child, rest, false, now, out);
            }
        }
    }
}

fn collect_all(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>) {
    push_live(node, now, out);
    for child in node.children.values() {
        collect_all(child, now, out);
    }
}

fn push_live(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>) {
    if let Some(m) = &node.message
        && !m.is_expired(now)
    {
        out.push(m.clone());
    }
}

fn purge(node: &mut Node, now: Instant) -> usize {
    let mut removed = 0;
    if node.message.as_ref().is_some_and(|m| m.is_expired(now)) {
        node.message = None;
        removed += 1;
    }
    node.children.retain(|_, child| {
        removed += purge(child, now);
        child.message.is_some() || !child.children.is_empty()
    });
    removed
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
