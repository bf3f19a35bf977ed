//! Which node wants which filter. This node's filters become
//! `routes/<node>/<filter>` keys ([`store`], aggregated into wildcard
//! routes by [`aggregation`]); every node's are mirrored into an [`index`]
//! read on each publish; [`sync`] lets a SUBACK wait until the other nodes
//! have a new route; [`lapses`] keeps the routes of a node whose lease ran
//! out while it was serving, as suspect, until it is back or gone.

pub mod aggregation;
pub mod index;
pub mod lapses;
pub mod store;
pub mod sync;
