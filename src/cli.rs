//! The command line: parsing and validating every flag into a `Config`.
//!
//! Names follow gunicorn's where they mean the same thing. Everything a user
//! can get wrong is caught here, before a socket is bound or a worker started,
//! and reported as one sentence (exit code 2). Nothing here runs or binds.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::environ::{TrustedProxies, Underscores};
use crate::http::Limits;
use crate::log::{Level, Target};
use crate::pool::Settings;
use crate::sandbox::{hidden_by_private_tmp, AllowList, Options as SandboxOptions, Sandbox};
use crate::timeouts::KeepAlive;
use crate::worker;

/// `--sandbox` presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    Strict,
}

const DEFAULT_PORT: u16 = 8000;

#[derive(Parser, Debug)]
#[command(
    name = "rwsgi-gw",
    version,
    about = "Serve a WSGI (PEP 3333) application: a Rust HTTP front end supervising CPython workers.",
    after_help = "APP is module:callable, module (meaning module:application) or module:factory()."
)]
struct Args {
    /// Address to listen on: HOST:PORT, [IPV6]:PORT or unix:PATH; repeat for several [default: 127.0.0.1:8000]
    #[arg(short = 'b', long = "bind", value_name = "ADDRESS", value_parser = parse_bind)]
    bind: Vec<Bind>,

    /// Number of worker processes [default: $WEB_CONCURRENCY, else 1]
    #[arg(short = 'w', long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,

    /// Threads per worker; above 1 the worker serves that many requests at once
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,

    /// Seconds a worker may spend on one request (or on loading the app) before it is killed; 0 means never
    #[arg(short = 't', long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    timeout: Duration,

    /// Seconds in-flight requests get to finish after SIGTERM or SIGINT
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    graceful_timeout: Duration,

    /// Retire a worker after this many requests; 0 means never
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_requests: u64,

    /// Add up to this many requests, at random, to --max-requests for each worker
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_requests_jitter: u64,

    /// Retire a worker, after its current request, once its resident memory passes this many MiB
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    max_worker_memory: Option<u64>,

    /// Requests that may wait for a free worker; when full, new requests get 503 at once
    #[arg(long, value_name = "N", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    backlog: u64,

    /// Seconds a request may wait for a free worker before it gets 503 [default: no limit]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    queue_timeout: Option<Duration>,

    /// Longest request line (method, target, version) accepted; longer gets 414
    #[arg(long, value_name = "BYTES", default_value_t = 4094, value_parser = clap::value_parser!(u64).range(16..=1 << 20))]
    limit_request_line: u64,

    /// Most header fields accepted in a request; more gets 431
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    limit_request_fields: u64,

    /// Longest header field (name, colon, space and value) accepted; longer gets 431
    #[arg(long, value_name = "BYTES", default_value_t = 8190, value_parser = clap::value_parser!(u64).range(16..=1 << 20))]
    limit_request_field_size: u64,

    /// Largest request body accepted, in bytes; larger gets 413; 0 means no limit
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    limit_request_body: u64,

    /// Seconds a client has to send the request line and headers, counted from the connect for the first request and from its first byte for the next
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    header_timeout: Duration,

