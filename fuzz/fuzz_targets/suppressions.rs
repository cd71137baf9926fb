//! The suppressions file (`LEAKSCOPE_SUPPRESSIONS`): parsed, and each
//! pattern matched against the file's own lines.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        leakscope::__fuzz::suppressions(text);
    }
});
