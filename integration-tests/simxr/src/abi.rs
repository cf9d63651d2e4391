//! The C boundary: turning application pointers into references (null and structure type
//! checked), the two-call idiom, fixed-size strings, and the guard that turns a panic into
//! `XR_ERROR_RUNTIME_FAILURE` instead of unwinding into C.

use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use openxr_sys as sys;

/// A step of an entry point: `Err` is the `XrResult` to return.
pub(crate) type XrResult<T = ()> = Result<T, sys::Result>;

/// Runs an entry point's body; a panic becomes `XR_ERROR_RUNTIME_FAILURE`.
pub(crate) fn guard(body: impl FnOnce() -> XrResult<sys::Result>) -> sys::Result {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(result) | Err(result)) => result,
        Err(_) => sys::Result::ERROR_RUNTIME_FAILURE,
    }
}

/// An OpenXR structure that starts with `ty`.
pub(crate) trait Typed {
    const TYPE: sys::StructureType;
    fn ty(&self) -> sys::StructureType;
}

macro_rules! typed {
    ($($t:ident),* $(,)?) => {
        $(impl Typed for sys::$t {
            const TYPE: sys::StructureType = sys::$t::TYPE;
            fn ty(&self) -> sys::StructureType {
                self.ty
            }
        })*
    };
}

typed!(
    InstanceCreateInfo,
    InstanceProperties,
    ExtensionProperties,
    SystemGetInfo,
    SystemProperties,
    ViewConfigurationProperties,
    ViewConfigurationView,
    GraphicsRequirementsVulkanKHR,
    VulkanInstanceCreateInfoKHR,
    VulkanDeviceCreateInfoKHR,
    VulkanGraphicsDeviceGetInfoKHR,
    GraphicsBindingVulkanKHR,
    SessionCreateInfo,
    SessionBeginInfo,
    ReferenceSpaceCreateInfo,
    ActionSpaceCreateInfo,
    SpaceLocation,
    SpaceVelocity,
    ViewLocateInfo,
    ViewState,
    View,
    SwapchainCreateInfo,
    SwapchainImageVulkanKHR,
    SwapchainImageAcquireInfo,
    SwapchainImageWaitInfo,
    SwapchainImageReleaseInfo,
    FrameWaitInfo,
    FrameState,
    FrameBeginInfo,
    FrameEndInfo,
    CompositionLayerProjection,
    CompositionLayerProjectionView,
    ActionSetCreateInfo,
    ActionCreateInfo,
    InteractionProfileSuggestedBinding,
    SessionActionSetsAttachInfo,
    InteractionProfileState,
    ActionsSyncInfo,
    ActionStateGetInfo,
    ActionStateBoolean,
    ActionStateFloat,
    ActionStateVector2f,
    ActionStatePose,
    HapticActionInfo,
    HapticVibration,
    BoundSourcesForActionEnumerateInfo,
    InputSourceLocalizedNameGetInfo,
    EventDataBuffer,
);

/// An input structure: non-null and of its type, else `XR_ERROR_VALIDATION_FAILURE`.
///
/// # Safety
/// `p` is null or valid for reads for `'a` (OpenXR valid usage).
pub(crate) unsafe fn input<'a, T: Typed>(p: *const T) -> XrResult<&'a T> {
    // SAFETY: the caller guarantees a non-null `p` is valid; `as_ref` checks null.
    let r = unsafe { p.as_ref() }.ok_or(sys::Result::ERROR_VALIDATION_FAILURE)?;
    if r.ty() == T::TYPE {
        Ok(r)
    } else {
        Err(sys::Result::ERROR_VALIDATION_FAILURE)
    }
}

/// An optional input structure (OpenXR lets some be NULL): `None` when null.
///
/// # Safety
/// As [`input`].
pub(crate) unsafe fn optional<'a, T: Typed>(p: *const T) -> XrResult<Option<&'a T>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    unsafe { input(p) }.map(Some)
}

