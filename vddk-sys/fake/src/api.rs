//! The VixDiskLib entry points of VDDK 6.0 and older: every call of ferry's header except the
//! four VDDK 6.7 added (in `api67.rs`, which only `vddk-fake` builds). Each one logs itself and
//! never lets a panic reach its C caller.
#![allow(non_snake_case)]

use std::ffi::{c_char, c_void};

use vddk_sys::{
    VixDiskLibCompletionCB, VixDiskLibConnectParams, VixDiskLibConnection,
    VixDiskLibGenericLogFunc, VixDiskLibGeometry, VixDiskLibHandle, VixDiskLibInfo,
    VixDiskLibSectorType, VixError, VIXDISKLIB_ADAPTER_SCSI_LSILOGIC,
};

use crate::connection::{Connection, Params};
use crate::disk::{locate, Disk};
use crate::ffi::{
    guard, malloc_text, text, ASYNC, AUTHENTICATION_FAILURE, FAIL, FILE_NOT_FOUND, INVALID_ARG,
    NOT_SUPPORTED, OK,
};
use crate::global::{current, record, start, stop, Started};

/// The build number VDDK 8.0.3 announces.
const BUILD: &str = "24114575";

/// The disk behind `handle`, or `None` for NULL.
///
/// # Safety
/// `handle` is NULL or was returned by `VixDiskLib_Open` and not closed yet.
pub unsafe fn disk<'a>(handle: VixDiskLibHandle) -> Option<&'a Disk> {
    // SAFETY: a non-NULL handle is a `Box<Disk>` turned into a pointer by Open and still alive
    // (this function's contract).
    unsafe { handle.cast::<Disk>().as_ref() }
}

/// Starts the library: stores the callbacks, reads the knobs and logs VDDK's version line.
///
/// # Safety
/// `libDir` and `configFile` are NULL or NUL-terminated strings; the callbacks are NULL or
/// printf-style functions callable from any thread until the process ends.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_InitEx(
    majorVersion: u32,
    minorVersion: u32,
    log: VixDiskLibGenericLogFunc,
    warn: VixDiskLibGenericLogFunc,
    _panic: VixDiskLibGenericLogFunc,
    libDir: *const c_char,
    configFile: *const c_char,
) -> VixError {
    guard(FAIL, || {
        // SAFETY: both are NULL or NUL-terminated (this function's contract).
        let (libdir, config) = unsafe { (text(libDir), text(configFile)) };
        let ld_library_path = std::env::var("LD_LIBRARY_PATH").ok();
        let (session, again, result, errors) = match start(log, warn) {
            Started::Again(s) => (s, true, OK, Vec::new()),
            Started::New(s, Ok(())) => (s, false, OK, Vec::new()),
            Started::New(s, Err((code, errors))) => (s, false, code, errors),
        };
        for e in &errors {
            session.warn(&format!("vddk-fake: bad knob {e}"));
        }
        if result == OK && !again {
            let version = &session.knobs.version;
            session.info(&format!(
                "VMware VixDiskLib ({version}) Release build-{BUILD}\n"
            ));
        }
        record!(session, "InitEx", "major" => majorVersion, "minor" => minorVersion,
            "libdir" => libdir, "config" => config, "ld_library_path" => ld_library_path,
            "again" => again, "errors" => errors, "result" => result);
        result
    })
}

/// Ends the library session.
#[no_mangle]
pub extern "C" fn VixDiskLib_Exit() {
    guard((), || record!(stop(), "Exit"));
}

/// Records the access identity (nothing to prepare here).
///
/// # Safety
/// `connectParams` is NULL or valid connection parameters; `identity` is NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_PrepareForAccess(
    connectParams: *const VixDiskLibConnectParams,
    identity: *const c_char,
) -> VixError {
    // SAFETY: forwarded contract.
    guard(FAIL, || unsafe {
        access("PrepareForAccess", connectParams, identity)
    })
}

/// Records the end of access.
///
/// # Safety
/// As for `VixDiskLib_PrepareForAccess`.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_EndAccess(
    connectParams: *const VixDiskLibConnectParams,
    identity: *const c_char,
) -> VixError {
    // SAFETY: forwarded contract.
    guard(FAIL, || unsafe {
        access("EndAccess", connectParams, identity)
    })
}

/// PrepareForAccess and EndAccess.
///
/// # Safety
/// As for `VixDiskLib_PrepareForAccess`.
unsafe fn access(
    call: &str,
    params: *const VixDiskLibConnectParams,
    identity: *const c_char,
) -> VixError {
    let session = current();
    // SAFETY: `params` is NULL or valid, `identity` NULL or NUL-terminated (contract).
    let (params, identity) = unsafe { (Params::read(params, None), text(identity)) };
    let result = session.knobs.failure(call).unwrap_or(OK);
    record!(session, call, "identity" => identity, "vmxSpec" => params.vmx_spec,
        "result" => result);
    result
}

