//! The VixDiskLib entry points VDDK 6.7 added: QueryAllocatedBlocks, FreeBlockList,
//! AllocateConnectParams and FreeConnectParams. Only `vddk-fake` builds them, so that
//! `vddk-fake-65` is a library without them.
#![allow(non_snake_case)]

use vddk_sys::{
    VixDiskLibBlock, VixDiskLibBlockList, VixDiskLibConnectParams, VixDiskLibHandle,
    VixDiskLibSectorType, VixError,
};

use crate::api::disk;
use crate::disk::Disk;
use crate::extents;
use crate::ffi::{guard, FAIL, INVALID_ARG, OK};
use crate::global::{current, record};

/// Lists the allocated chunks of `numSectors` sectors from `startSector`, merged into blocks,
/// in a `malloc`ed list.
///
/// # Safety
/// `diskHandle` is NULL or a live handle; `blockList` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_QueryAllocatedBlocks(
    diskHandle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    chunkSize: VixDiskLibSectorType,
    blockList: *mut *mut VixDiskLibBlockList,
) -> VixError {
    guard(FAIL, || {
        // SAFETY: forwarded contract.
        let Some(disk) = (unsafe { disk(diskHandle) }).filter(|_| !blockList.is_null()) else {
            record!(current(), "QueryAllocatedBlocks", "result" => INVALID_ARG);
            return INVALID_ARG;
        };
        let session = disk.session();
        std::thread::sleep(session.knobs.latency);
        let blocks = query(disk, startSector, numSectors, chunkSize);
        let list = blocks.as_ref().map_err(|&e| e).and_then(|b| malloc_list(b));
        let result = list.map(|list| {
            // SAFETY: `blockList` is not NULL and valid for a write (contract).
            unsafe { blockList.write(list) };
        });
        let result = result.err().unwrap_or(OK);
        record!(session, "QueryAllocatedBlocks", "disk" => disk.name(),
            "start" => startSector, "count" => numSectors, "chunk" => chunkSize,
            "blocks" => blocks.ok().map(|b| b.len()), "result" => result);
        result
    })
}

/// The blocks a query answers, or why it fails.
fn query(
    disk: &Disk,
    start: u64,
    count: u64,
    chunk: u64,
) -> Result<Vec<VixDiskLibBlock>, VixError> {
    let session = disk.session();
    if let Some(code) = session.knobs.failure("QueryAllocatedBlocks") {
        return Err(code);
    }
    if !extents::valid(start, count, chunk, disk.capacity) {
        return Err(INVALID_ARG);
    }
    let allocated = match session.knobs.raw("FAKE_VDDK_ALLOCATED") {
        Some(v) => extents::parse(&v.to_string_lossy()).map_err(|e| {
            let v = v.to_string_lossy();
            session.warn(&format!("vddk-fake: bad knob FAKE_VDDK_ALLOCATED={v}: {e}"));
            FAIL
        })?,
        None => extents::data_ranges(disk.file()).map_err(|e| {
            session.warn(&format!(
                "vddk-fake: cannot map the data of {}: {e}",
                disk.name()
            ));
            FAIL
        })?,
    };
    Ok(extents::blocks(&allocated, start, count, chunk))
}

/// `blocks` in a `malloc`ed `VixDiskLibBlockList`.
fn malloc_list(blocks: &[VixDiskLibBlock]) -> Result<*mut VixDiskLibBlockList, VixError> {
    let n = u32::try_from(blocks.len()).map_err(|_| FAIL)?;
    let size = std::mem::offset_of!(VixDiskLibBlockList, blocks) + size_of_val(blocks);
    let size = size.max(size_of::<VixDiskLibBlockList>());
    // SAFETY: malloc has no preconditions; the result is checked for NULL.
    let list = unsafe { libc::malloc(size) }.cast::<VixDiskLibBlockList>();
    if list.is_null() {
        return Err(FAIL);
    }
    // SAFETY: `list` is a fresh allocation aligned by malloc and large enough for the header
    // and `n` blocks from the offset of `blocks` (the array is declared with one entry, but
    // VDDK's list carries `numBlocks` of them in the same allocation).
    unsafe {
        std::ptr::addr_of_mut!((*list).numBlocks).write(n);
        let first = std::ptr::addr_of_mut!((*list).blocks).cast::<VixDiskLibBlock>();
        std::ptr::copy_nonoverlapping(blocks.as_ptr(), first, blocks.len());
    }
    Ok(list)
}

/// Frees what QueryAllocatedBlocks returned.
///
/// # Safety
/// `blockList` is NULL or was returned by QueryAllocatedBlocks and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeBlockList(blockList: *mut VixDiskLibBlockList) -> VixError {
    guard(FAIL, || {
        // SAFETY: `blockList` is NULL or QueryAllocatedBlocks' live allocation (contract),
        // freed once.
        unsafe { libc::free(blockList.cast()) };
        record!(current(), "FreeBlockList", "result" => OK);
        OK
    })
}

/// A zeroed `VixDiskLibConnectParams` for the caller to fill (and free with
/// FreeConnectParams).
#[no_mangle]
pub extern "C" fn VixDiskLib_AllocateConnectParams() -> *mut VixDiskLibConnectParams {
    guard(std::ptr::null_mut(), || {
        // SAFETY: calloc has no preconditions; NULL is returned as is when memory is short.
        let p = unsafe { libc::calloc(1, size_of::<VixDiskLibConnectParams>()) };
        record!(current(), "AllocateConnectParams");
        p.cast()
    })
}

/// Frees what AllocateConnectParams returned; the strings in it belong to the caller.
///
/// # Safety
/// `connectParams` is NULL or was returned by AllocateConnectParams and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeConnectParams(connectParams: *mut VixDiskLibConnectParams) {
    guard((), || {
        // SAFETY: `connectParams` is NULL or AllocateConnectParams' live allocation
        // (contract), freed once; the strings it points to are not touched.
        unsafe { libc::free(connectParams.cast()) };
        record!(current(), "FreeConnectParams");
    });
}
