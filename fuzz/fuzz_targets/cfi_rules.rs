//! The stack walk's call-frame rule lookup (src/alloc/cfi.rs) on a
//! mutated ELF object: runs inside an allocation of the host, so any
//! panic or read outside the object is a crash there.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leakscope::__fuzz::cfi_rules(data);
});
