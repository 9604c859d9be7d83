//! Compiles every `.proto` under `proto/` once, with the pure-Rust protox
//! compiler, so no machine needs `protoc`.

use std::path::PathBuf;

use prost::Message as _;

const FILES: &[&str] = &[
    "feed/common/v1/common.proto",
    "feed/followgraph/v1/followgraph.proto",
    "feed/publish/v1/publish.proto",
    "feed/timeline/v1/timeline.proto",
    "feed/notify/v1/notify.proto",
    "feed/notify/v1/storage.proto",
    "feed/events/v1/events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(FILES, [&root])?;
    // Reflection serves this set, so clients need nothing but the port.
    std::fs::write(out.join("feed_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
