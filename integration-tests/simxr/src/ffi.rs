//! The loader-facing surface: `xrNegotiateLoaderRuntimeInterface`, the dispatch table
//! behind `xrGetInstanceProcAddr`, and the instance-level entry points (instance, system,
//! XR_KHR_vulkan_enable2, paths, time conversion, events, enum names).
//!
//! Every entry point runs inside [`guard`], so a panic becomes `XR_ERROR_RUNTIME_FAILURE`.

use std::ffi::{c_char, c_void};
use std::path::PathBuf;

use ash::vk::{self, Handle as _};
use openxr_sys::{self as sys, Handle as _};

use crate::abi::{
    XrResult, array, c_str, enum_name, find_in_chain, fixed_str, guard, input, out, output,
    put_str, two_call, two_call_copy, two_call_str,
};
use crate::control::{self, Script};
use crate::state::{Event, Instance, VkEntry, lock};
use crate::{frame, input as xr_input, pacing};

/// The one system this runtime has.
pub(crate) const SYSTEM_ID: u64 = 1;
const VULKAN_ENABLE2: &str = "XR_KHR_vulkan_enable2";
const CONVERT_TIMESPEC: &str = "XR_KHR_convert_timespec_time";
const EXTENSIONS: [(&str, u32); 2] = [(VULKAN_ENABLE2, 2), (CONVERT_TIMESPEC, 1)];
const RUNTIME_NAME: &str = "syncra-simxr";
/// Swapchains may be this many times the recommended eye size.
pub(crate) const MAX_SIZE_FACTOR: u32 = 2;

/// Called by the OpenXR loader after loading this library: hands it `xrGetInstanceProcAddr`.
///
/// # Safety
/// The loader passes valid structures (null is refused).
#[unsafe(no_mangle)]
pub(crate) unsafe extern "system" fn xrNegotiateLoaderRuntimeInterface(
    loader: *const sys::NegotiateLoaderInfo,
    request: *mut sys::NegotiateRuntimeRequest,
) -> sys::Result {
    guard(|| {
        // SAFETY: the loader passes valid pointers or null; null is checked.
        let (loader, request) = unsafe { (loader.as_ref(), request.as_mut()) };
        let (Some(loader), Some(request)) = (loader, request) else {
            return Err(sys::Result::ERROR_INITIALIZATION_FAILED);
        };
        if loader.struct_type != sys::LoaderInterfaceStructs::LOADER_INFO
            || request.struct_type != sys::LoaderInterfaceStructs::RUNTIME_REQUEST
            || loader.min_interface_version > 1
            || loader.max_interface_version < 1
        {
            return Err(sys::Result::ERROR_INITIALIZATION_FAILED);
        }
        request.runtime_interface_version = 1;
        request.runtime_api_version = sys::Version::new(1, 0, 20);
        request.get_instance_proc_addr = Some(get_instance_proc_addr);
        Ok(sys::Result::SUCCESS)
    })
}

macro_rules! table {
    ($name:expr; $($xr:literal => $f:path : $pfn:ident),* $(,)?) => {
        match $name {
            $($xr => {
                let f: sys::pfn::$pfn = $f;
                // SAFETY: function pointers all have one size; the caller casts this one
                // back to its type, which the name selects.
                Some(unsafe { std::mem::transmute::<sys::pfn::$pfn, sys::pfn::VoidFunction>(f) })
            })*
            _ => None,
        }
    };
}

fn global_function(name: &str) -> Option<sys::pfn::VoidFunction> {
    table!(name;
        "xrGetInstanceProcAddr" => get_instance_proc_addr: GetInstanceProcAddr,
        "xrEnumerateInstanceExtensionProperties" => enumerate_extensions: EnumerateInstanceExtensionProperties,
        "xrCreateInstance" => create_instance: CreateInstance,
    )
}