/// Connects to the "server": takes `FAKE_VDDK_CONNECT_US`, then checks the parameters,
/// thumbprint and password.
///
/// # Safety
/// `connectParams` is NULL or valid connection parameters; `snapshotRef` and `transportModes`
/// are NULL or NUL-terminated; `connection` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_ConnectEx(
    connectParams: *const VixDiskLibConnectParams,
    readOnly: vddk_sys::Bool,
    snapshotRef: *const c_char,
    transportModes: *const c_char,
    connection: *mut VixDiskLibConnection,
) -> VixError {
    guard(FAIL, || {
        let session = current();
        session.maybe_hang("ConnectEx");
        // A real connect takes seconds (NFC session setup, the vCenter ticket), whatever its
        // outcome.
        std::thread::sleep(session.knobs.connect);
        let expected = session.knobs.password.as_deref();
        // SAFETY: the pointers are NULL or valid as this function's contract says.
        let (params, snapshot, transports) = unsafe {
            (
                Params::read(connectParams, expected),
                text(snapshotRef),
                text(transportModes),
            )
        };
        let result = match connection.is_null() {
            true => Err(INVALID_ARG),
            false => Connection::connect(session, &params, snapshot.clone(), transports.clone()),
        };
        let result = result.map(|conn| {
            let conn = Box::into_raw(Box::new(conn)).cast();
            // SAFETY: `connection` is not NULL and valid for a write (contract).
            unsafe { connection.write(conn) };
        });
        let result = result.err().unwrap_or(OK);
        record!(session, "ConnectEx", "vmxSpec" => params.vmx_spec,
            "serverName" => params.server, "thumbPrint" => params.thumbprint,
            "port" => params.port, "nfcHostPort" => params.nfc_port,
            "credType" => params.cred_type, "userName" => params.user,
            "password" => params.password, "readOnly" => readOnly,
            "snapshotRef" => snapshot, "transportModes" => transports, "result" => result);
        result
    })
}

/// The connection behind `connection`, or `None` for NULL.
///
/// # Safety
/// `connection` is NULL or was returned by ConnectEx and not disconnected yet.
unsafe fn connection<'a>(connection: VixDiskLibConnection) -> Option<&'a Connection> {
    // SAFETY: a non-NULL connection is a `Box<Connection>` turned into a pointer by ConnectEx
    // and still alive (this function's contract).
    unsafe { connection.cast::<Connection>().as_ref() }
}

/// Frees a connection.
///
/// # Safety
/// `connection` is NULL or was returned by ConnectEx and not disconnected yet; it is not used
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Disconnect(connection: VixDiskLibConnection) -> VixError {
    guard(FAIL, || {
        let session = current();
        session.maybe_hang("Disconnect");
        if connection.is_null() {
            record!(session, "Disconnect", "result" => INVALID_ARG);
            return INVALID_ARG;
        }
        // SAFETY: ConnectEx made `connection` from a `Box<Connection>`; the caller gives up
        // the pointer now (contract), so the box is freed exactly once.
        let conn = unsafe { Box::from_raw(connection.cast::<Connection>()) };
        record!(conn.session, "Disconnect", "server" => conn.server, "result" => OK);
        OK
    })
}

/// Opens the disk at the datastore path `path`.
///
/// # Safety
/// `connection` is NULL or a live connection; `path` NULL or NUL-terminated; `diskHandle`
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Open(
    connection: VixDiskLibConnection,
    path: *const c_char,
    flags: u32,
    diskHandle: *mut VixDiskLibHandle,
) -> VixError {
    guard(FAIL, || {
        // SAFETY: forwarded contract.
        let (conn, name) = unsafe { (self::connection(connection), text(path)) };
        let session = conn.map_or_else(current, |c| c.session);
        session.maybe_hang("Open");
        let (file, result) = match (conn, &name, diskHandle.is_null()) {
            (Some(conn), Some(name), false) => {
                let file = locate(conn, name);
                let disk = file
                    .as_ref()
                    .map_err(|&e| e)
                    .and_then(|f| Disk::open(conn, name, f));
                let result = disk.map(|d| {
                    // SAFETY: `diskHandle` is not NULL and valid for a write (contract).
                    unsafe { diskHandle.write(Box::into_raw(Box::new(d)).cast()) };
                });
                (file.ok(), result.err().unwrap_or(OK))
            }
            _ => (None, INVALID_ARG),
        };
        record!(session, "Open", "path" => name, "flags" => flags,
            "file" => file.map(|f| f.display().to_string()), "result" => result);
        result
    })
}

