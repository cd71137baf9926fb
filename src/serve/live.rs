//! Looking at a running program: the report over HTTP on loopback, and the
//! report written on a signal.
//!
//! Owns [`serve_report`] (a small HTTP/1.1 server on a thread of its own,
//! std only) and [`report_on_signal`] (a handler that only writes a byte to a
//! pipe, and a thread that writes the report when the byte arrives). Both
//! build reports outside the allocation path, on their own threads, with
//! those threads' allocations untracked.

use crate::alloc::thread;
use crate::check::stop;
use crate::report::model::{growth, Growth, Report, ScopeStats};
use crate::serve::env::Dest;
use crate::serve::exit;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// The server [`serve_report`] started; dropping it stops it.
#[derive(Debug)]
pub struct ReportServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReportServer {
    /// Where it listens (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ReportServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves the live report over HTTP on `addr`, which must be a loopback
/// address (`127.0.0.1:0` picks a free port): `GET /` or `/report` gives the
/// text, `GET /report.json` the JSON document, and `/leak-check` and
/// `/leak-check.json` the same with a full leak check (it stops the
/// program's threads for the time of the check). Each report served says
/// what every scope did since the one served before it ([`Report::growth`]),
/// so the endpoint that grows now stands out.
pub fn serve_report(addr: impl ToSocketAddrs) -> std::io::Result<ReportServer> {
    thread::untracked(|| {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("serve_report listens on loopback only, not {addr}"),
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("leakscope-report".to_owned())
            .spawn(move || {
                thread::untracked(|| {
                    let mut previous = Previous::default();
                    for conn in listener.incoming() {
                        if flag.load(Ordering::Acquire) {
                            break;
                        }
                        if let Ok(conn) = conn {
                            let _ = answer(conn, &mut previous);
                        }
                    }
                })
            })?;
        Ok(ReportServer {
            addr,
            stop,
            thread: Some(thread),
        })
    })
}

/// The scopes of the last report a channel (the server, the signal) gave,
/// so that the next one says what grew in between.
#[derive(Default)]
struct Previous(Option<(f64, Vec<ScopeStats>)>);

impl Previous {
    /// Sets `report`'s growth since the previous one (the time between the
    /// two snapshots), and remembers it.
    fn mark(&mut self, report: &mut Report) {
        let (seconds, scopes) = match &self.0 {
            Some((at, earlier)) => (Some(report.seconds - at), growth(&report.scopes, earlier)),
            None => (None, growth(&report.scopes, &[])),
        };
        report.growth = Some(Growth { seconds, scopes });
        self.0 = Some((report.seconds, report.scopes.clone()));
    }
}

/// The report as served: with its growth since the previous one served.
fn live_report(previous: &mut Previous) -> Report {
    let mut report = exit::snapshot_now();
    previous.mark(&mut report);
    report
}

/// Reads one request and writes its answer.
fn answer(mut conn: TcpStream, previous: &mut Previous) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/" | "/report") => ("200 OK", "text/plain", live_report(previous).to_string()),
        ("GET", "/report.json") => (
            "200 OK",
            "application/json",
            exit::json(&live_report(previous)),
        ),
        ("GET", "/leak-check") => ("200 OK", "text/plain", exit::checked_report().to_string()),
        ("GET", "/leak-check.json") => (
            "200 OK",
            "application/json",
            exit::json(&exit::checked_report()),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /report, /report.json, /leak-check or /leak-check.json\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

// ---------------------------------------------------------------- on a signal

/// The write end of the pipe the signal handler writes to (-1: none yet).
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_report_signal(_sig: libc::c_int) {
    // SAFETY: errno is saved and put back; write(2) on a pipe is
    // async-signal-safe (a full pipe means a report is pending anyway).
    unsafe {
        let errno = *libc::__errno_location();
        let fd = PIPE_WRITE.load(Ordering::Relaxed);
        if fd >= 0 {
            libc::write(fd, b"!".as_ptr().cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// Writes the report each time the process gets `signal` (`libc::SIGUSR2`,
/// say): where `LEAKSCOPE_REPORT` says, or to stderr; with the full leak
/// check unless `LEAKSCOPE_LEAK_CHECK=no`. Fails, changing nothing, if the
/// program already handles that signal. With `LEAKSCOPE_REPORT` set, this
/// is done for `LEAKSCOPE_REPORT_SIGNAL` (SIGUSR2 unless it says otherwise)
/// without any code.
pub fn report_on_signal(signal: i32) -> std::io::Result<()> {
    thread::untracked(|| install(signal))
}

/// Installs the handler and, the first time, the pipe and the thread that
/// reads it. Makes no Rust allocation (it runs inside the first allocation
/// when `LEAKSCOPE_REPORT` asks for it): the thread is a raw pthread.
pub(crate) fn install(signal: i32) -> std::io::Result<()> {
    let handler = on_report_signal as *const () as usize;
    if stop::signal_owner(signal, handler)? {
        return Ok(());
    }
    if PIPE_WRITE.load(Ordering::Acquire) < 0 {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two descriptors; the write end never blocks.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) };
        // SAFETY: a detached thread running `watch` with the read end; the
        // attribute struct lives across the call.
        let made = unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            libc::pthread_attr_init(&mut attr);
            libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
            let mut t: libc::pthread_t = std::mem::zeroed();
            let rc =
                libc::pthread_create(&mut t, &attr, watch, fds[0] as usize as *mut libc::c_void);
            libc::pthread_attr_destroy(&mut attr);
            rc
        };
        if made != 0 {
            // SAFETY: closing our own descriptors.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            return Err(std::io::Error::from_raw_os_error(made));
        }
        PIPE_WRITE.store(fds[1], Ordering::Release);
    }
    // The handler only writes to a pipe.
    stop::set_handler(signal, handler, 0, false)
}

/// Parses `LEAKSCOPE_REPORT_SIGNAL`: `none`, a name (`USR2`, `SIGUSR1`) or
/// a number. `Ok(None)`: no signal.
pub(crate) fn parse_signal(value: &str) -> Result<Option<i32>, String> {
    let v = value.trim();
    let name = v.strip_prefix("SIG").unwrap_or(v);
    match name {
        "none" | "NONE" | "" => Ok(None),
        "USR1" => Ok(Some(libc::SIGUSR1)),
        "USR2" => Ok(Some(libc::SIGUSR2)),
        "HUP" => Ok(Some(libc::SIGHUP)),
        n => match n.parse::<i32>() {
            Ok(s) if s > 0 && s <= libc::SIGRTMAX() && s != libc::SIGKILL && s != libc::SIGSTOP => {
                Ok(Some(s))
            }
            _ => Err(format!(
                "LEAKSCOPE_REPORT_SIGNAL={value:?} is not a signal (USR2, USR1, HUP, a number, or none)"
            )),
        },
    }
}

/// The signal thread: a report per wake-up from the handler.
extern "C" fn watch(arg: *mut libc::c_void) -> *mut libc::c_void {
    let fd = arg as usize as i32;
    let mut previous = Previous::default();
    loop {
        let mut bytes = [0u8; 64];
        // SAFETY: reads into a buffer of ours.
        let n = unsafe { libc::read(fd, bytes.as_mut_ptr().cast(), bytes.len()) };
        if n == 0 {
            break;
        }
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        // A panic must not unwind out of an `extern "C"` thread. (After one,
        // `previous` is at worst the report before: still a valid base.)
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            thread::untracked(|| {
                let mut report = exit::report_now();
                previous.mark(&mut report);
                exit::write_report(exit::dest().unwrap_or(Dest::Stderr), &report);
            })
        }));
    }
    std::ptr::null_mut()
}

#[cfg(test)]
mod tests {
    use super::parse_signal;

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(parse_signal("USR2"), Ok(Some(libc::SIGUSR2)));
        assert_eq!(parse_signal("SIGUSR1"), Ok(Some(libc::SIGUSR1)));
        assert_eq!(parse_signal(" 10 "), Ok(Some(10)));
        assert_eq!(parse_signal("none"), Ok(None));
        assert!(parse_signal("9").is_err());
        assert!(parse_signal("USR3").is_err());
    }
}
