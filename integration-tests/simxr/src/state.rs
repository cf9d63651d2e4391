//! The runtime's state: one global [`Runtime`] behind a mutex, holding at most one instance,
//! which holds at most one session with its spaces and swapchains. Handles are numbers
//! from one counter, so a stale or foreign handle never matches.
//!
//! Counters in [`Stats`] live for the process (a test may create several instances; the
//! loader unloads this library with its last instance, so a fresh load resumes them from
//! `status.json` when that file names this process); everything else is dropped with its
//! instance, so a new instance starts clean.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use ash::vk;
use openxr_sys as sys;

use crate::abi::XrResult;
use crate::actions::{ActionValue, Inputs, Kind, PathTable};
use crate::control::{self, FrameLine, HapticRecord, InputFollower, Script, SimStatus};
use crate::pacing::Pacer;
use crate::poses::{Hand, Pose};
use crate::vulkan::{Gpu, Images};

/// How often the `unplugged` file is looked at, at most.
const UNPLUG_CHECK_NS: i64 = 20_000_000;
/// How often `status.json` is rewritten while frames run, at most.
const STATUS_INTERVAL_NS: i64 = 250_000_000;
/// Haptic pulses kept for `status.json`.
const HAPTICS_KEPT: usize = 16;
/// Located view poses remembered for `frames.log`'s pose latency.
const LOCATED_KEPT: usize = 256;

static RUNTIME: Mutex<Runtime> = Mutex::new(Runtime::new());

/// The runtime, locked. A panic while it was held does not poison it for good: entry
/// points return errors rather than leave state half-changed.
pub(crate) fn lock() -> MutexGuard<'static, Runtime> {
    RUNTIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters over the whole process.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) instances: u64,
    pub(crate) sessions: u64,
    pub(crate) frames_waited: u64,
    pub(crate) frames_ended: u64,
    pub(crate) frames_with_layers: u64,
    pub(crate) missed: u64,
    pub(crate) late: u64,
    pub(crate) haptics: VecDeque<HapticRecord>,
    pub(crate) haptic_count: u64,
    pub(crate) inputs_applied: u64,
}

impl Stats {
    /// Continues the counters of an earlier load of this library in the same process: the
    /// loader unloads the runtime with its last instance, which resets every static.
    pub(crate) fn resume(&mut self, earlier: &SimStatus) {
        *self = Stats {
            instances: earlier.instances,
            sessions: earlier.sessions,
            frames_waited: earlier.frames_waited,
            frames_ended: earlier.frames_ended,
            frames_with_layers: earlier.frames_with_layers,
            missed: earlier.missed,
            late: earlier.late,
            haptics: earlier.haptics.iter().cloned().collect(),
            haptic_count: earlier.haptic_count,
            inputs_applied: earlier.inputs_applied,
        };
    }

    pub(crate) fn haptic(&mut self, record: HapticRecord) {
        if self.haptics.len() == HAPTICS_KEPT {
            self.haptics.pop_front();
        }
        self.haptics.push_back(record);
        self.haptic_count += 1;
    }
}

/// Everything the runtime holds.
#[derive(Debug)]
pub(crate) struct Runtime {
    next_handle: u64,
    pub(crate) stats: Stats,
    pub(crate) instance: Option<Instance>,
    status_dirty: bool,
    status_written_ns: i64,
}

/// A queued event.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    State {
        session: u64,
        state: sys::SessionState,
        time_ns: i64,
    },
    ProfileChanged {
        session: u64,
    },
}

/// Watches the `unplugged` file, at most every [`UNPLUG_CHECK_NS`].
#[derive(Debug)]
pub(crate) struct UnplugWatch {
    path: Option<PathBuf>,
    checked_ns: i64,
    unplugged: bool,
}

impl UnplugWatch {
    pub(crate) fn unplugged(&mut self, now_ns: i64) -> bool {
        if let Some(path) = &self.path
            && now_ns - self.checked_ns >= UNPLUG_CHECK_NS
        {
            self.checked_ns = now_ns;
            self.unplugged = path.exists();
        }
        self.unplugged
    }
}