    /// Seconds an idle keep-alive connection waits for its next request; 0 closes every connection after one response
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_keep_alive)]
    keep_alive: KeepAlive,

    /// Seconds a request body may stall (no byte arriving) before the request ends: 408 if the app has not answered yet
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    body_timeout: Duration,

    /// Header names with an underscore: drop them, refuse the request, or pass them on (dangerous)
    #[arg(long, value_enum, value_name = "POLICY", default_value = "drop")]
    header_map: Underscores,

    /// Peers whose X-Forwarded-* and Forwarded headers set the client address, scheme, host and prefix; comma-separated IPs, or * for any (unix-socket peers are always trusted)
    #[arg(long, value_name = "IPS", default_value = "127.0.0.1,::1", value_parser = parse_proxies)]
    forwarded_allow_ips: TrustedProxies,

    /// Run the workers as this user (name or uid); the master may stay root to bind low ports
    #[arg(short = 'u', long, value_name = "USER")]
    user: Option<String>,

    /// Run the workers in this group (name or gid) [default: the user's group]
    #[arg(short = 'g', long, value_name = "GROUP")]
    group: Option<String>,

    /// The workers' umask, in octal, such as 027
    #[arg(long, value_name = "MODE", value_parser = parse_umask)]
    umask: Option<u32>,

    /// Largest address space of a worker, in MiB (RLIMIT_AS): past it, allocations fail with MemoryError
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(16..))]
    worker_rlimit_as: Option<u64>,

    /// Most open files of a worker (RLIMIT_NOFILE)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(16..))]
    worker_rlimit_nofile: Option<u64>,

    /// Most processes and threads of the worker's user (RLIMIT_NPROC; not enforced for root)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    worker_rlimit_nproc: Option<u64>,

    /// CPU seconds over a worker's whole life (RLIMIT_CPU): past it, the worker is killed and replaced
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    worker_rlimit_cpu: Option<u64>,

    /// Give each worker its own network namespace: the app can connect nowhere, not even 127.0.0.1
    #[arg(long)]
    isolate_network: bool,

    /// Give each worker its own empty /tmp (a tmpfs in a private mount namespace)
    #[arg(long)]
    private_tmp: bool,

    /// Landlock: also let the workers read under PATH (their interpreter, app and sys.path always are); repeatable
    #[arg(long, value_name = "PATH")]
    allow_read: Vec<PathBuf>,

    /// Landlock: let the workers write under PATH (nothing else is writable); repeatable
    #[arg(long, value_name = "PATH")]
    allow_write: Vec<PathBuf>,

    /// A preset: strict = --isolate-network, --private-tmp, Landlock (read only what the app needs, write nothing else), --umask 027
    #[arg(long, value_enum, value_name = "PRESET")]
    sandbox: Option<Preset>,

    /// Start even when the kernel lacks a sandbox feature that was asked for, logging each one skipped
    #[arg(long)]
    sandbox_best_effort: bool,

    /// Write the master's pid to this file, removed at exit
    #[arg(long, value_name = "FILE")]
    pid: Option<PathBuf>,

    /// Python interpreter that runs the workers [default: $VIRTUAL_ENV/bin/python, else python3 on PATH]
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,

    /// Directory the workers run in and import the app from
    #[arg(long, value_name = "DIR")]
    chdir: Option<PathBuf>,

    /// Extra directories to put on the workers' sys.path, comma-separated
    #[arg(long, value_name = "DIRS", value_delimiter = ',')]
    pythonpath: Vec<String>,

    /// Environment variable for the workers, as KEY=VALUE; repeatable
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Access log file, Apache combined format; `-` is stdout [default: none]
    #[arg(long, value_name = "FILE")]
    access_logfile: Option<String>,

    /// Error log file; `-` is stderr
    #[arg(long, value_name = "FILE", default_value = "-")]
    error_logfile: String,

    /// Lowest level written to the error log
    #[arg(long, value_enum, default_value = "info")]
    log_level: Level,

    /// The WSGI application: module:callable, module, or module:factory()
    #[arg(value_name = "APP", value_parser = parse_app)]
    app: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Everything the rest of the program needs, validated.
#[derive(Debug)]
pub struct Config {
    pub binds: Vec<Bind>,
    pub python: PathBuf,
    pub chdir: PathBuf,
    pub pythonpath: Vec<String>,
    pub env: Vec<(String, String)>,
    pub app: String,
    pub log_level: Level,
    pub error_log: Target,
    pub access_log: Option<Target>,
    pub graceful_timeout: Duration,
    pub pid_file: Option<PathBuf>,
    pub pool: Settings,
    pub limits: Limits,
    pub underscores: Underscores,
    pub proxies: TrustedProxies,
    pub sandbox: Sandbox,
}

