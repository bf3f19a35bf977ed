//! The etcd key schema (docs/architecture.md, "Cluster mode"): everything
//! under `/starling/<cluster>/`.

#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            root: format!("/starling/{cluster}/"),
        }
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.root)
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.root)
    }

    pub fn routes_prefix(&self) -> String {
        format!("{}routes/", self.root)
    }

    pub fn route(&self, node: &str, filter: &str) -> String {
        format!("{}routes/{node}/{filter}", self.root)
    }

    pub fn client(&self, client_id: &str) -> String {
        format!("{}clients/{client_id}", self.root)
    }

    pub fn retained_prefix(&self) -> String {
        format!("{}retained/", self.root)
    }

    pub fn retained(&self, topic: &str) -> String {
        format!("{}retained/{topic}", self.root)
    }

    /// The topic of a `retained/<topic>` key.
    pub fn parse_retained<'a>(&self, key: &'a str) -> Option<&'a str> {
        let topic = key.strip_prefix(&self.root)?.strip_prefix("retained/")?;
        (!topic.is_empty()).then_some(topic)
    }

    /// `(node, filter)` of a route key; `None` for keys of another shape.
    pub fn parse_route<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("routes/")?;
        let (node, filter) = rest.split_once('/')?;
        (!node.is_empty() && !filter.is_empty()).then_some((node, filter))
    }

    /// The node id of a `nodes/<node>` key.
    pub fn parse_node<'a>(&self, key: &'a str) -> Option<&'a str> {
        let node = key.strip_prefix(&self.root)?.strip_prefix("nodes/")?;
        (!node.is_empty() && !node.contains('/')).then_some(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_keys_round_trip_filters_with_slashes() {
        let keys = Keys::new("prod");
        let key = keys.route("n1", "a/+/#");
        assert_eq!(key, "/starling/prod/routes/n1/a/+/#");
        assert_eq!(keys.parse_route(&key), Some(("n1", "a/+/#")));
        assert_eq!(keys.parse_route("/starling/other/routes/n1/a"), None);
        assert_eq!(keys.parse_node(&keys.node("n2")), Some("n2"));
    }
}
