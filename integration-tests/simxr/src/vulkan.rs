//! The runtime's Vulkan side, on the application's own instance and device: swapchain
//! images (device-local, optimal tiling) and reading a submitted image back to the host.
//!
//! The handles come from the application (`XrGraphicsBindingVulkanKHR`); the runtime never
//! destroys them, only what it created on them. The queue is used only inside
//! `xrAcquireSwapchainImage` (the first layout transition) and `xrEndFrame` (captures),
//! where OpenXR lets the runtime use it.

use ash::vk;

/// The formats swapchains offer, preferred first: R8G8B8A8_SRGB, R8G8B8A8_UNORM, B8G8R8A8_SRGB.
pub(crate) const FORMATS: [vk::Format; 3] = [
    vk::Format::R8G8B8A8_SRGB,
    vk::Format::R8G8B8A8_UNORM,
    vk::Format::B8G8R8A8_SRGB,
];

/// How long a one-shot submission may take before the runtime gives up on it.
const FENCE_TIMEOUT_NS: u64 = 10_000_000_000;

/// The application's device as the runtime uses it during a session.
pub(crate) struct Gpu {
    device: ash::Device,
    queue: vk::Queue,
    memory: vk::PhysicalDeviceMemoryProperties,
    pool: vk::CommandPool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("device", &self.device.handle())
            .field("queue", &self.queue)
            .finish()
    }
}

/// One swapchain's images and their memory, freed on drop.
pub(crate) struct Images {
    device: ash::Device,
    pub(crate) images: Vec<vk::Image>,
    memory: Vec<vk::DeviceMemory>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("images", &self.images)
            .finish()
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        // SAFETY: the images and memory were created on this device by `Gpu::create_images`
        // and the application no longer uses them (the swapchain or session is destroyed).
        unsafe {
            for &image in &self.images {
                self.device.destroy_image(image, None);
            }
            for &memory in &self.memory {
                self.device.free_memory(memory, None);
            }
        }
    }
}

/// What a swapchain's images look like.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageSpec {
    pub(crate) format: vk::Format,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) usage: vk::ImageUsageFlags,
    pub(crate) flags: vk::ImageCreateFlags,
    pub(crate) count: u32,
}

impl Gpu {
    /// Loads the device's functions and makes a command pool on the session's queue family.
    ///
    /// # Safety
    /// The handles must be valid and belong together (the application's binding), and
    /// `entry` must be the loader the instance was created with.
    pub(crate) unsafe fn new(
        entry: &ash::Entry,
        instance: vk::Instance,
        physical: vk::PhysicalDevice,
        device: vk::Device,
        family: u32,
        index: u32,
    ) -> Result<Self, vk::Result> {
        // SAFETY: the caller guarantees the handles are valid; loading only resolves
        // function pointers, and the queue (family, index) was named by the application.
        unsafe {
            let instance = ash::Instance::load(entry.static_fn(), instance);
            let memory = instance.get_physical_device_memory_properties(physical);
            let device = ash::Device::load(instance.fp_v1_0(), device);
            let queue = device.get_device_queue(family, index);
            let pool = device.create_command_pool(
                &vk::CommandPoolCreateInfo::default()
                    .queue_family_index(family)
                    .flags(vk::CommandPoolCreateFlags::TRANSIENT),
                None,
            )?;
            Ok(Self {
                device,
                queue,
                memory,
                pool,
            })
        }
    }

    fn memory_type(&self, bits: u32, wanted: vk::MemoryPropertyFlags) -> Option<u32> {
        let types = &self.memory.memory_types[..self.memory.memory_type_count as usize];
        let fits = |i: usize| bits & (1 << i) != 0;
        (0..types.len())
            .find(|&i| fits(i) && types[i].property_flags.contains(wanted))
            .map(|i| i as u32)
    }