/// Closes a disk after its outstanding asynchronous reads have completed.
///
/// # Safety
/// `diskHandle` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Close(diskHandle: VixDiskLibHandle) -> VixError {
    guard(FAIL, || {
        current().maybe_hang("Close");
        if diskHandle.is_null() {
            record!(current(), "Close", "result" => INVALID_ARG);
            return INVALID_ARG;
        }
        // SAFETY: Open made `diskHandle` from a `Box<Disk>`; the caller gives it up now
        // (contract), so the box is freed exactly once; dropping it completes pending reads.
        let disk = unsafe { Box::from_raw(diskHandle.cast::<Disk>()) };
        let pending = disk.pending();
        record!(disk.session(), "Close", "disk" => disk.name(), "pending" => pending,
            "result" => OK);
        drop(disk);
        OK
    })
}

/// Describes a disk in a `malloc`ed `VixDiskLibInfo`.
///
/// # Safety
/// `diskHandle` is NULL or a live handle; `info` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_GetInfo(
    diskHandle: VixDiskLibHandle,
    info: *mut *mut VixDiskLibInfo,
) -> VixError {
    guard(FAIL, || {
        // SAFETY: forwarded contract.
        let Some(disk) = (unsafe { disk(diskHandle) }).filter(|_| !info.is_null()) else {
            record!(current(), "GetInfo", "result" => INVALID_ARG);
            return INVALID_ARG;
        };
        let session = disk.session();
        let result = match session.knobs.failure("GetInfo") {
            Some(code) => code,
            None => {
                // SAFETY: `info` is not NULL and valid for a write (contract).
                unsafe { info.write(describe(disk)) };
                OK
            }
        };
        record!(session, "GetInfo", "disk" => disk.name(), "capacity" => disk.capacity,
            "result" => result);
        result
    })
}

/// A `malloc`ed description of `disk` (NULL when memory is short).
fn describe(disk: &Disk) -> *mut VixDiskLibInfo {
    let cap = disk.capacity;
    let geometry = |heads: u64, sectors: u64| VixDiskLibGeometry {
        cylinders: u32::try_from(cap / (heads * sectors)).unwrap_or(u32::MAX),
        heads: heads as u32,
        sectors: sectors as u32,
    };
    let value = VixDiskLibInfo {
        biosGeo: geometry(255, 63),
        physGeo: geometry(16, 63),
        capacity: cap,
        adapterType: VIXDISKLIB_ADAPTER_SCSI_LSILOGIC,
        numLinks: 1,
        parentFileNameHint: std::ptr::null_mut(),
        uuid: malloc_text(&uuid(disk.name())),
        logicalSectorSize: 512,
        physicalSectorSize: 512,
    };
    // SAFETY: malloc has no preconditions; the result is checked for NULL.
    let p = unsafe { libc::malloc(size_of::<VixDiskLibInfo>()) }.cast::<VixDiskLibInfo>();
    if p.is_null() {
        // SAFETY: `uuid` is NULL or was just malloc'ed and is referenced nowhere else.
        unsafe { libc::free(value.uuid.cast()) };
        return p;
    }
    // SAFETY: `p` is a fresh allocation of the size (and malloc's alignment) of the struct.
    unsafe { p.write(value) };
    p
}

/// A disk UUID in VMware's form ("60 00 c2 9x ...-..."), derived from the disk's name.
fn uuid(name: &str) -> String {
    // FNV-1a, twice with different seeds: stable across runs and Rust versions.
    let hash = |seed: u64| {
        name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    let mut bytes = [hash(0xcbf2_9ce4_8422_2325), hash(0x6c62_272e_07bb_0142)]
        .iter()
        .flat_map(|h| h.to_be_bytes())
        .collect::<Vec<u8>>();
    bytes[..3].copy_from_slice(&[0x60, 0x00, 0xc2]);
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}", hex[..8].join(" "), hex[8..].join(" "))
}

/// Frees what GetInfo returned.
///
/// # Safety
/// `info` is NULL or was returned by GetInfo and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeInfo(info: *mut VixDiskLibInfo) {
    guard((), || {
        // SAFETY: `info` is NULL or GetInfo's live allocation (contract).
        if let Some(i) = unsafe { info.as_ref() } {
            // SAFETY: GetInfo malloc'ed the strings (or left them NULL) and the struct; each is
            // freed once, here.
            unsafe {
                libc::free(i.uuid.cast());
                libc::free(i.parentFileNameHint.cast());
                libc::free(info.cast());
            }
        }
        record!(current(), "FreeInfo");
    });
}