/// An output structure the application typed: non-null and of its type.
///
/// # Safety
/// `p` is null or valid for reads and writes for `'a`.
pub(crate) unsafe fn output<'a, T: Typed>(p: *mut T) -> XrResult<&'a mut T> {
    // SAFETY: the caller guarantees a non-null `p` is valid; `as_mut` checks null.
    let r = unsafe { p.as_mut() }.ok_or(sys::Result::ERROR_VALIDATION_FAILURE)?;
    if r.ty() == T::TYPE {
        Ok(r)
    } else {
        Err(sys::Result::ERROR_VALIDATION_FAILURE)
    }
}

/// A plain output value (a handle, a number): non-null.
///
/// # Safety
/// `p` is null or valid for writes for `'a`, and holds a valid `T` (any bit pattern of
/// the plain types used here is one).
pub(crate) unsafe fn out<'a, T>(p: *mut T) -> XrResult<&'a mut T> {
    // SAFETY: the caller guarantees a non-null `p` is valid; `as_mut` checks null.
    unsafe { p.as_mut() }.ok_or(sys::Result::ERROR_VALIDATION_FAILURE)
}

/// `n` elements at `p` (null is fine when `n` is 0).
///
/// # Safety
/// When `n > 0`, `p` is null or valid for reads of `n` elements for `'a`.
pub(crate) unsafe fn array<'a, T>(p: *const T, n: u32) -> XrResult<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(sys::Result::ERROR_VALIDATION_FAILURE);
    }
    // SAFETY: non-null and valid for `n` elements by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n as usize) })
}

/// A NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char) -> XrResult<&'a str> {
    if p.is_null() {
        return Err(sys::Result::ERROR_VALIDATION_FAILURE);
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| sys::Result::ERROR_VALIDATION_FAILURE)
}

/// A string in a fixed-size field; it must be NUL-terminated within the field.
pub(crate) fn fixed_str(field: &[c_char]) -> XrResult<&str> {
    // SAFETY: c_char and u8 have the same size and alignment; the slice stays borrowed.
    let bytes = unsafe { std::slice::from_raw_parts(field.as_ptr().cast::<u8>(), field.len()) };
    CStr::from_bytes_until_nul(bytes)
        .ok()
        .and_then(|s| s.to_str().ok())
        .ok_or(sys::Result::ERROR_VALIDATION_FAILURE)
}

/// Copies `s` into a fixed-size field, truncated to fit, NUL-terminated.
pub(crate) fn put_str(field: &mut [c_char], s: &str) {
    let n = s.len().min(field.len().saturating_sub(1));
    for (dst, &b) in field.iter_mut().zip(&s.as_bytes()[..n]) {
        *dst = b as c_char;
    }
    if let Some(end) = field.get_mut(n) {
        *end = 0;
    }
}

/// The two-call idiom for `n` items: capacity 0 → count only; too small →
/// `XR_ERROR_SIZE_INSUFFICIENT`; else `fill(element, index)` for each.
///
/// # Safety
/// `count` is null or valid for writes; when `capacity > 0`, `buf` is null or valid for
/// reads and writes of `capacity` elements.
pub(crate) unsafe fn two_call<T>(
    capacity: u32,
    count: *mut u32,
    buf: *mut T,
    n: usize,
    mut fill: impl FnMut(&mut T, usize) -> XrResult,
) -> XrResult {
    let n32 = u32::try_from(n).map_err(|_| sys::Result::ERROR_RUNTIME_FAILURE)?;
    // SAFETY: forwarded contract for `count`.
    *unsafe { out(count) }? = n32;
    if capacity == 0 {
        return Ok(());
    }
    if capacity < n32 {
        return Err(sys::Result::ERROR_SIZE_INSUFFICIENT);
    }
    if buf.is_null() {
        return Err(sys::Result::ERROR_VALIDATION_FAILURE);
    }
    // SAFETY: `buf` is valid for `capacity >= n` elements by the caller's contract.
    let items = unsafe { std::slice::from_raw_parts_mut(buf, n) };
    items
        .iter_mut()
        .enumerate()
        .try_for_each(|(i, item)| fill(item, i))
}

/// The two-call idiom for plain values.
///
/// # Safety
/// As [`two_call`].
pub(crate) unsafe fn two_call_copy<T: Copy>(
    capacity: u32,
    count: *mut u32,
    buf: *mut T,
    items: &[T],
) -> XrResult {
    // SAFETY: forwarded contract.
    unsafe {
        two_call(capacity, count, buf, items.len(), |dst, i| {
            *dst = items[i];
            Ok(())
        })
    }
}

