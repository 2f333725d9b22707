//! Compiles `proto/*.proto` with protox (pure Rust, so no protoc is needed) and generates the
//! tonic services and, for the tests' raw calls, the clients.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["streams.proto", "serverfeatures.proto", "gossip.proto"];
    for file in [
        "shared.proto",
        "status.proto",
        "streams.proto",
        "serverfeatures.proto",
        "gossip.proto",
    ] {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
