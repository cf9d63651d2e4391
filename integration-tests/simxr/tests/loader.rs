//! End to end: Debian's stock OpenXR loader loads the simulated headset through
//! `XR_RUNTIME_JSON`, and an application written with the `openxr` crate (as the XR driver
//! is) runs a Vulkan session on it: rendered eyes come back in a capture, frames are paced
//! at 90 Hz, a trigger press reaches an action, and unplugging loses the session until the
//! headset is plugged back in.
//!
//! One test function: the loader and the runtime are per-process singletons configured by
//! environment variables.

use std::time::Instant;

use ash::vk::{self, Handle as _};
use openxr as xr;
use syncra_simxr::control::{Capture, Script};

mod common;
use common::{DEADLINE, Gpu, create_instance, setup, wait_for};

const VIEW_TYPE: xr::ViewConfigurationType = xr::ViewConfigurationType::PRIMARY_STEREO;
const EYE: u32 = 64;
const COLORS: [[f32; 4]; 2] = [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]];

/// The application's actions.
struct Actions {
    set: xr::ActionSet,
    trigger: xr::Action<f32>,
    grip: xr::Action<xr::Posef>,
    haptic: xr::Action<xr::Haptic>,
    right: xr::Path,
}

impl Actions {
    fn new(instance: &xr::Instance) -> Actions {
        let left = instance.string_to_path("/user/hand/left").expect("path");
        let right = instance.string_to_path("/user/hand/right").expect("path");
        let hands = [left, right];
        let set = instance
            .create_action_set("gameplay", "Gameplay", 0)
            .expect("action set");
        let trigger = set
            .create_action::<f32>("trigger", "Trigger", &hands)
            .expect("trigger");
        let grip = set
            .create_action::<xr::Posef>("grip", "Grip", &hands)
            .expect("grip");
        let haptic = set
            .create_action::<xr::Haptic>("buzz", "Buzz", &hands)
            .expect("haptic");
        let path = |p: &str| instance.string_to_path(p).expect("path");
        let profile = path("/interaction_profiles/oculus/touch_controller");
        instance
            .suggest_interaction_profile_bindings(
                profile,
                &[
                    xr::Binding::new(&trigger, path("/user/hand/left/input/trigger/value")),
                    xr::Binding::new(&trigger, path("/user/hand/right/input/trigger/value")),
                    xr::Binding::new(&grip, path("/user/hand/left/input/grip/pose")),
                    xr::Binding::new(&grip, path("/user/hand/right/input/grip/pose")),
                    xr::Binding::new(&haptic, path("/user/hand/right/output/haptic")),
                ],
            )
            .expect("suggest bindings");
        let unknown = path("/interaction_profiles/acme/wand");
        assert_eq!(
            instance
                .suggest_interaction_profile_bindings(
                    unknown,
                    &[xr::Binding::new(
                        &trigger,
                        path("/user/hand/left/input/trigger/value")
                    )]
                )
                .err(),
            Some(xr::sys::Result::ERROR_PATH_UNSUPPORTED)
        );
        Actions {
            set,
            trigger,
            grip,
            haptic,
            right,
        }
    }
}

/// One eye's swapchain and its images.
struct Eye {
    swapchain: xr::Swapchain<xr::Vulkan>,
    images: Vec<vk::Image>,
}

/// A running session and everything hanging off it.
struct Run {
    session: xr::Session<xr::Vulkan>,
    waiter: xr::FrameWaiter,
    stream: xr::FrameStream<xr::Vulkan>,
    stage: xr::Space,
    eyes: Vec<Eye>,
    state: xr::SessionState,
    running: bool,
    frames_with_layers: u32,
    last_views: Vec<xr::View>,
}

/// What one frame of the loop ended in.
enum Step {
    Frame,
    Lost,
}

