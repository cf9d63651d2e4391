//! One OpenXR session on whatever runtime the system has: instance, system, Vulkan device,
//! session, spaces, the controller actions and one swapchain per eye.
//!
//! [`Headset::open`] goes from nothing to a session (each step that fails says which and
//! why, in words a user can act on); [`Headset::events`] follows the session's state;
//! [`Headset::frame`] runs one headset frame. Dropping a `Headset` ends it in the order OpenXR
//! needs (swapchains and spaces, session, Vulkan device, instance).

use std::time::Duration;

use openxr as xr;
use syncra_node::audio::monotonic_ns;
use syncra_node::xr::{EyeView, Fov, Hand, Pose, SessionState};

use crate::vulkan::{Gpu, Target};

/// Swapchain format: `VK_FORMAT_R8G8B8A8_SRGB`. The renderer's bytes are what a display
/// shows (its window takes them as they are); a compositor takes an sRGB image's bytes as
/// such too, where it would encode a UNORM image's as linear light a second time.
const FORMAT_SRGB: u32 = 43;
/// `VK_FORMAT_R8G8B8A8_UNORM`, when the runtime offers no sRGB format.
const FORMAT_UNORM: u32 = 37;

/// The controls and their OpenXR actions.
pub(crate) struct Controls {
    set: xr::ActionSet,
    trigger: xr::Action<f32>,
    squeeze: xr::Action<f32>,
    stick: xr::Action<xr::Vector2f>,
    a: xr::Action<bool>,
    b: xr::Action<bool>,
    x: xr::Action<bool>,
    y: xr::Action<bool>,
    menu: xr::Action<bool>,
    grip: xr::Action<xr::Posef>,
    haptic: xr::Action<xr::Haptic>,
    hands: [xr::Path; 2],
}

/// One eye's swapchain and its images.
struct EyeChain {
    chain: xr::Swapchain<xr::Vulkan>,
    images: Vec<u64>,
    width: u32,
    height: u32,
}

/// What a headset frame saw: the poses at its predicted display time and the controls.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) display_time: i64,
    pub(crate) period_ns: u64,
    pub(crate) should_render: bool,
    pub(crate) located_ns: u64,
    pub(crate) head: Pose,
    pub(crate) views: [EyeView; 2],
    pub(crate) hands: [Option<Pose>; 2],
    /// Every control's value now: (name, x, y).
    pub(crate) controls: Vec<(&'static str, f32, f32)>,
    /// Frames the runtime says were skipped since the last one (display time jumped).
    pub(crate) skipped: u64,
}

/// The eye pair a frame submits: the views it was drawn from and its size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Submit {
    pub(crate) views: [EyeView; 2],
    pub(crate) width: u32,
    pub(crate) height: u32,
}

/// A change of the session's state or of the runtime.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// The session moved to this state.
    State(SessionState),
    /// The runtime is going away (instance loss pending).
    InstanceLoss,
}

/// An OpenXR session and everything it needs. Field order is drop order.
pub(crate) struct Headset {
    eyes: Option<[EyeChain; 2]>,
    hand_spaces: [xr::Space; 2],
    view_space: xr::Space,
    stage: xr::Space,
    controls: Controls,
    stream: xr::FrameStream<xr::Vulkan>,
    waiter: xr::FrameWaiter,
    session: xr::Session<xr::Vulkan>,
    pub(crate) gpu: Gpu,
    instance: xr::Instance,
    /// "Monado 21.0.0", "syncra-simxr 0.1.0".
    pub(crate) runtime: String,
    /// The headset's name.
    pub(crate) system: String,
    /// The recommended eye image size.
    pub(crate) eye_size: [u32; 2],
    max_size: [u32; 2],
    pub(crate) state: SessionState,
    running: bool,
    format: u32,
    last_display: Option<(i64, u64)>,
    /// `XrTime` → `CLOCK_MONOTONIC`, when the runtime converts (XR_KHR_convert_timespec_time).
    converts: bool,
}

impl std::fmt::Debug for Headset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Headset")
            .field("runtime", &self.runtime)
            .field("system", &self.system)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// What went wrong, as a sentence for status.
pub(crate) type Why = String;