/// Parses the command line; on a mistake prints one sentence and exits 2.
pub fn parse() -> Config {
    match Args::try_parse().map_err(clap_sentence).and_then(Config::try_from) {
        Ok(config) => config,
        Err(UsageError::Clap(e)) => e.exit(),
        Err(UsageError::Invalid(message)) => {
            eprintln!("rwsgi-gw: {message}");
            std::process::exit(2);
        }
    }
}

enum UsageError {
    /// --help and --version, which clap prints and exits 0 for.
    Clap(clap::Error),
    Invalid(String),
}

fn clap_sentence(e: clap::Error) -> UsageError {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return UsageError::Clap(e);
    }
    // clap's first paragraph is the sentence; the rest is usage and hints.
    let rendered = e.render().to_string();
    let paragraph: Vec<&str> = rendered.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let sentence = paragraph.join(" ");
    let sentence = sentence.strip_prefix("error: ").unwrap_or(&sentence);
    UsageError::Invalid(format!("{sentence}; run rwsgi-gw --help for the usage."))
}

impl TryFrom<Args> for Config {
    type Error = UsageError;

    fn try_from(args: Args) -> Result<Self, UsageError> {
        let invalid = |m: String| UsageError::Invalid(m);
        let workers = match args.workers {
            Some(n) => usize::from(n),
            None => web_concurrency().map_err(invalid)?,
        };
        let chdir = match args.chdir {
            Some(dir) if dir.is_dir() => dir,
            Some(dir) => {
                return Err(invalid(format!(
                    "--chdir {} is not a directory; pass an existing directory.",
                    dir.display()
                )))
            }
            None => std::env::current_dir()
                .map_err(|e| invalid(format!("cannot read the current directory ({e}); pass --chdir.")))?,
        };
        let python = find_python(args.python.as_deref()).map_err(invalid)?;
        let strict = args.sandbox == Some(Preset::Strict);
        let private_tmp = args.private_tmp || strict;
        let confined = strict || !args.allow_read.is_empty() || !args.allow_write.is_empty();
        let mut interpreter = if private_tmp || confined {
            worker::interpreter_paths(&python, &chdir, &args.env)
                .map_err(|e| invalid(format!("cannot ask {} for its paths ({e}); check --python.", python.display())))?
        } else {
            Vec::new()
        };
        if private_tmp {
            outside_tmp(&python, &chdir, &args.pythonpath, &interpreter).map_err(invalid)?;
        }
        let landlock = confined.then(|| {
            interpreter.push(chdir.clone());
            interpreter.extend(args.pythonpath.iter().map(|p| chdir.join(p)));
            AllowList { read: args.allow_read, write: args.allow_write, interpreter }
        });
        let sandbox = Sandbox::resolve(&SandboxOptions {
            user: args.user,
            group: args.group,
            umask: args.umask.or(strict.then_some(0o027)),
            rlimit_as_mib: args.worker_rlimit_as,
            rlimit_nofile: args.worker_rlimit_nofile,
            rlimit_nproc: args.worker_rlimit_nproc,
            rlimit_cpu_seconds: args.worker_rlimit_cpu,
            isolate_network: args.isolate_network || strict,
            private_tmp,
            landlock,
            best_effort: args.sandbox_best_effort,
        })
        .map_err(|e| invalid(e.to_string()))?;
        let binds = if args.bind.is_empty() {
            vec![Bind::Tcp(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
        } else {
            args.bind
        };
        let pool = Settings {
            workers,
            threads: usize::from(args.threads),
            backlog: to_usize(args.backlog),
            timeout: args.timeout,
            queue_timeout: args.queue_timeout,
            max_requests: (args.max_requests > 0).then_some(args.max_requests),
            max_requests_jitter: args.max_requests_jitter,
            max_memory: args.max_worker_memory.map(|mib| mib << 20),
        };
        Ok(Config {
            binds,
            python,
            chdir,
            pythonpath: args.pythonpath.into_iter().filter(|p| !p.is_empty()).collect(),
            env: args.env,
            app: args.app,
            log_level: args.log_level,
            error_log: log_target(&args.error_logfile, Target::Stderr),
            access_log: args.access_logfile.as_deref().map(|f| log_target(f, Target::Stdout)),
            graceful_timeout: args.graceful_timeout,
            pid_file: args.pid,
            pool,
            limits: Limits {
                request_line: to_usize(args.limit_request_line),
                fields: to_usize(args.limit_request_fields),
                field_size: to_usize(args.limit_request_field_size),
                body: (args.limit_request_body > 0).then_some(args.limit_request_body),
                header_timeout: args.header_timeout,
                keep_alive: args.keep_alive,
                body_timeout: args.body_timeout,
            },
            underscores: args.header_map,
            proxies: args.forwarded_allow_ips,
            sandbox,
        })
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn web_concurrency() -> Result<usize, String> {
    match std::env::var("WEB_CONCURRENCY") {
        Err(_) => Ok(1),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(format!("WEB_CONCURRENCY={v:?} is not a worker count from 1 to 1024; fix it or pass --workers.")),
        },
    }
}

fn log_target(value: &str, dash: Target) -> Target {
    if value == "-" {
        dash
    } else {
        Target::File(PathBuf::from(value))
    }
}

/// `--private-tmp` gives each worker an empty /tmp, so what a worker opens to
/// start cannot live there (a checkout or venv under /tmp would vanish): not
/// the flags' paths, and not what the interpreter has on `sys.path` (from
/// PYTHONPATH or a .pth file).
fn outside_tmp(python: &Path, chdir: &Path, pythonpath: &[String], sys_path: &[PathBuf]) -> Result<(), String> {
    let given = [("--python", python.to_path_buf()), ("--chdir", chdir.to_path_buf())]
        .into_iter()
        .chain(pythonpath.iter().filter(|p| !p.is_empty()).map(|p| ("--pythonpath", chdir.join(p))))
        .map(|(flag, path)| (format!("{flag} {}", path.display()), path));
    let imported = sys_path
        .iter()
        .filter(|path| path.exists())
        .map(|path| (format!("{} on {}'s sys.path", path.display(), python.display()), path.clone()));
    match given.chain(imported).find(|(_, path)| hidden_by_private_tmp(path)) {
        Some((what, _)) => Err(format!(
            "--private-tmp hides /tmp from the workers, but {what} is under it; move it out of /tmp or drop --private-tmp."
        )),
        None => Ok(()),
    }
}

/// `--python` as given (a path, or a name looked up on PATH), else the active
/// venv's interpreter, else `python3` on PATH.
fn find_python(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return resolve_executable(path).ok_or_else(|| {
            format!("--python {} is not an executable file; pass the path of a Python interpreter.", path.display())
        });
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        let candidate = Path::new(&venv).join("bin/python");
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    resolve_executable(Path::new("python3"))
        .ok_or_else(|| "no python3 on PATH and no VIRTUAL_ENV; pass --python with the interpreter to use.".to_string())
}

fn resolve_executable(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 {
        // Absolute, so --chdir does not change its meaning; not canonical,
        // since a venv's python must keep its own path to find the venv.
        return is_executable(path).then(|| std::path::absolute(path).ok()).flatten();
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(path))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn parse_bind(value: &str) -> Result<Bind, String> {
    if let Some(path) = value.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a socket path, as in unix:/run/app.sock".into());
        }
        return Ok(Bind::Unix(PathBuf::from(path)));
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(Bind::Tcp(addr));
    }
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("{p:?} is not a port number from 0 to 65535"));
    let (host, port) = if let Some(bracketed) = value.strip_prefix('[') {
        let (host, after) =
            bracketed.split_once(']').ok_or("an IPv6 address needs its closing ']', as in [::1]:8000")?;
        match after {
            "" => (host, DEFAULT_PORT),
            _ => (host, port(after.strip_prefix(':').ok_or("expected :PORT after the ']'")?)?),
        }
    } else {
        match value.rsplit_once(':') {
            Some((host, p)) if !host.contains(':') => (host, port(p)?),
            Some(_) => return Err("an IPv6 address goes in brackets, as in [::1]:8000".into()),
            None => (value, DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return Err("the address has no host; use HOST:PORT, [IPV6]:PORT or unix:PATH".into());
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(Bind::Tcp)
        .ok_or_else(|| format!("cannot resolve host {host:?}; use HOST:PORT, [IPV6]:PORT or unix:PATH"))
}

fn parse_umask(value: &str) -> Result<u32, String> {
    u32::from_str_radix(value, 8)
        .ok()
        .filter(|&m| m <= 0o777)
        .ok_or_else(|| "expected an octal mode such as 027".into())
}

fn parse_proxies(value: &str) -> Result<TrustedProxies, String> {
    if value.trim() == "*" {
        return Ok(TrustedProxies::All);
    }
    let ips = value.split(',').map(str::trim).filter(|ip| !ip.is_empty());
    let ips = ips
        .map(|ip| ip.parse().map_err(|_| format!("{ip:?} is not an IP address; list IPs separated by commas, or *")));
    Ok(TrustedProxies::Only(ips.collect::<Result<_, _>>()?))
}

/// Seconds, fractions allowed; 0 means "no limit" (a century).
fn parse_seconds(value: &str) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(0.0) => Ok(Duration::from_secs(100 * 365 * 86_400)),
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err("expected a number of seconds, such as 30 or 0.5".into()),
    }
}

/// gunicorn's meaning: 0 turns keep-alive off rather than making it endless.
fn parse_keep_alive(value: &str) -> Result<KeepAlive, String> {
    match value.parse::<f64>() {
        Ok(0.0) => Ok(KeepAlive::Off),
        _ => parse_seconds(value).map(KeepAlive::Idle),
    }
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, val)) if !key.is_empty() && !key.contains('\0') && !val.contains('\0') => {
            Ok((key.to_string(), val.to_string()))
        }
        _ => Err("expected KEY=VALUE".into()),
    }
}

