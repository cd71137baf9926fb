//! Builds the preload library (`../preload`, the tracker as a shared object
//! for `LD_PRELOAD`) and hands it to the command to embed, so that
//! `cargo install --path cli` alone gives a working `leakscope run`.
//!
//! A nested `cargo build` of that package, in the outer build's profile,
//! with a target directory of its own under `OUT_DIR` (the outer build holds
//! the lock on its own). Where `../preload` is absent (the command built
//! from its published package, which holds only `cli/`), nothing is
//! embedded: `leakscope run` then asks for the library's path. A failed
//! nested build fails this build, with cargo's own message.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let preload = manifest.join("../preload/Cargo.toml");
    let out = PathBuf::from(env("OUT_DIR"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(embedded_preload)");
    if !preload.is_file() {
        return;
    }
    // The library is the tracker: any change to it, its manifest or the
    // lock file is a change to what is embedded.
    for path in ["../preload", "../src", "../Cargo.toml", "../Cargo.lock"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let release = env("PROFILE") == "release";
    let target_dir = out.join("preload-target");
    let mut cargo = Command::new(env("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "-p",
            "leakscope-preload",
            "--manifest-path",
        ])
        .arg(&preload)
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        cargo.arg("--release");
    }
    // Not the outer build's wrappers (clippy's) or flags for this package.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo
        .status()
        .expect("cannot run cargo for the preload library");
    assert!(status.success(), "building the preload library failed");
    let built = target_dir
        .join(if release { "release" } else { "debug" })
        .join("libleakscope_preload.so");
    let bytes = std::fs::read(&built).expect("the preload library was not built");
    // Copied, so that the next nested build cannot change what this
    // build's `include_bytes!` reads.
    let embedded = out.join("libleakscope_preload.so");
    std::fs::write(&embedded, &bytes).expect("cannot copy the preload library");
    println!("cargo:rustc-cfg=embedded_preload");
    println!(
        "cargo:rustc-env=LEAKSCOPE_PRELOAD_EMBEDDED={}",
        embedded.display()
    );
    println!(
        "cargo:rustc-env=LEAKSCOPE_PRELOAD_HASH={:016x}",
        fnv1a(&bytes)
    );
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

/// FNV-1a over the library: its cached copy's name, so that two commands
/// never share a file with different contents.
fn fnv1a(bytes: &[u8]) -> u64 {
    (bytes.iter()).fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
