//! Session-level entry points: the session lifecycle, spaces and views, swapchains, and the
//! frame loop (`xrWaitFrame` pacing, `xrEndFrame` validation, frame log and captures).

use std::path::Path;

use ash::vk::{self, Handle as _};
use openxr_sys::{self as sys, Handle as _};

use crate::abi::{XrResult, array, guard, input, optional, out, output, two_call, two_call_copy};
use crate::control::{self, CaptureMeta, CaptureViewMeta, Fov, FrameLine, PoseJson};
use crate::ffi::{MAX_SIZE_FACTOR, check_system, vk_entry, vulkan_binding};
use crate::pacing::{self, Pacer, now_ns, sleep_until};
use crate::poses::{self, Pose};
use crate::state::{Bindings, Runtime, Session, Space, SpaceKind, Swapchain, lock};
use crate::vulkan::{FORMATS, Gpu, ImageSpec};

/// Display times remembered as valid for `xrEndFrame`.
const PREDICTED_KEPT: usize = 16;
/// Images per swapchain.
const SWAPCHAIN_IMAGES: u32 = 3;
/// Layers one frame may carry.
const MAX_LAYERS: u32 = sys::MIN_COMPOSITION_LAYERS_SUPPORTED as u32;

const REFERENCE_SPACES: [sys::ReferenceSpaceType; 3] = [
    sys::ReferenceSpaceType::VIEW,
    sys::ReferenceSpaceType::LOCAL,
    sys::ReferenceSpaceType::STAGE,
];

pub(crate) fn to_pose(p: &sys::Posef) -> Pose {
    let (o, v) = (p.orientation, p.position);
    Pose {
        orientation: [o.x, o.y, o.z, o.w],
        position: [v.x, v.y, v.z],
    }
}

pub(crate) fn to_posef(p: &Pose) -> sys::Posef {
    let ([x, y, z, w], [px, py, pz]) = (p.orientation, p.position);
    sys::Posef {
        orientation: sys::Quaternionf { x, y, z, w },
        position: sys::Vector3f {
            x: px,
            y: py,
            z: pz,
        },
    }
}

fn to_fovf(f: &Fov) -> sys::Fovf {
    sys::Fovf {
        angle_left: f.left,
        angle_right: f.right,
        angle_up: f.up,
        angle_down: f.down,
    }
}

/// A pose the application passes in must have a unit quaternion.
fn checked_pose(p: &sys::Posef) -> XrResult<Pose> {
    let pose = to_pose(p);
    let norm: f32 = pose.orientation.iter().map(|c| c * c).sum();
    if (norm - 1.0).abs() > 0.01 || pose.position.iter().any(|c| !c.is_finite()) {
        return Err(sys::Result::ERROR_POSE_INVALID);
    }
    Ok(pose)
}

fn handle_of_session(rt: &mut Runtime, h: sys::Session) -> XrResult<&mut Session> {
    rt.instance_of(h)?.session(h)
}

/// Where `space` is in STAGE space at `time_ns`; `None` when it is not tracked (an action
/// space whose action has no binding for its hand in the current profile).
fn stage_pose(
    script: &control::Script,
    bindings: &Bindings,
    session: &Session,
    space: &Space,
    time_ns: i64,
) -> Option<Pose> {
    let head = poses::head(script, (time_ns - session.origin_ns) as f64 / 1e9);
    let base = match space.kind {
        SpaceKind::Reference(sys::ReferenceSpaceType::VIEW) => head,
        SpaceKind::Reference(_) => Pose::IDENTITY,
        SpaceKind::Action { action, hand } => {
            bindings.of(session.profile, action, Some(hand)).next()?;
            poses::hand(&head, hand)
        }
    };
    Some(base.compose(&space.offset))
}

