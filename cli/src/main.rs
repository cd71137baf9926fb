//! `leakscope`: saved reports (`LEAKSCOPE_REPORT=<path>.json`) shown,
//! compared, gated in CI and converted, without writing a script.
//!
//! ```text
//! leakscope show report.json
//! leakscope diff before.json after.json [--json]
//! leakscope check report.json [--max-bytes-per-run N] [--scope NAME=N]... [--no-lost]
//!                             [--growing [--allow-growth NAME]...]
//! leakscope convert report.json -o report.html
//! ```
//!
//! Exit status: 0 when all is well, 1 when `check` finds growth over a
//! budget or something lost, 2 for bad input (a file that cannot be read,
//! is not a leakscope report, or is of a newer schema), said in one line on
//! stderr. The reading and rendering are the library's; this is the command.

mod diff;
mod run;

use clap::{Parser, Subcommand};
use leakscope::report::{LeakKind, Report};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "leakscope",
    version,
    about = "Show, compare, gate and convert saved leakscope reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the text report of a saved JSON report.
    Show { report: PathBuf },
    /// What grew between two saved reports: per scope, the runs and the
    /// outstanding blocks and bytes added in between, and per run; per
    /// call-site, the live blocks and bytes added. Largest growth first.
    Diff {
        before: PathBuf,
        after: PathBuf,
        /// Write the comparison as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 1 when a scope's outstanding bytes per run are over its budget
    /// (or, with --no-lost, anything is definitely or indirectly lost; with
    /// --growing, a scope keeps growing), listing each; 0 otherwise.
    Check {
        report: PathBuf,
        /// The budget of every scope not named by --scope (default 0; with
        /// --scope or --growing given and this not, only the named scopes'
        /// budgets are checked).
        #[arg(long, value_name = "N")]
        max_bytes_per_run: Option<f64>,
        /// The budget of one scope, in bytes per run (repeatable).
        #[arg(long = "scope", value_name = "NAME=N", value_parser = parse_budget)]
        scopes: Vec<(String, f64)>,
        /// Also fail when the leak check found blocks definitely or
        /// indirectly lost.
        #[arg(long)]
        no_lost: bool,
        /// Also fail on each scope whose outstanding bytes keep rising with
        /// its runs (the report's "growing"), as LEAKSCOPE_ERROR_EXITCODE does.
        #[arg(long)]
        growing: bool,
        /// With --growing: a scope allowed to grow (repeatable), as a
        /// `growth:<scope>` line in LEAKSCOPE_SUPPRESSIONS allows it.
        #[arg(long = "allow-growth", value_name = "NAME", requires = "growing")]
        allow_growth: Vec<String>,
    },
    /// Write a saved report in another format, chosen by the output's
    /// suffix: .json, .pb.gz (pprof), .folded, .svg (flamegraph), .html,
    /// .dhat.json (DHAT's viewer); anything else is text.
    Convert {
        report: PathBuf,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Run PROGRAM with the tracker preloaded (LD_PRELOAD): a program that
    /// does not link leakscope gets the exit report and the full leak check
    /// that the LEAKSCOPE_* variables ask for. Its output, input, exit status
    /// (or the gate's) and death by a signal are its own: the command
    /// replaces itself with PROGRAM.
    Run {
        /// Where the report goes (LEAKSCOPE_REPORT): stderr, a path whose
        /// suffix chooses the format, several separated by commas.
        #[arg(long, value_name = "DEST")]
        report: Option<String>,
        /// Exit with N when something is lost or a scope keeps growing
        /// (LEAKSCOPE_ERROR_EXITCODE).
        #[arg(long, value_name = "N")]
        error_exitcode: Option<u8>,
        /// Serve the live report on this loopback address while it runs
        /// (LEAKSCOPE_SERVE): 127.0.0.1:0 picks a port, said on stderr.
        #[arg(long, value_name = "ADDR")]
        serve: Option<String>,
        /// The program and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "PROGRAM"
        )]
        command: Vec<std::ffi::OsString>,
    },
}

