//! Compiles `proto/` with protox (a protobuf compiler in Rust: no protoc needed)
//! and generates tonic servers and clients; also writes the descriptor set that
//! server reflection serves.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "perfect21/auth.proto",
        "perfect21/user.proto",
        "perfect21/permission.proto",
        "perfect21/account.proto",
        "perfect21/admin.proto",
        "perfect21/events.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("perfect21_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