pub(crate) unsafe extern "system" fn create_session(
    instance: sys::Instance,
    info: *const sys::SessionCreateInfo,
    handle: *mut sys::Session,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers (and a valid `next` chain) or null (checked).
        let (info, handle, binding) = unsafe {
            let info = input(info)?;
            (info, out(handle)?, vulkan_binding(info.next))
        };
        let mut rt = lock();
        let id = rt.new_handle();
        let inst = rt.instance(instance)?;
        check_system(info.system_id)?;
        if !inst.requirements_queried {
            return Err(sys::Result::ERROR_GRAPHICS_REQUIREMENTS_CALL_MISSING);
        }
        let binding = binding.ok_or(sys::Result::ERROR_GRAPHICS_DEVICE_INVALID)?;
        if binding.instance.is_null()
            || binding.physical_device.is_null()
            || binding.device.is_null()
        {
            return Err(sys::Result::ERROR_GRAPHICS_DEVICE_INVALID);
        }
        if inst.session.is_some() {
            return Err(sys::Result::ERROR_LIMIT_REACHED);
        }
        let entry = vk_entry(inst)?;
        // SAFETY: the binding's handles are the application's live Vulkan objects, made
        // through `entry` (valid usage of XrGraphicsBindingVulkanKHR).
        let gpu = unsafe {
            Gpu::new(
                &entry,
                vk::Instance::from_raw(binding.instance as u64),
                vk::PhysicalDevice::from_raw(binding.physical_device as u64),
                vk::Device::from_raw(binding.device as u64),
                binding.queue_family_index,
                binding.queue_index,
            )
        }
        .map_err(|e| {
            eprintln!("syncra-simxr: cannot use the application's Vulkan device: {e}");
            sys::Result::ERROR_RUNTIME_FAILURE
        })?;
        let now = now_ns();
        inst.session = Some(Session::new(id, gpu, now, inst.dir.as_ref()));
        rt.stats.sessions += 1;
        rt.change_state(sys::SessionState::IDLE, now);
        rt.change_state(sys::SessionState::READY, now);
        rt.sync_status(now, false);
        *handle = sys::Session::from_raw(id);
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn destroy_session(session: sys::Session) -> sys::Result {
    guard(|| {
        let mut rt = lock();
        let inst = rt.instance_of(session)?;
        inst.session = None;
        inst.events.retain(|e| match *e {
            crate::state::Event::State { session: s, .. }
            | crate::state::Event::ProfileChanged { session: s } => s != session.into_raw(),
        });
        rt.mark_status_dirty();
        rt.sync_status(now_ns(), false);
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn begin_session(
    session: sys::Session,
    info: *const sys::SessionBeginInfo,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let info = unsafe { input(info)? };
        let mut rt = lock();
        let period = pacing::period_ns(rt.instance_of(session)?.script.rate_hz);
        let s = handle_of_session(&mut rt, session)?;
        s.check_not_lost()?;
        if s.running {
            return Err(sys::Result::ERROR_SESSION_RUNNING);
        }
        if s.state != sys::SessionState::READY {
            return Err(sys::Result::ERROR_SESSION_NOT_READY);
        }
        if info.primary_view_configuration_type != sys::ViewConfigurationType::PRIMARY_STEREO {
            return Err(sys::Result::ERROR_VIEW_CONFIGURATION_TYPE_UNSUPPORTED);
        }
        let now = now_ns();
        s.running = true;
        s.origin_ns = now;
        s.pacer = Some(Pacer::new(now, period));
        s.first_frame_ended = false;
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn end_session(session: sys::Session) -> sys::Result {
    guard(|| {
        let mut rt = lock();
        let s = handle_of_session(&mut rt, session)?;
        s.check_running()?;
        if s.state != sys::SessionState::STOPPING {
            return Err(sys::Result::ERROR_SESSION_NOT_STOPPING);
        }
        s.running = false;
        s.pacer = None;
        s.in_frame = false;
        s.waited = 0;
        s.predicted.clear();
        let now = now_ns();
        rt.change_state(sys::SessionState::IDLE, now);
        rt.change_state(sys::SessionState::EXITING, now);
        rt.sync_status(now, false);
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn request_exit_session(session: sys::Session) -> sys::Result {
    guard(|| {
        let mut rt = lock();
        let s = handle_of_session(&mut rt, session)?;
        s.check_running()?;
        use sys::SessionState as S;
        let steps: &[S] = match s.state {
            S::FOCUSED => &[S::VISIBLE, S::SYNCHRONIZED, S::STOPPING],
            S::VISIBLE => &[S::SYNCHRONIZED, S::STOPPING],
            S::STOPPING => &[],
            _ => &[S::STOPPING],
        };
        let now = now_ns();
        for &state in steps {
            rt.change_state(state, now);
        }
        rt.sync_status(now, false);
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn enumerate_reference_spaces(
    session: sys::Session,
    capacity: u32,
    count: *mut u32,
    spaces: *mut sys::ReferenceSpaceType,
) -> sys::Result {
    guard(|| {
        handle_of_session(&mut lock(), session)?;
        // SAFETY: two-call pointers from the caller, valid or null (checked).
        unsafe { two_call_copy(capacity, count, spaces, &REFERENCE_SPACES)? };
        Ok(sys::Result::SUCCESS)
    })
}

fn add_space(rt: &mut Runtime, session: sys::Session, space: Space) -> XrResult<sys::Space> {
    let id = rt.new_handle();
    handle_of_session(rt, session)?.spaces.insert(id, space);
    Ok(sys::Space::from_raw(id))
}

pub(crate) unsafe extern "system" fn create_reference_space(
    session: sys::Session,
    info: *const sys::ReferenceSpaceCreateInfo,
    space: *mut sys::Space,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, space) = unsafe { (input(info)?, out(space)?) };
        if !REFERENCE_SPACES.contains(&info.reference_space_type) {
            return Err(sys::Result::ERROR_REFERENCE_SPACE_UNSUPPORTED);
        }
        let offset = checked_pose(&info.pose_in_reference_space)?;
        let kind = SpaceKind::Reference(info.reference_space_type);
        *space = add_space(&mut lock(), session, Space { kind, offset })?;
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn get_reference_space_bounds_rect(
    session: sys::Session,
    ty: sys::ReferenceSpaceType,
    bounds: *mut sys::Extent2Df,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let bounds = unsafe { out(bounds)? };
        handle_of_session(&mut lock(), session)?;
        if !REFERENCE_SPACES.contains(&ty) {
            return Err(sys::Result::ERROR_REFERENCE_SPACE_UNSUPPORTED);
        }
        if ty == sys::ReferenceSpaceType::STAGE {
            *bounds = sys::Extent2Df {
                width: 3.0,
                height: 3.0,
            };
            return Ok(sys::Result::SUCCESS);
        }
        *bounds = sys::Extent2Df {
            width: 0.0,
            height: 0.0,
        };
        Ok(sys::Result::SPACE_BOUNDS_UNAVAILABLE)
    })
}

pub(crate) unsafe extern "system" fn create_action_space(
    session: sys::Session,
    info: *const sys::ActionSpaceCreateInfo,
    space: *mut sys::Space,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, space) = unsafe { (input(info)?, out(space)?) };
        let offset = checked_pose(&info.pose_in_action_space)?;
        let mut rt = lock();
        let inst = rt.instance_of(session)?;
        let action = inst
            .actions
            .get(&info.action.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        if action.kind != crate::actions::Kind::Pose {
            return Err(sys::Result::ERROR_ACTION_TYPE_MISMATCH);
        }
        let hand = crate::input::subaction_hand(inst, action, info.subaction_path)?
            .or_else(|| action.hands.first().copied())
            .unwrap_or(poses::Hand::Left);
        let kind = SpaceKind::Action {
            action: info.action.into_raw(),
            hand,
        };
        *space = add_space(&mut rt, session, Space { kind, offset })?;
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn destroy_space(space: sys::Space) -> sys::Result {
    guard(|| {
        let mut rt = lock();
        let s = rt.any_session()?;
        s.spaces
            .remove(&space.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        Ok(sys::Result::SUCCESS)
    })
}

/// Valid and tracked, orientation and position.
fn tracked() -> sys::SpaceLocationFlags {
    use sys::SpaceLocationFlags as F;
    F::ORIENTATION_VALID | F::POSITION_VALID | F::ORIENTATION_TRACKED | F::POSITION_TRACKED
}

pub(crate) unsafe extern "system" fn locate_space(
    space: sys::Space,
    base: sys::Space,
    time: sys::Time,
    location: *mut sys::SpaceLocation,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer (and `next` chain) or null (checked).
        let location = unsafe { output(location)? };
        let mut rt = lock();
        let inst = rt
            .instance
            .as_mut()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        let s = inst
            .session
            .as_ref()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        let find = |h: sys::Space| {
            s.spaces
                .get(&h.into_raw())
                .ok_or(sys::Result::ERROR_HANDLE_INVALID)
        };
        let (target, base) = (find(space)?, find(base)?);
        if time.as_nanos() <= 0 {
            return Err(sys::Result::ERROR_TIME_INVALID);
        }
        let at = |sp: &Space| stage_pose(&inst.script, &inst.suggested, s, sp, time.as_nanos());
        match (at(target), at(base)) {
            (Some(t), Some(b)) => {
                location.location_flags = tracked();
                location.pose = to_posef(&b.inverse().compose(&t));
            }
            _ => {
                location.location_flags = sys::SpaceLocationFlags::EMPTY;
                location.pose = to_posef(&Pose::IDENTITY);
            }
        }
        // SAFETY: the location's `next` chain is valid and writable (valid usage).
        let velocity = unsafe { crate::abi::find_in_chain::<sys::SpaceVelocity>(location.next) };
        if !velocity.is_null() {
            // SAFETY: found by its type tag in the application's writable output chain.
            unsafe { (*velocity.cast_mut()).velocity_flags = sys::SpaceVelocityFlags::EMPTY };
        }
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn locate_views(
    session: sys::Session,
    info: *const sys::ViewLocateInfo,
    state: *mut sys::ViewState,
    capacity: u32,
    count: *mut u32,
    views: *mut sys::View,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, state) = unsafe { (input(info)?, output(state)?) };
        let mut rt = lock();
        let inst = rt.instance_of(session)?;
        let s = inst
            .session
            .as_mut()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        s.check_not_lost()?;
        if info.view_configuration_type != sys::ViewConfigurationType::PRIMARY_STEREO {
            return Err(sys::Result::ERROR_VIEW_CONFIGURATION_TYPE_UNSUPPORTED);
        }
        let time = info.display_time.as_nanos();
        if time <= 0 {
            return Err(sys::Result::ERROR_TIME_INVALID);
        }
        let space = *s
            .spaces
            .get(&info.space.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        let base = stage_pose(&inst.script, &inst.suggested, s, &space, time);
        let head = poses::head(&inst.script, (time - s.origin_ns) as f64 / 1e9);
        let eyes = poses::eyes(&inst.script, &head);
        let fov = to_fovf(&inst.script.fov);
        let located = base.map(|b| eyes.map(|e| b.inverse().compose(&e)));
        state.view_state_flags = match located {
            Some(_) => sys::ViewStateFlags::from_raw(tracked().into_raw()),
            None => sys::ViewStateFlags::EMPTY,
        };
        let poses = located.unwrap_or([Pose::IDENTITY; 2]);
        let mut filled = false;
        // SAFETY: two-call pointers from the caller, valid or null (checked).
        unsafe {
            two_call(capacity, count, views, 2, |v, i| {
                if v.ty != sys::View::TYPE {
                    return Err(sys::Result::ERROR_VALIDATION_FAILURE);
                }
                v.pose = to_posef(&poses[i]);
                v.fov = fov;
                filled = true;
                Ok(())
            })?;
        }
        if filled && located.is_some() {
            let now = now_ns();
            for pose in &poses {
                s.remember_located(pose, time, now);
            }
        }
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn enumerate_swapchain_formats(
    session: sys::Session,
    capacity: u32,
    count: *mut u32,
    formats: *mut i64,
) -> sys::Result {
    guard(|| {
        handle_of_session(&mut lock(), session)?;
        let formats_i64 = FORMATS.map(|f| i64::from(f.as_raw()));
        // SAFETY: two-call pointers from the caller, valid or null (checked).
        unsafe { two_call_copy(capacity, count, formats, &formats_i64)? };
        Ok(sys::Result::SUCCESS)
    })
}

fn image_usage(usage: sys::SwapchainUsageFlags) -> (vk::ImageUsageFlags, vk::ImageCreateFlags) {
    use sys::SwapchainUsageFlags as X;
    use vk::ImageUsageFlags as V;
    let map = [
        (X::COLOR_ATTACHMENT, V::COLOR_ATTACHMENT),
        (X::DEPTH_STENCIL_ATTACHMENT, V::DEPTH_STENCIL_ATTACHMENT),
        (X::UNORDERED_ACCESS, V::STORAGE),
        (X::TRANSFER_SRC, V::TRANSFER_SRC),
        (X::TRANSFER_DST, V::TRANSFER_DST),
        (X::SAMPLED, V::SAMPLED),
    ];
    let bits = map
        .iter()
        .filter(|(x, _)| usage.contains(*x))
        .fold(V::TRANSFER_SRC, |acc, (_, v)| acc | *v);
    let flags = if usage.contains(X::MUTABLE_FORMAT) {
        vk::ImageCreateFlags::MUTABLE_FORMAT
    } else {
        vk::ImageCreateFlags::empty()
    };
    (bits, flags)
}

pub(crate) unsafe extern "system" fn create_swapchain(
    session: sys::Session,
    info: *const sys::SwapchainCreateInfo,
    handle: *mut sys::Swapchain,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, handle) = unsafe { (input(info)?, out(handle)?) };
        let mut rt = lock();
        let id = rt.new_handle();
        let inst = rt.instance_of(session)?;
        let (max_w, max_h) = (
            inst.script.eye_width * MAX_SIZE_FACTOR,
            inst.script.eye_height * MAX_SIZE_FACTOR,
        );
        let s = inst
            .session
            .as_mut()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        s.check_not_lost()?;
        if !info.create_flags.is_empty() {
            return Err(sys::Result::ERROR_FEATURE_UNSUPPORTED);
        }
        let format = i32::try_from(info.format)
            .map(vk::Format::from_raw)
            .ok()
            .filter(|f| FORMATS.contains(f));
        let format = format.ok_or(sys::Result::ERROR_SWAPCHAIN_FORMAT_UNSUPPORTED)?;
        let counts = [
            info.sample_count,
            info.face_count,
            info.array_size,
            info.mip_count,
        ];
        if counts.contains(&0) || info.width == 0 || info.height == 0 {
            return Err(sys::Result::ERROR_VALIDATION_FAILURE);
        }
        if counts.iter().any(|&c| c != 1) || info.width > max_w || info.height > max_h {
            return Err(sys::Result::ERROR_FEATURE_UNSUPPORTED);
        }
        let (usage, flags) = image_usage(info.usage_flags);
        let spec = ImageSpec {
            format,
            width: info.width,
            height: info.height,
            usage,
            flags,
            count: SWAPCHAIN_IMAGES,
        };
        let images = s.gpu.create_images(&spec).map_err(|e| {
            eprintln!("syncra-simxr: cannot create swapchain images: {e}");
            sys::Result::ERROR_RUNTIME_FAILURE
        })?;
        let layout = if usage.contains(vk::ImageUsageFlags::COLOR_ATTACHMENT) {
            vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL
        } else if usage.contains(vk::ImageUsageFlags::TRANSFER_DST) {
            vk::ImageLayout::TRANSFER_DST_OPTIMAL
        } else {
            vk::ImageLayout::GENERAL
        };
        s.swapchains.insert(
            id,
            Swapchain {
                images,
                format,
                width: info.width,
                height: info.height,
                layout,
                initialized: false,
                acquired: Default::default(),
                waited: false,
                next: 0,
                last_released: None,
            },
        );
        *handle = sys::Swapchain::from_raw(id);
        Ok(sys::Result::SUCCESS)
    })
}

fn with_swapchain<T>(
    h: sys::Swapchain,
    f: impl FnOnce(&Gpu, &mut Swapchain) -> XrResult<T>,
) -> XrResult<T> {
    let mut rt = lock();
    let s = rt.any_session()?;
    let sc = s
        .swapchains
        .get_mut(&h.into_raw())
        .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
    f(&s.gpu, sc)
}

pub(crate) unsafe extern "system" fn destroy_swapchain(swapchain: sys::Swapchain) -> sys::Result {
    guard(|| {
        let mut rt = lock();
        let s = rt.any_session()?;
        s.swapchains
            .remove(&swapchain.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn enumerate_swapchain_images(
    swapchain: sys::Swapchain,
    capacity: u32,
    count: *mut u32,
    images: *mut sys::SwapchainImageBaseHeader,
) -> sys::Result {
    guard(|| {
        with_swapchain(swapchain, |_, sc| {
            let list = &sc.images.images;
            // SAFETY: for a Vulkan session the array is of XrSwapchainImageVulkanKHR (each
            // element's type is checked); two-call pointers are valid or null (checked).
            unsafe {
                two_call(
                    capacity,
                    count,
                    images.cast::<sys::SwapchainImageVulkanKHR>(),
                    list.len(),
                    |img, i| {
                        if img.ty != sys::SwapchainImageVulkanKHR::TYPE {
                            return Err(sys::Result::ERROR_VALIDATION_FAILURE);
                        }
                        img.image = list[i].as_raw();
                        Ok(())
                    },
                )
            }
        })?;
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn acquire_swapchain_image(
    swapchain: sys::Swapchain,
    info: *const sys::SwapchainImageAcquireInfo,
    index: *mut u32,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (the info may be null).
        let index = unsafe {
            optional(info)?;
            out(index)?
        };
        with_swapchain(swapchain, |gpu, sc| {
            let n = sc.images.images.len() as u32;
            if sc.acquired.len() as u32 == n {
                return Err(sys::Result::ERROR_CALL_ORDER_INVALID);
            }
            if !sc.initialized {
                gpu.initialize_layout(&sc.images.images, sc.layout)
                    .map_err(|e| {
                        eprintln!("syncra-simxr: cannot prepare swapchain images: {e}");
                        sys::Result::ERROR_RUNTIME_FAILURE
                    })?;
                sc.initialized = true;
            }
            *index = sc.next;
            sc.acquired.push_back(sc.next);
            sc.next = (sc.next + 1) % n;
            Ok(())
        })?;
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn wait_swapchain_image(
    swapchain: sys::Swapchain,
    info: *const sys::SwapchainImageWaitInfo,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        unsafe { input(info)? };
        with_swapchain(swapchain, |_, sc| {
            if sc.acquired.is_empty() || sc.waited {
                return Err(sys::Result::ERROR_CALL_ORDER_INVALID);
            }
            sc.waited = true;
            Ok(())
        })?;
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn release_swapchain_image(
    swapchain: sys::Swapchain,
    info: *const sys::SwapchainImageReleaseInfo,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (the info may be null).
        unsafe { optional(info)? };
        with_swapchain(swapchain, |_, sc| {
            if !sc.waited {
                return Err(sys::Result::ERROR_CALL_ORDER_INVALID);
            }
            sc.waited = false;
            sc.last_released = sc.acquired.pop_front();
            Ok(())
        })?;
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn wait_frame(
    session: sys::Session,
    info: *const sys::FrameWaitInfo,
    state: *mut sys::FrameState,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (the info may be null).
        let state = unsafe {
            optional(info)?;
            output(state)?
        };
        let (wait, period, should_render) = {
            let mut rt = lock();
            let now = now_ns();
            rt.check_unplugged(now);
            let s = handle_of_session(&mut rt, session)?;
            s.check_running()?;
            let pacer = s
                .pacer
                .as_mut()
                .ok_or(sys::Result::ERROR_SESSION_NOT_RUNNING)?;
            let wait = pacer.next(now);
            let period = pacer.period_ns();
            s.waited += 1;
            if s.predicted.len() == PREDICTED_KEPT {
                s.predicted.pop_front();
            }
            s.predicted.push_back(wait.display_ns);
            let should_render = matches!(
                s.state,
                sys::SessionState::VISIBLE | sys::SessionState::FOCUSED
            );
            rt.stats.frames_waited += 1;
            rt.stats.missed += wait.missed;
            rt.sync_status(now, true);
            (wait, period, should_render)
        };
        // The lock is released: other threads may call in while this one sleeps.
        sleep_until(wait.vsync_ns);
        state.predicted_display_time = sys::Time::from_nanos(wait.display_ns);
        state.predicted_display_period = sys::Duration::from_nanos(period);
        state.should_render = should_render.into();
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn begin_frame(
    session: sys::Session,
    info: *const sys::FrameBeginInfo,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (the info may be null).
        unsafe { optional(info)? };
        let mut rt = lock();
        let s = handle_of_session(&mut rt, session)?;
        s.check_running()?;
        if s.waited == 0 {
            return Err(sys::Result::ERROR_CALL_ORDER_INVALID);
        }
        s.waited -= 1;
        if s.in_frame {
            return Ok(sys::Result::FRAME_DISCARDED);
        }
        s.in_frame = true;
        Ok(sys::Result::SUCCESS)
    })
}

/// Checks a projection layer the way a compositor would.
fn check_projection(
    s: &Session,
    layer: &sys::CompositionLayerProjection,
) -> XrResult<Vec<sys::CompositionLayerProjectionView>> {
    // SAFETY: `views` holds `view_count` structures (valid usage), or is null (checked).
    let views = unsafe { array(layer.views, layer.view_count)? };
    if views.len() != 2 {
        return Err(sys::Result::ERROR_VALIDATION_FAILURE);
    }
    if !s.spaces.contains_key(&layer.space.into_raw()) {
        return Err(sys::Result::ERROR_HANDLE_INVALID);
    }
    for view in views {
        if view.ty != sys::CompositionLayerProjectionView::TYPE {
            return Err(sys::Result::ERROR_VALIDATION_FAILURE);
        }
        let sub = &view.sub_image;
        let sc = s
            .swapchains
            .get(&sub.swapchain.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        if sc.last_released.is_none() {
            return Err(sys::Result::ERROR_LAYER_INVALID);
        }
        let (o, e) = (sub.image_rect.offset, sub.image_rect.extent);
        let fits = |off: i32, len: i32, size: u32| {
            off >= 0 && len > 0 && i64::from(off) + i64::from(len) <= i64::from(size)
        };
        if !fits(o.x, e.width, sc.width) || !fits(o.y, e.height, sc.height) {
            return Err(sys::Result::ERROR_SWAPCHAIN_RECT_INVALID);
        }
        if sub.image_array_index != 0 {
            return Err(sys::Result::ERROR_VALIDATION_FAILURE);
        }
        checked_pose(&view.pose)?;
    }
    Ok(views.to_vec())
}

pub(crate) unsafe extern "system" fn end_frame(
    session: sys::Session,
    info: *const sys::FrameEndInfo,
) -> sys::Result {
    guard(|| {
        let end_ns = now_ns();
        // SAFETY: the caller passes a valid pointer or null (checked).
        let info = unsafe { input(info)? };
        let mut rt = lock();
        let frame = rt.stats.frames_ended;
        let inst = rt.instance_of(session)?;
        let dir = inst.dir.clone();
        let s = inst
            .session
            .as_mut()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        s.check_running()?;
        if !s.in_frame {
            return Err(sys::Result::ERROR_CALL_ORDER_INVALID);
        }
        let display = info.display_time.as_nanos();
        if !s.predicted.contains(&display) {
            return Err(sys::Result::ERROR_TIME_INVALID);
        }
        if info.environment_blend_mode != sys::EnvironmentBlendMode::OPAQUE {
            return Err(sys::Result::ERROR_ENVIRONMENT_BLEND_MODE_UNSUPPORTED);
        }
        if info.layer_count > MAX_LAYERS {
            return Err(sys::Result::ERROR_LAYER_LIMIT_EXCEEDED);
        }
        // SAFETY: `layers` holds `layer_count` pointers (valid usage), or is null (checked).
        let layers = unsafe { array(info.layers, info.layer_count)? };
        let mut first: Option<Vec<sys::CompositionLayerProjectionView>> = None;
        for &layer in layers {
            // SAFETY: each layer pointer is valid or null (checked).
            let base = unsafe { layer.as_ref() }.ok_or(sys::Result::ERROR_LAYER_INVALID)?;
            if base.ty != sys::CompositionLayerProjection::TYPE {
                return Err(sys::Result::ERROR_LAYER_INVALID);
            }
            // SAFETY: the type tag says this layer is an XrCompositionLayerProjection.
            let projection = unsafe { &*layer.cast::<sys::CompositionLayerProjection>() };
            let views = check_projection(s, projection)?;
            first.get_or_insert(views);
        }
        s.in_frame = false;
        s.predicted.retain(|&t| t > display);
        let late = end_ns > display;
        let pose_latency_ns = first
            .as_ref()
            .and_then(|views| s.located_at(&to_pose(&views[0].pose)))
            .map_or(-1, |t| end_ns - t);
        s.log_frame(&FrameLine {
            frame,
            display_time_ns: display,
            end_ns,
            layers: info.layer_count,
            pose_latency_ns,
            late,
        });
        if let (Some(dir), Some(views)) = (&dir, &first)
            && dir.join(control::CAPTURE_REQUEST_FILE).exists()
        {
            capture(s, dir, frame, display, views);
        }
        let first_frame = !std::mem::replace(&mut s.first_frame_ended, true);
        rt.stats.frames_ended += 1;
        rt.stats.frames_with_layers += u64::from(!layers.is_empty());
        rt.stats.late += u64::from(late);
        if first_frame {
            for state in [
                sys::SessionState::SYNCHRONIZED,
                sys::SessionState::VISIBLE,
                sys::SessionState::FOCUSED,
            ] {
                rt.change_state(state, end_ns);
            }
        }
        rt.sync_status(end_ns, true);
        Ok(sys::Result::SUCCESS)
    })
}

/// Reads back both views of a projection layer and writes the capture files; a failure is
/// reported on stderr and leaves the request in place for the next frame.
fn capture(
    s: &Session,
    dir: &Path,
    frame: u64,
    display_ns: i64,
    views: &[sys::CompositionLayerProjectionView],
) {
    let mut metas = Vec::new();
    let mut format = 0;
    for (i, view) in views.iter().enumerate() {
        let sub = &view.sub_image;
        let Some(sc) = s.swapchains.get(&sub.swapchain.into_raw()) else {
            return;
        };
        let Some(image) = sc
            .last_released
            .and_then(|k| sc.images.images.get(k as usize))
        else {
            return;
        };
        let rect = vk::Rect2D {
            offset: vk::Offset2D {
                x: sub.image_rect.offset.x,
                y: sub.image_rect.offset.y,
            },
            extent: vk::Extent2D {
                width: sub.image_rect.extent.width as u32,
                height: sub.image_rect.extent.height as u32,
            },
        };
        let mut rgba = match s
            .gpu
            .read_back(*image, sc.layout, sub.image_array_index, rect)
        {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("syncra-simxr: capture of view {i} failed: {e}");
                return;
            }
        };
        if sc.format == vk::Format::B8G8R8A8_SRGB {
            rgba.chunks_exact_mut(4).for_each(|px| px.swap(0, 2));
        }
        if let Err(e) = control::write_atomic(&dir.join(control::capture_image_file(i)), &rgba) {
            eprintln!("syncra-simxr: cannot write capture image {i}: {e}");
            return;
        }
        format = sc.format.as_raw() as u32;
        let pose = to_pose(&view.pose);
        let f = view.fov;
        metas.push(CaptureViewMeta {
            width: rect.extent.width,
            height: rect.extent.height,
            pose: PoseJson {
                position: pose.position,
                orientation: pose.orientation,
            },
            fov: Fov {
                left: f.angle_left,
                right: f.angle_right,
                up: f.angle_up,
                down: f.angle_down,
            },
        });
    }
    let meta = CaptureMeta {
        frame,
        display_time_ns: display_ns,
        format,
        views: metas,
    };
    let written = serde_json::to_vec_pretty(&meta)
        .map_err(std::io::Error::other)
        .and_then(|bytes| control::write_atomic(&dir.join(control::CAPTURE_META_FILE), &bytes))
        .and_then(|()| std::fs::remove_file(dir.join(control::CAPTURE_REQUEST_FILE)));
    if let Err(e) = written {
        eprintln!(
            "syncra-simxr: cannot finish the capture in {}: {e}",
            dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapchain_usage_always_includes_transfer_source() {
        let (usage, flags) = image_usage(sys::SwapchainUsageFlags::COLOR_ATTACHMENT);
        assert_eq!(
            usage,
            vk::ImageUsageFlags::COLOR_ATTACHMENT | vk::ImageUsageFlags::TRANSFER_SRC
        );
        assert!(flags.is_empty());
        let (_, flags) = image_usage(sys::SwapchainUsageFlags::MUTABLE_FORMAT);
        assert_eq!(flags, vk::ImageCreateFlags::MUTABLE_FORMAT);
    }

    #[test]
    fn a_non_unit_quaternion_is_an_invalid_pose() {
        let mut p = to_posef(&Pose::IDENTITY);
        assert!(checked_pose(&p).is_ok());
        p.orientation.w = 0.0;
        assert_eq!(checked_pose(&p), Err(sys::Result::ERROR_POSE_INVALID));
    }
}
