//! How leakscope says something went wrong: one line on stderr.
//!
//! Bad input (an environment value, a suppression file) and failed writes
//! of a report are told here and never panic the host program. The line
//! goes straight to the file descriptor: no lock, no buffer, so it is safe
//! at exit and from the tracker's own threads.

/// Writes `leakscope: <msg>` and a newline to stderr.
pub(crate) fn warn(msg: &str) {
    let line = format!("leakscope: {msg}\n");
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writes from a valid buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            break;
        }
        rest = rest.get(n as usize..).unwrap_or(&[]);
    }
}
