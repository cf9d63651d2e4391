//! The Vulkan device the headset's runtime chose (XR_KHR_vulkan_enable2), and the copy of the
//! renderer's eye images into the runtime's swapchain images.
//!
//! The renderer draws in its own process; its eye frames arrive as bytes in shared memory.
//! This process keeps one host-visible staging buffer holding the newest pair, and each
//! headset frame copies it into the two swapchain images it acquired (a buffer → image copy
//! on the runtime's queue, left in `COLOR_ATTACHMENT_OPTIMAL` as OpenXR expects).

use ash::vk;
use ash::vk::Handle;
use openxr as xr;

/// A Vulkan instance and device made through the OpenXR runtime, with what the copy needs.
pub(crate) struct Gpu {
    _entry: ash::Entry,
    instance: ash::Instance,
    physical: vk::PhysicalDevice,
    device: ash::Device,
    queue: vk::Queue,
    queue_family: u32,
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    staging: Option<Staging>,
    /// The adapter's name.
    pub(crate) name: String,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("name", &self.name).finish()
    }
}

/// Host-visible memory holding the newest eye pair.
struct Staging {
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    mapped: *mut u8,
    len: usize,
}

/// Where one eye's image goes: a swapchain image and the size copied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) image: vk::Image,
    pub(crate) width: u32,
    pub(crate) height: u32,
}

fn vk_err(step: &'static str) -> impl Fn(vk::Result) -> String {
    move |e| format!("{step}: {e}")
}

impl Gpu {
    /// Make the instance and device the runtime asks for, on the adapter it names.
    pub(crate) fn open(xr: &xr::Instance, system: xr::SystemId) -> Result<Gpu, String> {
        // SAFETY: loading the system's Vulkan loader (libvulkan.so.1), a conforming library.
        let entry = unsafe { ash::Entry::load() }
            .map_err(|e| format!("loading Vulkan (libvulkan.so.1): {e}"))?;
        let reqs = xr
            .graphics_requirements::<xr::Vulkan>(system)
            .map_err(|e| format!("the runtime's Vulkan requirements: {e}"))?;
        let want = vk::make_api_version(0, 1, 1, 0);
        let min = vk::make_api_version(
            0,
            u32::from(reqs.min_api_version_supported.major()),
            u32::from(reqs.min_api_version_supported.minor()),
            0,
        );
        let api = want.max(min);
        let app = vk::ApplicationInfo::default()
            .application_name(c"syncra-xr")
            .engine_name(c"syncra")
            .api_version(api);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: the loader's vkGetInstanceProcAddr has the signature OpenXR's type names
        // (both are the Vulkan entry point), and `info` lives across the call.
        let instance = unsafe {
            let gipa = std::mem::transmute::<
                vk::PFN_vkGetInstanceProcAddr,
                xr::sys::platform::VkGetInstanceProcAddr,
            >(entry.static_fn().get_instance_proc_addr);
            xr.create_vulkan_instance(system, gipa, &info as *const _ as *const _)
        }
        .map_err(|e| format!("xrCreateVulkanInstanceKHR: {e}"))?
        .map_err(|e| {
            format!(
                "vkCreateInstance (through the runtime): {}",
                vk::Result::from_raw(e)
            )
        })?;
        let raw_instance = vk::Instance::from_raw(instance as u64);
        // SAFETY: `raw_instance` was just created from this entry's loader.
        let instance = unsafe { ash::Instance::load(entry.static_fn(), raw_instance) };
        Self::device(entry, instance, xr, system)
    }

