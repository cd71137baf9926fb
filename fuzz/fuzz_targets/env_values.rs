//! Every `LEAKSCOPE_*` variable's parser on one value, and the
//! `/proc/self/maps` line readers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = std::str::from_utf8(data) {
        leakscope::__fuzz::env_value(value);
    }
});
