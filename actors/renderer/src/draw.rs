//! The worlds drawn: each entity a cube (`ENTITY_HALF_SIZE`) at its position, turned by its
//! rotation, in its colour, lit by one directional light and an ambient term, with a depth
//! buffer; one viewport per world, side by side.

use bytemuck::{Pod, Zeroable};
use syncra_node::render::{
    AMBIENT, Camera, ENTITY_HALF_SIZE, LIGHT_TOWARDS, SPECTRUM_BANDS, SPECTRUM_RGB, WorldView,
    spectrum_bar,
};
use syncra_node::world::SceneSnapshot;
use wgpu::util::DeviceExt;

const SHADER: &str = r#"
struct Globals {
    view_proj: mat4x4<f32>,
    // xyz: towards the light (normalised), w: ambient
    light: vec4<f32>,
    // x: the cube's half size
    params: vec4<f32>,
};
@group(0) @binding(0) var<uniform> g: Globals;

struct In {
    @location(0) pos: vec3<f32>,
    @location(1) normal: vec3<f32>,
    @location(2) at: vec3<f32>,
    @location(3) rot: vec4<f32>,
    @location(4) colour: vec4<f32>,
};
struct Out {
    @builtin(position) clip: vec4<f32>,
    @location(0) normal: vec3<f32>,
    @location(1) colour: vec3<f32>,
};

fn rotate(q: vec4<f32>, v: vec3<f32>) -> vec3<f32> {
    let t = 2.0 * cross(q.xyz, v);
    return v + q.w * t + cross(q.xyz, t);
}

@vertex
fn vs(v: In) -> Out {
    var o: Out;
    let world = rotate(v.rot, v.pos * g.params.x) + v.at;
    o.clip = g.view_proj * vec4<f32>(world, 1.0);
    o.normal = rotate(v.rot, v.normal);
    o.colour = v.colour.rgb;
    return o;
}

@fragment
fn fs(v: Out) -> @location(0) vec4<f32> {
    let k = g.light.w + (1.0 - g.light.w) * max(dot(normalize(v.normal), g.light.xyz), 0.0);
    return vec4<f32>(clamp(v.colour * k, vec3<f32>(0.0), vec3<f32>(1.0)), 1.0);
}
"#;

