//! Debug info from other compilers (issue 29): a C library built by the
//! machine's gcc in each form a report meets in the field (DWARF 5, gcc's
//! default since 11; DWARF 4; split into a `.dwo`; compressed with `-gz`;
//! no debug info; stripped), and a Rust cdylib built with
//! `split-debuginfo=packed`, each loaded with `dlopen` by a tracked child
//! that loses one block from it. Each report is whole, names the function,
//! and gives its file and line wherever the debug info is there to read.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use common::Deadline;

use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD: &str = "LEAKSCOPE_TEST_CHILD";

/// Line 4 allocates the lost block.
const SOURCE: &str = "#include <stdlib.h>\n\
#include <string.h>\n\
__attribute__((noinline)) char *variant_leak(int n) {\n\
  char *p = malloc(n);\n\
  memset(p, 1, n);\n\
  return p;\n\
}\n";

/// The child: loads the library at `$VARIANT_LIB`, loses 777 bytes from it.
fn child() {
    let lib = std::ffi::CString::new(std::env::var("VARIANT_LIB").unwrap()).unwrap();
    // SAFETY: a C library of ours, with one function of this signature.
    unsafe {
        let h = libc::dlopen(lib.as_ptr(), libc::RTLD_NOW);
        assert!(!h.is_null(), "dlopen failed");
        let f = libc::dlsym(h, c"variant_leak".as_ptr());
        assert!(!f.is_null());
        let f: extern "C" fn(i32) -> *mut u8 = std::mem::transmute(f);
        std::hint::black_box(f(777));
    }
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    common::run(&[(
        "each_variant_is_named_where_it_can_be",
        each_variant_is_named_where_it_can_be,
    )]);
}

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debug-info");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cc(dir: &Path, out: &str, flags: &[&str]) -> PathBuf {
    let lib = dir.join(out);
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1"])
        .args(flags)
        .arg("-o")
        .arg(&lib)
        .arg(dir.join("variant.c"))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "cc {flags:?}");
    lib
}

/// The frames of the 777-byte block's call-site, as (function, file,
/// line), from the child's JSON report.
fn leaking_site(lib: &Path, dir: &Path) -> Vec<(Option<String>, Option<String>, Option<u64>)> {
    let json = dir.join(format!(
        "{}.json",
        lib.file_name().unwrap().to_string_lossy()
    ));
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("VARIANT_LIB", lib)
        .env("LEAKSCOPE_REPORT", &json)
        .output_within(common::CHILD_SECS)
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = common::report_doc(&std::fs::read_to_string(&json).unwrap());
    let site = doc["callsites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["live_bytes"] == 777)
        .unwrap_or_else(|| panic!("no 777-byte site in {}", json.display()))
        .clone();
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["function"].as_str().map(str::to_owned),
                f["file"].as_str().map(str::to_owned),
                f["line"].as_u64(),
            )
        })
        .collect()
}

/// The frame of the site that called `malloc`: `variant_leak`'s.
fn leaking_frame(lib: &Path, dir: &Path) -> (Option<String>, Option<String>, Option<u64>) {
    let frames = leaking_site(lib, dir);
    frames
        .iter()
        .find(|f| f.0.as_deref().is_some_and(|n| n.contains("variant_leak")))
        .cloned()
        .unwrap_or_else(|| panic!("variant_leak not named: {frames:?}"))
}

/// A Rust library's function that loses `n` bytes: a cdylib built by
/// rustc with `split-debuginfo=packed` (its debug info in a `.dwp` beside
/// it, skeleton units in the library).
const RUST_SOURCE: &str = "#[no_mangle]\n\
pub extern \"C\" fn variant_leak(n: i32) -> *mut u8 {\n\
    Box::into_raw(vec![1u8; n as usize].into_boxed_slice()) as *mut u8\n\
}\n";

fn rustc_packed(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("variant.rs"), RUST_SOURCE).unwrap();
    let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "cdylib",
            "-g",
            "-C",
            "opt-level=1",
        ])
        .args(["-C", "split-debuginfo=packed", "-o"])
        .arg(dir.join("packed.so"))
        .arg(dir.join("variant.rs"))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "rustc");
    dir.join("packed.so")
}

fn each_variant_is_named_where_it_can_be() {
    let dir = dir();
    std::fs::write(dir.join("variant.c"), SOURCE).unwrap();
    let c_variants: [(&str, &[&str]); 6] = [
        ("dwarf5.so", &["-g"]),
        ("dwarf4.so", &["-gdwarf-4"]),
        ("split.so", &["-g", "-gsplit-dwarf"]),
        ("gz.so", &["-g", "-gz"]),
        ("none.so", &[]),
        ("stripped.so", &["-g", "-s"]),
    ];
    for (name, flags) in c_variants {
        let lib = cc(&dir, name, flags);
        let (function, file, line) = leaking_frame(&lib, &dir);
        println!("{name}: {function:?} {file:?} {line:?}");
        let function = function.unwrap();
        if matches!(name, "none.so" | "stripped.so") {
            // Nothing but the dynamic symbols: the name, as glibc writes it.
            assert!(
                function.starts_with("variant_leak+0x"),
                "{name}: {function}"
            );
            assert_eq!((file, line), (None, None), "{name}");
        } else {
            // -gsplit-dwarf: the function from the symbol table, file and
            // line from the line table the object keeps; -gz: inflated.
            assert_eq!(function, "variant_leak", "{name}");
            assert!(file.unwrap().ends_with("/variant.c"), "{name}");
            assert_eq!(line, Some(4), "{name}");
        }
    }
    // Rust, its debug info packed apart (`packed.so.dwp`, not read): the
    // report is whole and the site found. Known limit: the return address
    // into the library lies in std's inlined `RawVec` code, which the
    // library's line table names (raw_vec.rs) beside the symbol table's
    // `variant_leak`, so the frame is taken for allocation plumbing and
    // left out; the site begins at its caller.
    let lib = rustc_packed(&dir);
    let frames = leaking_site(&lib, &dir);
    println!("packed.so: {:?}", frames.first());
    assert_eq!(
        frames.first().and_then(|f| f.0.as_deref()),
        Some("debug_info::child")
    );
}