fn core_function(name: &str) -> Option<sys::pfn::VoidFunction> {
    table!(name;
        "xrDestroyInstance" => destroy_instance: DestroyInstance,
        "xrGetInstanceProperties" => get_instance_properties: GetInstanceProperties,
        "xrPollEvent" => poll_event: PollEvent,
        "xrResultToString" => result_to_string: ResultToString,
        "xrStructureTypeToString" => structure_type_to_string: StructureTypeToString,
        "xrGetSystem" => get_system: GetSystem,
        "xrGetSystemProperties" => get_system_properties: GetSystemProperties,
        "xrEnumerateEnvironmentBlendModes" => enumerate_blend_modes: EnumerateEnvironmentBlendModes,
        "xrEnumerateViewConfigurations" => enumerate_view_configurations: EnumerateViewConfigurations,
        "xrGetViewConfigurationProperties" => get_view_configuration_properties: GetViewConfigurationProperties,
        "xrEnumerateViewConfigurationViews" => enumerate_view_configuration_views: EnumerateViewConfigurationViews,
        "xrStringToPath" => string_to_path: StringToPath,
        "xrPathToString" => path_to_string: PathToString,
        "xrCreateSession" => frame::create_session: CreateSession,
        "xrDestroySession" => frame::destroy_session: DestroySession,
        "xrBeginSession" => frame::begin_session: BeginSession,
        "xrEndSession" => frame::end_session: EndSession,
        "xrRequestExitSession" => frame::request_exit_session: RequestExitSession,
        "xrEnumerateReferenceSpaces" => frame::enumerate_reference_spaces: EnumerateReferenceSpaces,
        "xrCreateReferenceSpace" => frame::create_reference_space: CreateReferenceSpace,
        "xrGetReferenceSpaceBoundsRect" => frame::get_reference_space_bounds_rect: GetReferenceSpaceBoundsRect,
        "xrCreateActionSpace" => frame::create_action_space: CreateActionSpace,
        "xrLocateSpace" => frame::locate_space: LocateSpace,
        "xrDestroySpace" => frame::destroy_space: DestroySpace,
        "xrLocateViews" => frame::locate_views: LocateViews,
        "xrEnumerateSwapchainFormats" => frame::enumerate_swapchain_formats: EnumerateSwapchainFormats,
        "xrCreateSwapchain" => frame::create_swapchain: CreateSwapchain,
        "xrDestroySwapchain" => frame::destroy_swapchain: DestroySwapchain,
        "xrEnumerateSwapchainImages" => frame::enumerate_swapchain_images: EnumerateSwapchainImages,
        "xrAcquireSwapchainImage" => frame::acquire_swapchain_image: AcquireSwapchainImage,
        "xrWaitSwapchainImage" => frame::wait_swapchain_image: WaitSwapchainImage,
        "xrReleaseSwapchainImage" => frame::release_swapchain_image: ReleaseSwapchainImage,
        "xrWaitFrame" => frame::wait_frame: WaitFrame,
        "xrBeginFrame" => frame::begin_frame: BeginFrame,
        "xrEndFrame" => frame::end_frame: EndFrame,
        "xrCreateActionSet" => xr_input::create_action_set: CreateActionSet,
        "xrDestroyActionSet" => xr_input::destroy_action_set: DestroyActionSet,
        "xrCreateAction" => xr_input::create_action: CreateAction,
        "xrDestroyAction" => xr_input::destroy_action: DestroyAction,
        "xrSuggestInteractionProfileBindings" => xr_input::suggest_bindings: SuggestInteractionProfileBindings,
        "xrAttachSessionActionSets" => xr_input::attach_action_sets: AttachSessionActionSets,
        "xrGetCurrentInteractionProfile" => xr_input::get_current_interaction_profile: GetCurrentInteractionProfile,
        "xrSyncActions" => xr_input::sync_actions: SyncActions,
        "xrGetActionStateBoolean" => xr_input::get_boolean: GetActionStateBoolean,
        "xrGetActionStateFloat" => xr_input::get_float: GetActionStateFloat,
        "xrGetActionStateVector2f" => xr_input::get_vector2f: GetActionStateVector2f,
        "xrGetActionStatePose" => xr_input::get_pose: GetActionStatePose,
        "xrEnumerateBoundSourcesForAction" => xr_input::enumerate_bound_sources: EnumerateBoundSourcesForAction,
        "xrGetInputSourceLocalizedName" => xr_input::get_input_source_localized_name: GetInputSourceLocalizedName,
        "xrApplyHapticFeedback" => xr_input::apply_haptic_feedback: ApplyHapticFeedback,
        "xrStopHapticFeedback" => xr_input::stop_haptic_feedback: StopHapticFeedback,
    )
}