    /// The device half of [`Gpu::open`]; on error the instance is destroyed.
    fn device(
        entry: ash::Entry,
        instance: ash::Instance,
        xr: &xr::Instance,
        system: xr::SystemId,
    ) -> Result<Gpu, String> {
        let fail = |instance: &ash::Instance, why: String| {
            // SAFETY: nothing made from the instance is alive on this path.
            unsafe { instance.destroy_instance(None) };
            Err(why)
        };
        // SAFETY: the instance handle is live; the runtime picks one of its physical devices.
        let physical =
            match unsafe { xr.vulkan_graphics_device(system, instance.handle().as_raw() as _) } {
                Ok(p) => vk::PhysicalDevice::from_raw(p as u64),
                Err(e) => return fail(&instance, format!("xrGetVulkanGraphicsDevice2KHR: {e}")),
            };
        // SAFETY: `physical` belongs to `instance`.
        let (props, families) = unsafe {
            (
                instance.get_physical_device_properties(physical),
                instance.get_physical_device_queue_family_properties(physical),
            )
        };
        let name = props
            .device_name_as_c_str()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(queue_family) = families
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::GRAPHICS))
            .map(|i| i as u32)
        else {
            return fail(&instance, format!("{name} has no graphics queue"));
        };
        let priorities = [1.0];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(queue_family)
            .queue_priorities(&priorities)];
        let info = vk::DeviceCreateInfo::default().queue_create_infos(&queues);
        // SAFETY: as in `open`; `info` and `queues` live across the call.
        let device = unsafe {
            let gipa = std::mem::transmute::<
                vk::PFN_vkGetInstanceProcAddr,
                xr::sys::platform::VkGetInstanceProcAddr,
            >(entry.static_fn().get_instance_proc_addr);
            xr.create_vulkan_device(
                system,
                gipa,
                physical.as_raw() as _,
                &info as *const _ as *const _,
            )
        };
        let device = match device {
            Ok(Ok(d)) => vk::Device::from_raw(d as u64),
            Ok(Err(e)) => {
                return fail(
                    &instance,
                    format!(
                        "vkCreateDevice (through the runtime): {}",
                        vk::Result::from_raw(e)
                    ),
                );
            }
            Err(e) => return fail(&instance, format!("xrCreateVulkanDeviceKHR: {e}")),
        };
        // SAFETY: `device` was just created on `physical` of `instance`.
        let device = unsafe { ash::Device::load(instance.fp_v1_0(), device) };
        // SAFETY: the device is live; family and index are the ones it was created with.
        let made = unsafe {
            let queue = device.get_device_queue(queue_family, 0);
            let pool = device.create_command_pool(
                &vk::CommandPoolCreateInfo::default()
                    .queue_family_index(queue_family)
                    .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                None,
            );
            pool.and_then(|pool| {
                let cmd = device.allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(pool)
                        .command_buffer_count(1),
                )?[0];
                let fence = device.create_fence(&vk::FenceCreateInfo::default(), None)?;
                Ok((queue, pool, cmd, fence))
            })
        };
        let (queue, pool, cmd, fence) = match made {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: nothing else was made on the device.
                unsafe { device.destroy_device(None) };
                return fail(&instance, format!("setting up the copy queue: {e}"));
            }
        };
        Ok(Gpu {
            _entry: entry,
            instance,
            physical,
            device,
            queue,
            queue_family,
            pool,
            cmd,
            fence,
            staging: None,
            name,
        })
    }

    /// What `xrCreateSession` needs to bind the session to this device.
    pub(crate) fn session_info(&self) -> xr::vulkan::SessionCreateInfo {
        xr::vulkan::SessionCreateInfo {
            instance: self.instance.handle().as_raw() as _,
            physical_device: self.physical.as_raw() as _,
            device: self.device.handle().as_raw() as _,
            queue_family_index: self.queue_family,
            queue_index: 0,
        }
    }

    /// Copy `bytes` (the newest eye pair) into the staging buffer, growing it if needed.
    pub(crate) fn stage(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Err("an empty eye frame".into());
        }
        if self.staging.as_ref().is_none_or(|s| s.len < bytes.len()) {
            self.drop_staging();
            self.staging = Some(self.new_staging(bytes.len())?);
        }
        let s = self.staging.as_ref().expect("made above");
        // SAFETY: `mapped` points at `s.len` ≥ `bytes.len()` bytes of host-coherent memory
        // mapped for the buffer's life; no copy from it is in flight (`copy` waits for its
        // fence before returning).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), s.mapped, bytes.len()) };
        Ok(())
    }

    fn new_staging(&self, len: usize) -> Result<Staging, String> {
        let d = &self.device;
        // SAFETY: plain object creation on a live device; every handle made here is destroyed
        // on the error paths or by `drop_staging`.
        unsafe {
            let buffer = d
                .create_buffer(
                    &vk::BufferCreateInfo::default()
                        .size(len as u64)
                        .usage(vk::BufferUsageFlags::TRANSFER_SRC)
                        .sharing_mode(vk::SharingMode::EXCLUSIVE),
                    None,
                )
                .map_err(vk_err("creating the staging buffer"))?;
            let reqs = d.get_buffer_memory_requirements(buffer);
            let mem_props = self
                .instance
                .get_physical_device_memory_properties(self.physical);
            let want =
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
            let Some(kind) = (0..mem_props.memory_type_count).find(|&i| {
                reqs.memory_type_bits & (1 << i) != 0
                    && mem_props.memory_types[i as usize]
                        .property_flags
                        .contains(want)
            }) else {
                d.destroy_buffer(buffer, None);
                return Err("no host-visible, coherent memory for the staging buffer".into());
            };
            let memory = match d.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(reqs.size)
                    .memory_type_index(kind),
                None,
            ) {
                Ok(m) => m,
                Err(e) => {
                    d.destroy_buffer(buffer, None);
                    return Err(format!("allocating {len} bytes of staging memory: {e}"));
                }
            };
            let mapped = d.bind_buffer_memory(buffer, memory, 0).and_then(|()| {
                d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
            });
            match mapped {
                Ok(p) => Ok(Staging {
                    buffer,
                    memory,
                    mapped: p.cast::<u8>(),
                    len,
                }),
                Err(e) => {
                    d.destroy_buffer(buffer, None);
                    d.free_memory(memory, None);
                    Err(format!("mapping the staging memory: {e}"))
                }
            }
        }
    }

    fn drop_staging(&mut self) {
        if let Some(s) = self.staging.take() {
            // SAFETY: no copy is in flight (`copy` waits); the memory is unmapped by freeing.
            unsafe {
                self.device.destroy_buffer(s.buffer, None);
                self.device.free_memory(s.memory, None);
            }
        }
    }

    /// Copy the staged pair (one image, the eyes side by side, each `eye_width` across) into
    /// `targets`, left then right, and wait until it is done: the images are then the
    /// runtime's again.
    pub(crate) fn copy(&mut self, targets: [Target; 2], eye_width: u32) -> Result<(), String> {
        let Some(s) = self.staging.as_ref() else {
            return Err("no eye frame staged".into());
        };
        let need = targets
            .iter()
            .map(|t| u64::from(t.height) * u64::from(eye_width) * 8)
            .max()
            .unwrap_or(0);
        if targets.iter().any(|t| t.width > eye_width) || (s.len as u64) < need {
            return Err(format!(
                "the staged pair ({} bytes) is smaller than the copy asks for ({need})",
                s.len
            ));
        }
        let d = &self.device;
        let range = vk::ImageSubresourceRange::default()
            .aspect_mask(vk::ImageAspectFlags::COLOR)
            .level_count(1)
            .layer_count(1);
        let to_dst: Vec<_> = targets
            .iter()
            .map(|t| {
                vk::ImageMemoryBarrier::default()
                    .image(t.image)
                    .old_layout(vk::ImageLayout::UNDEFINED)
                    .new_layout(vk::ImageLayout::TRANSFER_DST_OPTIMAL)
                    .dst_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                    .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                    .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                    .subresource_range(range)
            })
            .collect();
        let to_colour: Vec<_> = targets
            .iter()
            .map(|t| {
                vk::ImageMemoryBarrier::default()
                    .image(t.image)
                    .old_layout(vk::ImageLayout::TRANSFER_DST_OPTIMAL)
                    .new_layout(vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL)
                    .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                    .dst_access_mask(vk::AccessFlags::COLOR_ATTACHMENT_WRITE)
                    .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                    .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                    .subresource_range(range)
            })
            .collect();
        // SAFETY: the command buffer is ours and idle (the last submit's fence was waited on);
        // the images are acquired and waited on by the caller; the buffer holds both eyes
        // (`stage` sized it); the fence is reset before reuse.
        unsafe {
            d.reset_command_buffer(self.cmd, vk::CommandBufferResetFlags::empty())
                .map_err(vk_err("resetting the copy commands"))?;
            d.begin_command_buffer(
                self.cmd,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )
            .map_err(vk_err("recording the copy"))?;
            d.cmd_pipeline_barrier(
                self.cmd,
                vk::PipelineStageFlags::TOP_OF_PIPE,
                vk::PipelineStageFlags::TRANSFER,
                vk::DependencyFlags::empty(),
                &[],
                &[],
                &to_dst,
            );
            for (i, t) in targets.iter().enumerate() {
                let region = vk::BufferImageCopy::default()
                    .buffer_offset(i as u64 * u64::from(eye_width) * 4)
                    .buffer_row_length(eye_width * 2)
                    .image_subresource(
                        vk::ImageSubresourceLayers::default()
                            .aspect_mask(vk::ImageAspectFlags::COLOR)
                            .layer_count(1),
                    )
                    .image_extent(vk::Extent3D {
                        width: t.width,
                        height: t.height,
                        depth: 1,
                    });
                d.cmd_copy_buffer_to_image(
                    self.cmd,
                    s.buffer,
                    t.image,
                    vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                    &[region],
                );
            }
            d.cmd_pipeline_barrier(
                self.cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::COLOR_ATTACHMENT_OUTPUT,
                vk::DependencyFlags::empty(),
                &[],
                &[],
                &to_colour,
            );
            d.end_command_buffer(self.cmd)
                .map_err(vk_err("recording the copy"))?;
            let cmds = [self.cmd];
            d.queue_submit(
                self.queue,
                &[vk::SubmitInfo::default().command_buffers(&cmds)],
                self.fence,
            )
            .map_err(vk_err("submitting the copy"))?;
            // A fence still pending (a timeout, a lost device) is not reset: the error ends the
            // session and the device with it.
            d.wait_for_fences(&[self.fence], true, 1_000_000_000)
                .map_err(vk_err("waiting for the copy"))?;
            d.reset_fences(&[self.fence])
                .map_err(vk_err("resetting the copy's fence"))?;
        }
        Ok(())
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: idle first (a copy may still read the staging buffer).
        let _ = unsafe { self.device.device_wait_idle() };
        self.drop_staging();
        // SAFETY: the session and its swapchains are gone before the Gpu (field order in
        // `Headset`); the device is idle; every object made here is destroyed once.
        unsafe {
            self.device.destroy_fence(self.fence, None);
            self.device.destroy_command_pool(self.pool, None);
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}
