//! Least privilege for every node: a node's [`SandboxProfile`] turned into what the spawn path
//! applies in the child before `exec`, so it holds for any executable (a shell script as much as
//! a program that links `syncra-node`) and for every thread the program will ever start.
//!
//! Everything is prepared here, in the spawner thread, because the child between `clone` and
//! `exec` shares the runtime's memory and may only make system calls:
//!
//! - **Landlock** (filesystem; TCP bind/connect where the kernel has it, ABI 4; signals and
//!   abstract Unix sockets scoped to the node's own processes, ABI 6): a ruleset fd built
//!   with the `landlock` crate, which the child passes to `landlock_restrict_self`.
//! - **seccomp**: BPF programs compiled with `seccompiler` (ptrace, mount, modules, bpf,
//!   keyrings, namespaces, new sessions and process groups, io_uring, raw and packet sockets, …
//!   are refused with EPERM; `clone3` answers ENOSYS so the C library falls back to `clone`,
//!   whose namespace flags the filter can see). The child installs them last.
//! - **a network namespace** for `network = "none"`: created by `clone` itself (as root
//!   `CLONE_NEWNET`; as an ordinary user with `CLONE_NEWUSER`, mapping the user to itself).
//!   The node's cluster listener then binds a loopback that is down and that nobody else can
//!   reach; its link to the runtime is the socketpair it inherits.
//! - **resource limits** (`RLIMIT_DATA`, `RLIMIT_NOFILE`, `RLIMIT_NPROC`, `RLIMIT_CPU`), never
//!   above the runtime's own hard limits, and always `no_new_privs`. Root is exempt from
//!   `RLIMIT_NPROC`, so a root runtime's nodes each get a pids cgroup ([`crate::cgroup`]).
//!
//! What this kernel or this user cannot enforce is said per node ([`SandboxStatus`]); in
//! `strict` mode it is a start failure instead.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use syncra_config::sandbox::{
    Device, Network, SandboxMode, SandboxProfile, device_paths, device_writes,
};
use syncra_protocol::status::SandboxStatus;

/// What this machine can enforce, probed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// The kernel's Landlock ABI (0: none).
    pub landlock_abi: i32,
    /// Whether seccomp filters can be installed.
    pub seccomp: bool,
    /// Whether the runtime runs as root (then `CLONE_NEWNET` needs no user namespace, and
    /// `RLIMIT_NPROC` does not apply).
    pub root: bool,
}

/// Probe the kernel once.
pub fn support() -> Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    *SUPPORT.get_or_init(|| {
        // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI version.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                1u32, // LANDLOCK_CREATE_RULESET_VERSION
            )
        };
        // SAFETY: prctl(PR_GET_SECCOMP) only reads this thread's seccomp mode.
        let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP) } >= 0;
        Support {
            landlock_abi: abi.max(0) as i32,
            seccomp,
            root: rustix::process::geteuid().is_root(),
        }
    })
}

/// Whether an ordinary user may create user namespaces here: unknown until the first spawn
/// that needs one tries.
static USERNS: AtomicU8 = AtomicU8::new(USERNS_UNKNOWN);
const USERNS_UNKNOWN: u8 = 0;
const USERNS_YES: u8 = 1;
const USERNS_NO: u8 = 2;

/// The errno of the refused user namespace.
static USERNS_ERRNO: AtomicI32 = AtomicI32::new(0);

/// Record that creating a user namespace failed with `errno` (it is not tried again).
pub(crate) fn userns_refused(errno: i32) {
    USERNS_ERRNO.store(errno, Ordering::Relaxed);
    USERNS.store(USERNS_NO, Ordering::Relaxed);
}

/// Record that creating a user namespace worked.
pub(crate) fn userns_worked() {
    USERNS.store(USERNS_YES, Ordering::Relaxed);
}

/// Why a user namespace cannot be made here, in words.
pub(crate) fn why_no_userns(errno: i32) -> String {
    let knob = [
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
        ),
        ("/proc/sys/user/max_user_namespaces", "0"),
    ]
    .into_iter()
    .find(|(path, bad)| {
        std::fs::read_to_string(path)
            .map(|v| v.trim() == *bad)
            .unwrap_or(false)
    });
    match knob {
        Some((path, value)) => {
            format!("this kernel allows no unprivileged user namespaces ({path} is {value})")
        }
        None => format!(
            "this kernel refused an unprivileged user namespace ({})",
            std::io::Error::from_raw_os_error(errno)
        ),
    }
}

