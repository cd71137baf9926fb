//! A process killed by SIGTERM, SIGINT, SIGQUIT or SIGHUP with
//! `LEAKSCOPE_REPORT` set writes its report, then dies by the same signal
//! (the status a shell sees is the one it sees without leakscope). A
//! program's own handler wins, whether it replaces ours or chains to it (as
//! signal-hook and tokio's `ctrl_c` do), and tokio's graceful shutdown on
//! ctrl-c is left as it is.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use std::hint::black_box;
use std::io::{BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

const CHILD: &str = "LEAKSCOPE_TEST_CHILD";

static KEEP: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

#[inline(never)]
fn planted_leak() {
    KEEP.lock().unwrap().push(black_box(vec![7u8; 100]));
}

/// Says it is ready, then waits to be killed (gives up after 30 s).
fn ready_then_wait() {
    println!("ready");
    std::io::stdout().flush().unwrap();
    for _ in 0..3000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::process::exit(9);
}

/// The program's SIGTERM handler: says so and exits with 7.
extern "C" fn own_handler(_: libc::c_int) {
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(1, b"handled\n".as_ptr().cast(), 8);
        libc::_exit(7);
    }
}

/// The action that was there before the chaining handler (ours).
static PREVIOUS: Mutex<Option<libc::sigaction>> = Mutex::new(None);
static PREVIOUS_HANDLER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A handler that chains to the one before it, as signal-hook does, then
/// takes its time (time enough for a report to be written, wrongly) and
/// exits with 7.
extern "C" fn chaining_handler(sig: libc::c_int) {
    let before = PREVIOUS_HANDLER.load(std::sync::atomic::Ordering::Relaxed);
    if before != libc::SIG_DFL && before != libc::SIG_IGN {
        // SAFETY: `before` is the handler installed before this one.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(before) };
        f(sig);
    }
    // SAFETY: async-signal-safe calls only.
    unsafe {
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 300_000_000,
        };
        libc::nanosleep(&pause, std::ptr::null_mut());
        libc::write(1, b"handled\n".as_ptr().cast(), 8);
        libc::_exit(7);
    }
}

fn install(sig: i32, handler: usize) -> libc::sigaction {
    // SAFETY: sigaction with a zeroed struct holding an `extern "C"` handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, &sa, &mut old), 0);
        old
    }
}

/// The handler now installed for `sig`.
fn current_handler(sig: i32) -> usize {
    // SAFETY: sigaction that only reads the action into a zeroed struct.
    unsafe {
        let mut now: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut now), 0);
        now.sa_sigaction
    }
}

fn child(mode: &str) {
    KEEP.lock().unwrap().reserve(16);
    for _ in 0..3 {
        leakscope::track_scope("GET /leak", planted_leak);
    }
    match mode {
        "wait" => ready_then_wait(),
        "until_stdin_closes" => {
            println!("ready");
            std::io::stdout().flush().unwrap();
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
            std::process::exit(9);
        }
        "own" => {
            install(libc::SIGTERM, own_handler as *const () as usize);
            ready_then_wait();
        }
        "chain" => {
            let old = install(libc::SIGTERM, chaining_handler as *const () as usize);
            PREVIOUS_HANDLER.store(old.sa_sigaction, std::sync::atomic::Ordering::Relaxed);
            *PREVIOUS.lock().unwrap() = Some(old);
            ready_then_wait();
        }
        "tokio" => {
            let rt = common::two_worker_runtime();
            rt.block_on(async {
                let before = current_handler(libc::SIGINT);
                let ctrl_c = tokio::spawn(tokio::signal::ctrl_c());
                // Ready once tokio's handler is the installed one (the
                // task installs it when it first polls).
                for _ in 0..1000 {
                    if current_handler(libc::SIGINT) != before {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert_ne!(current_handler(libc::SIGINT), before, "tokio's handler");
                println!("ready");
                std::io::stdout().flush().unwrap();
                ctrl_c.await.unwrap().unwrap();
                println!("graceful");
            });
        }
        "signalfd" => {
            // The program takes SIGTERM from a signalfd: it blocks it (as
            // such programs do before they make other threads), so that
            // the kernel queues it for the descriptor instead of running a
            // handler.
            // SAFETY: a sigset_t filled by sigemptyset/sigaddset, a
            // signalfd of ours, and a read into a buffer of its size.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                let fd = libc::signalfd(-1, &set, 0);
                assert!(fd >= 0);
                println!("ready");
                std::io::stdout().flush().unwrap();
                let mut info: libc::signalfd_siginfo = std::mem::zeroed();
                let n = libc::read(
                    fd,
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    std::mem::size_of_val(&info),
                );
                assert_eq!(n as usize, std::mem::size_of_val(&info));
                assert_eq!(info.ssi_signo, libc::SIGTERM as u32);
            }
            println!("read it");
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn spawn(mode: &str, env: &[(&str, &Path)]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD, mode)
        .env_remove("LEAKSCOPE_REPORT")
        .env_remove("LEAKSCOPE_ERROR_EXITCODE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: setrlimit is async-signal-safe; no core file for SIGQUIT.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let out = common::ready(&mut child);
    (child, out)
}

/// Sends `sig` to `child` and waits: (the signal that ended it, or its exit
/// status as `Err`), and what it printed after "ready".
fn kill_and_wait(
    child: Child,
    mut out: BufReader<std::process::ChildStdout>,
    sig: i32,
) -> (Result<i32, i32>, String) {
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child.id() as i32, &mut status, 0) };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    let how = if libc::WIFSIGNALED(status) {
        Ok(libc::WTERMSIG(status))
    } else {
        Err(libc::WEXITSTATUS(status))
    };
    (how, rest)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leakscope-fatal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn each_fatal_signal_writes_the_report_then_kills() {
    for (sig, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGHUP, "HUP"),
    ] {
        // Without leakscope's variables: the baseline status.
        let (child, out) = spawn("wait", &[]);
        let (plain, _) = kill_and_wait(child, out, sig);
        assert_eq!(plain, Ok(sig), "SIG{name} without a report");
        let path = scratch(&format!("{name}.txt"));
        let (child, out) = spawn("wait", &[("LEAKSCOPE_REPORT", &path)]);
        let (how, _) = kill_and_wait(child, out, sig);
        assert_eq!(how, plain, "SIG{name} with a report");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("SIG{name}: {e}"));
        assert!(
            text.contains("GET /leak:") && text.contains("3 runs, 3 blocks / 300 bytes"),
            "SIG{name}: {text}"
        );
        assert!(text.contains("LEAK SUMMARY:"), "SIG{name}: {text}");
    }
}

/// The program exits on its own (its input closed) while the report of
/// the SIGTERM it got is being written: it still dies by the signal, as it
/// would have without leakscope, and the report is whole.
fn an_exit_during_the_signal_report_waits_for_it() {
    let path = scratch("exiting.txt");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD, "until_stdin_closes")
        .env("LEAKSCOPE_REPORT", &path)
        .env_remove("LEAKSCOPE_ERROR_EXITCODE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    common::ready(&mut child);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    drop(child.stdin.take());
    let status = common::timeout::wait_child(&mut child, common::CHILD_SECS);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("LEAK SUMMARY:"), "{text}");
}