/// An XrInstance.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) handle: u64,
    pub(crate) script: Script,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) vulkan_enabled: bool,
    pub(crate) timespec_enabled: bool,
    pub(crate) paths: PathTable,
    pub(crate) events: VecDeque<Event>,
    pub(crate) action_sets: HashMap<u64, ActionSet>,
    pub(crate) actions: HashMap<u64, Action>,
    pub(crate) suggested: Bindings,
    pub(crate) inputs: Inputs,
    pub(crate) follower: Option<InputFollower>,
    pub(crate) unplug: UnplugWatch,
    /// The Vulkan loader: the application's `vkGetInstanceProcAddr`, or libvulkan.
    pub(crate) vk_entry: Option<VkEntry>,
    pub(crate) vk_instance: Option<vk::Instance>,
    pub(crate) requirements_queried: bool,
    pub(crate) session: Option<Session>,
}

impl Instance {
    pub(crate) fn new(
        handle: u64,
        script: Script,
        dir: Option<PathBuf>,
        extensions: [bool; 2],
    ) -> Self {
        let [vulkan_enabled, timespec_enabled] = extensions;
        Self {
            handle,
            script,
            follower: dir
                .as_ref()
                .map(|d| InputFollower::new(d.join(control::INPUTS_FILE))),
            unplug: UnplugWatch {
                path: dir.as_ref().map(|d| d.join(control::UNPLUGGED_FILE)),
                checked_ns: i64::MIN / 2,
                unplugged: false,
            },
            dir,
            vulkan_enabled,
            timespec_enabled,
            paths: PathTable::default(),
            events: VecDeque::new(),
            action_sets: HashMap::new(),
            actions: HashMap::new(),
            suggested: Bindings::default(),
            inputs: Inputs::default(),
            vk_entry: None,
            vk_instance: None,
            requirements_queried: false,
            session: None,
        }
    }

    pub(crate) fn session(&mut self, handle: sys::Session) -> XrResult<&mut Session> {
        use sys::Handle as _;
        self.session
            .as_mut()
            .filter(|s| s.handle == handle.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)
    }

    /// Applies the input lines appended since the last look; returns how many.
    pub(crate) fn apply_inputs(&mut self) -> u64 {
        let Some(follower) = &mut self.follower else {
            return 0;
        };
        let mut applied = 0;
        for line in follower.poll() {
            match line {
                Ok(line) => {
                    match (line.value, line.xy()) {
                        (Some(v), _) => self.inputs.set_scalar(&line.path, v),
                        (None, Some(xy)) => self.inputs.set_stick(&line.path, xy),
                        (None, None) => continue,
                    }
                    applied += 1;
                }
                Err(e) => eprintln!(
                    "syncra-simxr: skipping a bad line in {}: {e}",
                    control::INPUTS_FILE
                ),
            }
        }
        applied
    }
}

/// Suggested bindings: profile → (action, binding path), as last suggested.
#[derive(Debug, Default)]
pub(crate) struct Bindings(pub(crate) HashMap<&'static str, Vec<(u64, String)>>);

impl Bindings {
    /// The binding paths of `action` in `profile`, narrowed to `hand` when given.
    pub(crate) fn of<'a>(
        &'a self,
        profile: Option<&'static str>,
        action: u64,
        hand: Option<Hand>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        profile
            .and_then(|p| self.0.get(p))
            .into_iter()
            .flatten()
            .filter(move |(a, path)| {
                *a == action && hand.is_none_or(|h| crate::actions::hand_of(path) == Some(h))
            })
            .map(|(_, path)| path.as_str())
    }
}

/// A Vulkan loader (`ash::Entry` has no `Debug`).
#[derive(Clone)]
pub(crate) struct VkEntry(pub(crate) ash::Entry);

impl std::fmt::Debug for VkEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VkEntry")
    }
}

/// An XrActionSet.
#[derive(Debug)]
pub(crate) struct ActionSet {
    pub(crate) name: String,
    pub(crate) attached: bool,
}

/// An XrAction.
#[derive(Debug)]
pub(crate) struct Action {
    pub(crate) set: u64,
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) hands: Vec<Hand>,
}

/// What a space is attached to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SpaceKind {
    Reference(sys::ReferenceSpaceType),
    Action { action: u64, hand: Hand },
}

/// An XrSpace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Space {
    pub(crate) kind: SpaceKind,
    pub(crate) offset: Pose,
}