/// Why [`Headset::open`] made no session. Always worth another look (a runtime can be
/// installed and a headset plugged in while the engine runs), but a machine with no runtime
/// at all is looked at less and less often.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NoSession {
    /// A sentence for status.
    pub(crate) why: Why,
    /// No loader or no runtime (as opposed to no headset, or a step that failed).
    pub(crate) no_runtime: bool,
}

impl NoSession {
    fn missing(why: Why) -> NoSession {
        NoSession {
            why,
            no_runtime: true,
        }
    }
}

impl From<Why> for NoSession {
    fn from(why: Why) -> NoSession {
        NoSession {
            why,
            no_runtime: false,
        }
    }
}

fn at(step: &'static str) -> impl Fn(xr::sys::Result) -> Why {
    move |e| format!("{step}: {e}")
}

impl Headset {
    /// Load the OpenXR loader, find a runtime and a headset, and make a session on it.
    pub(crate) fn open(app: &str) -> Result<Headset, NoSession> {
        // SAFETY: the system's OpenXR loader (libopenxr_loader.so.1) is a conforming library.
        let entry = unsafe { xr::Entry::load(&()) }.map_err(|e| {
            NoSession::missing(format!(
                "no OpenXR loader ({e}): install the system's OpenXR loader (Debian: libopenxr-loader1); the engine runs flat"
            ))
        })?;
        let available = entry.enumerate_extensions().map_err(|e| match e {
            xr::sys::Result::ERROR_RUNTIME_UNAVAILABLE | xr::sys::Result::ERROR_RUNTIME_FAILURE => {
                NoSession::missing(no_runtime(e))
            }
            e => format!("asking the OpenXR runtime for its extensions: {e}").into(),
        })?;
        if !available.khr_vulkan_enable2 {
            return Err(
                "the OpenXR runtime cannot take Vulkan images (it lacks XR_KHR_vulkan_enable2)"
                    .to_owned()
                    .into(),
            );
        }
        let mut exts = xr::ExtensionSet::default();
        exts.khr_vulkan_enable2 = true;
        exts.khr_convert_timespec_time = available.khr_convert_timespec_time;
        let instance = entry
            .create_instance(
                &xr::ApplicationInfo {
                    application_name: app,
                    application_version: 1,
                    engine_name: "Syncra",
                    engine_version: 1,
                    api_version: xr::Version::new(1, 0, 0),
                },
                &exts,
                &[],
                &(),
            )
            .map_err(|e| match e {
                xr::sys::Result::ERROR_RUNTIME_UNAVAILABLE
                | xr::sys::Result::ERROR_RUNTIME_FAILURE => NoSession::missing(no_runtime(e)),
                e => format!("xrCreateInstance: {e}").into(),
            })?;
        Ok(Self::on(instance)?)
    }

