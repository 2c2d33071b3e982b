//! rwsgi-gw: the edge of the program. Parses the command line, opens the logs,
//! binds the listeners, boots the workers and turns signals into actions.
//! Each concern lives in its own module; this one only wires them together.

mod cli;
mod environ;
mod http;
mod log;
mod pool;
mod protocol;
mod sandbox;
mod timeouts;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::pool::{BootFailure, Pool};

/// Exit codes: 1 for a runtime failure (a port in use), 2 for a usage error
/// (clap's convention), 3 when the app cannot be loaded (like gunicorn's
/// worker boot error).
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_BOOT: u8 = 3;

fn main() -> ExitCode {
    let config = cli::parse();
    if let Err(e) = log::init(config.log_level, &config.error_log, config.access_log.as_ref()) {
        eprintln!(
            "rwsgi-gw: cannot open a log file ({e}); check the path passed to --error-logfile or --access-logfile."
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: cli::Config) -> ExitCode {
    let pid = std::process::id();
    raise_fd_limit();
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let mut listeners = Vec::new();
    for bind in &config.binds {
        match http::Listener::bind(bind) {
            Ok(listener) => {
                info!("Listening at: {} ({pid})", listener.describe());
                listeners.push(listener);
            }
            Err(e) => {
                error!("cannot listen on {bind:?}: {e}; choose another address with --bind.");
                return ExitCode::from(EXIT_RUNTIME);
            }
        }
    }
    let _pid_file = match config.pid_file.map(PidFile::create).transpose() {
        Ok(pid_file) => pid_file,
        Err(e) => {
            error!("cannot write the pid file: {e}; pass a writable path to --pid.");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let spec = worker::Spec {
        python: config.python,
        app: config.app,
        chdir: config.chdir,
        pythonpath: config.pythonpath,
        env: config.env,
        threads: config.pool.threads,
        sandbox: config.sandbox,
    };
    let app = spec.app.clone();
    let pool = match Pool::start(spec, config.pool).await {
        Ok(pool) => Arc::new(pool),
        Err(failure) => {
            report_boot_failure(&app, &failure, &config.error_log);
            return ExitCode::from(EXIT_BOOT);
        }
    };
    let front = Arc::new(http::Front {
        pool: pool.clone(),
        limits: config.limits,
        underscores: config.underscores,
        proxies: config.proxies,
    });
    let shutdown = signals.wait_for_stop(&pool, config.graceful_timeout);
    let deadline = http::serve(listeners, front, shutdown).await;
    pool.stop(deadline).await;
    info!("Shutting down: Master");
    ExitCode::SUCCESS
}

/// Every connection is a file descriptor: take the hard limit, not the
/// conventional soft 1024, before accepting thousands of keep-alive clients.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warning!("cannot raise the open file limit from {soft} to {hard}: {e}");
            }
        }
        _ => {}
    }
}

/// The signals gunicorn defines, as tokio streams.
struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
    ttin: Signal,
    ttou: Signal,
    usr1: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
            ttin: signal(SignalKind::from_raw(libc::SIGTTIN))?,
            ttou: signal(SignalKind::from_raw(libc::SIGTTOU))?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// Acts on every signal until one asks to stop, then returns the deadline
    /// for requests in progress: `graceful` from now for TERM and INT, now for
    /// QUIT. Connections and workers share it.
    async fn wait_for_stop(&mut self, pool: &Pool, graceful: Duration) -> Instant {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    info!("Handling signal: term");
                    return Instant::now() + graceful;
                }
                _ = self.int.recv() => {
                    info!("Handling signal: int");
                    return Instant::now() + graceful;
                }
                _ = self.quit.recv() => {
                    info!("Handling signal: quit");
                    return Instant::now();
                }
                _ = self.hup.recv() => {
                    info!("Handling signal: hup");
                    pool.reload();
                }
                _ = self.ttin.recv() => pool.add_worker(),
                _ = self.ttou.recv() => pool.remove_worker(),
                _ = self.usr1.recv() => {
                    info!("Handling signal: usr1; reopening the log files");
                    if let Err(e) = log::reopen() {
                        error!("cannot reopen a log file: {e}");
                    }
                }
            }
        }
    }
}

/// The `--pid` file, removed when dropped.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: PathBuf) -> std::io::Result<PidFile> {
        std::fs::write(&path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The traceback always reaches stderr, even when the error log is a file.
fn report_boot_failure(app: &str, failure: &BootFailure, error_log: &log::Target) {
    let message = format!(
        "Worker failed to boot, so rwsgi-gw is exiting. Fix the app {app:?} or the flags, then start again: {failure}"
    );
    error!("{message}");
    if !matches!(error_log, log::Target::Stderr) {
        eprintln!("{message}");
    }
}