/// `NAME=N`: a scope's name (which may hold `=`) and its budget.
fn parse_budget(s: &str) -> Result<(String, f64), String> {
    let (name, n) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=BYTES"))?;
    let n: f64 = n
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| *n >= 0.0)
        .ok_or_else(|| format!("{n:?} is not a number of bytes"))?;
    Ok((name.to_owned(), n))
}

/// What went wrong: said on stderr, exit status 2.
struct Bad(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = match cli.command {
        Command::Show { report } => load(&report).and_then(|r| out(&r.to_string())),
        Command::Diff {
            before,
            after,
            json,
        } => (|| {
            let (b, a) = (load(&before)?, load(&after)?);
            let d = diff::Diff::between(&b, &a);
            out(&if json {
                d.to_json(&before, &after)
            } else {
                d.to_text(&before, &after)
            })
        })(),
        Command::Check {
            report,
            max_bytes_per_run,
            scopes,
            no_lost,
            growing,
            allow_growth,
        } => load(&report).and_then(|r| {
            let gates = Gates {
                max_bytes_per_run,
                budgets: &scopes,
                no_lost,
                growing: growing.then_some(&allow_growth[..]),
            };
            check(&r, &gates)
        }),
        Command::Convert { report, output } => load(&report).and_then(|r| convert(&r, &output)),
        Command::Run {
            report,
            error_exitcode,
            serve,
            command,
        } => {
            let vars = [
                ("LEAKSCOPE_REPORT", report),
                (
                    "LEAKSCOPE_ERROR_EXITCODE",
                    error_exitcode.map(|n| n.to_string()),
                ),
                ("LEAKSCOPE_SERVE", serve),
            ];
            run::run(&vars, &command).map_err(Bad)
        }
    };
    match done {
        Ok(code) => code,
        Err(Bad(why)) => {
            eprintln!("leakscope: {why}");
            ExitCode::from(2)
        }
    }
}

/// A saved report, or why it cannot be read.
fn load(path: &Path) -> Result<Report, Bad> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Bad(format!("cannot read {}: {e}", path.display())))?;
    Report::from_json(&text).map_err(|e| Bad(format!("{}: {e}", path.display())))
}

/// Writes `text` to stdout; a reader that went away (`| head`) ends it quietly.
fn out(text: &str) -> Result<ExitCode, Bad> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Bad(format!("cannot write to stdout: {e}"))),
    }
}

/// What `check` gates on.
struct Gates<'a> {
    max_bytes_per_run: Option<f64>,
    budgets: &'a [(String, f64)],
    no_lost: bool,
    /// `--growing`, with the scopes `--allow-growth` allows.
    growing: Option<&'a [String]>,
}

