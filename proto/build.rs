//! Compiles starling/cluster/v1/peer.proto with protoc (Debian package
//! `protobuf-compiler`; scripts/install-test-deps.sh installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=starling/cluster/v1/peer.proto");
    tonic_prost_build::configure()
        .bytes(".starling.cluster.v1.ForwardedMessage.topic")
        .bytes(".starling.cluster.v1.ForwardedMessage.payload")
        .bytes(".starling.cluster.v1.ForwardedMessage.origin")
        .bytes(".starling.cluster.v1.ForwardedMessage.correlation_data")
        .bytes(".starling.cluster.v1.ForwardBatchEntries.messages")
        .compile_protos(&["starling/cluster/v1/peer.proto"], &["."])?;
    Ok(())
}
