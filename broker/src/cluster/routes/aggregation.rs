//! Route aggregation: many filters advertised as one wildcard route.
//!
//! The filters that reach millions in a cluster are per-device ones
//! (`devices/<id>/cmd/#`): one route key each would put millions of keys in
//! etcd and a route per device into every node's remote index. With
//! `route_aggregates = ["devices/+/cmd/#"]` a node advertises that pattern
//! once, while it has at least one local filter the pattern covers, and
//! advertises none of the covered filters themselves.
//!
//! Delivery stays exact: a node still routes what it receives through its
//! own subscriptions, so a message forwarded under the pattern reaches only
//! the devices that subscribed; the cost is that such a message goes to
//! every node with any covered subscriber (a few more forwards).
//!
//! Covering is topic-set inclusion: the pattern covers a filter when every
//! topic the filter matches, the pattern matches too. Shared subscriptions
//! (`$share/...`) are never aggregated: a group's routes pick its members.

use std::collections::HashMap;

use parking_lot::Mutex;

/// The configured patterns and, per pattern, how many of this node's
/// filters it covers right now.
pub struct Aggregates {
    patterns: Vec<String>,
    covered: Mutex<HashMap<usize, usize>>,
}

/// What advertising a filter means under aggregation.
#[derive(Debug, PartialEq, Eq)]
pub enum Advertise<'a> {
    /// Not covered: the filter is its own route.
    Itself,
    /// Covered by this pattern, which is advertised while it covers any
    /// filter of this node.
    Pattern(&'a str),
}

impl Aggregates {
    pub fn new(patterns: Vec<String>) -> Aggregates {
        Aggregates {
            patterns,
            covered: Mutex::new(HashMap::new()),
        }
    }

    /// How `filter` is advertised.
    pub fn advertise(&self, filter: &str) -> Advertise<'_> {
        match self.pattern_of(filter) {
            Some(index) => Advertise::Pattern(&self.patterns[index]),
            None => Advertise::Itself,
        }
    }

    /// A covered filter gained its first local subscription: runs
    /// `first(pattern)` when it is the first filter the pattern covers.
    /// `false` if no pattern covers it. `first` runs under the lock, so that
    /// its effect and a concurrent `leave`'s are ordered.
    pub fn enter(&self, filter: &str, first: impl FnOnce(&str)) -> bool {
        let Some(index) = self.pattern_of(filter) else {
            return false;
        };
        let mut covered = self.covered.lock();
        let count = covered.entry(index).or_insert(0);
        *count += 1;
        if *count == 1 {
            first(&self.patterns[index]);
        }
        true
    }

    /// A covered filter lost its last local subscription: runs
    /// `last(pattern)` when the pattern covers no filter any more.
    pub fn leave(&self, filter: &str, last: impl FnOnce(&str)) -> bool {
        let Some(index) = self.pattern_of(filter) else {
            return false;
        };
        let mut covered = self.covered.lock();
        if let Some(count) = covered.get_mut(&index) {
            *count -= 1;
            if *count == 0 {
                covered.remove(&index);
                last(&self.patterns[index]);
            }
        }
        true
    }

    /// The first configured pattern that covers `filter`.
    fn pattern_of(&self, filter: &str) -> Option<usize> {
        if filter.starts_with("$share/") {
            return None;
        }
        self.patterns
            .iter()
            .position(|pattern| covers(pattern, filter))
    }
}

/// Whether every topic matched by `filter` is matched by `pattern` (both
/// valid topic filters).
pub fn covers(pattern: &str, filter: &str) -> bool {
    // MQTT-4.7.2-1: a wildcard in the first level matches no topic starting
    // with '$', which a literal first level of the filter may name.
    if filter.starts_with('$') && (pattern.starts_with('+') || pattern.starts_with('#')) {
        return false;
    }
    let mut wanted = filter.split('/');
    for level in pattern.split('/') {
        let got = wanted.next();
        match level {
            // '#' matches the parent level too: `a/#` covers `a`.
            "#" => return true,
            "+" => match got {
                Some(got) if got != "#" => {}
                _ => return false,
            },
            literal => {
                if got != Some(literal) {
                    return false;
                }
            }
        }
    }
    wanted.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_is_topic_set_inclusion() {
        let yes = [
            ("devices/+/cmd/#", "devices/42/cmd/#"),
            ("devices/+/cmd/#", "devices/42/cmd/reboot"),
            ("devices/+/cmd/#", "devices/42/cmd"),
            ("devices/+/cmd/#", "devices/+/cmd/+"),
            ("devices/+/state", "devices/7/state"),
            ("a/#", "a"),
            ("#", "a/b/c"),
            ("+/x", "+/x"),
        ];
        let no = [
            ("devices/+/cmd/#", "devices/42/state"),
            ("devices/+/cmd/#", "devices/#"),
            ("devices/+/state", "devices/7/state/extra"),
            ("devices/+/state", "devices/#"),
            ("devices/+/state", "devices"),
            ("a/b", "a/+"),
            ("#", "$SYS/broker"),
            ("+/x", "$dev/x"),
        ];
        for (pattern, filter) in yes {
            assert!(covers(pattern, filter), "{pattern} should cover {filter}");
        }
        for (pattern, filter) in no {
            assert!(
                !covers(pattern, filter),
                "{pattern} should not cover {filter}"
            );
        }
    }

    #[test]
    fn a_pattern_is_advertised_while_it_covers_a_filter() {
        let aggregates = Aggregates::new(vec!["devices/+/cmd/#".into()]);
        let mut events = Vec::new();
        assert!(aggregates.enter("devices/1/cmd/#", |p| events.push(format!("+{p}"))));
        assert!(aggregates.enter("devices/2/cmd/#", |p| events.push(format!("+{p}"))));
        assert!(!aggregates.enter("other/1", |p| events.push(format!("+{p}"))));
        assert!(aggregates.leave("devices/1/cmd/#", |p| events.push(format!("-{p}"))));
        assert!(aggregates.leave("devices/2/cmd/#", |p| events.push(format!("-{p}"))));
        assert_eq!(events, ["+devices/+/cmd/#", "-devices/+/cmd/#"]);
        assert_eq!(
            aggregates.advertise("devices/9/cmd/#"),
            Advertise::Pattern("devices/+/cmd/#")
        );
        assert_eq!(aggregates.advertise("other/1"), Advertise::Itself);
    }

    #[test]
    fn shared_subscriptions_are_never_aggregated() {
        let aggregates = Aggregates::new(vec!["#".into()]);
        assert_eq!(
            aggregates.advertise("$share/g/devices/1"),
            Advertise::Itself
        );
    }
}
