//! Loading: built-in defaults → config file → `SYNCRA_*` environment → command-line flags,
//! layered with figment, then validated into a [`Plan`].
//!
//! Environment variables name keys with `__` between levels
//! (`SYNCRA_RUNTIME__WATCH_INTERVAL_MS=500`, `SYNCRA_WORLDS__COUNT=4`); `SYNCRA_RUN_DIR` and
//! `SYNCRA_LOG_DIR` (and `SYNCRA_STATE_DIR`) are short forms of `runtime.run_dir` and
//! `runtime.log_dir` (`runtime.state_dir`). Other
//! `SYNCRA_*` variables without `__` (such as `SYNCRA_LOG`, the log filter) are not config.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider, Source};

use crate::model::*;
use crate::plan::{Plan, Problem, anchor, plan};

/// Prefix of every config environment variable.
pub const ENV_PREFIX: &str = "SYNCRA_";

/// Why a config could not be loaded. Every message names the file, key and expectation.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named config file does not exist or is not a file.
    #[error("config file {path} not found{}", if *.is_dir { " (it is a directory)" } else { "" })]
    NotFound {
        /// The path as given.
        path: PathBuf,
        /// Whether the path names a directory.
        is_dir: bool,
    },
    /// The config file could not be read.
    #[error("config file {path} could not be read: {source}")]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The layered config does not fit the model (syntax, unknown keys, wrong types) or does
    /// not make sense (zero intervals, duplicate names, dependency cycles).
    #[error("invalid config:\n{}", render(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem found, for invalid configs.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            _ => &[],
        }
    }
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--worlds N`: `worlds.count`.
    pub worlds: Option<u32>,
    /// `--log-dir DIR`: `runtime.log_dir`.
    pub log_dir: Option<PathBuf>,
    /// `--run-dir DIR`: `runtime.run_dir`.
    pub run_dir: Option<PathBuf>,
    /// `--hosts a,b`: `worlds.spread`.
    pub hosts: Option<Vec<String>>,
    /// `--state-dir DIR`: `runtime.state_dir`.
    pub state_dir: Option<PathBuf>,
    /// `--dashboard`: `dashboard.enabled`.
    pub dashboard: Option<bool>,
    /// `--dashboard-port N`: `dashboard.port`.
    pub dashboard_port: Option<u16>,
}

/// A loaded config: the effective values and the plan they resolve to.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective config (every layer merged).
    pub config: SyncraConfig,
    /// What the runtime will start.
    pub plan: Plan,
    /// The config file, if one was read.
    pub file: Option<PathBuf>,
}

/// Layers config sources and validates the result.
#[derive(Debug, Clone)]
pub struct Loader {
    file: Option<PathBuf>,
    env: bool,
    overrides: Overrides,
}

impl Default for Loader {
    fn default() -> Self {
        Self::new()
    }
}

/// A provider wrapper that gives a layer a name for error messages.
struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// A layer with some keys taken out: the loader removes a key that failed to deserialize
/// and tries again, so that one bad value does not hide the problems of the others.
struct Pruned<P> {
    inner: P,
    paths: Vec<Vec<String>>,
}

impl<P: Provider> Provider for Pruned<P> {
    fn metadata(&self) -> Metadata {
        self.inner.metadata()
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.inner.data()?;
        for dict in data.values_mut() {
            for path in &self.paths {
                remove_path(dict, path);
            }
        }
        Ok(data)
    }
}

/// Remove the value at `path` from `dict`, if there is one.
fn remove_path(dict: &mut Dict, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            dict.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(figment::value::Value::Dict(_, inner)) = dict.get_mut(first) {
                remove_path(inner, rest);
            }
        }
    }
}

/// Most bad values the loader reports from one config before it stops looking.
const MAX_VALUE_PROBLEMS: usize = 64;

const DEFAULTS: &str = "built-in defaults";
const FLAGS: &str = "command-line flags";

impl Loader {
    /// A loader with no file, reading the environment, with no overrides.
    pub fn new() -> Self {
        Self {
            file: None,
            env: true,
            overrides: Overrides::default(),
        }
    }

    /// Read this config file (TOML) over the defaults.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Ignore `SYNCRA_*` environment variables.
    pub fn without_env(mut self) -> Self {
        self.env = false;
        self
    }

    /// Apply command-line values last.
    pub fn overrides(mut self, overrides: Overrides) -> Self {
        self.overrides = overrides;
        self
    }

    fn figment(&self, text: Option<&str>, pruned: &[Vec<String>]) -> Figment {
        let prune = |inner| Pruned {
            inner,
            paths: pruned.to_vec(),
        };
        let mut fig = Figment::from(Named {
            name: DEFAULTS,
            inner: Serialized::defaults(SyncraConfig::default()),
        });
        if let (Some(path), Some(text)) = (&self.file, text) {
            fig = fig.merge(Pruned {
                inner: FileLayer {
                    path: path.clone(),
                    text: text.to_owned(),
                },
                paths: pruned.to_vec(),
            });
        }
        if self.env {
            fig = fig.merge(Pruned {
                inner: env_provider(),
                paths: pruned.to_vec(),
            });
        }
        let mut flags = Vec::<(&str, figment::value::Value)>::new();
        if let Some(n) = self.overrides.worlds {
            flags.push(("worlds.count", n.into()));
        }
        if let Some(d) = &self.overrides.log_dir {
            flags.push(("runtime.log_dir", d.display().to_string().into()));
        }
        if let Some(d) = &self.overrides.run_dir {
            flags.push(("runtime.run_dir", d.display().to_string().into()));
        }
        if let Some(hosts) = &self.overrides.hosts {
            flags.push(("worlds.spread", hosts.clone().into()));
        }
        if let Some(d) = &self.overrides.state_dir {
            flags.push(("runtime.state_dir", d.display().to_string().into()));
        }
        if let Some(on) = self.overrides.dashboard {
            flags.push(("dashboard.enabled", on.into()));
        }
        if let Some(port) = self.overrides.dashboard_port {
            flags.push(("dashboard.port", port.into()));
        }
        for (key, value) in flags {
            fig = fig.merge(prune(Named {
                name: FLAGS,
                inner: Serialized::global(key, value),
            }));
        }
        fig
    }

    /// Extract the layered config. A value that does not fit the model is reported and taken
    /// out of its layer (the default applies), and extraction is tried again, so every bad
    /// value is reported at once; with problems, the config is what remains.
    fn extract(&self, text: Option<&str>) -> (Figment, SyncraConfig, Vec<Problem>) {
        let mut pruned: Vec<Vec<String>> = Vec::new();
        let mut problems = Vec::new();
        loop {
            let fig = self.figment(text, &pruned);
            let err = match fig.extract::<SyncraConfig>() {
                Ok(config) => return (fig, config, problems),
                Err(e) => e,
            };
            let mut progress = false;
            for e in err.clone() {
                let mut path = e.path.clone();
                if let figment::error::Kind::UnknownField(field, _) = &e.kind {
                    path.push(field.clone());
                }
                if !path.is_empty() && !pruned.contains(&path) {
                    pruned.push(path);
                    progress = true;
                }
            }
            // The same problem can come back from another pass (a world table's key is seen
            // through `[worlds]` too): each is said once.
            for p in figment_problems(err, self) {
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
            if !progress || problems.len() >= MAX_VALUE_PROBLEMS {
                // Nothing left to take out (a syntax error, a whole-document problem).
                return (fig, SyncraConfig::default(), problems);
            }
        }
    }

    /// Load, validate and resolve.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let text = match &self.file {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        let (fig, mut config, value_problems) = self.extract(text.as_deref());
        // A problem with no key (a syntax error) leaves nothing to validate.
        if value_problems.iter().any(|p| p.key.is_empty()) {
            return Err(ConfigError::Invalid(value_problems));
        }

        // figment keeps tables in key order; restore the order the file wrote them in.
        if let Some(text) = &text {
            FileOrder::of(text).apply(&mut config);
        }

        // Paths written in a file are relative to that file; others to the working directory.
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let file_dir = self.file.as_deref().and_then(|p| p.parent()).map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        });
        let base_of = |key: &str| -> PathBuf {
            match (
                fig.find_metadata(key).and_then(|m| m.source.as_ref()),
                file_dir,
            ) {
                (Some(Source::File(_)), Some(dir)) => anchor(dir, &cwd),
                _ => cwd.clone(),
            }
        };
        let rt = &mut config.runtime;
        rt.log_dir = anchor(&rt.log_dir, &base_of("runtime.log_dir"));
        if let Some(d) = &rt.crash_dir {
            rt.crash_dir = Some(anchor(d, &base_of("runtime.crash_dir")));
        }
        if let Some(d) = &rt.run_dir {
            rt.run_dir = Some(anchor(d, &base_of("runtime.run_dir")));
        }
        if let Some(d) = &rt.state_dir {
            rt.state_dir = Some(anchor(d, &base_of("runtime.state_dir")));
        }
        config.sandbox.anchor(&base_of("sandbox"));
        if let Some(s) = &mut config.worlds.defaults.sandbox {
            s.anchor(&base_of("worlds.sandbox"));
        }
        for (name, spec) in &mut config.worlds.tables {
            if let Some(s) = &mut spec.sandbox {
                s.anchor(&base_of(&format!("worlds.{name}.sandbox")));
            }
        }
        for (name, entry) in &mut config.drivers.0 {
            if let DriverEntry::Spec(spec) = entry {
                if let Some(s) = &mut spec.sandbox {
                    s.anchor(&base_of(&format!("drivers.{name}.sandbox")));
                }
                anchor_command(
                    &mut spec.command,
                    &base_of(&format!("drivers.{name}.command")),
                );
            }
        }
        anchor_command(
            &mut config.worlds.defaults.command,
            &base_of("worlds.command"),
        );
        for (name, spec) in &mut config.worlds.tables {
            anchor_command(
                &mut spec.command,
                &base_of(&format!("worlds.{name}.command")),
            );
        }

        let planned = plan(&config).map_err(|problems| {
            problems
                .into_iter()
                .map(|mut p| {
                    p.source = source_of(&fig, &p.key, self);
                    p
                })
                .collect::<Vec<_>>()
        });
        let plan = match (planned, value_problems) {
            (Ok(plan), none) if none.is_empty() => plan,
            (Ok(_), value_problems) => return Err(ConfigError::Invalid(value_problems)),
            (Err(more), mut value_problems) => {
                value_problems.extend(more);
                return Err(ConfigError::Invalid(value_problems));
            }
        };
        Ok(Loaded {
            config,
            plan,
            file: self.file.clone(),
        })
    }
}

/// A command with a `/` is a path; a relative one is anchored like other file paths.
fn anchor_command(command: &mut Option<String>, base: &Path) {
    if let Some(c) = command
        && c.contains('/')
        && !c.starts_with('/')
    {
        *c = anchor(Path::new(c), base).display().to_string();
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(m) => {
            return Err(ConfigError::NotFound {
                path: path.to_owned(),
                is_dir: m.is_dir(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::NotFound {
                path: path.to_owned(),
                is_dir: false,
            });
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    }
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The config file as a figment layer whose metadata names the file.
struct FileLayer {
    path: PathBuf,
    text: String,
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", Source::File(self.path.clone()))
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data()
    }
}

fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).filter_map(|key| {
        let k = key.as_str();
        if k.eq_ignore_ascii_case("RUN_DIR") {
            Some("runtime.run_dir".into())
        } else if k.eq_ignore_ascii_case("STATE_DIR") {
            Some("runtime.state_dir".into())
        } else if k.eq_ignore_ascii_case("LOG_DIR") {
            Some("runtime.log_dir".into())
        } else if k.contains("__") {
            Some(k.replace("__", ".").into())
        } else {
            None
        }
    })
}

/// The environment variable that sets `path`, for messages.
fn env_var_for(path: &[String]) -> String {
    match path
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["runtime", "run_dir"] => "SYNCRA_RUN_DIR".into(),
        ["runtime", "state_dir"] => "SYNCRA_STATE_DIR".into(),
        ["runtime", "log_dir"] => "SYNCRA_LOG_DIR".into(),
        _ => format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase()),
    }
}

fn describe_source(meta: &Metadata, path: &[String], loader: &Loader) -> String {
    match &meta.source {
        Some(Source::File(_)) => loader
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "config file".into()),
        _ if meta.name.contains("environment") => {
            format!("environment variable {}", env_var_for(path))
        }
        _ if meta.name == FLAGS => match path.join(".").as_str() {
            "worlds.count" => "command-line flag --worlds".into(),
            "runtime.log_dir" => "command-line flag --log-dir".into(),
            "runtime.run_dir" => "command-line flag --run-dir".into(),
            "runtime.state_dir" => "command-line flag --state-dir".into(),
            p if p.starts_with("worlds.spread") => "command-line flag --hosts".into(),
            _ => FLAGS.into(),
        },
        _ => meta.name.to_string(),
    }
}

/// Where the value at dotted `key` came from (indexes such as `[2]` are ignored).
fn source_of(fig: &Figment, key: &str, loader: &Loader) -> Option<String> {
    let mut k = key.to_owned();
    while let Some(i) = k.find('[') {
        let j = k[i..].find(']').map(|j| i + j + 1).unwrap_or(k.len());
        k.replace_range(i..j, "");
    }
    // The nearest key that has metadata: a missing key is reported at its table.
    let mut probe = k.as_str();
    loop {
        if let Some(meta) = fig.find_metadata(probe) {
            let path: Vec<String> = probe.split('.').map(str::to_owned).collect();
            return Some(describe_source(meta, &path, loader));
        }
        match probe.rfind('.') {
            Some(i) => probe = &probe[..i],
            None => return None,
        }
    }
}

/// Turn figment's errors into problems with a file, a key and a plain-words expectation.
fn figment_problems(err: figment::Error, loader: &Loader) -> Vec<Problem> {
    use figment::error::Kind;
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| describe_source(m, &e.path, loader));
            let message = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    format!(
                        "unknown key `{field}`; expected one of: {}",
                        expected.join(", ")
                    )
                }
                Kind::UnknownVariant(v, expected) => {
                    format!(
                        "unknown value `{v}`; expected one of: {}",
                        expected.join(", ")
                    )
                }
                Kind::InvalidType(actual, expected) if expected.starts_with("a world table") => {
                    format!("unknown key (found {actual}); expected {expected}")
                }
                Kind::InvalidType(actual, expected) => {
                    format!("expected {expected}, found {actual}")
                }
                Kind::InvalidValue(actual, expected) => {
                    format!("expected {expected}, found {actual}")
                }
                Kind::MissingField(f) => format!("missing key `{f}`"),
                Kind::DuplicateField(f) => format!("key `{f}` is set twice"),
                Kind::Message(m) => m.trim_end().to_owned(),
                other => other.to_string(),
            };
            Problem {
                key,
                message,
                source,
            }
        })
        .collect()
}

/// Key order of `[drivers]` and of the `[worlds.<name>]` tables in a TOML text.
#[derive(Debug, Default)]
struct FileOrder {
    drivers: Vec<String>,
    worlds: Vec<String>,
}

impl FileOrder {
    fn of(text: &str) -> FileOrder {
        let Ok(doc) = text.parse::<toml::Table>() else {
            return FileOrder::default();
        };
        let keys = |section: &str, tables_only: bool| -> Vec<String> {
            doc.get(section)
                .and_then(|v| v.as_table())
                .map(|t| {
                    t.iter()
                        .filter(|(_, v)| !tables_only || v.is_table())
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        FileOrder {
            drivers: keys("drivers", false),
            worlds: keys("worlds", true),
        }
    }

    /// Sort drivers and world tables in this file's order; entries from other layers keep
    /// their relative order after them (the sort is stable).
    fn apply(&self, config: &mut SyncraConfig) {
        let rank =
            |own: &[String], name: &str| own.iter().position(|n| n == name).unwrap_or(usize::MAX);
        config
            .drivers
            .0
            .sort_by_key(|(n, _)| rank(&self.drivers, n));
        config
            .worlds
            .tables
            .sort_by_key(|(n, _)| rank(&self.worlds, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load(text: &str) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "SyncraConfig.toml", text);
        Loader::new().without_env().file(path).load()
    }

    /// Load `text` expecting failure; return the one-line messages.
    fn problems(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        }
    }

    fn assert_problem(text: &str, needles: &[&str]) {
        let found = problems(text);
        assert!(
            found.iter().any(|p| needles.iter().all(|n| p.contains(n))),
            "no problem mentions all of {needles:?}; got {found:#?}"
        );
        assert!(
            found.iter().all(|p| p.contains("SyncraConfig.toml")),
            "every problem names the file: {found:#?}"
        );
    }

    const SEED: &str = r#"
[runtime]
watch_interval_ms = 1000
auto_restart_crashed_processes = true

[drivers]
window = true
audio = true
openxr = false  # disable VR for now

[worlds]
default_world = "my_base_world"
"#;

    #[test]
    fn seed_snippet_loads_as_written() {
        let loaded = load(SEED).unwrap();
        let c = &loaded.config;
        assert_eq!(c.runtime.watch_interval_ms, 1000);
        assert!(c.runtime.auto_restart_crashed_processes);
        assert_eq!(c.drivers.get("window"), Some(&DriverEntry::Enabled(true)));
        assert_eq!(c.drivers.get("openxr"), Some(&DriverEntry::Enabled(false)));
        assert_eq!(c.worlds.default_world, "my_base_world");
        let names: Vec<_> = loaded.plan.nodes().map(|n| n.name.to_string()).collect();
        assert_eq!(names, ["window", "audio", "world/my_base_world"]);
        let window = loaded.plan.node("window").unwrap();
        assert_eq!(window.command, "syncra-window");
        assert_eq!(window.heartbeat.deadline_ms, 3000);
        assert_eq!(window.heartbeat.interval_ms, 500);
    }

    #[test]
    fn the_dashboard_is_off_by_default_and_its_flags_and_bounds_apply() {
        assert_eq!(load("").unwrap().plan.runtime.dashboard, None);
        let on = load("[dashboard]\nenabled = true\nport = 0\nmax_clients = 4\n").unwrap();
        assert_eq!(
            on.plan.runtime.dashboard,
            Some(crate::plan::DashboardPlan {
                port: 0,
                max_clients: 4
            })
        );
        let flags = Loader::new()
            .without_env()
            .overrides(Overrides {
                dashboard: Some(true),
                dashboard_port: Some(9100),
                ..Default::default()
            })
            .load()
            .unwrap();
        assert_eq!(
            flags.plan.runtime.dashboard.map(|d| d.port),
            Some(9100),
            "`syncra run --dashboard --dashboard-port 9100`"
        );
        for (bad, named) in [
            ("max_clients = 3", "dashboard.max_clients"),
            ("max_clients = 5000", "dashboard.max_clients"),
            ("port = 70000", "dashboard.port"),
            ("open = true", "dashboard.open"),
        ] {
            let err = load(&format!("[dashboard]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{named} not named in: {err}");
        }
    }

    #[test]
    fn drivers_start_in_file_order() {
        let loaded = load("[drivers]\ninput = true\n[drivers.zeta]\ncommand = \"/bin/zeta\"\n[drivers.audio]\nrestart = \"transient\"\n").unwrap();
        let names: Vec<_> = loaded
            .plan
            .drivers
            .nodes
            .iter()
            .map(|n| n.name.to_string())
            .collect();
        assert_eq!(names, ["input", "zeta", "audio"]);
        assert_eq!(loaded.plan.drivers.nodes[2].restart, RestartType::Transient);
    }

    #[test]
    fn world_names_default_plus_generated() {
        let loaded = Loader::new()
            .without_env()
            .overrides(Overrides {
                worlds: Some(4),
                ..Default::default()
            })
            .load()
            .unwrap();
        let names: Vec<_> = loaded
            .plan
            .worlds
            .nodes
            .iter()
            .map(|n| n.name.to_string())
            .collect();
        assert_eq!(
            names,
            ["world/main", "world/main-2", "world/main-3", "world/main-4"]
        );
        let seeds: Vec<_> = loaded
            .plan
            .worlds
            .nodes
            .iter()
            .map(|n| n.world.as_ref().unwrap().seed)
            .collect();
        assert_eq!(seeds.len(), 4);
        assert!(
            seeds.windows(2).all(|w| w[0] != w[1]),
            "each world gets its own seed: {seeds:?}"
        );
    }

    #[test]
    fn world_tables_and_defaults() {
        let loaded = load(
            "[worlds]\ndefault_world = \"lobby\"\ncount = 3\ntick_hz = 30\nentities = 10\n[worlds.arena]\ntick_hz = 120\nseed = 9\nrestart = \"transient\"\n",
        )
        .unwrap();
        let w: Vec<_> = loaded
            .plan
            .worlds
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), n.world.clone().unwrap()))
            .collect();
        assert_eq!(w[0].0, "world/lobby");
        assert_eq!(w[1].0, "world/arena");
        assert_eq!(w[2].0, "world/lobby-2");
        assert_eq!(w[0].1.tick_hz, 30.0);
        assert_eq!(w[1].1.tick_hz, 120.0);
        assert_eq!(w[1].1.seed, 9);
        assert_eq!(w[1].1.entities, 10);
        assert_eq!(loaded.plan.worlds.nodes[1].restart, RestartType::Transient);
    }

    #[test]
    fn a_worlds_game_comes_from_its_settings_and_a_typo_there_is_named() {
        let loaded = load(
            "[worlds]\ndefault_world = \"main\"\ncount = 2\nsettings = { player = true, ambience = \"hum\" }\n[worlds.solo]\nsettings = { player = false }\n",
        )
        .unwrap();
        let games: Vec<_> = loaded
            .plan
            .worlds
            .nodes
            .iter()
            .map(|n| n.world.clone().unwrap().game)
            .collect();
        assert!(games[0].player && games[0].ambience == "hum");
        assert!(!games[1].player, "a world's own settings win");
        assert_problem(
            "[worlds]\nsettings = { playr = true }\n",
            &["worlds.settings", "playr"],
        );
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let found = problems("[runtime\nwatch_interval_ms = 5\n");
        assert!(
            found
                .iter()
                .any(|p| p.contains("SyncraConfig.toml") && p.contains("line 1")),
            "{found:#?}"
        );
    }

    #[test]
    fn unknown_key() {
        assert_problem(
            "[runtime]\nwatch_intervall_ms = 5\n",
            &[
                "`runtime.watch_intervall_ms`",
                "unknown key",
                "watch_interval_ms",
            ],
        );
        assert_problem("[runtim]\nx = 1\n", &["`runtim`", "unknown key", "runtime"]);
        assert_problem(
            "[drivers.renderer]\ncomand = \"x\"\n",
            &["`drivers.renderer.comand`", "unknown key"],
        );
        assert_problem(
            "[worlds]\ntick_hx = 30\n",
            &["`worlds.tick_hx`", "unknown key", "tick_hz"],
        );
    }

    #[test]
    fn wrong_type() {
        assert_problem(
            "[runtime]\nwatch_interval_ms = \"fast\"\n",
            &["`runtime.watch_interval_ms`", "expected", "string"],
        );
        assert_problem(
            "[drivers]\nwindow = \"yes\"\n",
            &["`drivers.window`", "`true`, `false` or a driver table"],
        );
    }

    #[test]
    fn unknown_strategy() {
        assert_problem(
            "[supervisor]\nstrategy = \"one_for_none\"\n",
            &[
                "`supervisor.strategy`",
                "one_for_none",
                "one_for_one, one_for_all, rest_for_one",
            ],
        );
    }

    #[test]
    fn zero_interval() {
        assert_problem(
            "[runtime]\nwatch_interval_ms = 0\n",
            &["`runtime.watch_interval_ms`", "at least 10"],
        );
    }

    #[test]
    fn duplicate_world_names() {
        assert_problem(
            "[worlds]\ndefault_world = \"a\"\nnames = [\"b\", \"a\"]\n",
            &["`worlds.names[1]`", "duplicate world name `a`"],
        );
    }

    #[test]
    fn count_below_named_worlds() {
        assert_problem(
            "[worlds]\ncount = 1\nnames = [\"b\"]\n",
            &["`worlds.count`", "names 2"],
        );
    }

    #[test]
    fn dependency_cycle_and_unknown_name() {
        assert_problem(
            "[drivers.a]\ncommand = \"/bin/a\"\ndepends_on = [\"b\"]\n[drivers.b]\ncommand = \"/bin/b\"\ndepends_on = [\"a\"]\n",
            &["dependency cycle", "a → b → a"],
        );
        assert_problem(
            "[drivers]\nwindow = true\n[drivers.renderer]\ndepends_on = [\"windw\"]\n",
            &[
                "`drivers.renderer.depends_on[0]`",
                "unknown node `windw`",
                "window",
            ],
        );
        assert_problem(
            "[drivers.renderer]\ndepends_on = [\"world/main\"]\n",
            &["cannot depend on world"],
        );
    }

    #[test]
    fn custom_driver_needs_a_command() {
        assert_problem(
            "[drivers]\nmydriver = true\n",
            &["`drivers.mydriver.command`", "not a built-in driver"],
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert_problem(
            "[worlds]\ndefault_world = \"a b\"\n",
            &["`worlds.default_world`", "' '"],
        );
        assert_problem(
            "[drivers.\"../x\"]\ncommand = \"/bin/x\"\n",
            &["driver name"],
        );
    }

    #[test]
    fn all_problems_reported_at_once() {
        let found = problems(
            "[runtime]\nwatch_interval_ms = 0\nmissed_beats = 0\n[supervisor]\nbackoff_jitter = 1.5\n",
        );
        assert!(found.len() >= 3, "{found:#?}");
    }

    #[test]
    fn missing_file() {
        let err = Loader::new()
            .without_env()
            .file("/nonexistent/syncra.toml")
            .load()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/syncra.toml not found"
        );
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "c.toml",
            "[runtime]\nlog_dir = \"mylogs\"\n[drivers.x]\ncommand = \"./bin/x\"\n",
        );
        let loaded = Loader::new().without_env().file(&path).load().unwrap();
        assert_eq!(loaded.plan.runtime.log_dir, dir.path().join("mylogs"));
        assert_eq!(
            loaded.plan.runtime.crash_dir,
            dir.path().join("mylogs/crashes")
        );
        // Clean: no `/./` left in the path.
        assert_eq!(
            loaded.plan.node("x").unwrap().command,
            dir.path().join("bin/x").display().to_string()
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "c.toml",
            "[worlds]\ncount = 2\n[runtime]\nlog_dir = \"/var/a\"\n",
        );
        let o = Overrides {
            worlds: Some(5),
            log_dir: Some("/var/b".into()),
            run_dir: Some("/run/c".into()),
            state_dir: Some("/var/s".into()),
            ..Default::default()
        };
        let loaded = Loader::new()
            .without_env()
            .file(&path)
            .overrides(o)
            .load()
            .unwrap();
        assert_eq!(loaded.plan.worlds.nodes.len(), 5);
        assert_eq!(loaded.plan.runtime.log_dir, PathBuf::from("/var/b"));
        assert_eq!(loaded.plan.runtime.run_dir, PathBuf::from("/run/c"));
        assert_eq!(loaded.plan.runtime.state_dir, PathBuf::from("/var/s"));
        let err = Loader::new()
            .without_env()
            .overrides(Overrides {
                worlds: Some(0),
                ..Default::default()
            })
            .load()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("command-line flag --worlds: `worlds.count`: 0 is out of range"),
            "{err}"
        );
    }

    const PIN: &str = "sha256:0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f";

    #[test]
    fn nodes_are_placed_on_hosts_and_hosts_spreads_the_worlds_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[hosts.a]\naddress = \"10.0.0.2:7800\"\nfingerprint = \"{PIN}\"\n[hosts.b]\naddress = \"10.0.0.3:7800\"\nfingerprint = \"{PIN}\"\ndeadline_ms = 1500\nfence_grace_ms = 0\n\n[drivers.gpu]\ncommand = \"x\"\nhost = \"b\"\nfallback_host = \"local\"\n\n[worlds]\nnames = [\"pinned\"]\n[worlds.pinned]\nhost = \"local\"\n"
        );
        let path = write(&dir, "c.toml", &text);
        let loaded = Loader::new()
            .without_env()
            .file(&path)
            .overrides(Overrides {
                worlds: Some(5),
                hosts: Some(vec!["a".into(), "local".into(), "b".into()]),
                ..Default::default()
            })
            .load()
            .unwrap();
        let gpu = &loaded.plan.drivers.nodes[0];
        assert_eq!(gpu.host.as_deref(), Some("b"));
        assert_eq!(
            gpu.fallback_host,
            Some(None),
            "`local` is the runtime's own host"
        );
        let placed: Vec<(String, Option<&str>)> = loaded
            .plan
            .worlds
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), n.host.as_deref()))
            .collect();
        assert_eq!(
            placed,
            [
                ("world/main".to_owned(), Some("a")),
                ("world/pinned".to_owned(), None),
                ("world/main-2".to_owned(), None),
                ("world/main-3".to_owned(), Some("b")),
                ("world/main-4".to_owned(), Some("a")),
            ],
            "in turn (`local` is none), but a world that names its host keeps it, and takes no turn"
        );
        let b = &loaded.plan.hosts[1];
        assert_eq!(
            (b.deadline, b.fence_grace),
            (Duration::from_millis(1500), Duration::ZERO)
        );
        assert_eq!(loaded.plan.hosts[0].deadline, Duration::from_millis(5000));
    }

    #[test]
    fn an_unknown_host_a_bad_deadline_and_a_host_called_local_are_refused_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[hosts.a]\naddress = \"10.0.0.2:7800\"\nfingerprint = \"{PIN}\"\ndeadline_ms = 10\n[hosts.local]\naddress = \"10.0.0.2:7800\"\nfingerprint = \"{PIN}\"\n\n[worlds]\nfallback_host = \"nowhere\"\n[worlds.x]\nhost = \"gpu-box\"\n"
        );
        let path = write(&dir, "c.toml", &text);
        let err = Loader::new()
            .without_env()
            .file(&path)
            .overrides(Overrides {
                hosts: Some(vec!["a".into(), "elsewhere".into()]),
                ..Default::default()
            })
            .load()
            .unwrap_err()
            .to_string();
        for says in [
            "`worlds.x.host`: no host `gpu-box`: expected `local` or a `[hosts.<name>]` of this config (a, local)",
            "`worlds.fallback_host`: no host `nowhere`",
            "`hosts.a.deadline_ms`: 10 is too small: must be at least 500",
            "`hosts.local`: `local` names the runtime's own host",
            "command-line flag --hosts: `worlds.spread[1]`: no host `elsewhere`",
        ] {
            assert!(err.contains(says), "missing {says:?} in:\n{err}");
        }
    }

    #[test]
    fn presets_load() {
        for (name, text) in [
            ("server", crate::presets::SERVER),
            ("desktop", crate::presets::DESKTOP),
        ] {
            let loaded = load(text).unwrap_or_else(|e| panic!("preset {name}: {e}"));
            assert_eq!(loaded.plan.worlds.nodes.len(), 1, "{name}");
        }
        let desktop = load(crate::presets::DESKTOP).unwrap();
        let drivers: Vec<_> = desktop
            .plan
            .drivers
            .nodes
            .iter()
            .map(|n| n.name.to_string())
            .collect();
        assert_eq!(drivers, ["window", "renderer", "audio", "input", "xr"]);
    }

    #[test]
    fn effective_config_round_trips() {
        let loaded = load("[drivers]\nwindow = true\n[drivers.x]\ncommand = \"/bin/x\"\nenv = { A = \"1\" }\n[worlds]\ntick_hz = 30\n[worlds.arena]\nseed = 4\n").unwrap();
        let text = loaded.config.to_toml();
        let again = load(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(again.config, loaded.config, "{text}");
    }

    #[test]
    fn sandbox_profiles_follow_kind_then_config() {
        use crate::sandbox::{Device, Network, SandboxMode};
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "SyncraConfig.toml",
            r#"
sandbox = "strict"
[drivers.renderer]
[drivers.net]
command = "/bin/net"
sandbox = { network = "any", write = ["cache"], memory_mb = 512 }
[drivers.plain]
command = "/bin/plain"
[worlds]
count = 1
"#,
        );
        let loaded = Loader::new().without_env().file(path).load().unwrap();
        let plan = &loaded.plan;
        let renderer = &plan.node("renderer").unwrap().sandbox;
        assert_eq!(renderer.mode, SandboxMode::Strict);
        assert_eq!(renderer.devices, [Device::Gpu, Device::Display]);
        assert_eq!(renderer.network, Network::None);
        let net = &plan.node("net").unwrap().sandbox;
        assert_eq!(net.network, Network::Any);
        assert_eq!(net.memory_mb, 512);
        assert!(
            net.write.contains(&dir.path().join("cache")),
            "a relative grant is relative to the config file: {:?}",
            net.write
        );
        // A custom driver gets the base and nothing more.
        let plain = &plan.node("plain").unwrap().sandbox;
        assert!(plain.devices.is_empty());
        assert_eq!(plain.write, [PathBuf::from("/dev/null")]);
        assert_eq!(plain.network, Network::None);
        let world = &plan.node("world/main").unwrap().sandbox;
        assert_eq!(world.memory_mb, crate::sandbox::WORLD_MEMORY_MB);
        assert!(
            world.describe().contains("network none (own namespace)"),
            "{}",
            world.describe()
        );
        // The audio driver reads its assets.
        let audio = load("[drivers.audio]\nsettings = { assets = \"snd\" }\n").unwrap();
        let audio = &audio.plan.node("audio").unwrap().sandbox;
        assert!(
            audio.read.contains(&PathBuf::from("snd")),
            "{:?}",
            audio.read
        );
        assert_eq!(audio.devices, [Device::Sound]);
    }

    #[test]
    fn bad_sandbox_grants_are_named_by_key() {
        assert_problem("sandbox = \"strictest\"\n", &["sandbox", "strictest"]);
        assert_problem("[sandbox]\nwrit = [\"/x\"]\n", &["writ"]);
        assert_problem(
            "[drivers.x]\ncommand = \"/bin/x\"\nsandbox = { memory_mb = 99999999 }\n",
            &["drivers.x.sandbox.memory_mb", "at most"],
        );
        assert_problem(
            "[worlds.a]\nsandbox = { write = [\"/\"] }\n",
            &["worlds.a.sandbox.write[0]", "anywhere"],
        );
        assert_problem("[sandbox]\nnetwork = \"lan\"\n", &["sandbox", "lan"]);
        assert_problem(
            "[sandbox]\nopen_files = 3\n",
            &["sandbox.open_files", "below 16"],
        );
    }
}
