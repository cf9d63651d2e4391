//! Sandbox profiles: what each node may touch. `[sandbox]` sets the mode and grants for every
//! node; `[drivers.<name>.sandbox]` / `[worlds.<name>.sandbox]` (or `[worlds] sandbox`) grant
//! one node more. The runtime enforces a resolved [`SandboxProfile`] on Linux when it spawns
//! the node (Landlock, seccomp, a network namespace, resource limits, no_new_privs).
//!
//! Defaults by kind: every node may read the system (`/usr`, `/lib*`, `/bin`, `/sbin`, `/etc`,
//! `/proc`, `/sys`) and its own program's directory, write nothing but `/dev/null`, reach no
//! network, and use no device. The built-in drivers add what they need: the renderer the GPU
//! and the display, the window the display, audio the sound device and its assets, input the
//! input devices. A custom driver gets exactly the base unless config grants more.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use syncra_protocol::sandbox::{Device, Network, SandboxMode, SandboxProfile};

/// Grants in config: added to the node's defaults (lists), or replacing them (values).
/// Written as a table, or as a mode alone: `sandbox = "strict"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct SandboxSpec {
    /// The mode (`strict`, `permissive`, `off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SandboxMode>,
    /// More paths it may read (and execute), recursively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<PathBuf>,
    /// More paths it may read and write, recursively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<PathBuf>,
    /// Where it may connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// More devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// Most memory it may allocate (RLIMIT_DATA), MiB; 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Most open files (RLIMIT_NOFILE); 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Most CPU time, seconds (RLIMIT_CPU); 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// Most processes and threads it may add (RLIMIT_NPROC over what its user runs at
    /// spawn); 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
}

impl<'de> Deserialize<'de> for SandboxSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SandboxSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mode (\"strict\", \"permissive\" or \"off\") or a table of grants")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SandboxSpec, E> {
                let mode =
                    SandboxMode::deserialize(serde::de::value::StrDeserializer::<E>::new(v))?;
                Ok(SandboxSpec {
                    mode: Some(mode),
                    ..SandboxSpec::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SandboxSpec, A::Error> {
                SandboxSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for SandboxSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SandboxSpec::serialize(self, s)
    }
}

/// Relative paths of `read` and `write` made absolute against `base` (empty ones stay empty,
/// for validation to name).
fn anchor_all(read: &mut [PathBuf], write: &mut [PathBuf], base: &Path) {
    for p in read.iter_mut().chain(write.iter_mut()) {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = base.join(&*p);
        }
    }
}

/// Largest `memory_mb` (1 TiB).
pub const MAX_MEMORY_MB: u64 = 1 << 20;
/// Largest `open_files`.
pub const MAX_OPEN_FILES: u64 = 1 << 20;
/// Largest `cpu_seconds` (a year).
pub const MAX_CPU_SECONDS: u64 = 365 * 24 * 3600;
/// Largest `processes`.
pub const MAX_PROCESSES: u64 = 1 << 16;

impl SandboxSpec {
    /// Whether it grants nothing and sets no mode.
    pub fn is_empty(&self) -> bool {
        *self == SandboxSpec::default()
    }

