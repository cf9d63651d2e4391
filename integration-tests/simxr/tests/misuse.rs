//! Misuse: through the stock loader, the simulated headset refuses what a real runtime
//! refuses, with the codes a real runtime gives, so the XR driver's error paths are tested
//! against something that behaves like hardware.

use std::ptr;

use ash::vk::Handle as _;
use openxr as xr;
use xr::sys::Result as R;

mod common;
use common::{Gpu, create_instance, setup};

const EYE: i32 = 64;

fn rect(width: i32) -> xr::Rect2Di {
    xr::Rect2Di {
        offset: xr::Offset2Di { x: 0, y: 0 },
        extent: xr::Extent2Di { width, height: EYE },
    }
}

fn layer_views<'a>(
    views: &[xr::View],
    swapchain: &'a xr::Swapchain<xr::Vulkan>,
    width: i32,
) -> Vec<xr::CompositionLayerProjectionView<'a, xr::Vulkan>> {
    let sub = || {
        xr::SwapchainSubImage::new()
            .swapchain(swapchain)
            .image_rect(rect(width))
    };
    views
        .iter()
        .map(|v| {
            xr::CompositionLayerProjectionView::new()
                .pose(v.pose)
                .fov(v.fov)
                .sub_image(sub())
        })
        .collect()
}