    /// Creates `spec.count` images with device-local memory bound.
    pub(crate) fn create_images(&self, spec: &ImageSpec) -> Result<Images, vk::Result> {
        let mut out = Images {
            device: self.device.clone(),
            images: Vec::new(),
            memory: Vec::new(),
        };
        let info = vk::ImageCreateInfo::default()
            .image_type(vk::ImageType::TYPE_2D)
            .format(spec.format)
            .extent(vk::Extent3D {
                width: spec.width,
                height: spec.height,
                depth: 1,
            })
            .mip_levels(1)
            .array_layers(1)
            .samples(vk::SampleCountFlags::TYPE_1)
            .tiling(vk::ImageTiling::OPTIMAL)
            .usage(spec.usage)
            .flags(spec.flags)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .initial_layout(vk::ImageLayout::UNDEFINED);
        for _ in 0..spec.count {
            // SAFETY: `info` is a valid create info; each object is recorded in `out`
            // as soon as it exists, so a failure part way frees what was made.
            unsafe {
                let image = self.device.create_image(&info, None)?;
                out.images.push(image);
                let req = self.device.get_image_memory_requirements(image);
                let kind = self
                    .memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::DEVICE_LOCAL)
                    .or_else(|| {
                        self.memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::empty())
                    })
                    .ok_or(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY)?;
                let memory = self.device.allocate_memory(
                    &vk::MemoryAllocateInfo::default()
                        .allocation_size(req.size)
                        .memory_type_index(kind),
                    None,
                )?;
                out.memory.push(memory);
                self.device.bind_image_memory(image, memory, 0)?;
            }
        }
        Ok(out)
    }

    /// Moves fresh images from UNDEFINED to the layout the application expects.
    pub(crate) fn initialize_layout(
        &self,
        images: &[vk::Image],
        layout: vk::ImageLayout,
    ) -> Result<(), vk::Result> {
        self.one_shot(|cmd| {
            let barriers: Vec<_> = images
                .iter()
                .map(|&image| image_barrier(image, 0, vk::ImageLayout::UNDEFINED, layout))
                .collect();
            // SAFETY: `cmd` is recording; the images are ours and idle.
            unsafe {
                self.device.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TOP_OF_PIPE,
                    vk::PipelineStageFlags::ALL_COMMANDS,
                    vk::DependencyFlags::empty(),
                    &[],
                    &[],
                    &barriers,
                );
            }
        })
    }

    /// Copies `rect` of layer `layer` of `image` (in `layout`, left in `layout`) to host
    /// memory as tightly packed texels, top row first.
    pub(crate) fn read_back(
        &self,
        image: vk::Image,
        layout: vk::ImageLayout,
        layer: u32,
        rect: vk::Rect2D,
    ) -> Result<Vec<u8>, vk::Result> {
        let size = u64::from(rect.extent.width) * u64::from(rect.extent.height) * 4;
        // SAFETY: plain object creation on the application's valid device.
        let buffer = unsafe {
            self.device.create_buffer(
                &vk::BufferCreateInfo::default()
                    .size(size)
                    .usage(vk::BufferUsageFlags::TRANSFER_DST)
                    .sharing_mode(vk::SharingMode::EXCLUSIVE),
                None,
            )?
        };
        let result = self.read_into(buffer, size, image, layout, layer, rect);
        // SAFETY: the buffer is ours and no longer in use (`one_shot` waited for the queue).
        unsafe { self.device.destroy_buffer(buffer, None) };
        result
    }

    fn read_into(
        &self,
        buffer: vk::Buffer,
        size: u64,
        image: vk::Image,
        layout: vk::ImageLayout,
        layer: u32,
        rect: vk::Rect2D,
    ) -> Result<Vec<u8>, vk::Result> {
        let host = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        // SAFETY: querying and allocating on the valid device.
        let memory = unsafe {
            let req = self.device.get_buffer_memory_requirements(buffer);
            let kind = self
                .memory_type(req.memory_type_bits, host)
                .ok_or(vk::Result::ERROR_OUT_OF_HOST_MEMORY)?;
            self.device.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(req.size)
                    .memory_type_index(kind),
                None,
            )?
        };
        let copied = (|| {
            // SAFETY: `memory` is fresh and fits the buffer's requirements.
            unsafe { self.device.bind_buffer_memory(buffer, memory, 0)? };
            self.one_shot(|cmd| self.record_copy(cmd, buffer, image, layout, layer, rect))?;
            // SAFETY: the copy finished (fence waited); the mapping covers `size` bytes of
            // host-coherent memory and is read before it is unmapped.
            unsafe {
                let ptr = self
                    .device
                    .map_memory(memory, 0, size, vk::MemoryMapFlags::empty())?;
                let bytes = std::slice::from_raw_parts(ptr.cast::<u8>(), size as usize).to_vec();
                self.device.unmap_memory(memory);
                Ok(bytes)
            }
        })();
        // SAFETY: nothing uses the memory any more.
        unsafe { self.device.free_memory(memory, None) };
        copied
    }

    fn record_copy(
        &self,
        cmd: vk::CommandBuffer,
        buffer: vk::Buffer,
        image: vk::Image,
        layout: vk::ImageLayout,
        layer: u32,
        rect: vk::Rect2D,
    ) {
        let region = vk::BufferImageCopy::default()
            .image_subresource(vk::ImageSubresourceLayers {
                aspect_mask: vk::ImageAspectFlags::COLOR,
                mip_level: 0,
                base_array_layer: layer,
                layer_count: 1,
            })
            .image_offset(vk::Offset3D {
                x: rect.offset.x,
                y: rect.offset.y,
                z: 0,
            })
            .image_extent(vk::Extent3D {
                width: rect.extent.width,
                height: rect.extent.height,
                depth: 1,
            });
        let to_host = vk::BufferMemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ)
            .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
            .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
            .buffer(buffer)
            .size(vk::WHOLE_SIZE);
        // SAFETY: `cmd` is recording; the image was released by the application (its
        // rendering is submitted before xrEndFrame) and is in `layout`.
        unsafe {
            let all = vk::PipelineStageFlags::ALL_COMMANDS;
            let none = vk::DependencyFlags::empty();
            let to_src = image_barrier(image, layer, layout, vk::ImageLayout::TRANSFER_SRC_OPTIMAL);
            self.device.cmd_pipeline_barrier(
                cmd,
                all,
                vk::PipelineStageFlags::TRANSFER,
                none,
                &[],
                &[],
                &[to_src],
            );
            self.device.cmd_copy_image_to_buffer(
                cmd,
                image,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                buffer,
                &[region],
            );
            let back = image_barrier(image, layer, vk::ImageLayout::TRANSFER_SRC_OPTIMAL, layout);
            self.device.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::TRANSFER,
                all,
                none,
                &[],
                &[to_host],
                &[back],
            );
        }
    }

    /// Records one command buffer with `record`, submits it with a fence and waits.
    fn one_shot(&self, record: impl FnOnce(vk::CommandBuffer)) -> Result<(), vk::Result> {
        // SAFETY: the pool belongs to this device and is used from one thread at a time
        // (callers hold the runtime lock); the command buffer and fence are freed below,
        // after the queue finished with them.
        unsafe {
            let cmd = self.device.allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default()
                    .command_pool(self.pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(1),
            )?[0];
            let fence = match self
                .device
                .create_fence(&vk::FenceCreateInfo::default(), None)
            {
                Ok(f) => f,
                Err(e) => {
                    self.device.free_command_buffers(self.pool, &[cmd]);
                    return Err(e);
                }
            };
            let run = (|| {
                self.device.begin_command_buffer(
                    cmd,
                    &vk::CommandBufferBeginInfo::default()
                        .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                )?;
                record(cmd);
                self.device.end_command_buffer(cmd)?;
                let cmds = [cmd];
                self.device.queue_submit(
                    self.queue,
                    &[vk::SubmitInfo::default().command_buffers(&cmds)],
                    fence,
                )?;
                self.device
                    .wait_for_fences(&[fence], true, FENCE_TIMEOUT_NS)
            })();
            if run.is_err() {
                let _ = self.device.queue_wait_idle(self.queue);
            }
            self.device.destroy_fence(fence, None);
            self.device.free_command_buffers(self.pool, &[cmd]);
            run
        }
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: the pool is ours and every command buffer from it has completed.
        unsafe { self.device.destroy_command_pool(self.pool, None) };
    }
}

fn image_barrier(
    image: vk::Image,
    layer: u32,
    old: vk::ImageLayout,
    new: vk::ImageLayout,
) -> vk::ImageMemoryBarrier<'static> {
    vk::ImageMemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::MEMORY_WRITE)
        .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE)
        .old_layout(old)
        .new_layout(new)
        .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .image(image)
        .subresource_range(vk::ImageSubresourceRange {
            aspect_mask: vk::ImageAspectFlags::COLOR,
            base_mip_level: 0,
            level_count: 1,
            base_array_layer: layer,
            layer_count: 1,
        })
}