fn vulkan_function(name: &str) -> Option<sys::pfn::VoidFunction> {
    table!(name;
        "xrGetVulkanGraphicsRequirements2KHR" => get_vulkan_graphics_requirements: GetVulkanGraphicsRequirements2KHR,
        "xrCreateVulkanInstanceKHR" => create_vulkan_instance: CreateVulkanInstanceKHR,
        "xrGetVulkanGraphicsDevice2KHR" => get_vulkan_graphics_device: GetVulkanGraphicsDevice2KHR,
        "xrCreateVulkanDeviceKHR" => create_vulkan_device: CreateVulkanDeviceKHR,
    )
}

fn timespec_function(name: &str) -> Option<sys::pfn::VoidFunction> {
    table!(name;
        "xrConvertTimespecTimeToTimeKHR" => timespec_to_time: ConvertTimespecTimeToTimeKHR,
        "xrConvertTimeToTimespecTimeKHR" => time_to_timespec: ConvertTimeToTimespecTimeKHR,
    )
}

unsafe extern "system" fn get_instance_proc_addr(
    instance: sys::Instance,
    name: *const c_char,
    function: *mut Option<sys::pfn::VoidFunction>,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid out pointer and C string, or null (checked).
        let (function, name) = unsafe { (out(function)?, c_str(name)?) };
        *function = None;
        let found = if instance == sys::Instance::NULL {
            global_function(name)
        } else {
            let mut rt = lock();
            let instance = rt.instance(instance)?;
            global_function(name)
                .or_else(|| core_function(name))
                .or_else(|| {
                    instance
                        .vulkan_enabled
                        .then(|| vulkan_function(name))
                        .flatten()
                })
                .or_else(|| {
                    instance
                        .timespec_enabled
                        .then(|| timespec_function(name))
                        .flatten()
                })
        };
        *function = found;
        Ok(if found.is_some() {
            sys::Result::SUCCESS
        } else {
            sys::Result::ERROR_FUNCTION_UNSUPPORTED
        })
    })
}

unsafe extern "system" fn enumerate_extensions(
    layer: *const c_char,
    capacity: u32,
    count: *mut u32,
    properties: *mut sys::ExtensionProperties,
) -> sys::Result {
    guard(|| {
        if !layer.is_null() {
            return Err(sys::Result::ERROR_API_LAYER_NOT_PRESENT);
        }
        // SAFETY: two-call pointers from the caller, valid or null (checked).
        unsafe {
            two_call(capacity, count, properties, EXTENSIONS.len(), |p, i| {
                if p.ty != sys::ExtensionProperties::TYPE {
                    return Err(sys::Result::ERROR_VALIDATION_FAILURE);
                }
                put_str(&mut p.extension_name, EXTENSIONS[i].0);
                p.extension_version = EXTENSIONS[i].1;
                Ok(())
            })?;
        }
        Ok(sys::Result::SUCCESS)
    })
}

/// The control directory and the script in it, or why the script is unusable.
fn read_script() -> XrResult<(Option<PathBuf>, Script)> {
    let Some(dir) = std::env::var_os(control::DIR_ENV).map(PathBuf::from) else {
        return Ok((None, Script::default()));
    };
    let path = dir.join(control::SCRIPT_FILE);
    let script = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Script::default(),
        Err(e) => {
            eprintln!("syncra-simxr: cannot read {}: {e}", path.display());
            return Err(sys::Result::ERROR_RUNTIME_FAILURE);
        }
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            eprintln!(
                "syncra-simxr: {} is not a valid script: {e}",
                path.display()
            );
            sys::Result::ERROR_RUNTIME_FAILURE
        })?,
    };
    Ok((Some(dir), script))
}

