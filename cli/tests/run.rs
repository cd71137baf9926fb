//! `leakscope run -- PROGRAM` on programs that do not link leakscope,
//! built here as anyone builds them (`cc`; `rustc -O`, so without frame
//! pointers): their output, exit status and death by a signal are their
//! own, the gate's status when they lose blocks; the report finds what
//! valgrind finds, names the frames and says it has no scopes; a child
//! reports too; a program that links leakscope keeps its own tracker.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use support::{example, wait_child, Deadline, BUILD_SECS, CHILD_SECS};

/// A C program, which does not link leakscope: ten `strdup` copies it
/// loses and a block a static keeps; then, as its first argument says,
/// it runs itself as a child, waits to be killed, aborts, or prints and
/// exits with its second argument.
const LEAKY_C: &str = r#"#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static char *kept;
static void lose_copies(void) {
    for (int i = 0; i < 10; i++) {
        char *copy = strdup("lost, ten times");
        (void)copy;
    }
}
/* Overwrites the stack lose_copies used: no stale copy of a lost address
   is left for a leak check to read as a root. */
static void scrub(void) {
    volatile char pad[8192];
    memset((char *)pad, 0, sizeof pad);
}
int main(int argc, char **argv) {
    lose_copies();
    kept = malloc(100);
    scrub();
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "spawn") == 0) {
        pid_t child = fork();
        if (child == 0) {
            execl(argv[0], argv[0], "child", (char *)0);
            _exit(127);
        }
        int status = 0;
        waitpid(child, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    if (strcmp(mode, "wait") == 0) {
        printf("ready\n");
        fflush(stdout);
        sleep(60);
        printf("went on after the signal\n");
        return 9;
    }
    if (strcmp(mode, "pause") == 0) {
        alarm(60);
        printf("ready\n");
        fflush(stdout);
        for (;;) {
            pause();
        }
    }
    if (strcmp(mode, "kill-child") == 0) {
        pid_t child = fork();
        if (child == 0) {
            for (;;) {
                pause();
            }
        }
        usleep(100000);
        kill(child, SIGTERM);
        int status = 0;
        waitpid(child, &status, 0);
        printf("child killed by %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        return 0;
    }
    if (strcmp(mode, "abort") == 0) {
        abort();
    }
    printf("hello %s\n", mode);
    return argc > 2 ? atoi(argv[2]) : 0;
}
"#;

/// A C library a Rust program links: a list of named nodes, whose head
/// the caller owns.
const LIST_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct node { struct node *next; char *name; };
struct node *leaky_list(int n) {
    struct node *head = NULL;
    for (int i = 0; i < n; i++) {
        struct node *node = malloc(sizeof *node);
        char name[16];
        snprintf(name, sizeof name, "node %d", i);
        node->name = strdup(name);
        node->next = head;
        head = node;
    }
    return head;
}
"#;

/// A plain Rust program (std's allocator, no leakscope) with C and Rust
/// leaks: four `strdup` copies of 10 bytes; the C library's three-node list
/// (16-byte nodes, 7-byte names) whose head it loses; a forgotten box of a
/// vector (24 bytes, its 64-byte buffer with it); and a vector and string a
/// static keeps.
const LEAKY_RS: &str = r#"use std::ffi::{c_char, c_int, c_void};
use std::hint::black_box;
use std::sync::Mutex;

extern "C" {
    fn strdup(s: *const c_char) -> *mut c_char;
    fn leaky_list(n: c_int) -> *mut c_void;
}

static KEPT: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[inline(never)]
fn copy_name() {
    black_box(unsafe { strdup(c"lost name".as_ptr()) });
}

#[inline(never)]
fn build_list() {
    black_box(unsafe { leaky_list(3) });
}

#[inline(never)]
fn forget_vec() {
    std::mem::forget(black_box(Box::new(vec![7u64; 8])));
}

/// Overwrites the stack the calls above used: no stale copy of a lost
/// address is left for a leak check (ours or valgrind's) to read as a root.
#[inline(never)]
fn scrub() {
    black_box([0usize; 4096]);
}

fn main() {
    for _ in 0..4 {
        copy_name();
    }
    build_list();
    forget_vec();
    KEPT.lock().unwrap().push("kept".repeat(10));
    scrub();
    println!("done");
}
"#;

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a compiler (or `ar`) in `dir`; it must succeed.
fn build(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output_within(BUILD_SECS)
        .unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", stderr(&out));
}

/// The command alone, as `cargo install --path cli` leaves it: a copy in
/// a directory of its own, with no library beside it, and a cache
/// directory of its own for the library it embeds.
fn installed() -> &'static (PathBuf, PathBuf) {
    static COPY: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    COPY.get_or_init(|| {
        let dir = scratch("run-installed");
        std::fs::create_dir(dir.join("bin")).unwrap();
        let exe = dir.join("bin/leakscope");
        std::fs::copy(env!("CARGO_BIN_EXE_leakscope"), &exe).unwrap();
        (exe, dir.join("cache"))
    })
}

/// `leakscope run ARGS` in `dir`.
fn run(dir: &Path, args: &[&str]) -> Command {
    let (exe, cache) = installed();
    let mut cmd = Command::new(exe);
    cmd.arg("run").args(args).current_dir(dir);
    cmd.env_remove("LEAKSCOPE_REPORT")
        .env_remove("LEAKSCOPE_PRELOAD_LIB")
        .env("XDG_CACHE_HOME", cache);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Blocks and bytes of one kind in a report's leak check.
fn amount(doc: &Value, kind: &str) -> (u64, u64) {
    let a = &doc["leak_check"][kind];
    (a["blocks"].as_u64().unwrap(), a["bytes"].as_u64().unwrap())
}

/// A call-site's frames: function, file, line.
fn frames(doc: &Value, id: &Value) -> Vec<(String, String, u64)> {
    let site = (doc["callsites"].as_array().unwrap().iter())
        .find(|c| &c["id"] == id)
        .unwrap();
    (site["frames"].as_array().unwrap().iter())
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("").to_owned(),
                f["file"].as_str().unwrap_or("").to_owned(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// A report's loss records of `kind`, each as its blocks, bytes and the
/// functions of its stack.
fn records(doc: &Value, kind: &str) -> Vec<(u64, u64, Vec<String>)> {
    let mut found: Vec<_> = (doc["loss_records"].as_array().unwrap().iter())
        .filter(|r| r["kind"] == kind)
        .map(|r| {
            let stack = frames(doc, &r["callsite"]).into_iter().map(|f| f.0);
            (
                r["blocks"].as_u64().unwrap(),
                r["bytes"].as_u64().unwrap(),
                stack.collect(),
            )
        })
        .collect();
    found.sort();
    found
}

/// valgrind's figure for one kind (`definitely lost`) on a program:
/// `None` when valgrind is not installed (it must be, with
/// `LEAKSCOPE_TEST_NEEDS_VALGRIND`).
fn valgrind_figures(dir: &Path, program: &str) -> Option<Vec<(String, (u64, u64))>> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("LEAKSCOPE_TEST_NEEDS_VALGRIND").is_none(),
            "LEAKSCOPE_TEST_NEEDS_VALGRIND is set and valgrind does not run"
        );
        println!("valgrind is not installed (Debian: valgrind): skipped");
        return None;
    }
    let out = Command::new("valgrind")
        // valgrind frees glibc's own buffers (stdio's) before its check
        // unless told not to; the program and leakscope leave them live.
        .args(["--leak-check=full", "--run-libc-freeres=no", program])
        .current_dir(dir)
        .output_within(BUILD_SECS)
        .unwrap();
    let log = stderr(&out);
    let kinds = [
        "definitely lost",
        "indirectly lost",
        "possibly lost",
        "still reachable",
    ];
    let figures = kinds.map(|kind| {
        let line = (log.lines())
            .find(|l| l.contains(&format!("{kind}: ")))
            .unwrap_or_else(|| panic!("{log}"));
        // "==pid==    definitely lost: 1,846 bytes in 28 blocks"
        let numbers: Vec<u64> = (line.split(|c: char| !c.is_ascii_digit() && c != ','))
            .filter_map(|w| w.replace(',', "").parse().ok())
            .collect();
        (kind.replace(' ', "_"), (numbers[2], numbers[1]))
    });
    Some(figures.to_vec())
}

/// A Rust program with C and Rust leaks, built with `rustc -O` (no frame
/// pointers, no debug info) against a C library built with `cc -g`, and
/// without leakscope: under the gate it exits 23 after its own output; its
/// leak check finds valgrind's blocks and bytes of every kind; the stacks
/// name `strdup`, the Rust callers (from the symbol table) and the C
/// library's function with its file and line; the header says there are
/// no scopes.
#[test]
fn run_checks_a_rust_program_with_c_and_rust_leaks_as_valgrind_does() {
    let dir = scratch("run-rust");
    std::fs::write(dir.join("list.c"), LIST_C).unwrap();
    std::fs::write(dir.join("prog.rs"), LEAKY_RS).unwrap();
    build(&dir, "cc", &["-O2", "-g", "-c", "list.c"]);
    build(&dir, "ar", &["rcs", "liblist.a", "list.o"]);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    build(
        &dir,
        &rustc,
        &[
            "--edition",
            "2021",
            "-O",
            "prog.rs",
            "-L",
            ".",
            "-l",
            "static=list",
        ],
    );
    let out = run(
        &dir,
        &["--report", "r.json,r.txt", "--error-exitcode", "23"],
    )
    .args(["--", "./prog"])
    .output_within(CHILD_SECS)
    .unwrap();
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let doc = report(&dir.join("r.json"));
    assert_eq!(doc["preloaded"], true);
    assert_eq!(doc["scopes"], Value::Array(vec![]));
    assert_eq!(amount(&doc, "definitely_lost"), (6, 80));
    assert_eq!(amount(&doc, "indirectly_lost"), (6, 117));
    // The strdup copies (one call-site per unrolled call), the list's head
    // and the box: with the functions that made them.
    let names = |s: &[&str]| s.iter().map(|f| f.to_string()).collect::<Vec<_>>();
    let copy = names(&["__strdup", "prog::copy_name", "prog::main"]);
    let mut lost = records(&doc, "definitely_lost");
    for r in &mut lost {
        r.2.truncate(3);
        // `__strdup+0x1a` from glibc's symbol table: the name, not the offset.
        r.2[0] = r.2[0].split('+').next().unwrap().to_owned();
    }
    let head = names(&["leaky_list", "prog::build_list", "prog::main"]);
    let boxed = names(&["prog::forget_vec", "prog::main", "std::sys::backtrace"]);
    assert_eq!(
        lost.iter()
            .filter(|r| r.2 == copy)
            .map(|r| r.1)
            .sum::<u64>(),
        40,
        "{lost:?}"
    );
    assert!(lost.contains(&(1, 16, head)), "{lost:?}");
    assert!(
        lost.iter()
            .any(|r| (r.0, r.1) == (1, 24) && r.2[..2] == boxed[..2]),
        "{lost:?}"
    );
    // The C library's frames carry its file and line.
    let list = (doc["loss_records"].as_array().unwrap().iter())
        .find(|r| r["kind"] == "indirectly_lost" && r["bytes"] == 21)
        .unwrap();
    let stack = frames(&doc, &list["callsite"]);
    assert!(stack[0].0.starts_with("__strdup"), "{stack:?}");
    assert_eq!(stack[1].0, "leaky_list", "{stack:?}");
    assert!(stack[1].1.ends_with("run-rust/list.c"), "{stack:?}");
    assert_eq!(stack[1].2, 11, "{stack:?}");
    assert_eq!(stack[2].0, "prog::build_list", "{stack:?}");
    let text = std::fs::read_to_string(dir.join("r.txt")).unwrap();
    assert!(
        text.lines().nth(1).unwrap().contains(
            "preloaded (leakscope run): every allocation is counted, but request scopes need"
        ),
        "{text}"
    );
    // valgrind: the same blocks and bytes of every kind.
    if let Some(figures) = valgrind_figures(&dir, "./prog") {
        for (kind, figure) in figures {
            assert_eq!(amount(&doc, &kind), figure, "{kind}");
        }
    }
}

/// A C program under `leakscope run`: its output and exit status are its
/// own, the gate's status when it loses blocks, and the report names its
/// lost `strdup` copies and the static that keeps a block, with its
/// frames' file and line; a child it execs reports too.
#[test]
fn run_checks_a_c_program_that_does_not_link_leakscope() {
    let dir = c_program("run-c");
    // Its own exit status and output, with nothing asked of leakscope.
    let out = (run(&dir, &["--", "./leaky", "world", "3"]).output_within(CHILD_SECS)).unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    assert_eq!(stderr(&out), "");
    // The command alone did it: the library it embeds, in its cache, once.
    // A name starting with `.` is another test's run writing the same
    // library at this moment, before its rename.
    let cached: Vec<String> = (std::fs::read_dir(installed().1.join("leakscope")).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].starts_with("libleakscope_preload-"), "{cached:?}");
    // The gate's status, and the report.
    let out = run(
        &dir,
        &[
            "--report",
            "r.json",
            "--error-exitcode",
            "23",
            "./leaky",
            "again",
        ],
    )
    .output_within(CHILD_SECS)
    .unwrap();
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello again\n");
    let doc = report(&dir.join("r.json"));
    assert_eq!(amount(&doc, "definitely_lost"), (10, 160));
    assert_eq!(amount(&doc, "indirectly_lost"), (0, 0));
    let records = doc["loss_records"].as_array().unwrap();
    let lost = (records.iter())
        .find(|r| r["kind"] == "definitely_lost")
        .unwrap();
    let stack = frames(&doc, &lost["callsite"]);
    assert!(stack[0].0.contains("strdup"), "{stack:?}");
    assert_eq!(stack[1].0, "lose_copies", "{stack:?}");
    assert!(stack[1].1.ends_with("run-c/leaky.c"), "{stack:?}");
    assert_eq!(stack[1].2, 10, "{stack:?}");
    assert_eq!(stack[2].0, "main", "{stack:?}");
    let kept = (records.iter())
        .find(|r| r["kind"] == "still_reachable" && r["bytes"] == 100)
        .unwrap();
    assert_eq!(kept["retained_by"]["root"]["name"], "kept");
    let stack = frames(&doc, &kept["callsite"]);
    assert_eq!((&stack[0].0[..], stack[0].2), ("main", 22), "{stack:?}");
    // Nothing of leakscope's own threads is the program's: stdout's buffer
    // (4 KiB for a pipe) and the kept block, as valgrind finds.
    assert_eq!(amount(&doc, "still_reachable"), (2, 4196));
    if let Some(figures) = valgrind_figures(&dir, "./leaky") {
        for (kind, figure) in figures {
            assert_eq!(amount(&doc, &kind), figure, "{kind}");
        }
    }
    // The gate alone (no report asked) fails it too: the preloaded
    // tracker starts as it loads, not at a Rust allocation C code never makes.
    let out =
        (run(&dir, &["--error-exitcode", "23", "./leaky"]).output_within(CHILD_SECS)).unwrap();
    assert_eq!(out.status.code(), Some(23), "{}", stderr(&out));
    // A child it forks and execs inherits LD_PRELOAD: each process writes
    // its own report, with its own lost copies.
    let out = (run(&dir, &["--report", "spawn-%p.json", "./leaky", "spawn"]))
        .output_within(CHILD_SECS)
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut lost: Vec<(u64, (u64, u64))> = (std::fs::read_dir(&dir).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("spawn-"))
        .map(|n| {
            let doc = report(&dir.join(n));
            (
                doc["pid"].as_u64().unwrap(),
                amount(&doc, "definitely_lost"),
            )
        })
        .collect();
    lost.sort_unstable();
    assert_eq!(lost.len(), 2, "{lost:?}");
    assert!(
        lost[0].0 != lost[1].0 && lost.iter().all(|l| l.1 == (10, 160)),
        "{lost:?}"
    );
}

