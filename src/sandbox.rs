//! Per-worker isolation, applied in the child between fork and exec:
//! another user and group, a umask, resource limits, a network namespace, a
//! private /tmp, and a Landlock filesystem allow-list.
//!
//! Everything that can fail for a reason a user can fix (an unknown user, a
//! kernel that cannot make namespaces) is resolved and tried in the master at
//! start (`Sandbox::resolve`), so the forked child only makes async-signal-safe
//! system calls and the program refuses to start rather than silently run
//! without what was asked. The always-on part (process group, PDEATHSIG,
//! no_new_privs, no core files) is here too. Nothing here knows about requests.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sched::CloneFlags;
use nix::unistd::{Gid, Group, Uid, User};

use crate::warning;

/// What the command line asked for.
#[derive(Debug, Default, Clone)]
pub struct Options {
    pub user: Option<String>,
    pub group: Option<String>,
    pub umask: Option<u32>,
    pub rlimit_as_mib: Option<u64>,
    pub rlimit_nofile: Option<u64>,
    pub rlimit_nproc: Option<u64>,
    pub rlimit_cpu_seconds: Option<u64>,
    pub isolate_network: bool,
    pub private_tmp: bool,
    /// Landlock on, with these paths readable and writable beyond the defaults.
    pub landlock: Option<AllowList>,
    /// Log what the kernel cannot do instead of refusing to start.
    pub best_effort: bool,
}

/// Paths a worker may read (besides its interpreter, app and sys.path) and write.
#[derive(Debug, Default, Clone)]
pub struct AllowList {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    /// What the worker's interpreter reads to start and import: its prefixes
    /// and sys.path, as that interpreter reports them.
    pub interpreter: Vec<PathBuf>,
}

/// The isolation of every worker, resolved: numbers the child can use as is.
#[derive(Debug, Clone)]
pub struct Sandbox {
    identity: Option<(Uid, Gid)>,
    umask: Option<libc::mode_t>,
    limits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    isolate_network: bool,
    private_tmp: bool,
    /// The Landlock rules, prepared in the master; each child builds its
    /// ruleset after its mounts (rules hold inodes, and the private /tmp is new).
    landlock: Option<Arc<Rules>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("there is no user {0:?}; pass an existing user name or uid to --user")]
    NoUser(String),
    #[error("there is no group {0:?}; pass an existing group name or gid to --group")]
    NoGroup(String),
    #[error("--user and --group need the master to run as root")]
    NotRoot,
    #[error("this kernel or sandbox cannot give workers their own network namespace ({0}); drop --isolate-network or add --sandbox-best-effort")]
    NoNetworkNamespace(io::Error),
    #[error("this kernel or sandbox cannot give workers a private /tmp ({0}); drop --private-tmp or add --sandbox-best-effort")]
    NoPrivateTmp(io::Error),
    #[error("this kernel has no usable Landlock ({0}); drop --allow-read/--allow-write or add --sandbox-best-effort")]
    NoLandlock(io::Error),
}

impl Sandbox {
    pub fn resolve(options: &Options) -> Result<Sandbox, SandboxError> {
        let user = options.user.as_deref().map(find_user).transpose()?;
        let group = options.group.as_deref().map(find_group).transpose()?;
        let identity = match (user, group) {
            (None, None) => None,
            (Some(user), group) => Some((user.uid, group.unwrap_or(user.gid))),
            (None, Some(gid)) => Some((Uid::current(), gid)),
        };
        if identity.is_some() && !Uid::effective().is_root() {
            return Err(SandboxError::NotRoot);
        }
        let limits = [
            (libc::RLIMIT_AS, options.rlimit_as_mib.map(|mib| mib << 20)),
            (libc::RLIMIT_NOFILE, options.rlimit_nofile),
            (libc::RLIMIT_NPROC, options.rlimit_nproc),
            (libc::RLIMIT_CPU, options.rlimit_cpu_seconds),
        ];
        // A feature the kernel refuses: an error, or with --sandbox-best-effort a logged skip.
        let degrade = |wanted: bool, tried: io::Result<()>, error: fn(io::Error) -> SandboxError| match tried {
            Ok(()) => Ok(wanted),
            Err(e) if options.best_effort => {
                warning!("Sandbox feature skipped (--sandbox-best-effort): {}", error(e));
                Ok(false)
            }
            Err(e) => Err(error(e)),
        };
        let isolate_network = options.isolate_network
            && degrade(true, probe(CloneFlags::CLONE_NEWNET, false), SandboxError::NoNetworkNamespace)?;
        let private_tmp =
            options.private_tmp && degrade(true, probe(CloneFlags::CLONE_NEWNS, true), SandboxError::NoPrivateTmp)?;
        let landlock = match &options.landlock {
            None => None,
            // Built once here so a kernel without Landlock is found at start.
            Some(allow) => match Rules::new(allow, private_tmp).and_then(|rules| rules.build().map(|_| rules)) {
                Ok(rules) => Some(Arc::new(rules)),
                Err(e) => {
                    degrade(true, Err(e), SandboxError::NoLandlock)?;
                    None
                }
            },
        };
        Ok(Sandbox {
            identity,
            umask: options.umask.map(|m| m as libc::mode_t),
            limits: limits.into_iter().filter_map(|(resource, value)| Some((resource, value?))).collect(),
            isolate_network,
            private_tmp,
            landlock,
        })
    }

