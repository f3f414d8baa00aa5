//! Bounded child processes: captured output, whole-process-group kill, kill-and-reap on drop.
//!
//! Every child runs in its own process group so that a timeout or a drop also kills whatever
//! it started (`sh -c`, `ip netns exec` wrappers and the like).

use std::{
    io::{ErrorKind, Read},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// How long [`run_bounded`] callers that do not choose a timeout let a command run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to keep collecting output after a command exited while something it started in
/// the background still holds its stdout/stderr open.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

const POLL: Duration = Duration::from_millis(10);

/// A pipe drained by a background thread into a buffer.
#[derive(Default)]
struct Capture {
    buf: Mutex<Vec<u8>>,
    done: AtomicBool,
}

impl Capture {
    fn start(mut src: impl Read + Send + 'static) -> Arc<Self> {
        let capture = Arc::new(Self::default());
        let sink = Arc::clone(&capture);
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match src.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => sink.lock().extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            sink.done.store(true, Ordering::Release);
        });
        capture
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// Sends SIGKILL to the process group led by `pid`.
///
/// Callers only do this while the leader has not been reaped yet, so the id cannot have been
/// reused by an unrelated process.
fn kill_group(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the process
    // group our own unreaped child leads (see the function comment).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

fn spawn_piped(mut cmd: Command) -> (Child, Arc<Capture>, Arc<Capture>, String) {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {what}: {e}"));
    let stdout = Capture::start(child.stdout.take().expect("stdout is piped"));
    let stderr = Capture::start(child.stderr.take().expect("stderr is piped"));
    (child, stdout, stderr, what)
}

/// Waits (bounded) until both pipes reached end of file.
fn drain(stdout: &Capture, stderr: &Capture, grace: Duration) {
    let deadline = Instant::now() + grace;
    while !(stdout.is_done() && stderr.is_done()) && Instant::now() < deadline {
        thread::sleep(POLL);
    }
}

/// Runs `cmd` to completion with captured output, killing its whole process group once
/// `timeout` has passed (the returned stderr then ends with a note saying so).
///
/// Unlike [`Command::output`] this never hangs: output that something started in the
/// background keeps writing after the command itself exited is collected only briefly.
pub fn run_bounded(cmd: Command, timeout: Duration) -> Output {
    let (mut child, stdout, stderr, what) = spawn_piped(cmd);
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                kill_group(child.id());
                break child
                    .wait()
                    .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
            }
            Ok(None) => thread::sleep(POLL),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    drain(
        &stdout,
        &stderr,
        if timed_out {
            Duration::from_secs(2)
        } else {
            OUTPUT_GRACE
        },
    );
    let mut err = stderr.bytes();
    if timed_out {
        err.extend_from_slice(
            format!("\n[podnet-tests] killed after {timeout:?}: {what}\n").as_bytes(),
        );
    }
    Output {
        status,
        stdout: stdout.bytes(),
        stderr: err,
    }
}

/// Renders a finished command's result for panic messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    )
}

/// A background process that is killed (with its whole process group) and reaped on drop,
/// including during a panic. Its stdout and stderr are collected in the background.
pub struct ChildGuard {
    child: Child,
    what: String,
    stdout: Arc<Capture>,
    stderr: Arc<Capture>,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Starts `cmd` in its own process group with stdin closed and stdout/stderr captured.
    pub fn spawn(cmd: Command) -> Self {
        let (child, stdout, stderr, what) = spawn_piped(cmd);
        Self {
            child,
            what,
            stdout,
            stderr,
            status: None,
        }
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// The exit status if the process has exited (reaping it), without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what));
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for the process to exit, killing it otherwise, and returns its
    /// status and complete output.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let status = match self.wait_timeout(timeout) {
            Some(status) => status,
            None => {
                self.kill();
                self.status.expect("kill reaps the child")
            }
        };
        drain(&self.stdout, &self.stderr, Duration::from_secs(2));
        Output {
            status,
            stdout: self.stdout.bytes(),
            stderr: self.stderr.bytes(),
        }
    }

    /// Kills the process group now and reaps the process (idempotent).
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        // Not reaped yet (we never called a successful wait), so the pid is still ours.
        kill_group(self.child.id());
        self.status = self.child.wait().ok();
    }

    /// Waits (bounded) for a stdout line containing `needle` and returns that line.
    ///
    /// Panics with the captured output on timeout, or as soon as the process has exited and
    /// closed stdout without printing it.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            // Check `done` before reading, so a line written just before EOF is not missed.
            let finished = self.stdout.is_done();
            if let Some(line) = self.stdout.text().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            let exited = finished && self.try_status().is_some();
            if exited || Instant::now() >= deadline {
                drain(&self.stdout, &self.stderr, Duration::from_millis(200));
                panic!(
                    "{} waiting for {needle:?} on stdout of {}\n--- stdout ---\n{}--- stderr ---\n{}",
                    if exited {
                        format!("process exited ({:?})", self.status)
                    } else {
                        format!("timed out after {timeout:?}")
                    },
                    self.what,
                    self.stdout(),
                    self.stderr(),
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard")
            .field("pid", &self.child.id())
            .field("what", &self.what)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}
