//! Starting one worker process: the interpreter's command line with the
//! embedded shim, a clean environment, and what the child sets up between fork
//! and exec.
//!
//! This module starts processes and forwards their stderr to the error log;
//! what the child does between fork and exec is `sandbox`'s; which worker
//! serves what, and what happens when one dies, is `pool`'s.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::log::{self, Level};
use crate::sandbox::Sandbox;

const PIPE_SIZE: libc::c_int = 1 << 20;
const SHIM_SOURCE: &str = include_str!("../python_shim/rwsgi_shim.py");
/// The shim travels in the environment and is compiled from there, so no file
/// is left behind by a master that is SIGKILLed and no path needs to be
/// readable in a sandbox. The shim removes the variable before the app loads.
const SHIM_VAR: &str = "RWSGI_GW_SHIM";
const BOOTSTRAP: &str = "import os; exec(compile(os.environ.pop('RWSGI_GW_SHIM'), 'rwsgi_shim.py', 'exec'))";

/// Variables a worker inherits from the master when set; everything else it
/// gets from `--env`. Python needs the locale ones to pick its encodings.
const PASS_THROUGH: &[&str] =
    &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"];

/// How every worker is started.
pub struct Spec {
    pub python: PathBuf,
    pub app: String,
    pub chdir: PathBuf,
    pub pythonpath: Vec<String>,
    pub env: Vec<(String, String)>,
    pub threads: usize,
    pub sandbox: Sandbox,
}

/// A started worker process and its protocol pipes.
pub struct Process {
    pub child: Child,
    pub pid: u32,
    pub stdin: ChildStdin,
    pub stdout: ChildStdout,
}

/// `python` run the way every worker is: in `chdir`, with a clean
/// environment plus `env`.
fn python_command(python: &Path, chdir: &Path, env: &[(String, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(python);
    cmd.current_dir(chdir)
        .env_clear()
        .envs(PASS_THROUGH.iter().filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v))))
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

pub fn spawn(spec: &Spec) -> io::Result<Process> {
    let mut cmd = Command::from(python_command(&spec.python, &spec.chdir, &spec.env));
    cmd.arg("-c")
        .arg(BOOTSTRAP)
        .arg(&spec.app)
        .arg(spec.threads.to_string())
        .args(&spec.pythonpath)
        .env(SHIM_VAR, SHIM_SOURCE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let master = std::process::id();
    let sandbox = spec.sandbox.clone();
    // SAFETY: `apply` makes only async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || sandbox.apply(master));
    }
    let mut child = cmd.spawn().map_err(|e| spawn_error(&spec.python, e))?;
    let pid = child.id().unwrap_or_default();
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    // A 1 MiB chunk crosses a default 64 KiB pipe in sixteen hops; a larger
    // pipe saves most of those wake-ups. The kernel may refuse: then 64 KiB it is.
    for fd in [stdin.as_raw_fd(), stdout.as_raw_fd()] {
        // SAFETY: fcntl on a pipe fd this function owns.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) };
    }
    let stderr = child.stderr.take().expect("stderr is piped");
    tokio::spawn(forward_stderr(pid, stderr));
    Ok(Process { child, pid, stdin, stdout })
}

/// The directories `python` reads to start and import, as it reports them
/// when started the way a worker is: its prefixes and sys.path.
pub fn interpreter_paths(python: &Path, chdir: &Path, env: &[(String, String)]) -> io::Result<Vec<PathBuf>> {
    const REPORT: &str = "import sys; print('\\0'.join([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix] + sys.path))";
    let output = python_command(python, chdir, env).args(["-c", REPORT]).stdin(Stdio::null()).output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!("{} could not report its sys.path", python.display())));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.trim_end().split('\0').filter(|p| !p.is_empty()).map(|p| chdir.join(p)).collect())
}

fn spawn_error(python: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot start {}: {e}", python.display()))
}

/// Copies a worker's stderr (the app's prints and logging) into the error log,
/// a line at a time, tagged with the worker's pid: at INFO, except for
/// faulthandler's report (after a timeout's SIGABRT, or a crash), which is
/// the worker's last words and the reason it is being replaced.
async fn forward_stderr(pid: u32, stderr: impl AsyncRead + Unpin) {
    const MAX_LINE: u64 = 64 << 10;
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut level = Level::Info;
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.starts_with(b"Fatal Python error: ") {
                    level = Level::Error;
                }
                let text = String::from_utf8_lossy(&line);
                log::write(level, format_args!("[worker {pid}] {}", text.trim_end_matches(['\n', '\r'])));
            }
        }
    }
}
