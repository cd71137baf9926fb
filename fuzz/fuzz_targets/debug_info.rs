//! The report's debug-info reader (src/report/dwarf.rs) on a mutated
//! object file: it reads a file, as it reads each loaded object at exit,
//! so each input is written to one file first.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("leakscope-fuzz-{}.o", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    if std::fs::write(path, data).is_ok() {
        leakscope::__fuzz::debug_info(path.to_str().unwrap());
    }
});
