//! Per-worker isolation, applied in the child between fork and exec:
//! another user and group, a umask, resource limits, a network namespace.
//!
//! Everything that can fail for a reason a user can fix (an unknown user, a
//! kernel that cannot make namespaces) is resolved and tried in the master at
//! start (`Sandbox::resolve`), so the forked child only makes async-signal-safe
//! system calls and the program refuses to start rather than silently run
//! without what was asked. The always-on part (process group, PDEATHSIG,
//! no_new_privs, no core files) is here too. Nothing here knows about requests.

use std::io;

use nix::sched::CloneFlags;
use nix::unistd::{Gid, Group, Uid, User};

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
}

/// The isolation of every worker, resolved: numbers the child can use as is.
#[derive(Debug, Clone)]
pub struct Sandbox {
    identity: Option<(Uid, Gid)>,
    umask: Option<libc::mode_t>,
    limits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    isolate_network: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("there is no user {0:?}; pass an existing user name or uid to --user")]
    NoUser(String),
    #[error("there is no group {0:?}; pass an existing group name or gid to --group")]
    NoGroup(String),
    #[error("--user and --group need the master to run as root")]
    NotRoot,
    #[error("this kernel or sandbox cannot give workers their own network namespace ({0}); drop --isolate-network")]
    NoNetworkNamespace(io::Error),
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
        let sandbox = Sandbox {
            identity,
            umask: options.umask.map(|m| m as libc::mode_t),
            limits: limits.into_iter().filter_map(|(resource, value)| Some((resource, value?))).collect(),
            isolate_network: options.isolate_network,
        };
        if sandbox.isolate_network {
            probe_network_namespace().map_err(SandboxError::NoNetworkNamespace)?;
        }
        Ok(sandbox)
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
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0))
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

/// Makes a network namespace in a throwaway child, so a kernel (or container)
/// that refuses is found at start, not at the first worker.
fn probe_network_namespace() -> io::Result<()> {
    let mut probe = std::process::Command::new("/bin/true");
    // SAFETY: unshare is a plain system call.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut probe, || {
            check(libc::unshare(CloneFlags::CLONE_NEWNET.bits()))
        });
    }
    probe.status().map(drop)
}
