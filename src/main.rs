//! rwsgi-gw: the edge of the program. Parses the command line, opens the logs,
//! binds the listeners, boots the workers and runs until a signal says stop.
//! Each concern lives in its own module; this one only wires them together.

mod cli;
mod environ;
mod http;
mod log;
mod pool;
mod protocol;
mod worker;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::pool::{BootFailure, Pool};

/// Requests that may wait for a worker before new ones get 503.
const QUEUE_LIMIT: usize = 1024;
/// How long in-flight requests may take to finish after SIGTERM or SIGINT.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);

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
    let mut listeners = Vec::new();
    for bind in &config.binds {
        match http::Listener::bind(bind).await {
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
    let spec = worker::Spec {
        python: config.python,
        app: config.app,
        chdir: config.chdir,
        pythonpath: config.pythonpath,
        env: config.env,
    };
    let app = spec.app.clone();
    let pool = match Pool::start(spec, config.workers, QUEUE_LIMIT).await {
        Ok(pool) => Arc::new(pool),
        Err(failure) => {
            report_boot_failure(&app, &failure, &config.error_log);
            return ExitCode::from(EXIT_BOOT);
        }
    };
    let (mut term, mut int, mut quit) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::quit())) {
            (Ok(term), Ok(int), Ok(quit)) => (term, int, quit),
            _ => {
                error!("cannot install signal handlers");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
    let mut graceful = true;
    let shutdown = async {
        tokio::select! {
            _ = term.recv() => info!("Handling signal: term"),
            _ = int.recv() => info!("Handling signal: int"),
            _ = quit.recv() => {
                info!("Handling signal: quit");
                graceful = false;
            }
        }
    };
    http::serve(listeners, pool.clone(), shutdown, GRACEFUL_TIMEOUT).await;
    let grace = if graceful { GRACEFUL_TIMEOUT } else { Duration::ZERO };
    pool.stop(grace).await;
    info!("Shutting down: Master");
    ExitCode::SUCCESS
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
