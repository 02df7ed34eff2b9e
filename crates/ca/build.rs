//! Compiles Istio's CA service definition with protox (no protoc needed), for the `grpc` feature.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(());
    }
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["istio/v1/auth/ca.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