/// A sandbox rule that cannot be enforced, in `strict` mode.
#[derive(Debug, thiserror::Error)]
#[error("sandbox = \"strict\": {rule} cannot be enforced here: {why}")]
pub struct Unenforceable {
    /// The rule.
    pub rule: String,
    /// Why.
    pub why: String,
}

/// What the child applies, prepared by the parent.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// `PR_SET_NO_NEW_PRIVS`.
    pub(crate) no_new_privs: bool,
    /// The Landlock ruleset to restrict the child to.
    pub(crate) landlock: Option<OwnedFd>,
    /// seccomp programs, installed in order.
    pub(crate) seccomp: Vec<Vec<libc::sock_filter>>,
    /// `setrlimit` calls.
    pub(crate) rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// Extra clone flags (`CLONE_NEWNET`, `CLONE_NEWUSER`).
    pub(crate) clone_flags: libc::c_int,
    /// For `CLONE_NEWUSER`: the uid and gid to map to themselves.
    pub(crate) map_ids: Option<(u32, u32)>,
    /// Bring up `lo` in its new network namespace (`network = "loopback"`).
    pub(crate) loopback_up: bool,
    /// The node's private directory (its `TMPDIR`), if it has one.
    pub(crate) tmp_dir: Option<PathBuf>,
    /// A root runtime's node: the pids cgroup the child enters before exec.
    pub(crate) cgroup: Option<std::sync::Arc<crate::cgroup::NodeCgroup>>,
    /// What is and is not enforced.
    pub(crate) status: SandboxStatus,
}

/// Syscalls no node needs, refused with EPERM.
const DENIED_SYSCALLS: &[(i64, &str)] = &[
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_kcmp, "kcmp"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_vhangup, "vhangup"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    // A node and everything it starts stay in the node's process group, so the runtime's
    // group kill reaches all of them and a node's child cannot pose as someone else.
    (libc::SYS_setsid, "setsid"),
    (libc::SYS_setpgid, "setpgid"),
    // Its host name is the machine's (systemd's ProtectHostname).
    (libc::SYS_sethostname, "sethostname"),
    (libc::SYS_setdomainname, "setdomainname"),
];

/// Calls that could make a set-user-ID or set-group-ID file, and where their mode argument
/// is (systemd's RestrictSUIDSGID): a root runtime's node is root, and a set-user-ID file it
/// left in a directory it may write could make anyone who runs it root. `open`-like calls
/// only when they create (`O_CREAT`, `O_TMPFILE`): (number, mode argument, flags argument).
const MODE_CALLS: &[(i64, u8, Option<u8>)] = &[
    (libc::SYS_chmod, 1, None),
    (libc::SYS_fchmod, 1, None),
    (libc::SYS_fchmodat, 2, None),
    (libc::SYS_fchmodat2, 2, None),
    (libc::SYS_mknod, 1, None),
    (libc::SYS_mknodat, 2, None),
    (libc::SYS_creat, 1, None),
    (libc::SYS_open, 2, Some(1)),
    (libc::SYS_openat, 3, Some(2)),
];

/// Flags `clone` may not be given: new namespaces, and `CLONE_PARENT` (a child of the runtime
/// the runtime never waits for).
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_PARENT as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// The socket families a profile allows.
fn allowed_families(p: &SandboxProfile) -> Vec<i32> {
    // IP (the cluster listener every node has; confined by the namespace or Landlock when
    // network = none). New Unix sockets only for the display, the sound server and a node
    // with the host's network: Landlock (before ABI 9) cannot keep a socket from connecting to
    // any socket on the filesystem (a session bus, docker.sock, an ssh agent). Every node
    // keeps the socketpairs it inherited, and may make socketpairs.
    let mut v = vec![libc::AF_INET, libc::AF_INET6];
    if p.devices.contains(&Device::Display)
        || p.devices.contains(&Device::Sound)
        || p.devices.contains(&Device::Xr)
        || p.network == Network::Any
    {
        v.push(libc::AF_UNIX);
    }
    if p.devices.contains(&Device::Input) || p.network == Network::Any {
        // Device hotplug (udev) arrives over netlink.
        v.push(libc::AF_NETLINK);
    }
    v.sort_unstable();
    v
}

