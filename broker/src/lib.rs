//! Starling: a clustered MQTT broker. This crate is the broker itself; the
//! `starling` binary is a thin wrapper around [`run`].

pub mod admin;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod drain;
pub mod lifecycle;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod node;
pub mod read_mostly;
pub mod reply_order;
pub mod resources;
pub mod router;
pub mod server;
pub mod session;

pub use broker::Broker;
pub use config::Config;
pub use server::run;
