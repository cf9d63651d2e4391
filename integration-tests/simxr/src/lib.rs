//! A simulated OpenXR headset for testing the XR driver end to end with no headset.
//!
//! Built as a cdylib, this crate is an OpenXR *runtime*: the stock OpenXR loader loads it
//! when `XR_RUNTIME_JSON` names a manifest pointing at `libsyncra_simxr.so`. It offers one
//! head-mounted display with a stereo view configuration, Vulkan through
//! `XR_KHR_vulkan_enable2` (on the application's own device; lavapipe works), reference and
//! action spaces, Oculus Touch / simple controller actions, swapchains, and a paced frame
//! loop, all deterministic: poses are functions of the display time.
//!
//! A test drives it through the control directory named by `SYNCRA_SIMXR_DIR`, using
//! [`control::SimDir`] from this crate's rlib side:
//!
//! ```no_run
//! use syncra_simxr::control::{Script, SimDir};
//! # fn main() -> std::io::Result<()> {
//! let dir = SimDir::new("/tmp/simxr-test")?;
//! let manifest = dir.manifest(std::path::Path::new("target/debug/libsyncra_simxr.so"))?;
//! dir.write_script(&Script { rate_hz: 60.0, ..Script::default() })?;
//! // Run the application with XR_RUNTIME_JSON=manifest and SYNCRA_SIMXR_DIR=dir.path() …
//! dir.press("/user/hand/right/input/trigger/value", 1.0)?;
//! dir.request_capture()?;
//! // … then poll dir.capture(), dir.status() and dir.frames() with a deadline.
//! # let _ = manifest;
//! # Ok(())
//! # }
//! ```
//!
//! Module map: [`control`] (the directory's formats and the test API) is the only public
//! module. Inside: `ffi` (loader negotiation, dispatch table, instance-level calls),
//! `frame` (session, spaces, swapchains, frame loop), `input` (actions), `state` (the
//! global state), `abi` (pointer and two-call helpers), `pacing`, `poses`, `actions`
//! (pure logic) and `vulkan` (images and read-back on the application's device).

pub mod control;

mod abi;
mod actions;
mod ffi;
mod frame;
mod input;
mod pacing;
mod poses;
mod state;
mod vulkan;
