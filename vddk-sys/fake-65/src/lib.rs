//! The fake VixDiskLib of `vddk-fake` as VDDK 6.5 was: the same code (its source files are
//! shared) without the calls VDDK 6.7 added (QueryAllocatedBlocks, FreeBlockList,
//! AllocateConnectParams, FreeConnectParams), for tests of a library that lacks optional
//! symbols. Install it as `<libdir>/lib64/libvixDiskLib.so.6`; the knobs and the call log are
//! those of `vddk-fake`'s documentation.

#[path = "../../fake/src/api.rs"]
pub mod api;
#[path = "../../fake/src/connection.rs"]
mod connection;
#[path = "../../fake/src/disk.rs"]
mod disk;
#[path = "../../fake/src/ffi.rs"]
mod ffi;
#[path = "../../fake/src/global.rs"]
mod global;
#[path = "../../fake/src/knobs.rs"]
mod knobs;