/// The two-call idiom for a string (the count includes the NUL).
///
/// # Safety
/// As [`two_call`].
pub(crate) unsafe fn two_call_str(
    capacity: u32,
    count: *mut u32,
    buf: *mut c_char,
    s: &str,
) -> XrResult {
    let bytes = s.as_bytes();
    // SAFETY: forwarded contract.
    unsafe {
        two_call(capacity, count, buf, bytes.len() + 1, |dst, i| {
            *dst = bytes.get(i).map_or(0, |&b| b as c_char);
            Ok(())
        })
    }
}

/// The first structure of type `T` in a `next` chain, as a raw pointer (null when absent).
///
/// # Safety
/// `next` is null or the head of a valid chain of OpenXR structures.
pub(crate) unsafe fn find_in_chain<T: Typed>(mut next: *const c_void) -> *const T {
    while !next.is_null() {
        // SAFETY: every structure in a valid chain starts with (ty, next).
        let base = unsafe { &*next.cast::<sys::BaseInStructure>() };
        if base.ty == T::TYPE {
            return next.cast();
        }
        next = base.next.cast();
    }
    std::ptr::null()
}

/// The name OpenXR gives an enum value (`XR_ERROR_...`), from openxr-sys's Debug names.
pub(crate) fn enum_name(debug: String, prefix: &str, unknown: &str) -> String {
    if debug.parse::<i64>().is_ok() {
        format!("{unknown}{debug}")
    } else {
        format!("{prefix}{debug}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(capacity: u32, items: &[u32]) -> (XrResult, u32, Vec<u32>) {
        let mut count = 0;
        let mut buf = vec![0u32; capacity as usize];
        // SAFETY: `count` and `buf` are valid for `capacity` elements.
        let r = unsafe { two_call_copy(capacity, &mut count, buf.as_mut_ptr(), items) };
        (r, count, buf)
    }

    #[test]
    fn capacity_zero_only_counts() {
        assert_eq!(call(0, &[7, 8, 9]), (Ok(()), 3, vec![]));
    }

    #[test]
    fn too_small_a_buffer_is_size_insufficient_with_the_count_set() {
        assert_eq!(
            call(2, &[7, 8, 9]),
            (Err(sys::Result::ERROR_SIZE_INSUFFICIENT), 3, vec![0, 0])
        );
    }

    #[test]
    fn a_large_enough_buffer_is_filled() {
        assert_eq!(call(4, &[7, 8, 9]), (Ok(()), 3, vec![7, 8, 9, 0]));
    }

    #[test]
    fn a_null_count_is_a_validation_failure() {
        // SAFETY: null pointers are what is being checked.
        let r =
            unsafe { two_call_copy::<u32>(0, std::ptr::null_mut(), std::ptr::null_mut(), &[1]) };
        assert_eq!(r, Err(sys::Result::ERROR_VALIDATION_FAILURE));
    }

    #[test]
    fn strings_count_their_terminator_and_truncate_in_fixed_fields() {
        let mut count = 0;
        let mut buf = [1 as c_char; 4];
        // SAFETY: valid buffers.
        let r = unsafe { two_call_str(4, &mut count, buf.as_mut_ptr(), "abcd") };
        assert_eq!((r, count), (Err(sys::Result::ERROR_SIZE_INSUFFICIENT), 5));
        let mut field = [1 as c_char; 4];
        put_str(&mut field, "abcdef");
        assert_eq!(fixed_str(&field), Ok("abc"));
        assert_eq!(
            fixed_str(&[1, 2]),
            Err(sys::Result::ERROR_VALIDATION_FAILURE)
        );
    }

    #[test]
    fn enum_names_carry_the_openxr_prefix() {
        let name = enum_name(
            format!("{:?}", sys::Result::ERROR_TIME_INVALID),
            "XR_",
            "XR_UNKNOWN_",
        );
        assert_eq!(name, "XR_ERROR_TIME_INVALID");
    }
}
