//! Compiles the `.proto` files with `protox` (pure Rust), so building needs no `protoc`.

use std::path::PathBuf;

const PROTOS: &[&str] = &["strait/ca/v1/ca.proto", "strait/config/v1/config.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Config snapshots can be megabytes and are fanned out to many subscribers: share
        // them (`Bytes`) instead of copying a `Vec<u8>` per stream.
        .bytes(".strait.config.v1")
        .compile_fds(fds)?;
    Ok(())
}
