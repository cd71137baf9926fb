//! `leakscope run -- PROGRAM`: the program with the tracker preloaded.
//!
//! Finds the preload library (`libleakscope_preload.so`, the `preload/`
//! package: `LEAKSCOPE_PRELOAD_LIB`, else the copy embedded in this command
//! by `build.rs`, else one beside it), puts it first in `LD_PRELOAD`,
//! sets the variables the options spell, and replaces this process with
//! the program (`exec`): its stdin, stdout, stderr, exit status and signals
//! are the program's own. `LD_PRELOAD` is inherited, so a child the program
//! starts is tracked too, each process writing its own report (`%p` in a
//! report path tells them apart).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// The preload library's file name.
const LIB: &str = "libleakscope_preload.so";

/// Runs `command` preloaded, with the variables the options set; returns
/// only when it could not be started.
pub fn run(vars: &[(&str, Option<String>)], command: &[OsString]) -> Result<ExitCode, String> {
    let lib = library()?;
    let (program, args) = command.split_first().ok_or("run: no program given")?;
    let mut preload = OsString::from(&lib);
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env("LD_PRELOAD", preload);
    for (name, value) in vars {
        if let Some(value) = value {
            cmd.env(name, value);
        }
    }
    let e = cmd.exec();
    Err(format!("cannot run {}: {e}", program.to_string_lossy()))
}

/// The preload library this command was built with (`build.rs`), and its
/// hash: absent when built from the published package alone.
#[cfg(embedded_preload)]
const EMBEDDED: Option<(&[u8], &str)> = Some((
    include_bytes!(env!("LEAKSCOPE_PRELOAD_EMBEDDED")),
    env!("LEAKSCOPE_PRELOAD_HASH"),
));
#[cfg(not(embedded_preload))]
const EMBEDDED: Option<(&[u8], &str)> = None;

/// The preload library: `LEAKSCOPE_PRELOAD_LIB`, else the one embedded in
/// this command (written once to the user's cache), else one beside it.
fn library() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("LEAKSCOPE_PRELOAD_LIB") {
        let path = PathBuf::from(path);
        return match path.is_file() {
            true => Ok(path),
            false => Err(format!(
                "LEAKSCOPE_PRELOAD_LIB={}: no such file",
                path.display()
            )),
        };
    }
    if let Some((bytes, hash)) = EMBEDDED {
        return cached(bytes, hash);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this command: {e}"))?;
    let beside = exe.with_file_name(LIB);
    match beside.is_file() {
        true => Ok(beside),
        false => Err(format!(
            "run needs {LIB}: this command was built without it (install it from the repository: cargo install --path cli), and none is beside it ({}); or set LEAKSCOPE_PRELOAD_LIB",
            beside.display()
        )),
    }
}

/// The embedded library as a file the loader can open:
/// `$XDG_CACHE_HOME/leakscope/` (else `~/.cache/leakscope/`), named by its
/// hash, so that commands of different builds never share one. Written
/// under a temporary name and renamed: a run that starts meanwhile sees
/// the whole file or none.
fn cached(bytes: &[u8], hash: &str) -> Result<PathBuf, String> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("run: neither XDG_CACHE_HOME nor HOME is set, so there is nowhere to put the preload library; set LEAKSCOPE_PRELOAD_LIB")?
        .join("leakscope");
    let path = cache.join(format!("libleakscope_preload-{hash}.so"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
        return Ok(path);
    }
    let fail = |e: std::io::Error| {
        format!(
            "run: cannot write the preload library to {}: {e}; set LEAKSCOPE_PRELOAD_LIB",
            cache.display()
        )
    };
    std::fs::create_dir_all(&cache).map_err(fail)?;
    let partial = cache.join(format!(
        ".libleakscope_preload-{hash}.{}",
        std::process::id()
    ));
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            fail(e)
        })?;
    Ok(path)
}