/// `leaky.c` built with `cc -g` in a fresh directory `name`.
fn c_program(name: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::write(dir.join("leaky.c"), LEAKY_C).unwrap();
    build(&dir, "cc", &["-g", "-O0", "-o", "leaky", "leaky.c"]);
    dir
}

/// Killed by SIGTERM, the preloaded program writes its report and dies by
/// SIGTERM, as a program that links leakscope does, and the thread the
/// signal interrupted runs none of the program's code meanwhile (it would
/// print); one that aborts dies by SIGABRT, as without leakscope; a child
/// it forks and kills with SIGTERM dies by it, and the parent lives on.
#[test]
fn run_keeps_death_by_signal_and_reports_on_sigterm() {
    let dir = c_program("run-signal");
    let mut child = run(&dir, &["--report", "term.json", "--", "./leaky", "wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // `leakscope run` execs the program: the child is the program.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_child(&mut child, CHILD_SECS);
    assert_eq!(status.signal(), Some(15), "{status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    let doc = report(&dir.join("term.json"));
    assert_eq!(amount(&doc, "definitely_lost"), (10, 160));
    let out = (run(&dir, &["--report", "fork-%p.json", "./leaky", "kill-child"]))
        .output_within(CHILD_SECS)
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "child killed by 15\n");
    let out = (run(&dir, &["--report", "abort.json", "./leaky", "abort"]))
        .output_within(CHILD_SECS)
        .unwrap();
    assert_eq!(out.status.signal(), Some(6), "{}", stderr(&out));
}

/// A program that links leakscope itself (the leaky service, with the
/// allocator line and `c-heap`) under `leakscope run`: the preloaded copy
/// says once that it stands aside, and the program's own tracker writes
/// the one report, scopes and all, not marked preloaded.
#[test]
fn run_stands_aside_for_a_program_that_links_leakscope() {
    let out = (run(&scratch("run-aside"), &["--report", "stderr", "--"]).arg(example()))
        .output_within(CHILD_SECS)
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let count = |s: &str| err.matches(s).count();
    assert_eq!(count("the preloaded leakscope stands aside"), 1, "{err}");
    assert_eq!(count("LEAK SUMMARY:"), 1, "{err}");
    assert_eq!(count("preloaded (leakscope run)"), 0, "{err}");
    assert!(err.contains("  GET /graph: "), "{err}");
}

/// A program that links leakscope for its scopes alone (no allocator
/// line): under `leakscope run` its own tracker is the process's `malloc`
/// and starts as it loads, so its scopes count Rust's blocks, which reach
/// `malloc` through `System`: exactly the 100 blocks of 96 bytes
/// `GET /push` keeps and the vector holding them (grown in that scope to
/// 128 entries of 24 bytes), and nothing of `GET /clean`.
#[test]
fn run_counts_the_scopes_of_a_program_without_the_allocator_line() {
    let program = support::built_example("scopes_only");
    let dir = scratch("run-scopes");
    let out = (run(&dir, &["--report", "r.json", "--"]).arg(program))
        .output_within(CHILD_SECS)
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    assert!(
        stderr(&out).contains("the preloaded leakscope stands aside"),
        "{}",
        stderr(&out)
    );
    let doc = report(&dir.join("r.json"));
    assert_eq!(doc["preloaded"], Value::Null);
    let scope = |name: &str| {
        let s = (doc["scopes"].as_array().unwrap().iter())
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no scope {name}: {doc}"));
        (
            s["runs"].as_u64().unwrap(),
            s["outstanding_blocks"].as_u64().unwrap(),
            s["outstanding_bytes"].as_u64().unwrap(),
        )
    };
    assert_eq!(scope("GET /push"), (100, 101, 100 * 96 + 128 * 24));
    assert_eq!(scope("GET /clean"), (100, 0, 0));
}

/// `--serve 127.0.0.1:0` (`LEAKSCOPE_SERVE`): the live server in a program
/// that does not link leakscope, its address on stderr; its leak check
/// finds the C program's ten lost copies while it runs.
#[test]
fn run_serves_the_live_report() {
    let dir = c_program("run-serve");
    // (`pause` in a loop: a check stops the program's threads with a
    // signal, which ends a `sleep` early.)
    let mut child = run(&dir, &["--serve", "127.0.0.1:0", "--", "./leaky", "pause"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = (line.strip_prefix("leakscope: serving reports on http://"))
        .and_then(|rest| rest.strip_suffix("/ (LEAKSCOPE_SERVE)\n"))
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    // The server starts before `main`: ask once the program has lost its
    // copies and says so.
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(
        &mut conn,
        b"GET /leak-check.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_child(&mut child, CHILD_SECS);
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let doc: Value = serde_json::from_str(body).unwrap();
    assert_eq!(doc["preloaded"], true);
    assert_eq!(amount(&doc, "definitely_lost"), (10, 160));
}