    /// What is wrong with these grants, as (key suffix, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (list, paths) in [("read", &self.read), ("write", &self.write)] {
            for (i, p) in paths.iter().enumerate() {
                if p.as_os_str().is_empty() {
                    out.push((
                        format!("{list}[{i}]"),
                        "is empty: expected a path".to_owned(),
                    ));
                } else if p.as_os_str().as_encoded_bytes().contains(&0) {
                    out.push((format!("{list}[{i}]"), "contains a NUL byte".to_owned()));
                } else if p == Path::new("/") && list == "write" {
                    out.push((
                        format!("{list}[{i}]"),
                        "`/` would let the node write anywhere: name the directories it needs"
                            .to_owned(),
                    ));
                }
            }
        }
        for (key, value, max, unit) in [
            ("memory_mb", self.memory_mb, MAX_MEMORY_MB, "MiB"),
            ("open_files", self.open_files, MAX_OPEN_FILES, "files"),
            ("cpu_seconds", self.cpu_seconds, MAX_CPU_SECONDS, "seconds"),
            ("processes", self.processes, MAX_PROCESSES, "processes"),
        ] {
            if let Some(v) = value
                && v > max
            {
                out.push((
                    key.to_owned(),
                    format!("{v} is too large: must be at most {max} ({unit}; 0 means no limit)"),
                ));
            }
        }
        if self.open_files.is_some_and(|f| f != 0 && f < 16) {
            out.push((
                "open_files".to_owned(),
                "is below 16: a node needs a few fds for its link, page and streams".to_owned(),
            ));
        }
        if self.memory_mb.is_some_and(|m| m != 0 && m < 16) {
            out.push((
                "memory_mb".to_owned(),
                "is below 16 MiB: no node can start in that".to_owned(),
            ));
        }
        out
    }

    /// Relative paths made absolute against `base`.
    pub fn anchor(&mut self, base: &Path) {
        anchor_all(&mut self.read, &mut self.write, base);
    }
}

/// What every node may read.
pub const BASE_READ: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc",
    "/proc",
    "/sys",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
];
/// What every node may write.
pub const BASE_WRITE: &[&str] = &["/dev/null"];

/// Default memory limit of a world, MiB.
pub const WORLD_MEMORY_MB: u64 = 2048;
/// Default memory limit of a driver, MiB.
pub const DRIVER_MEMORY_MB: u64 = 8192;
/// Default open-file limit.
pub const OPEN_FILES: u64 = 4096;
/// Default process (and thread) allowance.
pub const PROCESSES: u64 = 512;

/// The paths a device class needs (which of them it may write: [`device_writes`]).
pub fn device_paths(d: Device) -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let home = env("HOME");
    let runtime_dir = env("XDG_RUNTIME_DIR");
    let mut v: Vec<PathBuf> = Vec::new();
    match d {
        Device::Gpu => {
            v.push("/dev/dri".into());
            for n in [
                "nvidiactl",
                "nvidia0",
                "nvidia-uvm",
                "nvidia-modeset",
                "nvidia-uvm-tools",
            ] {
                v.push(Path::new("/dev").join(n));
            }
            let cache = env("XDG_CACHE_HOME").or_else(|| home.as_ref().map(|h| h.join(".cache")));
            if let Some(c) = cache {
                v.push(c.join("mesa_shader_cache"));
                v.push(c.join("mesa_shader_cache_db"));
                v.push(c.join("nvidia"));
            }
        }
        // Connecting to a socket needs no filesystem right: the display and the sound server
        // are reached without one; what they read is their auth files.
        Device::Display => {
            v.push("/tmp/.X11-unix".into());
            v.extend(env("XAUTHORITY"));
        }
        Device::Sound => {
            v.push("/dev/snd".into());
            v.push("/dev/shm".into());
            v.extend(runtime_dir.map(|d| d.join("pulse")));
            v.extend(home.map(|h| h.join(".config/pulse")));
        }
        Device::Input => {
            v.push("/dev/input".into());
            v.push("/run/udev".into());
            for i in 0..16 {
                v.push(format!("/dev/hidraw{i}").into());
            }
        }
        // Where the OpenXR loader looks for the active runtime, and the runtime itself.
        Device::Xr => {
            for d in [
                "/etc/xdg/openxr",
                "/usr/share/openxr",
                "/usr/local/share/openxr",
            ] {
                v.push(d.into());
            }
            let config =
                env("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")));
            v.extend(config.map(|c| c.join("openxr")));
            // The active runtime's manifest is often a link into where the runtime is
            // installed (SteamVR's, under the home directory): grant what it points at, and
            // the library it names.
            let mut manifests: Vec<PathBuf> = v
                .iter()
                .map(|d| d.join("1").join("active_runtime.json"))
                .collect();
            manifests.extend(env("XR_RUNTIME_JSON"));
            for manifest in manifests {
                let Ok(real) = std::fs::canonicalize(&manifest) else {
                    continue;
                };
                v.extend(runtime_library(&real));
                v.push(manifest);
                v.push(real);
            }
        }
    }
    v
}