#[test]
fn the_runtime_refuses_misuse_with_the_codes_a_real_runtime_gives() {
    let (dir, entry) = setup("misuse");
    let instance = create_instance(&entry).expect("instance");
    let system = instance
        .system(xr::FormFactor::HEAD_MOUNTED_DISPLAY)
        .expect("system");
    assert_eq!(
        instance.string_to_path("not/a/path").err(),
        Some(R::ERROR_PATH_FORMAT_INVALID)
    );
    assert_eq!(
        instance.result_to_string(R::ERROR_TIME_INVALID).as_deref(),
        Ok("XR_ERROR_TIME_INVALID")
    );

    // A session needs the graphics requirements queried first, then a Vulkan binding.
    let info = xr::sys::SessionCreateInfo {
        ty: xr::sys::SessionCreateInfo::TYPE,
        next: ptr::null(),
        create_flags: xr::sys::SessionCreateFlags::EMPTY,
        system_id: system,
    };
    let mut raw = <xr::sys::Session as xr::sys::Handle>::NULL;
    let create = |raw: &mut xr::sys::Session| {
        // SAFETY: valid create info and out pointer for the call.
        unsafe { (instance.fp().create_session)(instance.as_raw(), &info, raw) }
    };
    assert_eq!(
        create(&mut raw),
        R::ERROR_GRAPHICS_REQUIREMENTS_CALL_MISSING
    );
    let gpu = Gpu::new(&instance, system);
    assert_eq!(create(&mut raw), R::ERROR_GRAPHICS_DEVICE_INVALID);

    // SAFETY: the handles are the live Vulkan objects made through this runtime.
    let (session, mut waiter, mut stream) = unsafe {
        instance.create_session::<xr::Vulkan>(
            system,
            &xr::vulkan::SessionCreateInfo {
                instance: gpu.instance.handle().as_raw() as _,
                physical_device: gpu.physical.as_raw() as _,
                device: gpu.device.handle().as_raw() as _,
                queue_family_index: gpu.family,
                queue_index: 0,
            },
        )
    }
    .expect("session");
    assert_eq!(waiter.wait().err(), Some(R::ERROR_SESSION_NOT_RUNNING));
    let mut buffer = xr::EventDataBuffer::new();
    let mut states = Vec::new();
    while let Some(event) = instance.poll_event(&mut buffer).expect("poll") {
        if let xr::Event::SessionStateChanged(e) = event {
            states.push(e.state());
        }
    }
    assert_eq!(states, [xr::SessionState::IDLE, xr::SessionState::READY]);
    assert_eq!(
        session.begin(xr::ViewConfigurationType::PRIMARY_MONO).err(),
        Some(R::ERROR_VIEW_CONFIGURATION_TYPE_UNSUPPORTED)
    );
    session
        .begin(xr::ViewConfigurationType::PRIMARY_STEREO)
        .expect("begin session");

    // Swapchains: supported formats and sizes only; acquire → wait → release in order.
    let swapchain_info = |format: u32, width: u32| xr::SwapchainCreateInfo {
        create_flags: xr::SwapchainCreateFlags::EMPTY,
        usage_flags: xr::SwapchainUsageFlags::COLOR_ATTACHMENT,
        format,
        sample_count: 1,
        width,
        height: EYE as u32,
        face_count: 1,
        array_size: 1,
        mip_count: 1,
    };
    assert_eq!(
        session.create_swapchain(&swapchain_info(44, 64)).err(),
        Some(R::ERROR_SWAPCHAIN_FORMAT_UNSUPPORTED)
    );
    assert_eq!(
        session.create_swapchain(&swapchain_info(43, 4096)).err(),
        Some(R::ERROR_FEATURE_UNSUPPORTED)
    );
    let mut swapchain = session
        .create_swapchain(&swapchain_info(43, EYE as u32))
        .expect("swapchain");
    assert_eq!(
        swapchain.wait_image(xr::Duration::INFINITE).err(),
        Some(R::ERROR_CALL_ORDER_INVALID)
    );
    // SAFETY: a live swapchain handle; a null release info is allowed.
    let release =
        || unsafe { (instance.fp().release_swapchain_image)(swapchain.as_raw(), ptr::null()) };
    assert_eq!(release(), R::ERROR_CALL_ORDER_INVALID);

    // Frames: wait → begin → end, for a display time the runtime predicted.
    assert_eq!(stream.begin().err(), Some(R::ERROR_CALL_ORDER_INVALID));
    let state = waiter.wait().expect("wait frame");
    let t = state.predicted_display_time;
    let opaque = xr::EnvironmentBlendMode::OPAQUE;
    assert_eq!(
        stream.end(t, opaque, &[]).err(),
        Some(R::ERROR_CALL_ORDER_INVALID)
    );
    stream.begin().expect("begin frame");
    let wrong = xr::Time::from_nanos(t.as_nanos() + 1);
    assert_eq!(
        stream.end(wrong, opaque, &[]).err(),
        Some(R::ERROR_TIME_INVALID)
    );
    assert_eq!(
        stream.end(t, xr::EnvironmentBlendMode::ADDITIVE, &[]).err(),
        Some(R::ERROR_ENVIRONMENT_BLEND_MODE_UNSUPPORTED)
    );

    let stage = session
        .create_reference_space(xr::ReferenceSpaceType::STAGE, xr::Posef::IDENTITY)
        .expect("stage");
    let (_, views) = session
        .locate_views(xr::ViewConfigurationType::PRIMARY_STEREO, t, &stage)
        .expect("views");
    let fits = layer_views(&views, &swapchain, EYE);
    let layer = xr::CompositionLayerProjection::new()
        .space(&stage)
        .views(&fits);
    assert_eq!(
        stream.end(t, opaque, &[&layer]).err(),
        Some(R::ERROR_LAYER_INVALID)
    );

    swapchain.acquire_image().expect("acquire");
    swapchain
        .wait_image(xr::Duration::INFINITE)
        .expect("wait image");
    swapchain.release_image().expect("release");
    let too_wide = layer_views(&views, &swapchain, EYE + 1);
    let bad = xr::CompositionLayerProjection::new()
        .space(&stage)
        .views(&too_wide);
    assert_eq!(
        stream.end(t, opaque, &[&bad]).err(),
        Some(R::ERROR_SWAPCHAIN_RECT_INVALID)
    );
    let fits = layer_views(&views, &swapchain, EYE);
    let layer = xr::CompositionLayerProjection::new()
        .space(&stage)
        .views(&fits);
    stream.end(t, opaque, &[&layer]).expect("a valid frame");

    let frames = dir.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        (frames[0].display_time_ns, frames[0].layers),
        (t.as_nanos(), 1)
    );
    assert!(frames[0].pose_latency_ns >= 0);

    drop((stage, swapchain, stream, waiter, session));
    gpu.destroy();
    drop(instance);
    std::fs::remove_dir_all(dir.path()).expect("clean up");
}
