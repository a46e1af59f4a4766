//! The C boundary of the fake: VixError codes, reading C strings, handing out `malloc`ed memory
//! the caller frees through VixDiskLib's `Free*` calls, and the guard that keeps a panic from
//! unwinding into C.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use vddk_sys::VixError;

/// Success.
pub const OK: VixError = vddk_sys::VIX_OK as VixError;
/// A generic failure.
pub const FAIL: VixError = vddk_sys::VIX_E_FAIL as VixError;
/// One of the parameters was invalid.
pub const INVALID_ARG: VixError = vddk_sys::VIX_E_INVALID_ARG as VixError;
/// The file was not found.
pub const FILE_NOT_FOUND: VixError = vddk_sys::VIX_E_FILE_NOT_FOUND as VixError;
/// The operation is not supported.
pub const NOT_SUPPORTED: VixError = vddk_sys::VIX_E_NOT_SUPPORTED as VixError;
/// The host refused the user name or password.
pub const AUTHENTICATION_FAILURE: VixError = 35;
/// An asynchronous call was queued; its result arrives through the completion callback.
pub const ASYNC: VixError = vddk_sys::VIX_ASYNC as VixError;

/// Bytes per sector.
pub const SECTOR: u64 = vddk_sys::VIXDISKLIB_SECTOR_SIZE as u64;

/// Runs `f`, or returns `on_panic` if it panics: no panic may unwind across the C boundary.
pub fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// The text of the C string at `p` (invalid UTF-8 replaced), or `None` for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid during the call.
pub unsafe fn text(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is not NULL and, by this function's contract, a live NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    Some(s.to_string_lossy().into_owned())
}

/// A `malloc`ed NUL-terminated copy of `s` (the caller frees it with `free`), or NULL when
/// memory is short. NUL bytes inside `s` end the copy.
pub fn malloc_text(s: &str) -> *mut c_char {
    let bytes = s.as_bytes();
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    // SAFETY: malloc has no preconditions; the result is checked for NULL before use.
    let p = unsafe { libc::malloc(len + 1) }.cast::<u8>();
    if p.is_null() {
        return p.cast();
    }
    // SAFETY: `p` is a fresh allocation of `len + 1` bytes that nothing else references, and
    // `bytes` holds at least `len` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, len);
        p.add(len).write(0);
    }
    p.cast()
}

/// The calling thread's OS thread id, as the call log records it.
pub fn thread_id() -> i64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    i64::from(unsafe { libc::gettid() })
}