/// An XrSwapchain and where its images are in the acquire → wait → release cycle.
#[derive(Debug)]
pub(crate) struct Swapchain {
    pub(crate) images: Images,
    pub(crate) format: vk::Format,
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// The layout the application hands images back in.
    pub(crate) layout: vk::ImageLayout,
    pub(crate) initialized: bool,
    pub(crate) acquired: VecDeque<u32>,
    pub(crate) waited: bool,
    pub(crate) next: u32,
    pub(crate) last_released: Option<u32>,
}

/// An XrSession.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) handle: u64,
    pub(crate) state: sys::SessionState,
    pub(crate) running: bool,
    pub(crate) pacer: Option<Pacer>,
    /// Poses' t = 0 (session creation, then `xrBeginSession`).
    pub(crate) origin_ns: i64,
    /// `xrWaitFrame`s not yet followed by `xrBeginFrame`.
    pub(crate) waited: u32,
    pub(crate) in_frame: bool,
    /// Display times handed out and not yet ended.
    pub(crate) predicted: VecDeque<i64>,
    pub(crate) first_frame_ended: bool,
    pub(crate) attached: bool,
    pub(crate) profile: Option<&'static str>,
    pub(crate) values: HashMap<(u64, Option<Hand>), ActionValue>,
    pub(crate) spaces: HashMap<u64, Space>,
    pub(crate) swapchains: HashMap<u64, Swapchain>,
    /// (pose bits, the display time it was located for, the first time it was returned) of
    /// recently located view poses.
    pub(crate) located: VecDeque<([u32; 7], i64, i64)>,
    pub(crate) frames_log: Option<BufWriter<File>>,
    /// Declared last: dropped after the swapchains' images.
    pub(crate) gpu: Gpu,
}

impl Session {
    pub(crate) fn new(handle: u64, gpu: Gpu, now_ns: i64, dir: Option<&PathBuf>) -> Self {
        let frames_log = dir.and_then(|d| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.join(control::FRAMES_FILE))
                .ok()
                .map(BufWriter::new)
        });
        Self {
            handle,
            state: sys::SessionState::UNKNOWN,
            running: false,
            pacer: None,
            origin_ns: now_ns,
            waited: 0,
            in_frame: false,
            predicted: VecDeque::new(),
            first_frame_ended: false,
            attached: false,
            profile: None,
            values: HashMap::new(),
            spaces: HashMap::new(),
            swapchains: HashMap::new(),
            located: VecDeque::new(),
            frames_log,
            gpu,
        }
    }

    pub(crate) fn lost(&self) -> bool {
        self.state == sys::SessionState::LOSS_PENDING
    }

    /// `XR_ERROR_SESSION_LOST` once the headset is gone (LOSS_PENDING was queued).
    pub(crate) fn check_not_lost(&self) -> XrResult {
        if self.lost() {
            Err(sys::Result::ERROR_SESSION_LOST)
        } else {
            Ok(())
        }
    }

    pub(crate) fn check_running(&self) -> XrResult {
        self.check_not_lost()?;
        if self.running {
            Ok(())
        } else {
            Err(sys::Result::ERROR_SESSION_NOT_RUNNING)
        }
    }

    /// Remember that `pose` was returned for display time `display_ns` at `now_ns` (the first
    /// time only, if it is located again for the same display time).
    pub(crate) fn remember_located(&mut self, pose: &Pose, display_ns: i64, now_ns: i64) {
        let bits = pose.bits();
        if self
            .located
            .iter()
            .any(|&(b, d, _)| b == bits && d == display_ns)
        {
            return;
        }
        if self.located.len() == LOCATED_KEPT {
            self.located.pop_front();
        }
        self.located.push_back((bits, display_ns, now_ns));
    }

    /// When `pose` was first returned, for the latest display time it was returned for. The
    /// scripted head swings back and forth, so the same pose comes back (mirrored about each
    /// turn on the vsync grid, to the bit): an application draws for its newest pose.
    pub(crate) fn located_at(&self, pose: &Pose) -> Option<i64> {
        let bits = pose.bits();
        self.located
            .iter()
            .filter(|(b, _, _)| *b == bits)
            .max_by_key(|&&(_, d, _)| d)
            .map(|&(_, _, t)| t)
    }

    pub(crate) fn log_frame(&mut self, line: &FrameLine) {
        if let Some(log) = &mut self.frames_log
            && writeln!(log, "{line}").and_then(|()| log.flush()).is_err()
        {
            eprintln!(
                "syncra-simxr: cannot write {}; frame lines stop here",
                control::FRAMES_FILE
            );
            self.frames_log = None;
        }
    }
}

