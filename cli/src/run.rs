//! `leakscope run -- PROGRAM`: the program with the tracker preloaded.
//!
//! Finds the preload library (`libleakscope_preload.so`, the `preload/`
//! package: `LEAKSCOPE_PRELOAD_LIB`, else beside this command, as cargo
//! builds them both into one directory), puts it first in `LD_PRELOAD`,
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

/// Runs `command` preloaded; returns only when it could not be started.
pub fn run(
    report: Option<String>,
    error_exitcode: Option<u8>,
    command: &[OsString],
) -> Result<ExitCode, String> {
    let lib = library()?;
    let (program, args) = command.split_first().ok_or("run: no program given")?;
    let mut preload = OsString::from(&lib);
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env("LD_PRELOAD", preload);
    if let Some(dest) = report {
        cmd.env("LEAKSCOPE_REPORT", dest);
    }
    if let Some(n) = error_exitcode {
        cmd.env("LEAKSCOPE_ERROR_EXITCODE", n.to_string());
    }
    let e = cmd.exec();
    Err(format!("cannot run {}: {e}", program.to_string_lossy()))
}

/// The preload library: `LEAKSCOPE_PRELOAD_LIB`, else beside this command.
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
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this command: {e}"))?;
    let beside = exe.with_file_name(LIB);
    match beside.is_file() {
        true => Ok(beside),
        false => Err(format!(
            "run needs {LIB} beside this command ({}): build it with `cargo build -p leakscope-preload`, or set LEAKSCOPE_PRELOAD_LIB",
            beside.display()
        )),
    }
}