impl Run {
    fn start(instance: &xr::Instance, system: xr::SystemId, gpu: &Gpu) -> Run {
        // SAFETY: the handles are the live Vulkan objects made through this runtime.
        let (session, waiter, stream) = unsafe {
            instance
                .create_session::<xr::Vulkan>(
                    system,
                    &xr::vulkan::SessionCreateInfo {
                        instance: gpu.instance.handle().as_raw() as _,
                        physical_device: gpu.physical.as_raw() as _,
                        device: gpu.device.handle().as_raw() as _,
                        queue_family_index: gpu.family,
                        queue_index: 0,
                    },
                )
                .expect("create session")
        };
        let stage = session
            .create_reference_space(xr::ReferenceSpaceType::STAGE, xr::Posef::IDENTITY)
            .expect("stage");
        let formats = session.enumerate_swapchain_formats().expect("formats");
        assert_eq!(formats, [43, 37, 50]);
        let eyes = (0..2)
            .map(|_| {
                let swapchain = session
                    .create_swapchain(&xr::SwapchainCreateInfo {
                        create_flags: xr::SwapchainCreateFlags::EMPTY,
                        usage_flags: xr::SwapchainUsageFlags::COLOR_ATTACHMENT
                            | xr::SwapchainUsageFlags::TRANSFER_DST,
                        format: formats[0],
                        sample_count: 1,
                        width: EYE,
                        height: EYE,
                        face_count: 1,
                        array_size: 1,
                        mip_count: 1,
                    })
                    .expect("swapchain");
                let images = swapchain
                    .enumerate_images()
                    .expect("images")
                    .into_iter()
                    .map(vk::Image::from_raw)
                    .collect();
                Eye { swapchain, images }
            })
            .collect();
        Run {
            session,
            waiter,
            stream,
            stage,
            eyes,
            state: xr::SessionState::UNKNOWN,
            running: false,
            frames_with_layers: 0,
            last_views: Vec::new(),
        }
    }

    /// Handles pending events; false once the session is lost.
    fn poll(&mut self, instance: &xr::Instance) -> bool {
        let mut buffer = xr::EventDataBuffer::new();
        while let Some(event) = instance.poll_event(&mut buffer).expect("poll event") {
            if let xr::Event::SessionStateChanged(e) = event {
                self.state = e.state();
                match e.state() {
                    xr::SessionState::READY => {
                        self.session.begin(VIEW_TYPE).expect("begin session");
                        self.running = true;
                    }
                    xr::SessionState::STOPPING => {
                        self.session.end().expect("end session");
                        self.running = false;
                    }
                    xr::SessionState::LOSS_PENDING => return false,
                    _ => {}
                }
            }
        }
        true
    }

    /// One frame: wait, begin, locate, clear each eye to its colour, end with a
    /// projection layer (or none while the runtime says not to render).
    fn frame(&mut self, instance: &xr::Instance, gpu: &Gpu) -> Step {
        if !self.poll(instance) {
            return Step::Lost;
        }
        if !self.running {
            return Step::Frame;
        }
        let state = match self.waiter.wait() {
            Ok(state) => state,
            Err(xr::sys::Result::ERROR_SESSION_LOST) => return Step::Lost,
            Err(e) => panic!("xrWaitFrame: {e}"),
        };
        match self.stream.begin() {
            Ok(()) => {}
            Err(xr::sys::Result::ERROR_SESSION_LOST) => return Step::Lost,
            Err(e) => panic!("xrBeginFrame: {e}"),
        }
        if !state.should_render {
            self.stream
                .end(
                    state.predicted_display_time,
                    xr::EnvironmentBlendMode::OPAQUE,
                    &[],
                )
                .expect("end empty frame");
            return Step::Frame;
        }
        let views =
            match self
                .session
                .locate_views(VIEW_TYPE, state.predicted_display_time, &self.stage)
            {
                Ok((_, views)) => views,
                Err(xr::sys::Result::ERROR_SESSION_LOST) => return Step::Lost,
                Err(e) => panic!("xrLocateViews: {e}"),
            };
        for (eye, color) in self.eyes.iter_mut().zip(COLORS) {
            let index = eye.swapchain.acquire_image().expect("acquire");
            eye.swapchain
                .wait_image(xr::Duration::INFINITE)
                .expect("wait image");
            gpu.clear(eye.images[index as usize], color);
            eye.swapchain.release_image().expect("release");
        }
        let rect = xr::Rect2Di {
            offset: xr::Offset2Di { x: 0, y: 0 },
            extent: xr::Extent2Di {
                width: EYE as i32,
                height: EYE as i32,
            },
        };
        let projection_views: Vec<_> = self
            .eyes
            .iter()
            .zip(&views)
            .map(|(eye, view)| {
                xr::CompositionLayerProjectionView::new()
                    .pose(view.pose)
                    .fov(view.fov)
                    .sub_image(
                        xr::SwapchainSubImage::new()
                            .swapchain(&eye.swapchain)
                            .image_array_index(0)
                            .image_rect(rect),
                    )
            })
            .collect();
        let layer = xr::CompositionLayerProjection::new()
            .space(&self.stage)
            .views(&projection_views);
        match self.stream.end(
            state.predicted_display_time,
            xr::EnvironmentBlendMode::OPAQUE,
            &[&layer],
        ) {
            Ok(()) => {}
            Err(xr::sys::Result::ERROR_SESSION_LOST) => return Step::Lost,
            Err(e) => panic!("xrEndFrame: {e}"),
        }
        self.frames_with_layers += 1;
        self.last_views = views;
        Step::Frame
    }

