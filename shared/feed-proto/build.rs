//! Compiles every `.proto` under `proto/` once, with the pure-Rust protox
//! compiler, so no machine needs `protoc`; then the publish and timeline
//! services again as `feed_proto::wire`, with activities as
//! `SharedActivity` (see `src/shared.rs`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost::Message as _;
use tonic_prost_build::FileDescriptorSet;

const FILES: &[&str] = &[
    "feed/common/v1/common.proto",
    "feed/followgraph/v1/followgraph.proto",
    "feed/publish/v1/publish.proto",
    "feed/timeline/v1/timeline.proto",
    "feed/notify/v1/notify.proto",
    "feed/notify/v1/storage.proto",
    "feed/events/v1/events.proto",
];

/// The files `feed_proto::wire` compiles again.
const WIRE_FILES: &[&str] = &["feed/publish/v1/publish.proto", "feed/timeline/v1/timeline.proto"];

const ACTIVITY: &str = ".feed.common.v1.Activity";

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
        .compile_fds(fds.clone())?;
    wire(fds, &out.join("wire"))
}

/// The wire view: only the messages that carry an activity (directly or
/// through another) are generated again; every other type, and the other
/// packages, are the ones generated above.
fn wire(mut fds: FileDescriptorSet, out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out)?;
    // The other files stay for their descriptors (prost's message graph
    // needs every type a field names) but generate nothing: their types
    // are extern below, and their services are dropped.
    for f in &mut fds.file {
        if !WIRE_FILES.contains(&f.name()) {
            f.service.clear();
        }
    }
    let mut carriers: BTreeSet<String> = BTreeSet::from([ACTIVITY.to_owned()]);
    loop {
        let before = carriers.len();
        for f in &fds.file {
            for m in &f.message_type {
                if m.field.iter().any(|x| carriers.contains(x.type_name())) {
                    carriers.insert(format!(".{}.{}", f.package(), m.name()));
                }
            }
        }
        if carriers.len() == before {
            break;
        }
    }
    let mut config = tonic_prost_build::Config::new();
    config.extern_path(ACTIVITY, "crate::shared::SharedActivity");
    config.extern_path(".feed.common.v1", "crate::common::v1");
    config.extern_path(".feed.events.v1", "crate::events::v1");
    config.extern_path(".feed.followgraph.v1", "crate::followgraph::v1");
    config.extern_path(".feed.notify.v1", "crate::notify::v1");
    for f in fds.file.iter().filter(|f| WIRE_FILES.contains(&f.name())) {
        let module = f.package().replace('.', "::").replacen("feed::", "crate::", 1);
        let names = f
            .message_type
            .iter()
            .map(|m| m.name())
            .chain(f.enum_type.iter().map(|e| e.name()));
        for name in names {
            let full = format!(".{}.{name}", f.package());
            if !carriers.contains(&full) {
                config.extern_path(full, format!("{module}::{name}"));
            }
        }
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