fn the_programs_handler_wins() {
    for mode in ["own", "chain"] {
        let path = scratch(&format!("{mode}.txt"));
        let (child, out) = spawn(mode, &[("LEAKSCOPE_REPORT", &path)]);
        let (how, printed) = kill_and_wait(child, out, libc::SIGTERM);
        assert_eq!((how, printed.as_str()), (Err(7), "handled\n"), "{mode}");
        // _exit runs no exit hook, and our handler stood aside.
        assert!(!path.exists(), "{mode}: a report was written");
    }
}

fn tokio_ctrl_c_shuts_down_gracefully() {
    let path = scratch("tokio.txt");
    let (child, out) = spawn("tokio", &[("LEAKSCOPE_REPORT", &path)]);
    let (how, printed) = kill_and_wait(child, out, libc::SIGINT);
    assert_eq!((how, printed.as_str()), (Err(0), "graceful\n"));
    // The report at exit, once.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.matches("leakscope: outstanding allocations").count(),
        1,
        "{text}"
    );
    assert!(text.contains("3 runs, 3 blocks / 300 bytes"), "{text}");
}

/// leakscope's threads (the timeline's, the report signal's) block the
/// program's signals: a SIGTERM sent to a process that blocks it to read it
/// from a signalfd stays queued for the descriptor, as without leakscope,
/// instead of landing on one of ours (whose mask, made before `main`, would
/// let it in, and run the fatal-signal report).
fn a_program_that_waits_for_signals_gets_them() {
    let path = scratch("signalfd.txt");
    let (child, out) = spawn("signalfd", &[("LEAKSCOPE_REPORT", &path)]);
    let (how, printed) = kill_and_wait(child, out, libc::SIGTERM);
    assert_eq!((how, printed.as_str()), (Err(0), "read it\n"));
    // It exited normally: the report at exit.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("3 runs, 3 blocks / 300 bytes"), "{text}");
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child(&mode);
    }
    common::run(&[
        (
            "each_fatal_signal_writes_the_report_then_kills",
            each_fatal_signal_writes_the_report_then_kills,
        ),
        (
            "an_exit_during_the_signal_report_waits_for_it",
            an_exit_during_the_signal_report_waits_for_it,
        ),
        ("the_programs_handler_wins", the_programs_handler_wins),
        (
            "tokio_ctrl_c_shuts_down_gracefully",
            tokio_ctrl_c_shuts_down_gracefully,
        ),
        (
            "a_program_that_waits_for_signals_gets_them",
            a_program_that_waits_for_signals_gets_them,
        ),
    ]);
    let _ = std::fs::remove_dir_all(scratch("x").parent().unwrap());
}