fn seccomp_programs(
    p: &SandboxProfile,
    namespace: bool,
) -> Result<Vec<Vec<libc::sock_filter>>, seccompiler::BackendError> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
        SeccompFilter, SeccompRule,
    };
    use std::collections::BTreeMap;
    let arch: seccompiler::TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|_| seccompiler::BackendError::InvalidTargetArch(std::env::consts::ARCH.into()))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _) in DENIED_SYSCALLS {
        rules.insert(*nr, Vec::new());
    }
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|f| SeccompRule::new(vec![Cond::new(0, Len::Qword, Op::MaskedEq(*f), *f)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    // socket(domain, …): every family outside the allowed ones.
    let mut socket_rules = Vec::new();
    let mut lo = 0i64;
    for fam in allowed_families(p) {
        let fam = i64::from(fam);
        if fam > lo {
            socket_rules.push(SeccompRule::new(vec![
                Cond::new(0, Len::Dword, Op::Ge, lo as u64)?,
                Cond::new(0, Len::Dword, Op::Lt, fam as u64)?,
            ])?);
        }
        lo = fam + 1;
    }
    socket_rules.push(SeccompRule::new(vec![Cond::new(
        0,
        Len::Dword,
        Op::Ge,
        lo as u64,
    )?])?);
    // Raw IP sockets for anyone without network; with network = none and no namespace of
    // its own, UDP too (Landlock's network rules cover TCP only).
    let mut denied_types = vec![libc::SOCK_RAW, 10 /* SOCK_PACKET */];
    if p.network != Network::Any && !namespace {
        denied_types.push(libc::SOCK_DGRAM);
    }
    if p.network != Network::Any {
        for fam in [libc::AF_INET, libc::AF_INET6] {
            for ty in &denied_types {
                socket_rules.push(SeccompRule::new(vec![
                    Cond::new(0, Len::Dword, Op::Eq, fam as u64)?,
                    Cond::new(1, Len::Dword, Op::MaskedEq(0xf), *ty as u64)?,
                ])?);
            }
        }
    }
    if p.network != Network::Any && !namespace {
        // Only plain TCP on IP: no MPTCP, SCTP or other protocols Landlock's TCP rules do not
        // see; no TCP Fast Open, which connects without `connect`.
        for fam in [libc::AF_INET, libc::AF_INET6] {
            socket_rules.push(SeccompRule::new(vec![
                Cond::new(0, Len::Dword, Op::Eq, fam as u64)?,
                Cond::new(2, Len::Dword, Op::Gt, libc::IPPROTO_TCP as u64)?,
            ])?);
            socket_rules.push(SeccompRule::new(vec![
                Cond::new(0, Len::Dword, Op::Eq, fam as u64)?,
                Cond::new(2, Len::Dword, Op::Gt, 0)?,
                Cond::new(2, Len::Dword, Op::Lt, libc::IPPROTO_TCP as u64)?,
            ])?);
            socket_rules.push(SeccompRule::new(vec![
                Cond::new(0, Len::Dword, Op::Eq, fam as u64)?,
                Cond::new(
                    1,
                    Len::Dword,
                    Op::MaskedEq(0xf),
                    libc::SOCK_SEQPACKET as u64,
                )?,
            ])?);
        }
        let fastopen = libc::MSG_FASTOPEN as u64;
        rules.insert(
            libc::SYS_sendto,
            vec![SeccompRule::new(vec![Cond::new(
                3,
                Len::Dword,
                Op::MaskedEq(fastopen),
                fastopen,
            )?])?],
        );
        rules.insert(
            libc::SYS_sendmsg,
            vec![SeccompRule::new(vec![Cond::new(
                2,
                Len::Dword,
                Op::MaskedEq(fastopen),
                fastopen,
            )?])?],
        );
        rules.insert(
            libc::SYS_setsockopt,
            vec![SeccompRule::new(vec![
                Cond::new(1, Len::Dword, Op::Eq, libc::IPPROTO_TCP as u64)?,
                Cond::new(2, Len::Dword, Op::Eq, 30 /* TCP_FASTOPEN_CONNECT */)?,
            ])?],
        );
    }
    rules.insert(libc::SYS_socket, socket_rules);
    // No set-user-ID or set-group-ID file.
    for (nr, mode, flags) in MODE_CALLS {
        let mut call_rules = Vec::new();
        for bit in [libc::S_ISUID, libc::S_ISGID] {
            let bit = u64::from(bit);
            let mode = Cond::new(*mode, Len::Dword, Op::MaskedEq(bit), bit)?;
            match flags {
                None => call_rules.push(SeccompRule::new(vec![mode])?),
                Some(flags) => {
                    for create in [libc::O_CREAT as u64, libc::O_TMPFILE as u64] {
                        call_rules.push(SeccompRule::new(vec![
                            Cond::new(*flags, Len::Dword, Op::MaskedEq(create), create)?,
                            mode.clone(),
                        ])?);
                    }
                }
            }
        }
        rules.insert(*nr, call_rules);
    }
    // Its execution domain stays Linux's (systemd's LockPersonality): only `personality(0)`
    // and the query `personality(0xffffffff)`.
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(vec![
            Cond::new(0, Len::Dword, Op::Ne, 0)?,
            Cond::new(0, Len::Dword, Op::Ne, 0xffff_ffff)?,
        ])?],
    );
    // The death signal the runtime set stays: a node may not clear it.
    rules.insert(
        libc::SYS_prctl,
        vec![SeccompRule::new(vec![Cond::new(
            0,
            Len::Dword,
            Op::Eq,
            libc::PR_SET_PDEATHSIG as u64,
        )?])?],
    );
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    // clone3 and openat2 pass their flags in memory the filter cannot read: answer "not
    // implemented", and the C library falls back to clone and openat, whose flags the rules
    // above see.
    let clone3 = SeccompFilter::new(
        [
            (libc::SYS_clone3, Vec::new()),
            (libc::SYS_openat2, Vec::new()),
        ]
        .into_iter()
        .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    let to_libc = |prog: seccompiler::BpfProgram| -> Vec<libc::sock_filter> {
        prog.into_iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect()
    };
    let mut programs = vec![to_libc(deny.try_into()?), to_libc(clone3.try_into()?)];
    if cfg!(target_arch = "x86_64") {
        // x32 system calls carry the x86-64 architecture value and the number | 0x40000000,
        // which the rules above never match: refuse them all.
        const X32: u32 = 0x4000_0000;
        let op = |code: u32, jt: u8, k: u32| libc::sock_filter {
            code: code as u16,
            jt,
            jf: 0,
            k,
        };
        programs.push(vec![
            // A = seccomp_data.nr; if A >= X32 skip to the refusal
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0),
            op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, 1, X32),
            op(libc::BPF_RET | libc::BPF_K, 0, libc::SECCOMP_RET_ALLOW),
            op(
                libc::BPF_RET | libc::BPF_K,
                0,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
        ]);
    }
    Ok(programs)
}

