//! Generates the peer sync protocol's Rust types, server and client from `proto/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/hellorpc.proto");
    tonic_prost_build::configure().compile_protos(&["proto/hellorpc.proto"], &["proto"])?;
    Ok(())
}
