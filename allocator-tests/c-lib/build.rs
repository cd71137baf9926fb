//! Builds leaky.c as distributions build C libraries: optimized, without
//! frame pointers.
fn main() {
    println!("cargo:rerun-if-changed=leaky.c");
    cc::Build::new()
        .file("leaky.c")
        .opt_level(2)
        .flag("-fomit-frame-pointer")
        .compile("leaky");
}
