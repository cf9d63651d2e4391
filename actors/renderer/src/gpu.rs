//! The GPU: one wgpu instance, adapter and device, on the backend config asks for.

use serde::{Deserialize, Serialize};

/// Which graphics API to draw with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Vulkan (lavapipe where there is no GPU).
    Vulkan,
    /// OpenGL ES / GL through EGL.
    Gl,
}

impl Backend {
    fn wgpu(self) -> wgpu::Backends {
        match self {
            Backend::Vulkan => wgpu::Backends::VULKAN,
            Backend::Gl => wgpu::Backends::GL,
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Vulkan => "vulkan",
            Backend::Gl => "gl",
        })
    }
}

/// An open GPU.
#[derive(Debug)]
pub struct Gpu {
    /// The instance (surfaces are made from it).
    pub instance: wgpu::Instance,
    /// The adapter chosen.
    pub adapter: wgpu::Adapter,
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The backend it runs on.
    pub backend: Backend,
}

/// Why no GPU could be opened.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter of that backend.
    #[error(
        "no {backend} adapter: {source} (for Vulkan without a GPU, install mesa-vulkan-drivers; VK_ICD_FILENAMES={icd:?})"
    )]
    NoAdapter {
        /// The backend asked for.
        backend: Backend,
        /// wgpu's reason.
        source: wgpu::RequestAdapterError,
        /// The loader's ICD override, if any.
        icd: Option<String>,
    },
    /// The adapter refused a device.
    #[error("the {backend} adapter {adapter:?} gave no device: {source}")]
    NoDevice {
        /// The backend.
        backend: Backend,
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason.
        source: wgpu::RequestDeviceError,
    },
}

impl Gpu {
    /// Open a device on `backend`. A `display` (raw handle of the X connection the surface
    /// will be on) is needed by the GL backend when it presents; `surface` picks an adapter
    /// able to present to it.
    pub fn open(
        backend: Backend,
        instance: Option<wgpu::Instance>,
        surface: Option<&wgpu::Surface<'_>>,
    ) -> Result<Gpu, GpuError> {
        let instance = instance.unwrap_or_else(|| Gpu::instance(backend));
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: surface,
            apply_limit_buckets: false,
        }))
        .map_err(|source| GpuError::NoAdapter {
            backend,
            source,
            icd: std::env::var("VK_ICD_FILENAMES").ok(),
        })?;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("syncra-renderer"),
            required_features: wgpu::Features::empty(),
            required_limits: wgpu::Limits::downlevel_defaults().using_resolution(adapter.limits()),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|source| GpuError::NoDevice {
            backend,
            adapter: adapter.get_info().name,
            source,
        })?;
        Ok(Gpu {
            instance,
            adapter,
            device,
            queue,
            backend,
        })
    }

    /// An instance of `backend` alone, without a display handle (offscreen, or Vulkan
    /// presenting to an X11 window).
    pub fn instance(backend: Backend) -> wgpu::Instance {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backend.wgpu();
        wgpu::Instance::new(desc)
    }

    /// The adapter's name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub fn adapter_name(&self) -> String {
        self.adapter.get_info().name
    }

    /// The adapter's kind: "Cpu", "DiscreteGpu", …
    pub fn device_type(&self) -> String {
        format!("{:?}", self.adapter.get_info().device_type)
    }
}
