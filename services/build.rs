//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.
use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let file = root.join("openclaw/agent/v1/agent.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Server reflection serves this descriptor set.
    std::fs::write(out.join("agent_descriptor.bin"), fds.encode_to_vec())?;
    // Small initial buffers: a run's stream holds them for the whole answer (see `codec.rs`).
    tonic_prost_build::configure().codec_path("crate::codec::LeanCodec").compile_fds(fds)?;
    Ok(())
}
