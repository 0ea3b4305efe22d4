//! Generates the gRPC collaboration service (`proto/collaboration.proto`,
//! the published contract) with tonic's prost generator. protoc comes from
//! `protoc-bin-vendored`, so a fresh machine needs none installed; a
//! `PROTOC` in the environment still wins (for platforms the vendored
//! binaries do not cover).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = root.join("collaboration.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=PROTOC");

    let mut config = tonic_prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    // `bytes` fields as `Bytes`: updates are relayed without copying.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .compile_with_config(config, &[proto], &[root])?;
    Ok(())
}