fn check(report: &Report, gates: &Gates<'_>) -> Result<ExitCode, Bad> {
    let &Gates {
        max_bytes_per_run,
        budgets,
        no_lost,
        growing,
    } = gates;
    let named = (budgets.iter().map(|(name, _)| ("--scope", name))).chain(
        growing
            .unwrap_or(&[])
            .iter()
            .map(|name| ("--allow-growth", name)),
    );
    for (flag, name) in named {
        if report.scope(name).is_none() {
            let known: Vec<&str> = report.scopes.iter().map(|s| s.name.as_str()).collect();
            return Err(Bad(format!(
                "{flag} {name:?}: the report has no such scope (it has: {})",
                known.join(", ")
            )));
        }
    }
    // With --growing alone, budgets are not checked.
    let default = max_bytes_per_run.or((budgets.is_empty() && growing.is_none()).then_some(0.0));
    let mut failures = Vec::new();
    let mut checked = 0;
    for s in &report.scopes {
        let budget = budgets
            .iter()
            .rev()
            .find(|(name, _)| *name == s.name)
            .map(|b| b.1)
            .or(default);
        let Some(budget) = budget else { continue };
        checked += 1;
        if s.bytes_per_run() > budget {
            failures.push(format!(
                "{}: {} bytes in {} blocks per run ({} {}, {} bytes outstanding), over its budget of {} bytes per run",
                s.name,
                diff::number(s.bytes_per_run()),
                diff::number(s.blocks_per_run()),
                diff::thousands(s.runs),
                if s.runs == 1 { "run" } else { "runs" },
                diff::thousands(s.outstanding_bytes),
                diff::number(budget),
            ));
        }
    }
    let mut passed = Vec::new();
    if default.is_some() || !budgets.is_empty() {
        passed.push(format!("{checked} scopes within their budgets"));
    }
    if let Some(allowed) = growing {
        let before = failures.len();
        for s in report.scopes.iter().filter(|s| s.growing) {
            if allowed.contains(&s.name) {
                continue;
            }
            failures.push(format!(
                "{}: keeps growing, {} bytes per run lately ({} {}, {} bytes outstanding)",
                s.name,
                diff::number(s.recent_bytes_per_run),
                diff::thousands(s.runs),
                if s.runs == 1 { "run" } else { "runs" },
                diff::thousands(s.outstanding_bytes),
            ));
        }
        if failures.len() == before {
            passed.push(format!("none of {} scopes growing", report.scopes.len()));
        }
    }
    if no_lost {
        let Some(lc) = report.leak_check.as_ref().filter(|lc| lc.error.is_none()) else {
            let why = report
                .leak_check
                .as_ref()
                .and_then(|lc| lc.error.clone())
                .unwrap_or_else(|| {
                    "it was written with LEAKSCOPE_LEAK_CHECK=no, or by snapshot()".to_owned()
                });
            return Err(Bad(format!(
                "--no-lost: the report has no leak check ({why}), so it cannot pass"
            )));
        };
        if lc.has_leaks() {
            failures.push(format!(
                "lost: {} bytes in {} blocks definitely, {} bytes in {} blocks indirectly",
                diff::thousands(lc.definitely_lost.bytes),
                diff::thousands(lc.definitely_lost.blocks),
                diff::thousands(lc.indirectly_lost.bytes),
                diff::thousands(lc.indirectly_lost.blocks),
            ));
            for r in lc
                .loss_records
                .iter()
                .filter(|r| matches!(r.kind, LeakKind::DefinitelyLost | LeakKind::IndirectlyLost))
            {
                let at = report
                    .callsite(r.callsite)
                    .and_then(|c| c.function())
                    .unwrap_or("(no stack)");
                failures.push(format!(
                    "  {} bytes in {} {} {} at {at}{}",
                    diff::thousands(r.bytes),
                    diff::thousands(r.blocks),
                    if r.blocks == 1 { "block" } else { "blocks" },
                    r.kind,
                    r.scope
                        .as_deref()
                        .map(|s| format!(" (scope {s})"))
                        .unwrap_or_default(),
                ));
            }
        } else {
            passed.push("nothing lost".to_owned());
        }
    }
    if failures.is_empty() {
        out(&format!("ok: {}\n", passed.join(", ")))
    } else {
        out(&(failures.join("\n") + "\n"))?;
        Ok(ExitCode::from(1))
    }
}

fn convert(report: &Report, output: &Path) -> Result<ExitCode, Bad> {
    let name = output.to_string_lossy();
    let body: Vec<u8> = if name.ends_with(".dhat.json") {
        report.to_dhat_json().into_bytes()
    } else if name.ends_with(".json") {
        report.to_json().into_bytes()
    } else if name.ends_with(".pb.gz") {
        report.to_pprof()
    } else if name.ends_with(".folded") {
        report.to_folded().into_bytes()
    } else if name.ends_with(".svg") {
        let mut svg = Vec::new();
        report
            .write_flamegraph(&mut svg)
            .map_err(|e| Bad(format!("cannot draw the flamegraph: {e}")))?;
        svg
    } else if name.ends_with(".html") || name.ends_with(".htm") {
        report.to_html().into_bytes()
    } else {
        report.to_string().into_bytes()
    };
    std::fs::write(output, body)
        .map_err(|e| Bad(format!("cannot write {}: {e}", output.display())))?;
    Ok(ExitCode::SUCCESS)
}
