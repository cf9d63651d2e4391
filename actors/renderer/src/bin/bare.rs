//! `syncra-renderer-bare`: the benchmark's baseline — the renderer's drawing in one process
//! with no runtime: the same scene (a world simulated here, stepped every frame), the same
//! pipeline and the same readback into memory, as fast as it goes. Prints one JSON line:
//! frames per second and frame time percentiles.
//!
//! ```text
//! syncra-renderer-bare WIDTH HEIGHT SECONDS [ENTITIES] [--eyes]
//! ```
//!
//! With `--eyes`: a stereo pair for a headset instead, each eye `WIDTH × HEIGHT` side by side
//! (the eyes 64 mm apart at 1.6 m, the arena where `Placement::default` puts it), as the
//! renderer draws for the XR driver.

use std::time::{Duration, Instant};

use syncra_node::render::Camera;
use syncra_node::world::{SceneSnapshot, WorldSettings};
use syncra_node::xr::{EyeView, Fov, Placement, Pose, eye_view_proj};
use syncra_renderer::draw::SceneDraw;
use syncra_renderer::gpu::{Backend, Gpu};
use syncra_renderer::offscreen::{self, Offscreen};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (width, height) = (num(1, 1280) as u32, num(2, 720) as u32);
    let seconds = Duration::from_secs(num(3, 5));
    let settings = WorldSettings {
        entities: num(4, 256) as u32,
        ..WorldSettings::new("main")
    };
    let gpu = Gpu::open(Backend::Vulkan, None, None).unwrap_or_else(|e| {
        eprintln!("syncra-renderer-bare: {e}");
        std::process::exit(1)
    });
    let eyes = args.iter().any(|a| a == "--eyes");
    let mut draw = SceneDraw::new(&gpu.device, offscreen::FORMAT, Camera::default());
    let target = if eyes {
        Offscreen::new(&gpu.device, 2 * width, height)
    } else {
        Offscreen::new(&gpu.device, width, height)
    };
    let view_projs = [-0.032f32, 0.032].map(|x| {
        let view = EyeView {
            pose: Pose {
                position: [x, 1.6, 0.0],
                ..Pose::default()
            },
            fov: Fov {
                left: -0.785,
                right: 0.785,
                up: 0.785,
                down: -0.785,
            },
        };
        eye_view_proj(&view, &Placement::default())
    });
    let mut pixels = vec![0u8; target.frame_len()];
    let mut scene = syncra_world::Scene::new(&settings);
    let mut snapshot = SceneSnapshot {
        world: String::new(),
        tick: 0,
        entities: Vec::new(),
        player: None,
    };
    let mut times = Vec::new();
    let start = Instant::now();
    // At least one frame: `SECONDS = 0` times start-up to the first frame drawn.
    while times.is_empty() || start.elapsed() < seconds {
        let t = Instant::now();
        scene.step();
        scene.snapshot_into("main", &mut snapshot);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        if eyes {
            draw.draw_eyes(
                &gpu.device,
                &gpu.queue,
                &mut encoder,
                target.view(),
                (width, height),
                Some(&snapshot),
                view_projs,
            );
        } else {
            draw.draw(
                &gpu.device,
                &gpu.queue,
                &mut encoder,
                target.view(),
                target.size(),
                &[&snapshot],
            );
        }
        target.copy(&mut encoder);
        gpu.queue.submit([encoder.finish()]);
        target
            .read_into(&gpu.device, &mut pixels)
            .expect("readback");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let fps = times.len() as f64 / start.elapsed().as_secs_f64();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p / 100.0).round() as usize];
    println!(
        "{{\"fps\": {fps:.2}, \"frames\": {}, \"frame_ms_p50\": {:.3}, \"frame_ms_p99\": {:.3}, \"adapter\": {:?}}}",
        times.len(),
        at(50.0),
        at(99.0),
        gpu.adapter_name()
    );
}
