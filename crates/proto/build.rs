//! Compiles proto/dagmanager.proto with the vendored protoc, so the build needs nothing from the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto_file = proto_dir.join("dagmanager.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());

    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    prost_config.btree_map(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(prost_config, &[proto_file], &[proto_dir])?;
    Ok(())
}