    /// The rest of [`Headset::open`], once there is an instance.
    fn on(instance: xr::Instance) -> Result<Headset, Why> {
        let props = instance
            .properties()
            .map_err(at("xrGetInstanceProperties"))?;
        let runtime = format!("{} {}", props.runtime_name, props.runtime_version);
        let system = instance
            .system(xr::FormFactor::HEAD_MOUNTED_DISPLAY)
            .map_err(|e| match e {
                xr::sys::Result::ERROR_FORM_FACTOR_UNAVAILABLE => {
                    format!("no headset connected ({runtime} says {e})")
                }
                e => format!("xrGetSystem: {e}"),
            })?;
        let system_name = instance
            .system_properties(system)
            .map_err(at("xrGetSystemProperties"))?
            .system_name;
        let views = instance
            .enumerate_view_configuration_views(system, xr::ViewConfigurationType::PRIMARY_STEREO)
            .map_err(at("the headset's stereo views"))?;
        let [left, _right] = views.as_slice() else {
            return Err(format!(
                "{system_name} has {} views in its stereo configuration, not 2",
                views.len()
            ));
        };
        let eye_size = [
            left.recommended_image_rect_width,
            left.recommended_image_rect_height,
        ];
        let max_size = [left.max_image_rect_width, left.max_image_rect_height];
        let gpu = Gpu::open(&instance, system)?;
        // SAFETY: the binding names the device just made on the runtime's adapter; it
        // outlives the session (field order).
        let (session, waiter, stream) =
            unsafe { instance.create_session::<xr::Vulkan>(system, &gpu.session_info()) }
                .map_err(at("xrCreateSession"))?;
        let spaces = session
            .enumerate_reference_spaces()
            .map_err(at("xrEnumerateReferenceSpaces"))?;
        let base = if spaces.contains(&xr::ReferenceSpaceType::STAGE) {
            xr::ReferenceSpaceType::STAGE
        } else {
            xr::ReferenceSpaceType::LOCAL
        };
        let stage = session
            .create_reference_space(base, xr::Posef::IDENTITY)
            .map_err(at("the stage space"))?;
        let view_space = session
            .create_reference_space(xr::ReferenceSpaceType::VIEW, xr::Posef::IDENTITY)
            .map_err(at("the view space"))?;
        let controls = Controls::new(&instance).map_err(at("the controller actions"))?;
        session
            .attach_action_sets(&[&controls.set])
            .map_err(at("xrAttachSessionActionSets"))?;
        let hand_spaces = [
            controls
                .grip
                .create_space(&session, controls.hands[0], xr::Posef::IDENTITY)
                .map_err(at("the left hand's space"))?,
            controls
                .grip
                .create_space(&session, controls.hands[1], xr::Posef::IDENTITY)
                .map_err(at("the right hand's space"))?,
        ];
        let formats = session
            .enumerate_swapchain_formats()
            .map_err(at("xrEnumerateSwapchainFormats"))?;
        let format = [FORMAT_SRGB, FORMAT_UNORM]
            .into_iter()
            .find(|f| formats.contains(f))
            .ok_or_else(|| {
                format!("the runtime offers no RGBA8 swapchain format (it offers {formats:?})")
            })?;
        Ok(Headset {
            eyes: None,
            hand_spaces,
            view_space,
            stage,
            controls,
            stream,
            waiter,
            session,
            gpu,
            converts: instance.exts().khr_convert_timespec_time.is_some(),
            instance,
            runtime,
            system: system_name,
            eye_size,
            max_size,
            state: SessionState::Idle,
            running: false,
            format,
            last_display: None,
        })
    }

    /// The largest eye image the headset takes.
    pub(crate) fn max_size(&self) -> [u32; 2] {
        self.max_size
    }

    /// Whether frames run (the session has begun and not ended).
    pub(crate) fn running(&self) -> bool {
        self.running
    }

    /// The runtime's events since the last call, acted on: a ready session is begun, a
    /// stopping one ended. Returns what changed; an error is a lost session or instance.
    pub(crate) fn events(&mut self) -> Result<Vec<Change>, Why> {
        let mut changes = Vec::new();
        let mut buf = xr::EventDataBuffer::new();
        loop {
            let event = match self.instance.poll_event(&mut buf) {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => return Err(format!("xrPollEvent: {e}")),
            };
            match event {
                xr::Event::SessionStateChanged(e) => {
                    let state = match e.state() {
                        xr::SessionState::IDLE => SessionState::Idle,
                        xr::SessionState::READY => SessionState::Ready,
                        xr::SessionState::SYNCHRONIZED => SessionState::Synchronized,
                        xr::SessionState::VISIBLE => SessionState::Visible,
                        xr::SessionState::FOCUSED => SessionState::Focused,
                        xr::SessionState::STOPPING => SessionState::Stopping,
                        xr::SessionState::LOSS_PENDING => SessionState::LossPending,
                        xr::SessionState::EXITING => SessionState::Exiting,
                        _ => continue,
                    };
                    self.state = state;
                    changes.push(Change::State(state));
                    match state {
                        SessionState::Ready => {
                            self.session
                                .begin(xr::ViewConfigurationType::PRIMARY_STEREO)
                                .map_err(at("xrBeginSession"))?;
                            self.running = true;
                        }
                        SessionState::Stopping => {
                            self.running = false;
                            self.session.end().map_err(at("xrEndSession"))?;
                        }
                        SessionState::LossPending | SessionState::Exiting => {
                            self.running = false;
                        }
                        _ => {}
                    }
                }
                xr::Event::InstanceLossPending(_) => {
                    self.running = false;
                    changes.push(Change::InstanceLoss);
                }
                _ => {}
            }
        }
        Ok(changes)
    }

