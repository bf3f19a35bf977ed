//! Generated types and gRPC stubs of `starling.cluster.v1`, the protocol
//! between Starling nodes (see `starling/cluster/v1/peer.proto`).

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("starling.cluster.v1");
}