/// Accepts `module`, `module:name`, `module:name.attr` and `module:factory(literal args)`.
fn parse_app(value: &str) -> Result<String, String> {
    let is_dotted = |s: &str| !s.is_empty() && s.split('.').all(is_identifier);
    let (module, expr) = value.split_once(':').unwrap_or((value, "application"));
    let name = match expr.find('(') {
        Some(open) if expr.ends_with(')') => &expr[..open],
        Some(_) => "",
        None => expr,
    };
    if is_dotted(module) && is_dotted(name) {
        Ok(value.to_string())
    } else {
        Err("APP must look like module:callable, module, or module:factory()".into())
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic()) && chars.all(|c| c == '_' || c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_forms() {
        for ok in ["app", "pkg.app", "app:application", "app:make()", "app:make('x', n=2)", "a.b:c.d"] {
            assert!(parse_app(ok).is_ok(), "{ok}");
        }
        for bad in ["a:b:c", ":x", "mod:", "", "1mod:x", "mod:x(", "mod-x:app", "mod:x()y"] {
            assert!(parse_app(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bind_forms() {
        assert_eq!(parse_bind("127.0.0.1:9000"), Ok(Bind::Tcp("127.0.0.1:9000".parse().unwrap())));
        assert_eq!(parse_bind("[::1]:9000"), Ok(Bind::Tcp("[::1]:9000".parse().unwrap())));
        assert_eq!(parse_bind("unix:/tmp/x.sock"), Ok(Bind::Unix("/tmp/x.sock".into())));
        assert_eq!(parse_bind("localhost:80").map(|b| matches!(b, Bind::Tcp(a) if a.port() == 80)), Ok(true));
        assert_eq!(parse_bind("127.0.0.1"), Ok(Bind::Tcp("127.0.0.1:8000".parse().unwrap())));
        for bad in ["host:99999", ":80", "unix:", "127.0.0.1:x", "[::1:8000", "[::1]8000", "::1:80:x"] {
            assert!(parse_bind(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("0").unwrap() > Duration::from_secs(1 << 30));
        for bad in ["-1", "x", "inf", "NaN", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_forms() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=x").is_err());
    }
}
