//! The error log and the access log: where lines go and how they look.
//!
//! Lines follow gunicorn's shapes (`[time] [pid] [LEVEL] message` for the
//! error log, Apache combined for the access log) so existing log tooling
//! keeps working. This module formats and writes; it decides nothing about
//! what is worth logging.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }
}

/// Where a log goes: `-` means the process's own stream.
#[derive(Clone, Debug)]
pub enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Target {
    fn open(&self) -> io::Result<Sink> {
        Ok(match self {
            Target::Stdout => Sink::Stdout,
            Target::Stderr => Sink::Stderr,
            Target::File(path) => Sink::File(OpenOptions::new().create(true).append(true).open(path)?),
        })
    }
}

enum Sink {
    Stdout,
    Stderr,
    File(File),
}

impl Sink {
    fn write_line(&mut self, line: &[u8]) {
        // A log that cannot be written has nowhere to report that; serving goes on.
        let _ = match self {
            Sink::Stdout => io::stdout().lock().write_all(line),
            Sink::Stderr => io::stderr().lock().write_all(line),
            Sink::File(file) => file.write_all(line),
        };
    }
}

struct Logger {
    level: Level,
    error: Log,
    access: Option<Log>,
}

/// One log: where it goes, and the open sink (reopened on SIGUSR1, for logrotate).
struct Log {
    target: Target,
    sink: Mutex<Sink>,
}

impl Log {
    fn open(target: &Target) -> io::Result<Log> {
        Ok(Log { target: target.clone(), sink: Mutex::new(target.open()?) })
    }

    fn write_line(&self, line: &[u8]) {
        self.sink.lock().unwrap_or_else(|e| e.into_inner()).write_line(line);
    }

    fn reopen(&self) -> io::Result<()> {
        let fresh = self.target.open()?;
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Opens both logs; called once at start, before anything logs.
pub fn init(level: Level, error: &Target, access: Option<&Target>) -> io::Result<()> {
    let logger = Logger { level, error: Log::open(error)?, access: access.map(Log::open).transpose()? };
    // A second init is a programming error that changes nothing.
    let _ = LOGGER.set(logger);
    Ok(())
}

pub fn enabled(level: Level) -> bool {
    LOGGER.get().is_none_or(|l| level >= l.level)
}

pub fn access_enabled() -> bool {
    LOGGER.get().is_some_and(|l| l.access.is_some())
}

pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let now = Timestamp::now();
    let line = format!("[{}] [{}] [{}] {}\n", now.iso(), std::process::id(), level.label(), args);
    match LOGGER.get() {
        Some(logger) => logger.error.write_line(line.as_bytes()),
        None => Sink::Stderr.write_line(line.as_bytes()),
    }
}

pub fn access(line: &str) {
    if let Some(log) = LOGGER.get().and_then(|l| l.access.as_ref()) {
        log.write_line(line.as_bytes());
    }
}

/// Reopens both log files under their names, after logrotate moved them.
pub fn reopen() -> io::Result<()> {
    let Some(logger) = LOGGER.get() else { return Ok(()) };
    logger.error.reopen()?;
    logger.access.as_ref().map_or(Ok(()), Log::reopen)
}

#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warning { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warning, format_args!($($t)*)) } }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }

/// A UTC wall-clock time broken into fields, for both log formats.
pub struct Timestamp {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        Self::from_unix(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64)
    }
}

impl Timestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    fn from_unix(secs: i64) -> Self {
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Timestamp {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// `2026-11-25 00:22:48 +0000`, the error log's form.
    pub fn iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `25/Nov/2026:00:22:48 +0000`, the access log's (Apache `%t`) form.
    pub fn clf(&self) -> String {
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        format!(
            "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
            self.day,
            MONTHS[self.month as usize - 1],
            self.year,
            self.hour,
            self.minute,
            self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp::from_unix(0).iso(), "1970-01-01 00:00:00 +0000");
        assert_eq!(Timestamp::from_unix(951_782_400).clf(), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(Timestamp::from_unix(1_795_566_168).iso(), "2026-11-25 00:22:48 +0000");
    }
}