/// What in `/etc` holds secrets: left out when a profile reads `/etc`, which is granted entry
/// by entry (Landlock only allows). A node of a root runtime is root without capabilities,
/// and root owns these files.
pub const ETC_SECRETS: &[&str] = &[
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "ssh",
    "ssl/private",
    "krb5.keytab",
    "security",
    "NetworkManager",
    "wpa_supplicant",
    "libvirt",
    "cups",
    "ppp",
    "openvpn",
    "wireguard",
    "docker",
    "containerd",
    "pki",
    "letsencrypt",
    "mysql",
    "postgresql",
    "kubernetes",
    "ipsec.secrets",
    "ipsec.d",
    "strongswan",
    "shadow.d",
];

/// `/etc` as the paths of its entries, less [`ETC_SECRETS`] (a directory holding a secret is
/// itself granted entry by entry).
fn etc_entries(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let rel = rel.join(e.file_name());
        let secret = ETC_SECRETS.iter().any(|s| Path::new(s) == rel);
        let holds_secret = ETC_SECRETS
            .iter()
            .any(|s| Path::new(s).starts_with(&rel) && Path::new(s) != rel);
        if secret {
            continue;
        }
        if holds_secret {
            etc_entries(&e.path(), &rel, out);
        } else {
            out.push(e.path());
        }
    }
}