    /// Runs frames until `done` says so.
    fn until(
        &mut self,
        instance: &xr::Instance,
        gpu: &Gpu,
        what: &str,
        mut done: impl FnMut(&mut Run) -> bool,
    ) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            if let Step::Lost = self.frame(instance, gpu) {
                panic!("session lost while waiting for {what}");
            }
        }
    }
}

fn assert_colour(capture: &Capture, view: usize, expected: [u8; 4]) {
    let v = &capture.views[view];
    assert_eq!((v.width, v.height), (EYE, EYE));
    for (x, y) in [
        (0, 0),
        (EYE - 1, 0),
        (EYE / 2, EYE / 2),
        (0, EYE - 1),
        (EYE - 1, EYE - 1),
    ] {
        assert_eq!(
            v.pixel(x, y),
            Some(expected),
            "view {view} pixel ({x}, {y})"
        );
    }
}

#[test]
fn the_stock_loader_runs_a_vulkan_session_on_the_simulated_headset() {
    let (dir, entry) = setup("loader");
    let available = entry.enumerate_extensions().expect("extensions");
    assert!(available.khr_vulkan_enable2 && available.khr_convert_timespec_time);

    // A malformed script fails instance creation.
    std::fs::write(dir.path().join("script.json"), "{\"rate_hz\": ").expect("bad script");
    assert_eq!(
        create_instance(&entry).err(),
        Some(xr::sys::Result::ERROR_RUNTIME_FAILURE)
    );
    dir.write_script(&Script {
        eye_width: EYE,
        eye_height: EYE,
        ..Script::default()
    })
    .expect("script");

    let instance = create_instance(&entry).expect("create instance");
    assert_eq!(
        instance.properties().expect("properties").runtime_name,
        "syncra-simxr"
    );
    let system = instance
        .system(xr::FormFactor::HEAD_MOUNTED_DISPLAY)
        .expect("system");
    let views = instance
        .enumerate_view_configuration_views(system, VIEW_TYPE)
        .expect("views");
    assert_eq!(views.len(), 2);
    assert_eq!(
        (
            views[0].recommended_image_rect_width,
            views[0].max_image_rect_width
        ),
        (EYE, 2 * EYE)
    );
    let now = instance.now().expect("xrConvertTimespecTimeToTimeKHR");
    assert!(now.as_nanos() > 0);

    let gpu = Gpu::new(&instance, system);
    let actions = Actions::new(&instance);
    let mut run = Run::start(&instance, system, &gpu);
    run.session
        .attach_action_sets(&[&actions.set])
        .expect("attach");
    let grip = actions
        .grip
        .create_space(&run.session, actions.right, xr::Posef::IDENTITY)
        .expect("grip space");

    // Frames run until the session has focus and 30 frames carried a layer.
    run.until(&instance, &gpu, "30 focused frames", |r| {
        r.state == xr::SessionState::FOCUSED && r.frames_with_layers >= 30
    });
    let profile = run
        .session
        .current_interaction_profile(actions.right)
        .expect("profile");
    assert_eq!(
        instance.path_to_string(profile).expect("path"),
        "/interaction_profiles/oculus/touch_controller"
    );

    // The eyes come back in a capture, with the poses the runtime located.
    dir.request_capture().expect("request capture");
    let mut capture = None;
    run.until(&instance, &gpu, "a capture", |_| {
        capture = dir.capture();
        capture.is_some()
    });
    let capture = capture.expect("capture");
    assert_eq!(capture.format, 43);
    assert_colour(&capture, 0, [255, 0, 0, 255]);
    assert_colour(&capture, 1, [0, 255, 0, 255]);
    let ipd = capture.views[1].pose.position[0] - capture.views[0].pose.position[0];
    assert!((ipd - 0.064).abs() < 0.01, "eyes {ipd} m apart");

    // Frames are paced on a 90 Hz vsync grid and every layer's pose came from xrLocateViews.
    let frames = dir.frames();
    let period = 1e9 / 90.0;
    let with_layers: Vec<_> = frames.iter().filter(|f| f.layers == 1).collect();
    assert!(with_layers.len() >= 30);
    for pair in frames.windows(2) {
        let steps = (pair[1].display_time_ns - pair[0].display_time_ns) as f64 / period;
        assert!(
            steps >= 0.99 && (steps - steps.round()).abs() < 0.01,
            "display times {pair:?} are off the vsync grid"
        );
    }
    assert!(
        with_layers.iter().all(|f| f.pose_latency_ns >= 0),
        "a layer pose the runtime never located"
    );
    let span = (frames.last().expect("frames").end_ns - frames[0].end_ns) as f64 / 1e9;
    let rate = (frames.len() - 1) as f64 / span;
    assert!(
        rate > 30.0 && rate < 95.0,
        "frames ran at {rate:.1} Hz, not paced near 90 Hz"
    );

    // A trigger press reaches the float action; the grip pose is tracked in STAGE space.
    dir.press("/user/hand/right/input/trigger/value", 1.0)
        .expect("press");
    let mut seen_change = false;
    run.until(&instance, &gpu, "the trigger press", |r| {
        r.session
            .sync_actions(&[(&actions.set).into()])
            .expect("sync");
        let state = actions
            .trigger
            .state(&r.session, actions.right)
            .expect("trigger state");
        seen_change |= state.changed_since_last_sync;
        state.current_state == 1.0 && state.is_active
    });
    assert!(
        seen_change,
        "the press never showed as changed since the last sync"
    );
    let time = instance.now().expect("now");
    let location = grip.locate(&run.stage, time).expect("locate grip");
    assert!(
        location
            .location_flags
            .contains(xr::SpaceLocationFlags::POSITION_TRACKED)
    );
    assert!((location.pose.position.y - 1.3).abs() < 0.01);
    actions
        .haptic
        .apply_feedback(
            &run.session,
            actions.right,
            &xr::HapticVibration::new()
                .amplitude(0.5)
                .duration(xr::Duration::from_nanos(20_000_000))
                .frequency(160.0),
        )
        .expect("haptic");
    let status = wait_for("status with the haptic pulse", || {
        dir.status().filter(|s| s.haptic_count == 1)
    });
    assert_eq!(status.state, "FOCUSED");
    assert_eq!(status.haptics[0].path, "/user/hand/right");
    assert!(status.inputs_applied >= 1);

    // Unplugged, the session is lost and the headset is gone.
    dir.unplug().expect("unplug");
    let start = Instant::now();
    while let Step::Frame = run.frame(&instance, &gpu) {
        assert!(start.elapsed() < DEADLINE, "no loss after unplugging");
    }
    assert_eq!(
        instance.system(xr::FormFactor::HEAD_MOUNTED_DISPLAY).err(),
        Some(xr::sys::Result::ERROR_FORM_FACTOR_UNAVAILABLE)
    );
    drop((grip, run));
    drop(actions);
    gpu.destroy();
    drop(instance);

    // Plugged back in, a new instance and session run again.
    dir.plug().expect("plug");
    let instance = create_instance(&entry).expect("second instance");
    let system = wait_for("the headset to come back", || {
        instance.system(xr::FormFactor::HEAD_MOUNTED_DISPLAY).ok()
    });
    let gpu = Gpu::new(&instance, system);
    let mut run = Run::start(&instance, system, &gpu);
    run.until(&instance, &gpu, "a focused second session", |r| {
        r.state == xr::SessionState::FOCUSED && r.frames_with_layers >= 3
    });
    run.session.request_exit().expect("request exit");
    run.until(&instance, &gpu, "the session to exit", |r| {
        r.state == xr::SessionState::EXITING
    });
    let status = wait_for("the final status", || {
        dir.status().filter(|s| s.state == "EXITING")
    });
    assert_eq!((status.instances, status.sessions), (2, 2));
    drop(run);
    gpu.destroy();
    drop(instance);
    std::fs::remove_dir_all(dir.path()).expect("clean up");
}