/// Flat rectangles in clip space: the spectrum strip's bars.
const BARS_SHADER: &str = r#"
struct In {
    @builtin(vertex_index) i: u32,
    // x0, y0, x1, y1 in clip space
    @location(0) rect: vec4<f32>,
    @location(1) colour: vec4<f32>,
};
struct Out {
    @builtin(position) clip: vec4<f32>,
    @location(0) colour: vec4<f32>,
};
@vertex
fn vs(v: In) -> Out {
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(0.0, 0.0), vec2<f32>(1.0, 0.0), vec2<f32>(1.0, 1.0),
        vec2<f32>(0.0, 0.0), vec2<f32>(1.0, 1.0), vec2<f32>(0.0, 1.0));
    let c = corners[v.i];
    var o: Out;
    o.clip = vec4<f32>(mix(v.rect.x, v.rect.z, c.x), mix(v.rect.y, v.rect.w, c.y), 0.0, 1.0);
    o.colour = v.colour;
    return o;
}
@fragment
fn fs(v: Out) -> @location(0) vec4<f32> {
    return v.colour;
}
"#;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Bar {
    rect: [f32; 4],
    colour: [f32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Vertex {
    pos: [f32; 3],
    normal: [f32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Instance {
    at: [f32; 3],
    rot: [f32; 4],
    colour: [f32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Globals {
    view_proj: [[f32; 4]; 4],
    light: [f32; 4],
    params: [f32; 4],
}

/// The unit cube (−1..1), flat faces: 24 vertices, 36 indices.
fn cube() -> (Vec<Vertex>, Vec<u16>) {
    let faces: [([f32; 3], [f32; 3], [f32; 3]); 6] = [
        ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]),
        ([-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]),
        ([0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]),
        ([0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]),
        ([0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
        ([0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]),
    ];
    let (mut vertices, mut indices) = (Vec::new(), Vec::new());
    for (n, u, v) in faces {
        let base = vertices.len() as u16;
        for (a, b) in [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)] {
            let pos = [0, 1, 2].map(|i| n[i] + a * u[i] + b * v[i]);
            vertices.push(Vertex { pos, normal: n });
        }
        // Culling is off, so the winding does not matter.
        indices.extend([0, 1, 2, 0, 2, 3].map(|i| base + i));
    }
    (vertices, indices)
}

/// One viewport of a pass: its columns, its matrix and the instances drawn in it.
#[derive(Debug, Clone)]
struct Viewport {
    x: u32,
    width: u32,
    view_proj: glam::Mat4,
    instances: std::ops::Range<u32>,
}

/// A viewport's uniforms.
struct View {
    buffer: wgpu::Buffer,
    group: wgpu::BindGroup,
}

/// Draws scenes into a colour target of one format.
pub struct SceneDraw {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    vertices: wgpu::Buffer,
    indices: wgpu::Buffer,
    instances: wgpu::Buffer,
    capacity: usize,
    views: Vec<View>,
    depth: Option<(wgpu::Texture, wgpu::TextureView, (u32, u32))>,
    staging: Vec<Instance>,
    bars_pipeline: wgpu::RenderPipeline,
    bars_buffer: wgpu::Buffer,
    /// The spectrum strip's band levels (0 ..= 1); empty: no strip.
    levels: Vec<f32>,
    /// The camera every viewport uses.
    pub camera: Camera,
}

impl std::fmt::Debug for SceneDraw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SceneDraw")
            .field("capacity", &self.capacity)
            .field("camera", &self.camera)
            .finish_non_exhaustive()
    }
}

const DEPTH: wgpu::TextureFormat = wgpu::TextureFormat::Depth32Float;
const INSTANCE_SIZE: usize = std::mem::size_of::<Instance>();

impl SceneDraw {
    /// A pipeline drawing into `format`.
    pub fn new(device: &wgpu::Device, format: wgpu::TextureFormat, camera: Camera) -> SceneDraw {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("scene"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("globals"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("scene"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("scene"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs"),
                compilation_options: Default::default(),
                buffers: &[
                    Some(wgpu::VertexBufferLayout {
                        array_stride: std::mem::size_of::<Vertex>() as u64,
                        step_mode: wgpu::VertexStepMode::Vertex,
                        attributes: &wgpu::vertex_attr_array![0 => Float32x3, 1 => Float32x3],
                    }),
                    Some(wgpu::VertexBufferLayout {
                        array_stride: INSTANCE_SIZE as u64,
                        step_mode: wgpu::VertexStepMode::Instance,
                        attributes: &wgpu::vertex_attr_array![2 => Float32x3, 3 => Float32x4, 4 => Float32x4],
                    }),
                ],
            },
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: Some(wgpu::DepthStencilState {
                format: DEPTH,
                depth_write_enabled: Some(true),
                depth_compare: Some(wgpu::CompareFunction::Less),
                stencil: Default::default(),
                bias: Default::default(),
            }),
            multisample: Default::default(),
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs"),
                compilation_options: Default::default(),
                targets: &[Some(format.into())],
            }),
            multiview_mask: None,
            cache: None,
        });
        let bars_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("bars"),
            source: wgpu::ShaderSource::Wgsl(BARS_SHADER.into()),
        });
        let bars_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("bars"),
            bind_group_layouts: &[],
            immediate_size: 0,
        });
        let bars_pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("bars"),
            layout: Some(&bars_layout),
            vertex: wgpu::VertexState {
                module: &bars_module,
                entry_point: Some("vs"),
                compilation_options: Default::default(),
                buffers: &[Some(wgpu::VertexBufferLayout {
                    array_stride: std::mem::size_of::<Bar>() as u64,
                    step_mode: wgpu::VertexStepMode::Instance,
                    attributes: &wgpu::vertex_attr_array![0 => Float32x4, 1 => Float32x4],
                })],
            },
            primitive: wgpu::PrimitiveState::default(),
            // Drawn over the scene: the depth buffer is neither tested nor written.
            depth_stencil: Some(wgpu::DepthStencilState {
                format: DEPTH,
                depth_write_enabled: Some(false),
                depth_compare: Some(wgpu::CompareFunction::Always),
                stencil: Default::default(),
                bias: Default::default(),
            }),
            multisample: Default::default(),
            fragment: Some(wgpu::FragmentState {
                module: &bars_module,
                entry_point: Some("fs"),
                compilation_options: Default::default(),
                targets: &[Some(format.into())],
            }),
            multiview_mask: None,
            cache: None,
        });
        let bars_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bars"),
            size: (SPECTRUM_BANDS * std::mem::size_of::<Bar>()) as u64,
            usage: wgpu::BufferUsages::VERTEX | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let (v, i) = cube();
        let vertices = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("cube vertices"),
            contents: bytemuck::cast_slice(&v),
            usage: wgpu::BufferUsages::VERTEX,
        });
        let indices = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("cube indices"),
            contents: bytemuck::cast_slice(&i),
            usage: wgpu::BufferUsages::INDEX,
        });
        let capacity = 1024;
        SceneDraw {
            pipeline,
            layout,
            vertices,
            indices,
            instances: Self::instance_buffer(device, capacity),
            capacity,
            views: Vec::new(),
            depth: None,
            staging: Vec::new(),
            bars_pipeline,
            bars_buffer,
            levels: Vec::new(),
            camera,
        }
    }

    /// Draw the spectrum strip with these band levels (0 ..= 1, [`SPECTRUM_BANDS`] of them)
    /// from the next frame on; empty: no strip.
    pub fn set_spectrum(&mut self, levels: &[f32]) {
        self.levels.clear();
        self.levels.extend(
            levels
                .iter()
                .take(SPECTRUM_BANDS)
                .map(|l| l.clamp(0.0, 1.0)),
        );
    }

    fn instance_buffer(device: &wgpu::Device, capacity: usize) -> wgpu::Buffer {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("instances"),
            size: (capacity * INSTANCE_SIZE) as u64,
            usage: wgpu::BufferUsages::VERTEX | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Record drawing `scenes` side by side into `target` (`width × height`): clear, then
    /// each world in its column. Returns each world's place on the frame.
    pub fn draw(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        target: &wgpu::TextureView,
        (width, height): (u32, u32),
        scenes: &[&SceneSnapshot],
    ) -> Vec<WorldView> {
        self.upload(device, queue, scenes);
        let columns = scenes.len().max(1) as u32;
        let mut placed = Vec::with_capacity(scenes.len());
        let mut viewports = Vec::with_capacity(scenes.len());
        let mut first = 0u32;
        for (i, scene) in scenes.iter().enumerate() {
            let (x, w) = column(i as u32, columns, width);
            let n = scene.entities.len() as u32;
            viewports.push(Viewport {
                x,
                width: w,
                view_proj: self.camera.view_proj(w as f32 / height as f32),
                instances: first..first + n,
            });
            first += n;
            placed.push(WorldView {
                world: scene.world.clone(),
                tick: scene.tick,
                x,
                width: w,
            });
        }
        self.render(
            device,
            queue,
            encoder,
            target,
            (width, height),
            &viewports,
            true,
        );
        placed
    }

    /// Record drawing `scene` twice side by side into `target` (`2 × eye_width` across):
    /// the left eye's view in the left half, the right eye's in the right. No spectrum strip
    /// (a flat overlay has no place in a stereo view).
    #[allow(
        clippy::too_many_arguments,
        reason = "the same inputs as `draw`, and the eyes"
    )]
    pub fn draw_eyes(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        target: &wgpu::TextureView,
        (eye_width, height): (u32, u32),
        scene: Option<&SceneSnapshot>,
        view_projs: [glam::Mat4; 2],
    ) {
        let scenes: Vec<&SceneSnapshot> = scene.into_iter().collect();
        self.upload(device, queue, &scenes);
        let n = scenes.first().map_or(0, |s| s.entities.len() as u32);
        let [left, right] = [0, 1].map(|i| Viewport {
            x: i * eye_width,
            width: eye_width,
            view_proj: view_projs[i as usize],
            instances: 0..n,
        });
        self.render(
            device,
            queue,
            encoder,
            target,
            (eye_width * 2, height),
            &[left, right],
            false,
        );
    }

    /// Put the entities of `scenes`, in order, in the instance buffer.
    fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, scenes: &[&SceneSnapshot]) {
        let total: usize = scenes.iter().map(|s| s.entities.len()).sum();
        if total > self.capacity {
            self.capacity = total.next_power_of_two();
            self.instances = Self::instance_buffer(device, self.capacity);
        }
        self.staging.clear();
        for scene in scenes {
            self.staging.extend(scene.entities.iter().map(|e| Instance {
                at: e.position,
                rot: e.rotation,
                colour: e.colour,
            }));
        }
        if !self.staging.is_empty() {
            queue.write_buffer(&self.instances, 0, bytemuck::cast_slice(&self.staging));
        }
    }

    /// Record one pass into `target`: clear, each viewport's instances from its matrix, and
    /// (with `bars`) the spectrum strip over the whole target.
    #[allow(clippy::too_many_arguments, reason = "one pass's inputs, used once")]
    fn render(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        target: &wgpu::TextureView,
        (width, height): (u32, u32),
        viewports: &[Viewport],
        bars: bool,
    ) {
        while self.views.len() < viewports.len() {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("globals"),
                size: std::mem::size_of::<Globals>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("globals"),
                layout: &self.layout,
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: buffer.as_entire_binding(),
                }],
            });
            self.views.push(View { buffer, group });
        }
        let light = glam::Vec3::from(LIGHT_TOWARDS).normalize();
        for (i, vp) in viewports.iter().enumerate() {
            let globals = Globals {
                view_proj: vp.view_proj.to_cols_array_2d(),
                light: [light.x, light.y, light.z, AMBIENT],
                params: [ENTITY_HALF_SIZE, 0.0, 0.0, 0.0],
            };
            queue.write_buffer(&self.views[i].buffer, 0, bytemuck::bytes_of(&globals));
        }
        let depth = self.depth_view(device, (width, height));
        let [r, g, b] = crate::CLEAR;
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("scene"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: target,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color { r, g, b, a: 1.0 }),
                    store: wgpu::StoreOp::Store,
                },
            })],
            depth_stencil_attachment: Some(wgpu::RenderPassDepthStencilAttachment {
                view: &depth,
                depth_ops: Some(wgpu::Operations {
                    load: wgpu::LoadOp::Clear(1.0),
                    store: wgpu::StoreOp::Discard,
                }),
                stencil_ops: None,
            }),
            timestamp_writes: None,
            occlusion_query_set: None,
            multiview_mask: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_vertex_buffer(0, self.vertices.slice(..));
        pass.set_index_buffer(self.indices.slice(..), wgpu::IndexFormat::Uint16);
        if !self.staging.is_empty() {
            pass.set_vertex_buffer(1, self.instances.slice(..));
        }
        for (i, vp) in viewports.iter().enumerate() {
            if !vp.instances.is_empty() && vp.width > 0 {
                pass.set_viewport(vp.x as f32, 0.0, vp.width as f32, height as f32, 0.0, 1.0);
                pass.set_bind_group(0, &self.views[i].group, &[]);
                pass.draw_indexed(0..36, 0, vp.instances.clone());
            }
        }
        if bars && !self.levels.is_empty() {
            let (w, h) = (width as f32, height as f32);
            let [r, g, b] = SPECTRUM_RGB;
            let bars: Vec<Bar> = self
                .levels
                .iter()
                .enumerate()
                .map(|(i, level)| {
                    let (x0, x1, top, bottom) = spectrum_bar(i, width, height, *level);
                    Bar {
                        rect: [
                            x0 as f32 / w * 2.0 - 1.0,
                            1.0 - bottom as f32 / h * 2.0,
                            x1 as f32 / w * 2.0 - 1.0,
                            1.0 - top as f32 / h * 2.0,
                        ],
                        colour: [r, g, b, 1.0],
                    }
                })
                .collect();
            queue.write_buffer(&self.bars_buffer, 0, bytemuck::cast_slice(&bars));
            pass.set_viewport(0.0, 0.0, w, h, 0.0, 1.0);
            pass.set_pipeline(&self.bars_pipeline);
            pass.set_vertex_buffer(0, self.bars_buffer.slice(..));
            pass.draw(0..6, 0..bars.len() as u32);
        }
    }

    fn depth_view(&mut self, device: &wgpu::Device, size: (u32, u32)) -> wgpu::TextureView {
        if self.depth.as_ref().is_none_or(|d| d.2 != size) {
            let texture = device.create_texture(&wgpu::TextureDescriptor {
                label: Some("depth"),
                size: wgpu::Extent3d {
                    width: size.0,
                    height: size.1,
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: DEPTH,
                usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
                view_formats: &[],
            });
            let view = texture.create_view(&Default::default());
            self.depth = Some((texture, view, size));
        }
        self.depth.as_ref().expect("set above").1.clone()
    }
}

/// Column `i` of `n` across `width` pixels: (first pixel, width).
pub fn column(i: u32, n: u32, width: u32) -> (u32, u32) {
    let x = width * i / n;
    (x, width * (i + 1) / n - x)
}