    /// Runs in the forked child, before exec.
    ///
    /// # Safety
    /// Only async-signal-safe system calls: the parent has other threads.
    pub unsafe fn apply(&self, master: u32) -> io::Result<()> {
        // Its own process group, so a signal to the master's group does not
        // reach workers before the master decides what to do with them.
        check(libc::setpgid(0, 0))?;
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0))?;
        // The master may have died before PDEATHSIG was armed.
        if libc::getppid() as u32 != master {
            libc::_exit(1);
        }
        // No core files: a worker that is killed after a timeout aborts.
        check(libc::setrlimit(libc::RLIMIT_CORE, &libc::rlimit { rlim_cur: 0, rlim_max: 0 }))?;
        if self.isolate_network {
            check(libc::unshare(CloneFlags::CLONE_NEWNET.bits()))?;
        }
        if self.private_tmp {
            check(libc::unshare(CloneFlags::CLONE_NEWNS.bits()))?;
            mount_private_tmp()?;
        }
        for &(resource, value) in &self.limits {
            check(libc::setrlimit(resource, &libc::rlimit { rlim_cur: value, rlim_max: value }))?;
        }
        if let Some(mask) = self.umask {
            libc::umask(mask);
        }
        if let Some((uid, gid)) = self.identity {
            // Group first: without root, the group can no longer be changed.
            let groups = [gid.as_raw()];
            check(libc::setgroups(1, groups.as_ptr()))?;
            check(libc::setresgid(gid.as_raw(), gid.as_raw(), gid.as_raw()))?;
            check(libc::setresuid(uid.as_raw(), uid.as_raw(), uid.as_raw()))?;
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0))?;
        if let Some(rules) = &self.landlock {
            let ruleset = rules.build()?;
            let fd = ruleset.as_raw_fd() as libc::c_long;
            check(libc::syscall(libc::SYS_landlock_restrict_self, fd, 0 as libc::c_long) as libc::c_int)?;
        }
        Ok(())
    }
}

const TMPFS: &str = "/tmp";

/// True if `path`, or the file a link there leads to, is under the /tmp that
/// `--private-tmp` replaces with an empty one.
pub fn hidden_by_private_tmp(path: &Path) -> bool {
    path.starts_with(TMPFS) || path.canonicalize().is_ok_and(|real| real.starts_with(TMPFS))
}