    /// Wait for the runtime's next frame (blocks up to a display period) and begin it.
    pub(crate) fn wait(&mut self) -> Result<xr::FrameState, Why> {
        let fs = self.waiter.wait().map_err(at("xrWaitFrame"))?;
        self.stream.begin().map_err(at("xrBeginFrame"))?;
        Ok(fs)
    }

    /// Where everything is at `fs`'s display time, and the controls now.
    pub(crate) fn locate(&mut self, fs: &xr::FrameState) -> Result<Seen, Why> {
        let t = fs.predicted_display_time;
        let period_ns = fs.predicted_display_period.as_nanos().max(1) as u64;
        let skipped = match self.last_display {
            Some((last, _)) if t.as_nanos() > last => {
                ((t.as_nanos() - last) as u64 / period_ns).saturating_sub(1)
            }
            _ => 0,
        };
        self.last_display = Some((t.as_nanos(), period_ns));
        let focused = self.state == SessionState::Focused;
        if focused {
            self.session
                .sync_actions(&[xr::ActiveActionSet::new(&self.controls.set)])
                .map_err(at("xrSyncActions"))?;
        }
        let (flags, views) = self
            .session
            .locate_views(xr::ViewConfigurationType::PRIMARY_STEREO, t, &self.stage)
            .map_err(at("xrLocateViews"))?;
        // Without a valid orientation (tracking lost) the views are not drawn from: the
        // frame goes empty and the compositor shows what it can.
        let tracked = flags.contains(xr::ViewStateFlags::ORIENTATION_VALID)
            && flags.contains(xr::ViewStateFlags::POSITION_VALID);
        let located_ns = monotonic_ns();
        let [l, r] = views.as_slice() else {
            return Err(format!("xrLocateViews gave {} views, not 2", views.len()));
        };
        let head = self
            .view_space
            .locate(&self.stage, t)
            .map_err(at("locating the head"))?;
        let mut hands = [None, None];
        for (i, space) in self.hand_spaces.iter().enumerate() {
            let loc = space
                .locate(&self.stage, t)
                .map_err(at("locating a hand"))?;
            if loc.location_flags.contains(
                xr::SpaceLocationFlags::POSITION_VALID | xr::SpaceLocationFlags::ORIENTATION_VALID,
            ) {
                hands[i] = Some(pose(loc.pose));
            }
        }
        let controls = if focused {
            self.controls.read(&self.session)?
        } else {
            Vec::new()
        };
        Ok(Seen {
            display_time: t.as_nanos(),
            period_ns,
            should_render: fs.should_render && tracked,
            located_ns,
            head: pose(head.pose),
            views: [view(l), view(r)],
            hands,
            controls,
            skipped,
        })
    }