/// The paths a profile reads and writes, with its devices' paths.
fn all_paths(p: &SandboxProfile) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut read, mut write) = (p.read.clone(), p.write.clone());
    if let Some(i) = read.iter().position(|r| r == Path::new("/etc")) {
        read.remove(i);
        etc_entries(Path::new("/etc"), Path::new(""), &mut read);
    }
    for d in &p.devices {
        for path in device_paths(*d) {
            if device_writes(*d, &path) {
                write.push(path);
            } else {
                read.push(path);
            }
        }
    }
    (read, write)
}

fn landlock_ruleset(
    p: &SandboxProfile,
    read: &[PathBuf],
    write: &[PathBuf],
    tcp_rules: bool,
) -> Result<Option<OwnedFd>, landlock::RulesetError> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd,
        Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
    };
    // The newest ABI this code knows the meaning of; older kernels get what they support.
    let abi = ABI::V6;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?;
    if tcp_rules {
        ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
    }
    ruleset = ruleset.scope(Scope::Signal)?;
    if !p.devices.contains(&Device::Display) {
        // X11 tries its abstract socket first; everyone else has no business with them.
        ruleset = ruleset.scope(Scope::AbstractUnixSocket)?;
    }
    let mut created = ruleset.create()?;
    for (paths, rights) in [
        (read, AccessFs::from_read(abi)),
        (write, AccessFs::from_all(abi)),
    ] {
        for path in paths {
            let Ok(meta) = std::fs::metadata(path) else {
                continue; // an absent path grants nothing
            };
            let Ok(fd) = PathFd::new(path) else { continue };
            let rights = if meta.is_dir() {
                rights
            } else {
                rights & AccessFs::from_file(abi)
            };
            created = created.add_rule(PathBeneath::new(fd, rights))?;
        }
    }
    if tcp_rules {
        // Its cluster listener binds an ephemeral loopback port; nothing may be connected to.
        created = created.add_rule(NetPort::new(0, AccessNet::BindTcp))?;
    }
    Ok(created.into())
}

/// Count of tasks on the machine now, from `/proc/loadavg` ("0.00 0.01 0.00 2/345 9876").
fn tasks_now() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok()
}

/// The profile with what the runtime adds at spawn: the program's own directory (read and
/// execute) and the node's private directory (read and write, its `TMPDIR`).
pub fn effective(
    profile: &SandboxProfile,
    program: &Path,
    node_dir: Option<&Path>,
) -> SandboxProfile {
    let mut p = profile.clone();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    p.anchor(&cwd);
    if let Some(dir) = program.parent() {
        p.read.push(dir.to_owned());
    }
    if let Some(dir) = node_dir {
        p.write.push(dir.to_owned());
    }
    p
}