/// Makes / private to the new mount namespace, then an empty tmpfs on /tmp.
///
/// # Safety
/// Only system calls, on strings that are constants.
unsafe fn mount_private_tmp() -> io::Result<()> {
    let root = c"/";
    let tmp = c"/tmp";
    let tmpfs = c"tmpfs";
    let options = c"mode=1777,size=64m";
    let none = std::ptr::null();
    check(libc::mount(none, root.as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
    check(libc::mount(
        tmpfs.as_ptr(),
        tmp.as_ptr(),
        tmpfs.as_ptr(),
        libc::MS_NOSUID | libc::MS_NODEV,
        options.as_ptr().cast(),
    ))
}

// Landlock ABI (linux/landlock.h), as far as rwsgi-gw uses it.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_long = 1;
const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
/// Every right of ABI 1 (bits 0-12), REFER (ABI 2) and TRUNCATE (ABI 3).
const WRITE_ALL: [u64; 3] = [(1 << 13) - 1, (1 << 14) - 1, (1 << 15) - 1];
const FILE_ONLY: u64 = EXECUTE | WRITE_FILE | READ_FILE | (1 << 14);

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// Paths every worker reads to start and to run common library code: the
/// dynamic loader, shared libraries, locale and zone data, name resolution,
/// TLS roots, users and groups (not /etc/shadow), and the devices Python opens.
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/locale.alias",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/mime.types",
    "/dev/null",
    "/dev/urandom",
];

/// A Landlock ruleset as data: every right the kernel knows is handled,
/// and each path gets the rights listed for it.
#[derive(Debug)]
struct Rules {
    handled: u64,
    paths: Vec<(CString, u64)>,
}

impl Rules {
    /// Read (and execute) under the interpreter, the app and the system
    /// paths; write only under `--allow-write` and the private /tmp.
    fn new(allow: &AllowList, private_tmp: bool) -> io::Result<Rules> {
        // SAFETY: the documented way to ask for the ABI version: no pointer is read.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        if abi < 1 {
            return Err(io::Error::last_os_error());
        }
        let handled = WRITE_ALL[(abi.min(3) - 1) as usize];
        let read = SYSTEM_READ
            .iter()
            .map(PathBuf::from)
            .chain(allow.interpreter.iter().cloned())
            .chain(allow.read.iter().cloned());
        let write = allow.write.iter().cloned().chain(private_tmp.then(|| PathBuf::from(TMPFS)));
        let rights = |path: &Path, access: u64| {
            // A file takes only file rights; a path that does not exist is left out.
            let access = if path.is_dir() || path == Path::new(TMPFS) { access } else { access & FILE_ONLY };
            let exists = path.exists() || path == Path::new(TMPFS);
            CString::new(path.as_os_str().as_bytes()).ok().filter(|_| exists).map(|c| (c, access))
        };
        let paths = read
            .filter_map(|p| rights(&p, EXECUTE | READ_FILE | READ_DIR))
            .chain(write.filter_map(|p| rights(&p, handled)))
            .collect();
        Ok(Rules { handled, paths })
    }

    /// Creates the ruleset and adds every rule. Only system calls, so the
    /// forked child may call it.
    fn build(&self) -> io::Result<OwnedFd> {
        let attr = RulesetAttr { handled_access_fs: self.handled };
        // SAFETY: attr outlives the call and its size is passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0,
            )
        };
        check(fd as libc::c_int)?;
        // SAFETY: the kernel just gave us this fd.
        let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        for (path, access) in &self.paths {
            // SAFETY: a plain open of a NUL-terminated path.
            let parent = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if parent < 0 {
                continue;
            }
            // SAFETY: the kernel just gave us this fd.
            let parent = unsafe { OwnedFd::from_raw_fd(parent) };
            let rule = PathBeneath { allowed_access: *access, parent_fd: parent.as_raw_fd() };
            // SAFETY: rule outlives the call; both fds are open.
            check(unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    ruleset.as_raw_fd() as libc::c_long,
                    LANDLOCK_RULE_PATH_BENEATH,
                    &rule as *const PathBeneath,
                    0 as libc::c_long,
                ) as libc::c_int
            })?;
        }
        Ok(ruleset)
    }
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn find_user(name: &str) -> Result<User, SandboxError> {
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    found.ok().flatten().ok_or_else(|| SandboxError::NoUser(name.to_string()))
}

fn find_group(name: &str) -> Result<Gid, SandboxError> {
    let found = match name.parse::<u32>() {
        Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
        Err(_) => Group::from_name(name),
    };
    found.ok().flatten().map(|g| g.gid).ok_or_else(|| SandboxError::NoGroup(name.to_string()))
}

/// Makes the namespace (and the private /tmp) in a throwaway child, so a
/// kernel or container that refuses is found at start, not at the first worker.
fn probe(namespace: CloneFlags, private_tmp: bool) -> io::Result<()> {
    let mut probe = std::process::Command::new("/bin/true");
    // SAFETY: only system calls, in the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut probe, move || {
            check(libc::unshare(namespace.bits()))?;
            if private_tmp {
                mount_private_tmp()?;
            }
            Ok(())
        });
    }
    probe.status().map(drop)
}
