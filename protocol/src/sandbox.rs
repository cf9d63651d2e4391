//! A node's sandbox profile: what it may touch. The runtime resolves one per node from config
//! (`syncra_config::sandbox`) and enforces it when it spawns the node; an agent on another
//! host receives it with the spawn request and enforces it there, so the profile crosses a
//! process boundary and lives here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How hard the sandbox is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Every rule that cannot be enforced here is a start failure.
    Strict,
    /// What cannot be enforced here is skipped and said once (status and the log).
    #[default]
    Permissive,
    /// No sandbox (only the death signal and the process group).
    Off,
}

impl SandboxMode {
    /// As config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Strict => "strict",
            SandboxMode::Permissive => "permissive",
            SandboxMode::Off => "off",
        }
    }
}

/// Where a node may connect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Nowhere: its own network namespace (its cluster listener on a loopback nobody else
    /// reaches), or, where there is none, no TCP connect and no bind but the listener's.
    #[default]
    None,
    /// A loopback of its own: its own network namespace with `lo` up, so it may talk to
    /// itself over TCP and UDP (a server and its clients inside the node) and reach nothing else.
    Loopback,
    /// The host's network, as any program has it.
    Any,
}

/// A class of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// `/dev/dri`, `/dev/nvidia*`, and Mesa's shader cache.
    Gpu,
    /// The X11 and Wayland sockets (`/tmp/.X11-unix`, `$XDG_RUNTIME_DIR`).
    Display,
    /// `/dev/snd` and the sound servers' sockets.
    Sound,
    /// `/dev/input`, `/dev/hidraw*`, `/run/udev`.
    Input,
    /// The active OpenXR runtime: the manifests' directories, `$XR_RUNTIME_JSON` and the
    /// library it names (read only), and Unix sockets (an out-of-process runtime's, such as
    /// Monado's).
    Xr,
}

/// A node's effective sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxProfile {
    /// How hard.
    pub mode: SandboxMode,
    /// Paths it may read and execute.
    pub read: Vec<PathBuf>,
    /// Paths it may read and write.
    pub write: Vec<PathBuf>,
    /// Where it may connect.
    pub network: Network,
    /// Whether `network = "none"` is a network namespace (false: Landlock's TCP rules only;
    /// the input driver keeps the host's namespace, whose netlink carries device hotplug).
    pub namespace: bool,
    /// Devices.
    pub devices: Vec<Device>,
    /// RLIMIT_DATA, MiB (0: none).
    pub memory_mb: u64,
    /// RLIMIT_NOFILE (0: none).
    pub open_files: u64,
    /// RLIMIT_CPU, seconds (0: none).
    pub cpu_seconds: u64,
    /// Processes and threads it may add (0: none).
    pub processes: u64,
}

impl SandboxProfile {
    /// Relative paths made absolute against `base` (the working directory).
    pub fn anchor(&mut self, base: &std::path::Path) {
        for p in self.read.iter_mut().chain(self.write.iter_mut()) {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
    }

    /// One line per rule, as `syncra check-config` prints it.
    pub fn describe(&self) -> String {
        let paths = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let limit = |v: u64, unit: &str| {
            if v == 0 {
                "none".to_owned()
            } else {
                format!("{v}{unit}")
            }
        };
        format!(
            "mode {mode}; read {read}; write {write}; network {net}; devices {dev}; memory {mem}; open files {files}; processes {procs}; cpu {cpu}; no_new_privs; seccomp: no ptrace, mount, modules, bpf, keyring, namespaces, new sessions",
            mode = self.mode.as_str(),
            read = paths(&self.read),
            write = paths(&self.write),
            net = match (self.network, self.namespace) {
                (Network::Any, _) => "any".to_owned(),
                (Network::Loopback, _) => "loopback (its own namespace and loopback)".to_owned(),
                (Network::None, true) => "none (own namespace)".to_owned(),
                (Network::None, false) => "none (no TCP connect)".to_owned(),
            },
            dev = if self.devices.is_empty() {
                "none".to_owned()
            } else {
                self.devices
                    .iter()
                    .map(|d| format!("{d:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            mem = limit(self.memory_mb, " MiB"),
            files = limit(self.open_files, ""),
            cpu = limit(self.cpu_seconds, " s"),
            procs = limit(self.processes, ""),
        )
    }
}
