//! Child processes with a deadline: a hung child fails its test instead of
//! hanging the suite. `Command::output` and `Command::status`, each with a
//! limit in seconds; past it the child is killed and the test panics.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Seconds a test's own child (this program run again) may take.
pub const CHILD_SECS: u64 = 300;
/// Seconds a build (cargo, cc) or another tool run by a test may take.
pub const BUILD_SECS: u64 = 1200;

pub trait Deadline {
    /// As `output()` (stdin null, stdout and stderr captured).
    fn output_within(&mut self, secs: u64) -> std::io::Result<Output>;
    /// As `status()` (stdio inherited).
    fn status_within(&mut self, secs: u64) -> std::io::Result<ExitStatus>;
}

impl Deadline for Command {
    fn output_within(&mut self, secs: u64) -> std::io::Result<Output> {
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
        let status = wait_within(&mut child, secs, self);
        Ok(Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        })
    }

    fn status_within(&mut self, secs: u64) -> std::io::Result<ExitStatus> {
        let mut child = self.spawn()?;
        Ok(wait_within(&mut child, secs, self))
    }
}

/// `child.wait()`, killing it and failing past `secs` seconds.
pub fn wait_child(child: &mut Child, secs: u64) -> ExitStatus {
    wait_within(child, secs, &format!("child {}", child.id()))
}

fn wait_within(child: &mut Child, secs: u64, what: &dyn std::fmt::Debug) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what:?} still ran after {secs} s: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
