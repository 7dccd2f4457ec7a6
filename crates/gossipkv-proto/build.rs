//! Generates the Rust types of `proto/gossipkv.proto` with prost.
//!
//! The `.proto` file is parsed by `protox` (pure Rust), so no `protoc` binary
//! is needed on the build machine.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let proto_dir = manifest_dir.join("../../proto");
    let proto_file = proto_dir.join("gossipkv.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());
    println!("cargo:rerun-if-changed=build.rs");

    let fds = match protox::compile([&proto_file], [&proto_dir]) {
        Ok(fds) => fds,
        Err(e) => panic!("cannot compile {}: {e:?}", proto_file.display()),
    };
    if let Err(e) = prost_build::Config::new().bytes(["."]).compile_fds(fds) {
        panic!(
            "cannot generate Rust code for {}: {e}",
            proto_file.display()
        );
    }
}
