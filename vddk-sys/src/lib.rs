//! Raw FFI to VMware's VixDiskLib (the Virtual Disk Development Kit), loaded at run time.
//!
//! The declarations come from ferry's own header (`include/vixDiskLib_ferry.h`, written from
//! VMware's public documentation); `src/bindings.rs` is generated from it by bindgen with the
//! flags pinned in `regen/mod.rs` and committed, so building needs neither VDDK nor libclang.
//! Every function is a field of [`VixDiskLib`], loaded from a library path with libloading; a
//! symbol the library lacks is an `Err` in its field (older VDDK versions miss some optional
//! calls). [`load`] finds and loads the library from the user's VDDK directory and checks its
//! symbols; [`session`] initialises VDDK once per process and [`disk`] owns each open disk on
//! a thread of its own, with many asynchronous reads in flight.

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!("vddk-sys: the committed bindings are for x86_64 Linux, where VDDK runs");

#[rustfmt::skip]
mod bindings;

pub use bindings::*;

pub mod disk;
pub mod load;
pub mod session;
