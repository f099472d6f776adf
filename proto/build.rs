//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "rocketrides/v1/rides.proto",
    "rocketrides/v1/consumer.proto",
    "rocketrides/v1/history.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Served by gRPC reflection so grpcurl can list and describe the services.
    fs::write(
        out.join("rocketrides_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
