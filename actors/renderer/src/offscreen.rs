//! An offscreen target: a texture drawn into and read back, RGBA8, row by row from the top.

/// The colour format of offscreen frames: RGBA8, linear (what the frame stream carries).
pub const FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

/// A `width × height` texture and the buffer it is read back through.
#[derive(Debug)]
pub struct Offscreen {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
    readback: wgpu::Buffer,
    width: u32,
    height: u32,
    padded_row: u32,
}

impl Offscreen {
    /// A target of `width × height`.
    pub fn new(device: &wgpu::Device, width: u32, height: u32) -> Offscreen {
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("frame"),
            size: wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: FORMAT,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let view = texture.create_view(&Default::default());
        let padded_row = (width * 4).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: u64::from(padded_row) * u64::from(height),
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        Offscreen {
            texture,
            view,
            readback,
            width,
            height,
            padded_row,
        }
    }

    /// The view to draw into.
    pub fn view(&self) -> &wgpu::TextureView {
        &self.view
    }

    /// (width, height).
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Bytes of one frame, without padding.
    pub fn frame_len(&self) -> usize {
        self.width as usize * self.height as usize * 4
    }

    /// Record the copy of the texture into the readback buffer (after drawing).
    pub fn copy(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_texture_to_buffer(
            wgpu::TexelCopyTextureInfo {
                texture: &self.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::TexelCopyBufferInfo {
                buffer: &self.readback,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(self.padded_row),
                    rows_per_image: Some(self.height),
                },
            },
            wgpu::Extent3d {
                width: self.width,
                height: self.height,
                depth_or_array_layers: 1,
            },
        );
    }

    /// After the copy was submitted: wait for it and write the frame's rows into `out` (at
    /// least [`Offscreen::frame_len`] bytes). Returns the bytes written.
    pub fn read_into(&self, device: &wgpu::Device, out: &mut [u8]) -> Result<usize, String> {
        let slice = self.readback.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| format!("waiting for the GPU: {e}"))?;
        rx.recv()
            .map_err(|_| "the readback was dropped".to_owned())?
            .map_err(|e| format!("mapping the readback buffer: {e}"))?;
        let row = self.width as usize * 4;
        let n = {
            let data = slice
                .get_mapped_range()
                .map_err(|e| format!("reading the readback buffer: {e}"))?;
            let rows = (out.len() / row).min(self.height as usize);
            for (y, dst) in out.chunks_exact_mut(row).take(rows).enumerate() {
                let at = y * self.padded_row as usize;
                dst.copy_from_slice(&data[at..at + row]);
            }
            rows * row
        };
        self.readback.unmap();
        Ok(n)
    }
}