/// The transport mode of a disk, owned by its handle ("" for NULL).
///
/// # Safety
/// `diskHandle` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_GetTransportMode(
    diskHandle: VixDiskLibHandle,
) -> *const c_char {
    guard(std::ptr::null(), || {
        // SAFETY: forwarded contract.
        let Some(disk) = (unsafe { disk(diskHandle) }) else {
            record!(current(), "GetTransportMode", "mode" => None::<String>);
            return c"".as_ptr();
        };
        record!(disk.session(), "GetTransportMode", "disk" => disk.name(),
            "mode" => disk.mode.to_string_lossy());
        disk.mode.as_ptr()
    })
}

/// The transport modes the host offers, colon-separated (a string that is never freed).
#[no_mangle]
pub extern "C" fn VixDiskLib_ListTransportModes() -> *const c_char {
    guard(std::ptr::null(), || {
        let session = current();
        record!(session, "ListTransportModes", "modes" => session.knobs.transports);
        session.transports()
    })
}

/// Reads `numSectors` sectors from `startSector`.
///
/// # Safety
/// `diskHandle` is NULL or a live handle; `readBuffer` NULL or valid for writes of
/// `numSectors` sectors.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Read(
    diskHandle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    readBuffer: *mut u8,
) -> VixError {
    guard(FAIL, || {
        // SAFETY: forwarded contract.
        let Some(disk) = (unsafe { disk(diskHandle) }) else {
            return INVALID_ARG;
        };
        // SAFETY: `readBuffer` is NULL or valid for `numSectors` sectors (contract).
        let result = unsafe { disk.read(startSector, numSectors, readBuffer) };
        record!(disk.session(), "Read", "disk" => disk.name(), "sector" => startSector,
            "count" => numSectors, "result" => result);
        result
    })
}

/// Queues a read whose result goes to `callback(cbData, result)` on another thread.
///
/// # Safety
/// `diskHandle` is NULL or a live handle; `readBuffer` stays valid for writes of `numSectors`
/// sectors, and `cbData` for `callback`, until the callback has been called.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_ReadAsync(
    diskHandle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    readBuffer: *mut u8,
    callback: VixDiskLibCompletionCB,
    cbData: *mut c_void,
) -> VixError {
    guard(FAIL, || {
        // SAFETY: forwarded contract.
        let Some(disk) = (unsafe { disk(diskHandle) }) else {
            return INVALID_ARG;
        };
        let checked = disk.check(startSector, numSectors, readBuffer);
        // Logged before the read is queued: its completion may be logged at once.
        record!(disk.session(), "ReadAsync", "disk" => disk.name(), "sector" => startSector,
            "count" => numSectors, "result" => if checked == OK { ASYNC } else { checked });
        if checked != OK {
            return checked;
        }
        // SAFETY: forwarded contract.
        unsafe { disk.read_async(startSector, numSectors, readBuffer, callback, cbData) }
    })
}

/// Waits for every asynchronous read of a disk to complete.
///
/// # Safety
/// `diskHandle` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Wait(diskHandle: VixDiskLibHandle) -> VixError {
    guard(FAIL, || {
        // SAFETY: forwarded contract.
        let Some(disk) = (unsafe { disk(diskHandle) }) else {
            return INVALID_ARG;
        };
        disk.session().maybe_hang("Wait");
        disk.wait();
        record!(disk.session(), "Wait", "disk" => disk.name(), "result" => OK);
        OK
    })
}

/// Flushes a disk (nothing to do for a read-only fake, unless a failure is injected).
///
/// # Safety
/// `diskHandle` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Flush(diskHandle: VixDiskLibHandle) -> VixError {
    guard(FAIL, || {
        // SAFETY: forwarded contract.
        let Some(disk) = (unsafe { disk(diskHandle) }) else {
            return INVALID_ARG;
        };
        let result = disk.session().knobs.failure("Flush").unwrap_or(OK);
        record!(disk.session(), "Flush", "disk" => disk.name(), "result" => result);
        result
    })
}

/// The `malloc`ed text of an error code.
///
/// # Safety
/// `locale` is NULL or NUL-terminated (it is ignored).
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_GetErrorText(
    err: VixError,
    _locale: *const c_char,
) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        let text = match err & 0xffff {
            INVALID_ARG => "One of the parameters was invalid",
            FILE_NOT_FOUND => "The file was not found",
            NOT_SUPPORTED => "The operation is not supported",
            AUTHENTICATION_FAILURE => "Authentication failure",
            _ => "Unknown error",
        };
        record!(current(), "GetErrorText", "code" => err);
        malloc_text(text)
    })
}

/// Frees what GetErrorText returned.
///
/// # Safety
/// `errMsg` is NULL or was returned by GetErrorText and not freed yet.
#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeErrorText(errMsg: *mut c_char) {
    guard((), || {
        // SAFETY: `errMsg` is NULL or GetErrorText's live allocation (contract), freed once.
        unsafe { libc::free(errMsg.cast()) };
        record!(current(), "FreeErrorText");
    });
}