/// Prepare `profile` for the node `name` started from `program`; `node_dir` is its private
/// directory (created here).
pub(crate) fn prepare(
    name: &str,
    profile: &SandboxProfile,
    program: &Path,
    node_dir: Option<&Path>,
) -> Result<Prepared, Unenforceable> {
    let mut out = Prepared::default();
    let mode = profile.mode;
    out.status.mode = mode.as_str().to_owned();
    if mode == SandboxMode::Off {
        out.status
            .not_enforced
            .push("everything: sandbox = \"off\"".to_owned());
        return Ok(out);
    }
    let strict = mode == SandboxMode::Strict;
    let missing = |out: &mut Prepared, rule: &str, why: String| -> Result<(), Unenforceable> {
        if strict {
            return Err(Unenforceable {
                rule: rule.to_owned(),
                why,
            });
        }
        out.status.not_enforced.push(format!("{rule}: {why}"));
        Ok(())
    };
    let support = support();
    out.no_new_privs = true;
    out.status
        .enforced
        .push("no_new_privs, no capabilities".to_owned());

    if let Some(dir) = node_dir {
        match std::fs::create_dir_all(dir) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
                out.tmp_dir = Some(dir.to_owned());
            }
            Err(e) => {
                tracing::warn!(node = name, dir = %dir.display(), error = %e, "no private directory for the node")
            }
        }
    }
    let p = effective(profile, program, out.tmp_dir.as_deref());

    // ---- network
    let mut namespace = false;
    let wants_namespace =
        (p.network == Network::None && p.namespace) || p.network == Network::Loopback;
    if wants_namespace {
        if support.root {
            out.clone_flags |= libc::CLONE_NEWNET;
            namespace = true;
        } else if USERNS.load(Ordering::Relaxed) != USERNS_NO {
            out.clone_flags |= libc::CLONE_NEWNET | libc::CLONE_NEWUSER;
            out.map_ids = Some((
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ));
            namespace = true;
        }
    }
    // Without a namespace of its own, a loopback node is confined like one with none.
    let confined = p.network != Network::Any;
    let tcp_rules = confined && !namespace;
    if namespace && p.network == Network::Loopback {
        out.loopback_up = true;
        out.status
            .enforced
            .push("network: loopback (its own network namespace and loopback)".to_owned());
    } else if namespace {
        out.status
            .enforced
            .push("network: none (its own network namespace)".to_owned());
    } else if confined {
        if p.network == Network::Loopback {
            missing(
                &mut out,
                "network: loopback",
                "there is no network namespace to give it a loopback of its own; it gets none"
                    .to_owned(),
            )?;
        }
        if support.landlock_abi >= 4 {
            out.status.enforced.push(
                "network: no TCP connect or bind (Landlock), no UDP or raw sockets (seccomp)"
                    .to_owned(),
            );
        }
        if wants_namespace && !support.root {
            let why = why_no_userns(USERNS_ERRNO.load(Ordering::Relaxed));
            missing(
                &mut out,
                "network namespace",
                format!("{why}; the node shares the host's network"),
            )?;
        }
        if support.landlock_abi < 4 {
            missing(
                &mut out,
                "network: none",
                format!(
                    "the kernel's Landlock (ABI {}) has no network rules and there is no network namespace",
                    support.landlock_abi
                ),
            )?;
        }
    } else {
        out.status.enforced.push("network: any".to_owned());
    }

    // ---- filesystem
    let (read, write) = all_paths(&p);
    if support.landlock_abi >= 1 {
        match landlock_ruleset(&p, &read, &write, tcp_rules && support.landlock_abi >= 4) {
            Ok(Some(fd)) => {
                out.landlock = Some(fd);
                out.status.enforced.push(format!(
                    "filesystem: read {} paths, write {} (Landlock ABI {})",
                    read.len(),
                    write.len(),
                    support.landlock_abi
                ));
                if support.landlock_abi >= 6 {
                    out.status
                        .enforced
                        .push("signals and ptrace: only its own processes (Landlock)".to_owned());
                } else {
                    missing(
                        &mut out,
                        "signal scope",
                        format!(
                            "Landlock ABI {} cannot scope signals (6 can)",
                            support.landlock_abi
                        ),
                    )?;
                }
            }
            Ok(None) => missing(
                &mut out,
                "filesystem",
                "Landlock made no ruleset".to_owned(),
            )?,
            Err(e) => missing(&mut out, "filesystem", format!("Landlock: {e}"))?,
        }
    } else {
        missing(
            &mut out,
            "filesystem",
            "this kernel has no Landlock (Linux 5.13+, with landlock in the `lsm=` boot list)"
                .to_owned(),
        )?;
    }

    // ---- seccomp
    if support.seccomp {
        match seccomp_programs(&p, namespace) {
            Ok(progs) => {
                out.seccomp = progs;
                out.status.enforced.push(format!(
                    "seccomp: {} calls refused (and x32), no set-user-ID files, personality locked, socket families {}",
                    DENIED_SYSCALLS.len() + 4,
                    allowed_families(&p)
                        .iter()
                        .map(|f| match *f {
                            libc::AF_UNIX => "unix",
                            libc::AF_INET => "inet",
                            libc::AF_INET6 => "inet6",
                            libc::AF_NETLINK => "netlink",
                            _ => "?",
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
            Err(e) => missing(&mut out, "seccomp", format!("compiling the filter: {e}"))?,
        }
    } else {
        missing(
            &mut out,
            "seccomp",
            "this kernel has no seccomp filters".to_owned(),
        )?;
    }

    // ---- resource limits, never above the runtime's own hard limits
    let limit = |resource: rustix::process::Resource, want: u64| -> u64 {
        let hard = rustix::process::getrlimit(resource).maximum;
        hard.map_or(want, |h| want.min(h))
    };
    use rustix::process::Resource;
    let mut limits = Vec::new();
    if p.memory_mb > 0 {
        let bytes = limit(Resource::Data, p.memory_mb << 20);
        out.rlimits.push((libc::RLIMIT_DATA, rlim(bytes)));
        limits.push(format!("memory {} MiB", bytes >> 20));
    }
    if p.open_files > 0 {
        let n = limit(Resource::Nofile, p.open_files);
        out.rlimits.push((libc::RLIMIT_NOFILE, rlim(n)));
        limits.push(format!("open files {n}"));
    }
    if !p.devices.contains(&Device::Sound) {
        // No real-time scheduling (systemd's RestrictRealtime); the sound driver may ask.
        out.rlimits.push((libc::RLIMIT_RTPRIO, rlim(0)));
    }
    if p.cpu_seconds > 0 {
        let n = limit(Resource::Cpu, p.cpu_seconds);
        out.rlimits.push((libc::RLIMIT_CPU, rlim(n)));
        limits.push(format!("cpu {n} s"));
    }
    if p.processes > 0 {
        if support.root {
            // Root is exempt from RLIMIT_NPROC; the pids controller is not.
            let stem = node_dir
                .and_then(|d| d.file_name())
                .and_then(|n| n.to_str())
                .map_or_else(|| name.replace('/', "-"), str::to_owned);
            match crate::cgroup::for_node(&stem, p.processes) {
                Ok(cgroup) => {
                    out.cgroup = Some(cgroup);
                    limits.push(format!(
                        "processes {} with their threads (pids cgroup)",
                        p.processes
                    ));
                }
                Err(why) => missing(
                    &mut out,
                    "processes",
                    format!("root is exempt from RLIMIT_NPROC, and no pids cgroup: {why}"),
                )?,
            }
        } else if let Some(now) = tasks_now() {
            let n = limit(Resource::Nproc, now + p.processes);
            out.rlimits.push((libc::RLIMIT_NPROC, rlim(n)));
            limits.push(format!("processes {} more", p.processes));
        } else {
            missing(
                &mut out,
                "processes",
                "/proc/loadavg is unreadable".to_owned(),
            )?;
        }
    }
    if !limits.is_empty() {
        out.status.enforced.push(limits.join(", "));
    }
    Ok(out)
}

fn rlim(v: u64) -> libc::rlimit {
    libc::rlimit {
        rlim_cur: v,
        rlim_max: v,
    }
}

/// A network namespace made ahead, for a root runtime's next sandboxed node: creating one
/// costs about a millisecond, which a thread of its own pays between spawns. `None` when none
/// is ready (the spawn then makes its own with `clone`), or when the runtime is not root
/// (an ordinary user's namespace comes with its user namespace, made by `clone`).
pub(crate) fn netns_ahead() -> Option<OwnedFd> {
    netns_pool()?.lock().ok()?.try_recv().ok()
}

/// The namespaces made ahead, and the thread that makes them, started on first use. Start
/// it from the spawner thread ([`start_netns_pool`]): a thread is born in its creator's
/// cgroup, and a node's cgroup thread must not be its creator.
fn netns_pool() -> Option<&'static std::sync::Mutex<std::sync::mpsc::Receiver<OwnedFd>>> {
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
    static POOL: OnceLock<Option<Mutex<Receiver<OwnedFd>>>> = OnceLock::new();
    if !support().root {
        return None;
    }
    let pool = POOL.get_or_init(|| {
        let (tx, rx): (SyncSender<OwnedFd>, Receiver<OwnedFd>) = sync_channel(2);
        std::thread::Builder::new()
            .name("syncra-netns".into())
            .spawn(move || {
                loop {
                    // A new namespace for this thread alone, kept by its fd.
                    // SAFETY: unshare only changes this thread's namespaces.
                    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                        tracing::debug!(error = %std::io::Error::last_os_error(), "no network namespaces made ahead");
                        return;
                    }
                    let Ok(fd) = rustix::fs::open(
                        "/proc/thread-self/ns/net",
                        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    ) else {
                        return;
                    };
                    if tx.send(fd).is_err() {
                        return;
                    }
                }
            })
            .ok()
            .map(|_| Mutex::new(rx))
    });
    pool.as_ref()
}

/// Start the thread that makes network namespaces ahead, if this runtime uses it.
pub(crate) fn start_netns_pool() {
    let _ = netns_pool();
}