unsafe extern "system" fn create_instance(
    info: *const sys::InstanceCreateInfo,
    handle: *mut sys::Instance,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, handle) = unsafe { (input(info)?, out(handle)?) };
        let app = &info.application_info;
        let version = app.api_version;
        if version.major() != 1 || version.minor() != 0 {
            return Err(sys::Result::ERROR_API_VERSION_UNSUPPORTED);
        }
        if fixed_str(&app.application_name)?.is_empty() {
            return Err(sys::Result::ERROR_NAME_INVALID);
        }
        if info.enabled_api_layer_count > 0 {
            return Err(sys::Result::ERROR_API_LAYER_NOT_PRESENT);
        }
        let mut enabled = [false; 2];
        // SAFETY: `enabled_extension_names` holds `enabled_extension_count` C strings.
        let names = unsafe { array(info.enabled_extension_names, info.enabled_extension_count)? };
        for &name in names {
            // SAFETY: each entry is a valid C string (valid usage).
            let name = unsafe { c_str(name)? };
            let known = EXTENSIONS.iter().position(|(ext, _)| *ext == name);
            enabled[known.ok_or(sys::Result::ERROR_EXTENSION_NOT_PRESENT)?] = true;
        }
        let (dir, script) = read_script()?;
        let mut rt = lock();
        if rt.instance.is_some() {
            return Err(sys::Result::ERROR_LIMIT_REACHED);
        }
        if rt.stats.instances == 0
            && let Some(earlier) = dir
                .as_deref()
                .and_then(|d| control::SimDir::new(d).ok())
                .and_then(|d| d.status())
            && earlier.pid == std::process::id()
        {
            rt.stats.resume(&earlier);
        }
        let id = rt.new_handle();
        rt.instance = Some(Instance::new(id, script, dir, enabled));
        rt.stats.instances += 1;
        rt.mark_status_dirty();
        rt.sync_status(pacing::now_ns(), false);
        *handle = sys::Instance::from_raw(id);
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn destroy_instance(instance: sys::Instance) -> sys::Result {
    guard(|| {
        let mut rt = lock();
        rt.instance(instance)?;
        let had_session = rt.instance.as_ref().is_some_and(|i| i.session.is_some());
        if had_session {
            rt.mark_status_dirty();
        }
        rt.sync_status(pacing::now_ns(), false);
        rt.instance = None;
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn get_instance_properties(
    instance: sys::Instance,
    props: *mut sys::InstanceProperties,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let props = unsafe { output(props)? };
        lock().instance(instance)?;
        props.runtime_version = sys::Version::new(0, 1, 0);
        put_str(&mut props.runtime_name, RUNTIME_NAME);
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn poll_event(
    instance: sys::Instance,
    buffer: *mut sys::EventDataBuffer,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let buffer = unsafe { output(buffer)? };
        let mut rt = lock();
        rt.instance(instance)?;
        let now = pacing::now_ns();
        rt.check_unplugged(now);
        rt.sync_status(now, false);
        let Some(event) = rt.instance(instance)?.events.pop_front() else {
            return Ok(sys::Result::EVENT_UNAVAILABLE);
        };
        let raw = std::ptr::from_mut(buffer).cast::<u8>();
        match event {
            Event::State {
                session,
                state,
                time_ns,
            } => {
                let e = sys::EventDataSessionStateChanged {
                    ty: sys::EventDataSessionStateChanged::TYPE,
                    next: std::ptr::null(),
                    session: sys::Session::from_raw(session),
                    state,
                    time: sys::Time::from_nanos(time_ns),
                };
                // SAFETY: the event buffer is 4016 bytes, larger than the event.
                unsafe {
                    raw.cast::<sys::EventDataSessionStateChanged>()
                        .write_unaligned(e)
                };
            }
            Event::ProfileChanged { session } => {
                let e = sys::EventDataInteractionProfileChanged {
                    ty: sys::EventDataInteractionProfileChanged::TYPE,
                    next: std::ptr::null(),
                    session: sys::Session::from_raw(session),
                };
                // SAFETY: the event buffer is 4016 bytes, larger than the event.
                unsafe {
                    raw.cast::<sys::EventDataInteractionProfileChanged>()
                        .write_unaligned(e)
                };
            }
        }
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn result_to_string(
    instance: sys::Instance,
    value: sys::Result,
    buffer: *mut c_char,
) -> sys::Result {
    guard(|| {
        lock().instance(instance)?;
        let unknown = if value.into_raw() >= 0 {
            "XR_UNKNOWN_SUCCESS_"
        } else {
            "XR_UNKNOWN_FAILURE_"
        };
        let name = enum_name(format!("{value:?}"), "XR_", unknown);
        // SAFETY: the caller passes a buffer of XR_MAX_RESULT_STRING_SIZE, or null (checked).
        let buffer = unsafe { out(buffer.cast::<[c_char; sys::MAX_RESULT_STRING_SIZE]>())? };
        put_str(buffer, &name);
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn structure_type_to_string(
    instance: sys::Instance,
    value: sys::StructureType,
    buffer: *mut c_char,
) -> sys::Result {
    guard(|| {
        lock().instance(instance)?;
        let name = enum_name(
            format!("{value:?}"),
            "XR_TYPE_",
            "XR_UNKNOWN_STRUCTURE_TYPE_",
        );
        // SAFETY: the caller passes a buffer of XR_MAX_STRUCTURE_NAME_SIZE, or null (checked).
        let buffer = unsafe { out(buffer.cast::<[c_char; sys::MAX_STRUCTURE_NAME_SIZE]>())? };
        put_str(buffer, &name);
        Ok(sys::Result::SUCCESS)
    })
}

/// Checks the system id the application passes back.
pub(crate) fn check_system(id: sys::SystemId) -> XrResult {
    if id.into_raw() == SYSTEM_ID {
        Ok(())
    } else {
        Err(sys::Result::ERROR_SYSTEM_INVALID)
    }
}

fn check_view_configuration(ty: sys::ViewConfigurationType) -> XrResult {
    if ty == sys::ViewConfigurationType::PRIMARY_STEREO {
        Ok(())
    } else {
        Err(sys::Result::ERROR_VIEW_CONFIGURATION_TYPE_UNSUPPORTED)
    }
}

unsafe extern "system" fn get_system(
    instance: sys::Instance,
    info: *const sys::SystemGetInfo,
    id: *mut sys::SystemId,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, id) = unsafe { (input(info)?, out(id)?) };
        let mut rt = lock();
        let instance = rt.instance(instance)?;
        if info.form_factor != sys::FormFactor::HEAD_MOUNTED_DISPLAY {
            return Err(sys::Result::ERROR_FORM_FACTOR_UNSUPPORTED);
        }
        if instance.unplug.unplugged(pacing::now_ns()) {
            return Err(sys::Result::ERROR_FORM_FACTOR_UNAVAILABLE);
        }
        *id = sys::SystemId::from_raw(SYSTEM_ID);
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn get_system_properties(
    instance: sys::Instance,
    system: sys::SystemId,
    props: *mut sys::SystemProperties,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let props = unsafe { output(props)? };
        let mut rt = lock();
        let script = &rt.instance(instance)?.script;
        check_system(system)?;
        props.system_id = system;
        props.vendor_id = 0x5359;
        put_str(&mut props.system_name, &script.name);
        props.graphics_properties.max_swapchain_image_width = script.eye_width * MAX_SIZE_FACTOR;
        props.graphics_properties.max_swapchain_image_height = script.eye_height * MAX_SIZE_FACTOR;
        props.graphics_properties.max_layer_count = sys::MIN_COMPOSITION_LAYERS_SUPPORTED as u32;
        props.tracking_properties.orientation_tracking = sys::TRUE;
        props.tracking_properties.position_tracking = sys::TRUE;
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn enumerate_blend_modes(
    instance: sys::Instance,
    system: sys::SystemId,
    ty: sys::ViewConfigurationType,
    capacity: u32,
    count: *mut u32,
    modes: *mut sys::EnvironmentBlendMode,
) -> sys::Result {
    guard(|| {
        lock().instance(instance)?;
        check_system(system)?;
        check_view_configuration(ty)?;
        // SAFETY: two-call pointers from the caller, valid or null (checked).
        unsafe { two_call_copy(capacity, count, modes, &[sys::EnvironmentBlendMode::OPAQUE])? };
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn enumerate_view_configurations(
    instance: sys::Instance,
    system: sys::SystemId,
    capacity: u32,
    count: *mut u32,
    types: *mut sys::ViewConfigurationType,
) -> sys::Result {
    guard(|| {
        lock().instance(instance)?;
        check_system(system)?;
        // SAFETY: two-call pointers from the caller, valid or null (checked).
        unsafe {
            two_call_copy(
                capacity,
                count,
                types,
                &[sys::ViewConfigurationType::PRIMARY_STEREO],
            )?
        };
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn get_view_configuration_properties(
    instance: sys::Instance,
    system: sys::SystemId,
    ty: sys::ViewConfigurationType,
    props: *mut sys::ViewConfigurationProperties,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let props = unsafe { output(props)? };
        lock().instance(instance)?;
        check_system(system)?;
        check_view_configuration(ty)?;
        props.view_configuration_type = ty;
        props.fov_mutable = sys::FALSE;
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn enumerate_view_configuration_views(
    instance: sys::Instance,
    system: sys::SystemId,
    ty: sys::ViewConfigurationType,
    capacity: u32,
    count: *mut u32,
    views: *mut sys::ViewConfigurationView,
) -> sys::Result {
    guard(|| {
        let mut rt = lock();
        let script = &rt.instance(instance)?.script;
        check_system(system)?;
        check_view_configuration(ty)?;
        // SAFETY: two-call pointers from the caller, valid or null (checked).
        unsafe {
            two_call(capacity, count, views, 2, |v, _| {
                if v.ty != sys::ViewConfigurationView::TYPE {
                    return Err(sys::Result::ERROR_VALIDATION_FAILURE);
                }
                v.recommended_image_rect_width = script.eye_width;
                v.recommended_image_rect_height = script.eye_height;
                v.max_image_rect_width = script.eye_width * MAX_SIZE_FACTOR;
                v.max_image_rect_height = script.eye_height * MAX_SIZE_FACTOR;
                v.recommended_swapchain_sample_count = 1;
                v.max_swapchain_sample_count = 1;
                Ok(())
            })?;
        }
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn string_to_path(
    instance: sys::Instance,
    string: *const c_char,
    path: *mut sys::Path,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (string, path) = unsafe { (c_str(string), out(path)?) };
        let mut rt = lock();
        let instance = rt.instance(instance)?;
        let id = string
            .ok()
            .and_then(|s| instance.paths.intern(s))
            .ok_or(sys::Result::ERROR_PATH_FORMAT_INVALID)?;
        *path = sys::Path::from_raw(id);
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn path_to_string(
    instance: sys::Instance,
    path: sys::Path,
    capacity: u32,
    count: *mut u32,
    buffer: *mut c_char,
) -> sys::Result {
    guard(|| {
        let mut rt = lock();
        let instance = rt.instance(instance)?;
        let s = instance
            .paths
            .get(path.into_raw())
            .ok_or(sys::Result::ERROR_PATH_INVALID)?;
        // SAFETY: two-call pointers from the caller, valid or null (checked).
        unsafe { two_call_str(capacity, count, buffer, s)? };
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn timespec_to_time(
    instance: sys::Instance,
    timespec: *const libc::timespec,
    time: *mut sys::Time,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (timespec, time) = unsafe {
            (
                timespec
                    .as_ref()
                    .ok_or(sys::Result::ERROR_VALIDATION_FAILURE)?,
                out(time)?,
            )
        };
        lock().instance(instance)?;
        let ns = timespec
            .tv_sec
            .checked_mul(1_000_000_000)
            .and_then(|s| s.checked_add(timespec.tv_nsec));
        match ns {
            Some(ns) if ns > 0 => *time = sys::Time::from_nanos(ns),
            _ => return Err(sys::Result::ERROR_TIME_INVALID),
        }
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn time_to_timespec(
    instance: sys::Instance,
    time: sys::Time,
    timespec: *mut libc::timespec,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let timespec = unsafe { out(timespec)? };
        lock().instance(instance)?;
        let ns = time.as_nanos();
        if ns <= 0 {
            return Err(sys::Result::ERROR_TIME_INVALID);
        }
        timespec.tv_sec = ns / 1_000_000_000;
        timespec.tv_nsec = ns % 1_000_000_000;
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn get_vulkan_graphics_requirements(
    instance: sys::Instance,
    system: sys::SystemId,
    requirements: *mut sys::GraphicsRequirementsVulkanKHR,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let requirements = unsafe { output(requirements)? };
        let mut rt = lock();
        let instance = rt.instance(instance)?;
        check_system(system)?;
        requirements.min_api_version_supported = sys::Version::new(1, 0, 0);
        requirements.max_api_version_supported = sys::Version::new(1, 3, 0);
        instance.requirements_queried = true;
        Ok(sys::Result::SUCCESS)
    })
}

/// The Vulkan loader the instance uses: the application's `vkGetInstanceProcAddr` once it
/// handed one over, else libvulkan.
pub(crate) fn vk_entry(instance: &mut Instance) -> XrResult<ash::Entry> {
    if let Some(entry) = &instance.vk_entry {
        return Ok(entry.0.clone());
    }
    // SAFETY: loading libvulkan runs its initialisers, which is what it is for.
    let entry = unsafe { ash::Entry::load() }.map_err(|e| {
        eprintln!("syncra-simxr: cannot load libvulkan: {e}");
        sys::Result::ERROR_RUNTIME_FAILURE
    })?;
    instance.vk_entry = Some(VkEntry(entry.clone()));
    Ok(entry)
}

fn entry_from(pfn: Option<sys::platform::VkGetInstanceProcAddr>) -> XrResult<ash::Entry> {
    let pfn = pfn.ok_or(sys::Result::ERROR_VALIDATION_FAILURE)?;
    // SAFETY: both types are `vkGetInstanceProcAddr`'s C signature; handles are pointer-sized.
    let pfn = unsafe {
        std::mem::transmute::<sys::platform::VkGetInstanceProcAddr, vk::PFN_vkGetInstanceProcAddr>(
            pfn,
        )
    };
    // SAFETY: the application vouches that the pointer is a working vkGetInstanceProcAddr.
    Ok(unsafe {
        ash::Entry::from_static_fn(ash::StaticFn {
            get_instance_proc_addr: pfn,
        })
    })
}

unsafe extern "system" fn create_vulkan_instance(
    instance: sys::Instance,
    info: *const sys::VulkanInstanceCreateInfoKHR,
    vk_instance: *mut sys::platform::VkInstance,
    vk_result: *mut sys::platform::VkResult,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, vk_instance, vk_result) =
            unsafe { (input(info)?, out(vk_instance)?, out(vk_result)?) };
        let mut rt = lock();
        let instance = rt.instance(instance)?;
        check_system(info.system_id)?;
        if !instance.requirements_queried {
            return Err(sys::Result::ERROR_GRAPHICS_REQUIREMENTS_CALL_MISSING);
        }
        let entry = entry_from(info.pfn_get_instance_proc_addr)?;
        // SAFETY: the application's Vulkan create info and allocator (valid or null).
        let (create_info, allocator) = unsafe {
            (
                info.vulkan_create_info
                    .cast::<vk::InstanceCreateInfo>()
                    .as_ref()
                    .ok_or(sys::Result::ERROR_VALIDATION_FAILURE)?,
                info.vulkan_allocator
                    .cast::<vk::AllocationCallbacks>()
                    .as_ref(),
            )
        };
        // SAFETY: a valid create info, passed through to vkCreateInstance.
        match unsafe { entry.create_instance(create_info, allocator) } {
            Ok(created) => {
                *vk_instance = created.handle().as_raw() as sys::platform::VkInstance;
                *vk_result = vk::Result::SUCCESS.as_raw();
                instance.vk_entry = Some(VkEntry(entry));
                instance.vk_instance = Some(created.handle());
            }
            Err(e) => *vk_result = e.as_raw(),
        }
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn get_vulkan_graphics_device(
    instance: sys::Instance,
    info: *const sys::VulkanGraphicsDeviceGetInfoKHR,
    physical: *mut sys::platform::VkPhysicalDevice,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, physical) = unsafe { (input(info)?, out(physical)?) };
        let mut rt = lock();
        let instance = rt.instance(instance)?;
        check_system(info.system_id)?;
        if !instance.requirements_queried {
            return Err(sys::Result::ERROR_GRAPHICS_REQUIREMENTS_CALL_MISSING);
        }
        if info.vulkan_instance.is_null() {
            return Err(sys::Result::ERROR_VALIDATION_FAILURE);
        }
        let vk_instance = vk::Instance::from_raw(info.vulkan_instance as u64);
        let entry = vk_entry(instance)?;
        // SAFETY: the application's live VkInstance, made through `entry`.
        let devices = unsafe {
            ash::Instance::load(entry.static_fn(), vk_instance).enumerate_physical_devices()
        };
        let first = devices
            .ok()
            .and_then(|d| d.first().copied())
            .ok_or_else(|| {
                eprintln!("syncra-simxr: the Vulkan instance has no physical device");
                sys::Result::ERROR_RUNTIME_FAILURE
            })?;
        instance.vk_instance = Some(vk_instance);
        *physical = first.as_raw() as sys::platform::VkPhysicalDevice;
        Ok(sys::Result::SUCCESS)
    })
}

unsafe extern "system" fn create_vulkan_device(
    instance: sys::Instance,
    info: *const sys::VulkanDeviceCreateInfoKHR,
    device: *mut sys::platform::VkDevice,
    vk_result: *mut sys::platform::VkResult,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, device, vk_result) = unsafe { (input(info)?, out(device)?, out(vk_result)?) };
        let mut rt = lock();
        let instance = rt.instance(instance)?;
        check_system(info.system_id)?;
        let vk_instance = instance
            .vk_instance
            .ok_or(sys::Result::ERROR_CALL_ORDER_INVALID)?;
        if info.vulkan_physical_device.is_null() {
            return Err(sys::Result::ERROR_VALIDATION_FAILURE);
        }
        let entry = match info.pfn_get_instance_proc_addr {
            Some(_) => entry_from(info.pfn_get_instance_proc_addr)?,
            None => vk_entry(instance)?,
        };
        // SAFETY: the application's Vulkan create info and allocator (valid or null).
        let (create_info, allocator) = unsafe {
            (
                info.vulkan_create_info
                    .cast::<vk::DeviceCreateInfo>()
                    .as_ref()
                    .ok_or(sys::Result::ERROR_VALIDATION_FAILURE)?,
                info.vulkan_allocator
                    .cast::<vk::AllocationCallbacks>()
                    .as_ref(),
            )
        };
        let physical = vk::PhysicalDevice::from_raw(info.vulkan_physical_device as u64);
        // SAFETY: the instance and physical device are the application's, live; the create
        // info is passed through to vkCreateDevice.
        let created = unsafe {
            ash::Instance::load(entry.static_fn(), vk_instance).create_device(
                physical,
                create_info,
                allocator,
            )
        };
        match created {
            Ok(created) => {
                *device = created.handle().as_raw() as sys::platform::VkDevice;
                *vk_result = vk::Result::SUCCESS.as_raw();
            }
            Err(e) => *vk_result = e.as_raw(),
        }
        Ok(sys::Result::SUCCESS)
    })
}

/// The application's Vulkan binding from a session create info's `next` chain.
///
/// # Safety
/// `next` is a valid chain of input structures or null.
pub(crate) unsafe fn vulkan_binding<'a>(
    next: *const c_void,
) -> Option<&'a sys::GraphicsBindingVulkanKHR> {
    // SAFETY: forwarded contract; a structure of the binding's type is one.
    unsafe { find_in_chain::<sys::GraphicsBindingVulkanKHR>(next).as_ref() }
}
