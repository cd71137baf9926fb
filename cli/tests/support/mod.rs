//! What the command's tests share: the programs they run, built by cargo,
//! and children with a deadline.

#![allow(dead_code, unused_imports)]

#[path = "../../../allocator-tests/common/timeout.rs"]
mod timeout;

use std::path::PathBuf;
use std::process::Command;
pub use timeout::{wait_child, Deadline, BUILD_SECS, CHILD_SECS};

/// `file` in the profile's directory (beside this command), built by
/// `cargo build -p package` when it is not there (only this package
/// tested). Rebuilding the example would relink it with other features,
/// under tests that run it.
pub fn built(file: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_leakscope")).with_file_name(file);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status_within(BUILD_SECS)
            .unwrap();
        assert!(status.success());
    }
    path
}

/// The example's binary.
pub fn example() -> PathBuf {
    built("leaky_service", "leaky-service")
}

/// The root package's example `name`, built by `cargo build --example`
/// when it is not there (`cargo test` builds the examples).
pub fn built_example(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_leakscope")).with_file_name("examples");
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "leakscope", "--example", name])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status_within(BUILD_SECS)
            .unwrap();
        assert!(status.success());
    }
    path
}
