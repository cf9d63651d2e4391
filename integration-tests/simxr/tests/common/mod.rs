//! Helpers shared by the test binaries: the control directory and environment, the
//! runtime library cargo built, a Vulkan device made through the runtime, deadlines.
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ash::vk::{self, Handle as _};
use openxr as xr;
use syncra_simxr::control::{DIR_ENV, SimDir};

/// Sets up a fresh control directory named after `test`, points the loader at the runtime
/// and loads the loader. Call once per process, before anything reads the environment.
pub(crate) fn setup(test: &str) -> (SimDir, xr::Entry) {
    let path = std::env::temp_dir().join(format!("simxr-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    let dir = SimDir::new(path).expect("control dir");
    let manifest = dir.manifest(&runtime_library()).expect("manifest");
    // SAFETY: set before any other thread runs (each test binary has one test) and before
    // the loader reads them in xrCreateInstance.
    unsafe {
        std::env::set_var("XR_RUNTIME_JSON", &manifest);
        std::env::set_var(DIR_ENV, dir.path());
    }
    // SAFETY: loading the system OpenXR loader library.
    let entry = unsafe { xr::Entry::load(&()) }
        .expect("libopenxr_loader.so.1 (apt install libopenxr-loader1)");
    (dir, entry)
}

pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `f` until it gives `Some`, or panics naming `what` after [`DEADLINE`].
pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The cdylib cargo built for this test: beside the test executable in target/debug/deps
/// (`cargo test` refreshes that copy; target/debug/ holds the one `cargo build` made).
pub(crate) fn runtime_library() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    let candidates = [
        deps.join("libsyncra_simxr.so"),
        deps.parent()
            .expect("target dir")
            .join("libsyncra_simxr.so"),
    ];
    let found = candidates.iter().find(|p| p.exists());
    found.cloned().unwrap_or_else(|| {
        panic!("libsyncra_simxr.so is in none of {candidates:?}: cargo test builds it")
    })
}

/// The application's Vulkan objects, made through the runtime (XR_KHR_vulkan_enable2).
pub(crate) struct Gpu {
    pub(crate) instance: ash::Instance,
    pub(crate) physical: vk::PhysicalDevice,
    pub(crate) device: ash::Device,
    pub(crate) family: u32,
    pub(crate) queue: vk::Queue,
    pub(crate) pool: vk::CommandPool,
    pub(crate) fence: vk::Fence,
    _entry: ash::Entry,
}

impl Gpu {
    pub(crate) fn new(xr_instance: &xr::Instance, system: xr::SystemId) -> Gpu {
        let reqs = xr_instance
            .graphics_requirements::<xr::Vulkan>(system)
            .expect("graphics requirements");
        assert_eq!(reqs.min_api_version_supported, xr::Version::new(1, 0, 0));
        assert_eq!(reqs.max_api_version_supported, xr::Version::new(1, 3, 0));
        // SAFETY: loading libvulkan; every handle below is used only while it lives, and
        // the create infos outlive the calls that read them.
        unsafe {
            let entry = ash::Entry::load().expect("libvulkan");
            let gipa = std::mem::transmute::<
                vk::PFN_vkGetInstanceProcAddr,
                xr::sys::platform::VkGetInstanceProcAddr,
            >(entry.static_fn().get_instance_proc_addr);
            let app = vk::ApplicationInfo::default().api_version(vk::make_api_version(0, 1, 1, 0));
            let info = vk::InstanceCreateInfo::default().application_info(&app);
            let raw = xr_instance
                .create_vulkan_instance(system, gipa, std::ptr::from_ref(&info).cast())
                .expect("xrCreateVulkanInstanceKHR")
                .expect("vkCreateInstance");
            let instance =
                ash::Instance::load(entry.static_fn(), vk::Instance::from_raw(raw as u64));
            let physical = vk::PhysicalDevice::from_raw(
                xr_instance
                    .vulkan_graphics_device(system, raw)
                    .expect("xrGetVulkanGraphicsDevice2KHR") as u64,
            );
            let family = instance
                .get_physical_device_queue_family_properties(physical)
                .iter()
                .position(|f| f.queue_flags.contains(vk::QueueFlags::GRAPHICS))
                .expect("a graphics queue") as u32;
            let priorities = [1.0];
            let queues = [vk::DeviceQueueCreateInfo::default()
                .queue_family_index(family)
                .queue_priorities(&priorities)];
            let info = vk::DeviceCreateInfo::default().queue_create_infos(&queues);
            let raw = xr_instance
                .create_vulkan_device(
                    system,
                    gipa,
                    physical.as_raw() as _,
                    std::ptr::from_ref(&info).cast(),
                )
                .expect("xrCreateVulkanDeviceKHR")
                .expect("vkCreateDevice");
            let device = ash::Device::load(instance.fp_v1_0(), vk::Device::from_raw(raw as u64));
            let queue = device.get_device_queue(family, 0);
            let pool = device
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default().queue_family_index(family),
                    None,
                )
                .expect("command pool");
            let fence = device
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .expect("fence");
            Gpu {
                instance,
                physical,
                device,
                family,
                queue,
                pool,
                fence,
                _entry: entry,
            }
        }
    }

    /// Clears `image` (a swapchain image in COLOR_ATTACHMENT_OPTIMAL) to `color` and waits.
    pub(crate) fn clear(&self, image: vk::Image, color: [f32; 4]) {
        let range = vk::ImageSubresourceRange {
            aspect_mask: vk::ImageAspectFlags::COLOR,
            base_mip_level: 0,
            level_count: 1,
            base_array_layer: 0,
            layer_count: 1,
        };
        let barrier = |old, new| {
            vk::ImageMemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::MEMORY_WRITE)
                .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE)
                .old_layout(old)
                .new_layout(new)
                .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                .image(image)
                .subresource_range(range)
        };
        let d = &self.device;
        let all = vk::PipelineStageFlags::ALL_COMMANDS;
        // SAFETY: the device, pool, queue and fence are ours; the image is an acquired and
        // waited swapchain image; the fence wait ends the command buffer's use.
        unsafe {
            let cmd = d
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(self.pool)
                        .command_buffer_count(1),
                )
                .expect("command buffer")[0];
            d.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default())
                .expect("begin");
            let to_dst = barrier(
                vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
            );
            d.cmd_pipeline_barrier(
                cmd,
                all,
                all,
                vk::DependencyFlags::empty(),
                &[],
                &[],
                &[to_dst],
            );
            let value = vk::ClearColorValue { float32: color };
            d.cmd_clear_color_image(
                cmd,
                image,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                &value,
                &[range],
            );
            let back = barrier(
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL,
            );
            d.cmd_pipeline_barrier(
                cmd,
                all,
                all,
                vk::DependencyFlags::empty(),
                &[],
                &[],
                &[back],
            );
            d.end_command_buffer(cmd).expect("end");
            let cmds = [cmd];
            d.queue_submit(
                self.queue,
                &[vk::SubmitInfo::default().command_buffers(&cmds)],
                self.fence,
            )
            .expect("submit");
            d.wait_for_fences(&[self.fence], true, u64::MAX)
                .expect("wait");
            d.reset_fences(&[self.fence]).expect("reset");
            d.free_command_buffers(self.pool, &cmds);
        }
    }

    pub(crate) fn destroy(self) {
        // SAFETY: every object made on the device is idle and gone (the session, and with
        // it the runtime's swapchain images, was destroyed first).
        unsafe {
            self.device.device_wait_idle().expect("idle");
            self.device.destroy_fence(self.fence, None);
            self.device.destroy_command_pool(self.pool, None);
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

pub(crate) fn create_instance(entry: &xr::Entry) -> xr::Result<xr::Instance> {
    let mut extensions = xr::ExtensionSet::default();
    extensions.khr_vulkan_enable2 = true;
    extensions.khr_convert_timespec_time = true;
    entry.create_instance(
        &xr::ApplicationInfo {
            application_name: "simxr loader test",
            application_version: 1,
            engine_name: "syncra",
            engine_version: 1,
            api_version: xr::Version::new(1, 0, 0),
        },
        &extensions,
        &[],
        &(),
    )
}