/// The library an OpenXR runtime manifest names (`runtime.library_path`, relative to the
/// manifest's directory when it is a relative path, none when it is a bare name the loader
/// looks up), if the manifest can be read.
fn runtime_library(manifest: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let library = Path::new(json["runtime"]["library_path"].as_str()?);
    if library.is_absolute() {
        Some(library.to_owned())
    } else if library.components().count() > 1 {
        Some(manifest.parent()?.join(library))
    } else {
        // A bare name: the loader finds it on the library search path (/usr/lib, readable).
        None
    }
}

/// Whether device class `d` may write `path` (one of its [`device_paths`]): device nodes,
/// shared memory and shader caches; never the sound server's, the display's or udev's files.
pub fn device_writes(d: Device, path: &Path) -> bool {
    match d {
        Device::Display => false,
        Device::Gpu => true,
        Device::Sound => path.starts_with("/dev"),
        Device::Input => path.starts_with("/dev"),
        Device::Xr => false,
    }
}

/// The defaults of node `name` (a built-in driver's name, `world/…`, or anything else).
pub fn default_profile(name: &str, is_world: bool) -> SandboxProfile {
    let mut p = SandboxProfile {
        mode: SandboxMode::Permissive,
        read: BASE_READ.iter().map(PathBuf::from).collect(),
        write: BASE_WRITE.iter().map(PathBuf::from).collect(),
        network: Network::None,
        namespace: true,
        devices: Vec::new(),
        memory_mb: if is_world {
            WORLD_MEMORY_MB
        } else {
            DRIVER_MEMORY_MB
        },
        open_files: OPEN_FILES,
        cpu_seconds: 0,
        processes: PROCESSES,
    };
    if is_world {
        return p;
    }
    match name {
        "renderer" => p.devices = vec![Device::Gpu, Device::Display],
        "window" => p.devices = vec![Device::Display],
        "audio" => p.devices = vec![Device::Sound],
        "input" => {
            p.devices = vec![Device::Input];
            p.namespace = false;
        }
        "xr" | "openxr" => {
            p.devices = vec![Device::Gpu, Device::Display, Device::Input, Device::Xr]
        }
        _ => {}
    }
    p
}

impl SandboxSpec {
    /// Apply these grants to `profile` (lists add, values replace).
    pub fn grant_to(&self, profile: &mut SandboxProfile) {
        if let Some(m) = self.mode {
            profile.mode = m;
        }
        profile.read.extend(self.read.iter().cloned());
        profile.write.extend(self.write.iter().cloned());
        if let Some(n) = self.network {
            profile.network = n;
        }
        for d in &self.devices {
            if !profile.devices.contains(d) {
                profile.devices.push(*d);
            }
        }
        if let Some(m) = self.memory_mb {
            profile.memory_mb = m;
        }
        if let Some(f) = self.open_files {
            profile.open_files = f;
        }
        if let Some(c) = self.cpu_seconds {
            profile.cpu_seconds = c;
        }
        if let Some(n) = self.processes {
            profile.processes = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_openxr_manifest_grants_the_library_it_names_relative_to_itself_or_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("runtime.json");
        let write = |library: &str| {
            std::fs::write(
                &manifest,
                format!(
                    r#"{{"file_format_version": "1.0.0", "runtime": {{"name": "x", "library_path": "{library}"}}}}"#
                ),
            )
            .unwrap();
        };
        write("lib/libxr.so");
        assert_eq!(
            runtime_library(&manifest),
            Some(dir.path().join("lib/libxr.so"))
        );
        write("/opt/xr/libxr.so");
        assert_eq!(
            runtime_library(&manifest),
            Some(PathBuf::from("/opt/xr/libxr.so"))
        );
        write("libopenxr_monado.so");
        assert_eq!(runtime_library(&manifest), None, "found on the search path");
        std::fs::write(&manifest, "not json").unwrap();
        assert_eq!(runtime_library(&manifest), None);
        assert_eq!(runtime_library(&dir.path().join("missing.json")), None);
        assert!(!device_writes(Device::Xr, &manifest));
    }
}