    /// `XrTime` → `CLOCK_MONOTONIC` nanoseconds (the runtime converts, or an estimate from
    /// the difference between the two clocks now is used).
    pub(crate) fn monotonic(&self, time: i64) -> u64 {
        if self.converts {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let f = self
                .instance
                .exts()
                .khr_convert_timespec_time
                .as_ref()
                .map(|e| e.convert_time_to_timespec_time);
            if let Some(f) = f {
                // SAFETY: a live instance and a valid out pointer; the extension was enabled.
                let r = unsafe { f(self.instance.as_raw(), xr::Time::from_nanos(time), &mut ts) };
                if r == xr::sys::Result::SUCCESS {
                    return (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64;
                }
            }
        }
        // Without the extension: runtimes on Linux use CLOCK_MONOTONIC for XrTime.
        time.max(0) as u64
    }

    /// End the frame: with the staged eye pair copied into this frame's swapchain images
    /// and submitted with the views it was drawn from, or with nothing (no fresh pair).
    pub(crate) fn end(&mut self, fs: &xr::FrameState, submit: Option<Submit>) -> Result<(), Why> {
        let t = fs.predicted_display_time;
        let submit = submit.filter(|_| fs.should_render);
        let Some(s) = submit else {
            return self
                .stream
                .end(t, xr::EnvironmentBlendMode::OPAQUE, &[])
                .map_err(at("xrEndFrame"));
        };
        self.fit_swapchains(s.width, s.height)?;
        let eyes = self.eyes.as_mut().expect("fitted above");
        let mut targets = [Target {
            image: <ash::vk::Image as ash::vk::Handle>::from_raw(0),
            width: s.width,
            height: s.height,
        }; 2];
        let fp = self.instance.fp();
        for (eye, target) in eyes.iter_mut().zip(targets.iter_mut()) {
            let i = eye
                .chain
                .acquire_image()
                .map_err(at("xrAcquireSwapchainImage"))?;
            // The raw call: the crate takes XR_TIMEOUT_EXPIRED (a success code) for a wait
            // that happened, and the image would be written while the compositor reads it.
            let info = xr::sys::SwapchainImageWaitInfo {
                ty: xr::sys::SwapchainImageWaitInfo::TYPE,
                next: std::ptr::null_mut(),
                timeout: xr::Duration::from_nanos(100_000_000),
            };
            // SAFETY: a live swapchain with an image acquired just above; `info` is valid.
            let waited = unsafe { (fp.wait_swapchain_image)(eye.chain.as_raw(), &info) };
            if waited == xr::sys::Result::TIMEOUT_EXPIRED {
                return Err("the compositor held a swapchain image for over 100 ms".into());
            }
            if waited.into_raw() < 0 {
                return Err(format!("xrWaitSwapchainImage: {waited}"));
            }
            let Some(&image) = eye.images.get(i as usize) else {
                return Err(format!(
                    "xrAcquireSwapchainImage gave image {i} of {}",
                    eye.images.len()
                ));
            };
            target.image = ash::vk::Handle::from_raw(image);
        }
        let copied = self.gpu.copy(targets, s.width);
        for eye in eyes.iter_mut() {
            let info = xr::sys::SwapchainImageReleaseInfo {
                ty: xr::sys::SwapchainImageReleaseInfo::TYPE,
                next: std::ptr::null_mut(),
            };
            // SAFETY: the image acquired and waited on above, released once.
            let released = unsafe { (fp.release_swapchain_image)(eye.chain.as_raw(), &info) };
            if released.into_raw() < 0 {
                return Err(format!("xrReleaseSwapchainImage: {released}"));
            }
        }
        copied?;
        let rect = xr::Rect2Di {
            offset: xr::Offset2Di { x: 0, y: 0 },
            extent: xr::Extent2Di {
                width: s.width as i32,
                height: s.height as i32,
            },
        };
        let projection = [0, 1].map(|i| {
            xr::CompositionLayerProjectionView::new()
                .pose(xr_pose(s.views[i].pose))
                .fov(xr_fov(s.views[i].fov))
                .sub_image(
                    xr::SwapchainSubImage::new()
                        .swapchain(&eyes[i].chain)
                        .image_array_index(0)
                        .image_rect(rect),
                )
        });
        let layer = xr::CompositionLayerProjection::new()
            .space(&self.stage)
            .views(&projection);
        self.stream
            .end(t, xr::EnvironmentBlendMode::OPAQUE, &[&layer])
            .map_err(at("xrEndFrame"))
    }

    /// Make sure each eye has a swapchain at least `width × height`.
    fn fit_swapchains(&mut self, width: u32, height: u32) -> Result<(), Why> {
        if self
            .eyes
            .as_ref()
            .is_some_and(|e| e[0].width >= width && e[0].height >= height)
        {
            return Ok(());
        }
        if width > self.max_size[0] || height > self.max_size[1] {
            return Err(format!(
                "an eye frame of {width}×{height} is larger than the headset takes ({}×{})",
                self.max_size[0], self.max_size[1]
            ));
        }
        self.eyes = None;
        let make = || -> Result<EyeChain, Why> {
            let chain = self
                .session
                .create_swapchain(&xr::SwapchainCreateInfo {
                    create_flags: xr::SwapchainCreateFlags::EMPTY,
                    usage_flags: xr::SwapchainUsageFlags::COLOR_ATTACHMENT
                        | xr::SwapchainUsageFlags::TRANSFER_DST,
                    format: self.format,
                    sample_count: 1,
                    width,
                    height,
                    face_count: 1,
                    array_size: 1,
                    mip_count: 1,
                })
                .map_err(at("xrCreateSwapchain"))?;
            let images = chain
                .enumerate_images()
                .map_err(at("xrEnumerateSwapchainImages"))?;
            Ok(EyeChain {
                chain,
                images,
                width,
                height,
            })
        };
        self.eyes = Some([make()?, make()?]);
        tracing::info!(width, height, "eye swapchains made");
        Ok(())
    }

    /// Vibrate `hand` (or both).
    pub(crate) fn haptic(
        &self,
        hand: Option<Hand>,
        amplitude: f32,
        duration: Duration,
        frequency_hz: f32,
    ) -> Result<u32, Why> {
        let hands: &[usize] = match hand {
            Some(Hand::Left) => &[0],
            Some(Hand::Right) => &[1],
            None => &[0, 1],
        };
        let pulse = xr::HapticVibration::new()
            .amplitude(amplitude.clamp(0.0, 1.0))
            .duration(xr::Duration::from_nanos(duration.as_nanos() as i64))
            .frequency(if frequency_hz > 0.0 {
                frequency_hz
            } else {
                xr::FREQUENCY_UNSPECIFIED
            });
        for &h in hands {
            self.controls
                .haptic
                .apply_feedback(&self.session, self.controls.hands[h], &pulse)
                .map_err(at("xrApplyHapticFeedback"))?;
        }
        Ok(hands.len() as u32)
    }

    /// Ask the runtime to end the session (a stop of the node).
    pub(crate) fn request_exit(&self) {
        if self.running {
            let _ = self.session.request_exit();
        }
    }
}

fn no_runtime(e: xr::sys::Result) -> Why {
    // The loader says only that it found none: say which manifest, when one is named and
    // cannot be read from here (a path outside this node's sandbox, a typo).
    if let Some(manifest) = std::env::var_os("XR_RUNTIME_JSON") {
        let manifest = std::path::PathBuf::from(manifest);
        if let Err(io) = std::fs::File::open(&manifest) {
            return format!(
                "no OpenXR runtime ({e}): XR_RUNTIME_JSON names {}, which cannot be read here ({io}; outside this node's sandbox? grant it with sandbox.read); the engine runs flat",
                manifest.display()
            );
        }
        return format!(
            "no OpenXR runtime ({e}): the runtime XR_RUNTIME_JSON names ({}) did not load (its library_path readable from this node's sandbox?); the engine runs flat",
            manifest.display()
        );
    }
    format!(
        "no OpenXR runtime ({e}): none is installed (Monado, SteamVR, …) or XR_RUNTIME_JSON names none; the engine runs flat"
    )
}

fn pose(p: xr::Posef) -> Pose {
    Pose {
        position: [p.position.x, p.position.y, p.position.z],
        orientation: [
            p.orientation.x,
            p.orientation.y,
            p.orientation.z,
            p.orientation.w,
        ],
    }
}

fn xr_pose(p: Pose) -> xr::Posef {
    xr::Posef {
        position: xr::Vector3f {
            x: p.position[0],
            y: p.position[1],
            z: p.position[2],
        },
        orientation: xr::Quaternionf {
            x: p.orientation[0],
            y: p.orientation[1],
            z: p.orientation[2],
            w: p.orientation[3],
        },
    }
}

fn view(v: &xr::View) -> EyeView {
    EyeView {
        pose: pose(v.pose),
        fov: Fov {
            left: v.fov.angle_left,
            right: v.fov.angle_right,
            up: v.fov.angle_up,
            down: v.fov.angle_down,
        },
    }
}

fn xr_fov(f: Fov) -> xr::Fovf {
    xr::Fovf {
        angle_left: f.left,
        angle_right: f.right,
        angle_up: f.up,
        angle_down: f.down,
    }
}

impl Controls {
    /// The action set: triggers, grips, sticks, face buttons and menu, each hand's grip pose
    /// and haptics, with bindings suggested for the Oculus Touch profile (which most runtimes
    /// map every controller to) and the Khronos simple controller.
    fn new(instance: &xr::Instance) -> xr::Result<Controls> {
        let hands = [
            instance.string_to_path("/user/hand/left")?,
            instance.string_to_path("/user/hand/right")?,
        ];
        let set = instance.create_action_set("syncra", "Syncra", 0)?;
        let c = Controls {
            trigger: set.create_action("trigger", "Trigger", &hands)?,
            squeeze: set.create_action("squeeze", "Squeeze", &hands)?,
            stick: set.create_action("thumbstick", "Thumbstick", &hands)?,
            a: set.create_action("a", "A", &[])?,
            b: set.create_action("b", "B", &[])?,
            x: set.create_action("x", "X", &[])?,
            y: set.create_action("y", "Y", &[])?,
            menu: set.create_action("menu", "Menu", &[])?,
            grip: set.create_action("grip", "Grip pose", &hands)?,
            haptic: set.create_action("haptic", "Haptics", &hands)?,
            hands,
            set,
        };
        let p = |s: &str| instance.string_to_path(s);
        let mut touch = Vec::new();
        for side in ["left", "right"] {
            let h = format!("/user/hand/{side}");
            touch.push(xr::Binding::new(
                &c.trigger,
                p(&format!("{h}/input/trigger/value"))?,
            ));
            touch.push(xr::Binding::new(
                &c.squeeze,
                p(&format!("{h}/input/squeeze/value"))?,
            ));
            touch.push(xr::Binding::new(
                &c.stick,
                p(&format!("{h}/input/thumbstick"))?,
            ));
            touch.push(xr::Binding::new(
                &c.grip,
                p(&format!("{h}/input/grip/pose"))?,
            ));
            touch.push(xr::Binding::new(
                &c.haptic,
                p(&format!("{h}/output/haptic"))?,
            ));
        }
        touch.push(xr::Binding::new(&c.a, p("/user/hand/right/input/a/click")?));
        touch.push(xr::Binding::new(&c.b, p("/user/hand/right/input/b/click")?));
        touch.push(xr::Binding::new(&c.x, p("/user/hand/left/input/x/click")?));
        touch.push(xr::Binding::new(&c.y, p("/user/hand/left/input/y/click")?));
        touch.push(xr::Binding::new(
            &c.menu,
            p("/user/hand/left/input/menu/click")?,
        ));
        instance.suggest_interaction_profile_bindings(
            p("/interaction_profiles/oculus/touch_controller")?,
            &touch,
        )?;
        let mut simple = Vec::new();
        for side in ["left", "right"] {
            let h = format!("/user/hand/{side}");
            simple.push(xr::Binding::new(
                &c.trigger,
                p(&format!("{h}/input/select/click"))?,
            ));
            simple.push(xr::Binding::new(
                &c.grip,
                p(&format!("{h}/input/grip/pose"))?,
            ));
            simple.push(xr::Binding::new(
                &c.haptic,
                p(&format!("{h}/output/haptic"))?,
            ));
        }
        simple.push(xr::Binding::new(
            &c.menu,
            p("/user/hand/left/input/menu/click")?,
        ));
        instance.suggest_interaction_profile_bindings(
            p("/interaction_profiles/khr/simple_controller")?,
            &simple,
        )?;
        Ok(c)
    }

