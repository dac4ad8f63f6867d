//! Generates the servers of etcd's Auth, Lock and Election services (etcd-client exports none)
//! and of its Watch service (whose responses ferry encodes itself), and etcd's auth records,
//! from `proto/`. The etcd types they embed are etcd-client's own, so responses share one
//! `ResponseHeader` and `KeyValue`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in [
        "proto/gateway.proto",
        "proto/auth.proto",
        "proto/authpb.proto",
        "proto/v3lock.proto",
        "proto/v3election.proto",
        "proto/watch.proto",
        "proto/etcd_types.proto",
        "proto/mvcc_types.proto",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    // The JSON gateway's descriptors of every message it reads or writes; no Rust code from
    // this pass is used (it goes to its own directory).
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let scratch = out_dir.join("gateway_descriptors");
    std::fs::create_dir_all(&scratch)?;
    prost_build::Config::new()
        .out_dir(&scratch)
        .file_descriptor_set_path(out_dir.join("gateway_descriptors.bin"))
        .compile_protos(
            &[
                "proto/gateway.proto",
                "proto/auth.proto",
                "proto/v3lock.proto",
                "proto/v3election.proto",
            ],
            &["proto"],
        )?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(
            ".etcdserverpb.ResponseHeader",
            "::etcd_client::proto::PbResponseHeader",
        )
        .extern_path(".mvccpb.KeyValue", "::etcd_client::proto::PbKeyValue")
        .extern_path(
            ".etcdserverpb.WatchRequest",
            "::etcd_client::proto::PbWatchRequest",
        )
        .extern_path(
            ".etcdserverpb.WatchResponse",
            "crate::server::watch::EncodedWatchResponse",
        )
        .compile_protos(
            &[
                "proto/watch.proto",
                "proto/v3lock.proto",
                "proto/v3election.proto",
                "proto/auth.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