impl Runtime {
    const fn new() -> Self {
        Self {
            next_handle: 0x51_0000,
            stats: Stats {
                instances: 0,
                sessions: 0,
                frames_waited: 0,
                frames_ended: 0,
                frames_with_layers: 0,
                missed: 0,
                late: 0,
                haptics: VecDeque::new(),
                haptic_count: 0,
                inputs_applied: 0,
            },
            instance: None,
            status_dirty: false,
            status_written_ns: 0,
        }
    }

    /// A fresh handle value, never 0 and never reused in this process.
    pub(crate) fn new_handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }

    pub(crate) fn instance(&mut self, handle: sys::Instance) -> XrResult<&mut Instance> {
        use sys::Handle as _;
        self.instance
            .as_mut()
            .filter(|i| i.handle == handle.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)
    }

    /// The instance owning session `handle`.
    pub(crate) fn instance_of(&mut self, handle: sys::Session) -> XrResult<&mut Instance> {
        let instance = self
            .instance
            .as_mut()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        instance.session(handle)?;
        Ok(instance)
    }

    /// The current session, whatever handle a child object names.
    pub(crate) fn any_session(&mut self) -> XrResult<&mut Session> {
        self.instance
            .as_mut()
            .and_then(|i| i.session.as_mut())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)
    }

    /// Moves the current session to `state` and queues the event.
    pub(crate) fn change_state(&mut self, state: sys::SessionState, now_ns: i64) {
        let Some(instance) = &mut self.instance else {
            return;
        };
        let Some(session) = &mut instance.session else {
            return;
        };
        session.state = state;
        instance.events.push_back(Event::State {
            session: session.handle,
            state,
            time_ns: now_ns,
        });
        self.status_dirty = true;
    }

    /// Queues LOSS_PENDING once the headset is unplugged (looked at every 20 ms at most).
    pub(crate) fn check_unplugged(&mut self, now_ns: i64) {
        let Some(instance) = &mut self.instance else {
            return;
        };
        if !instance.unplug.unplugged(now_ns) {
            return;
        }
        let live = instance.session.as_ref().is_some_and(|s| {
            !matches!(
                s.state,
                sys::SessionState::LOSS_PENDING
                    | sys::SessionState::EXITING
                    | sys::SessionState::UNKNOWN
            )
        });
        if live {
            self.change_state(sys::SessionState::LOSS_PENDING, now_ns);
        }
    }

    pub(crate) fn mark_status_dirty(&mut self) {
        self.status_dirty = true;
    }

    /// Rewrites `status.json` when something it shows changed state, or every 250 ms
    /// while frames run.
    pub(crate) fn sync_status(&mut self, now_ns: i64, frames_running: bool) {
        let due = frames_running && now_ns - self.status_written_ns >= STATUS_INTERVAL_NS;
        if !(self.status_dirty || due) {
            return;
        }
        let Some(dir) = self.instance.as_ref().and_then(|i| i.dir.clone()) else {
            return;
        };
        self.status_dirty = false;
        self.status_written_ns = now_ns;
        let status = self.status();
        let written = serde_json::to_vec_pretty(&status)
            .map_err(std::io::Error::other)
            .and_then(|bytes| control::write_atomic(&dir.join(control::STATUS_FILE), &bytes));
        if let Err(e) = written {
            eprintln!(
                "syncra-simxr: cannot write {}: {e}",
                dir.join(control::STATUS_FILE).display()
            );
        }
    }

    fn status(&self) -> SimStatus {
        let s = &self.stats;
        let session = self.instance.as_ref().and_then(|i| i.session.as_ref());
        SimStatus {
            pid: std::process::id(),
            instances: s.instances,
            sessions: s.sessions,
            state: session.map_or_else(|| "NONE".to_owned(), |s| format!("{:?}", s.state)),
            frames_waited: s.frames_waited,
            frames_ended: s.frames_ended,
            frames_with_layers: s.frames_with_layers,
            missed: s.missed,
            late: s.late,
            haptics: s.haptics.iter().cloned().collect(),
            haptic_count: s.haptic_count,
            profile: session
                .and_then(|s| s.profile)
                .unwrap_or_default()
                .to_owned(),
            inputs_applied: s.inputs_applied,
        }
    }
}