    /// Every control's value now: (name, x, y).
    fn read(
        &self,
        session: &xr::Session<xr::Vulkan>,
    ) -> Result<Vec<(&'static str, f32, f32)>, Why> {
        let err = at("reading the controllers");
        let [l, r] = self.hands;
        let f = |a: &xr::Action<f32>, h| a.state(session, h).map(|s| s.current_state);
        let b = |a: &xr::Action<bool>| {
            a.state(session, xr::Path::NULL)
                .map(|s| if s.current_state { 1.0 } else { 0.0 })
        };
        let stick = |h| self.stick.state(session, h).map(|s| s.current_state);
        let (ls, rs) = (stick(l).map_err(&err)?, stick(r).map_err(&err)?);
        Ok(vec![
            ("LeftTrigger", f(&self.trigger, l).map_err(&err)?, 0.0),
            ("RightTrigger", f(&self.trigger, r).map_err(&err)?, 0.0),
            ("LeftSqueeze", f(&self.squeeze, l).map_err(&err)?, 0.0),
            ("RightSqueeze", f(&self.squeeze, r).map_err(&err)?, 0.0),
            ("A", b(&self.a).map_err(&err)?, 0.0),
            ("B", b(&self.b).map_err(&err)?, 0.0),
            ("X", b(&self.x).map_err(&err)?, 0.0),
            ("Y", b(&self.y).map_err(&err)?, 0.0),
            ("Menu", b(&self.menu).map_err(&err)?, 0.0),
            ("LeftThumbstick", ls.x, ls.y),
            ("RightThumbstick", rs.x, rs.y),
        ])
    }
}
