//! A fake VMware VixDiskLib (VDDK) for ferry's tests and benchmarks: a shared library with the
//! C API of `vddk-sys/include/vixDiskLib_ferry.h` that serves local raw files as the disks of
//! a vSphere "server", with knobs for latency, bandwidth, allocation maps and failures, and a
//! log of every call. `vddk-fake-65` builds the same code without the calls VDDK 6.7 added.
//!
//! Install it as VDDK would be: `<libdir>/lib64/libvixDiskLib.so.8` (a symlink to
//! `target/<profile>/libvddk_fake.so` will do), and load it with `vddk_sys::load::load`.
//!
//! # Disks
//! `VixDiskLib_Open(conn, "[DATASTORE] dir/file.vmdk", ..)` opens the raw file
//! `$FAKE_VDDK_ROOT/DATASTORE/dir/file.vmdk`; when ConnectEx named a snapshot `S` and
//! `<that file>@S` exists, that file (the snapshot's contents) is served instead. The
//! capacity is the file's size in 512-byte sectors, rounded up (the tail past the end of the
//! file reads as zeros). Disks are read-only; the open flags are only logged. A path without
//! `[DATASTORE] ` (or with `..`) is `VIX_E_INVALID_ARG` (3), a missing file
//! `VIX_E_FILE_NOT_FOUND` (4).
//!
//! # Knobs
//! Environment variables read when `VixDiskLib_InitEx` starts a session (a call made before
//! InitEx reads them then); unset or empty means the default. A malformed knob makes InitEx
//! fail with `VIX_E_FAIL` and a warn-callback line `vddk-fake: bad knob NAME=VALUE: why`.
//!
//! | knob | meaning | default |
//! | --- | --- | --- |
//! | `FAKE_VDDK_ROOT` | directory with one directory per datastore | none: Open fails (1) |
//! | `FAKE_VDDK_LOG` | call log, appended, one JSON object per line | no log |
//! | `FAKE_VDDK_LATENCY_US` | microseconds added to every Read, ReadAsync (to its completion) and QueryAllocatedBlocks | 0 |
//! | `FAKE_VDDK_BANDWIDTH` | bytes per second of one handle's wire | 0: unlimited |
//! | `FAKE_VDDK_CONNECT_US` | microseconds every ConnectEx sleeps before it answers, whatever its outcome (a real connect's NFC session setup and vCenter ticket take seconds) | 0 |
//! | `FAKE_VDDK_ALLOCATED` | allocated byte ranges `OFFSET:LENGTH,...` for QueryAllocatedBlocks | the file's data ranges (`SEEK_DATA`/`SEEK_HOLE`) |
//! | `FAKE_VDDK_FAIL` | `Call[:code],...`: these calls always fail (code default 1); calls: InitEx, PrepareForAccess, ConnectEx, Open, GetInfo, QueryAllocatedBlocks, Read (Read and ReadAsync), Flush | none |
//! | `FAKE_VDDK_FAIL_READ` | `N[:code]`: the Nth read of the session (Read or ReadAsync, from 1) fails | none |
//! | `FAKE_VDDK_HANG` | `Call,...`: these calls never return (calls: ConnectEx, Open, Wait, Close, Disconnect) | none |
//! | `FAKE_VDDK_HANG_READ` | `N`: the Nth read of the session never completes (a Read never returns; a ReadAsync is accepted and never called back, so Wait on its handle never returns) | none |
//! | `FAKE_VDDK_COMPLETE_INLINE` | `1`: ReadAsync does the read and calls its callback before it returns `VIX_ASYNC` | `0` |
//! | `FAKE_VDDK_PASSWORD` | the password ConnectEx expects; otherwise it fails with 35 | any |
//! | `FAKE_VDDK_THUMBPRINT` | the SHA-1 thumbprint ConnectEx expects (any case); otherwise it fails with 1 | any |
//! | `FAKE_VDDK_TRANSPORTS` | the transport modes offered, colon-separated | `file:san:hotadd:nbdssl:nbd` |
//! | `FAKE_VDDK_VERSION` | the version InitEx announces | `8.0.3` |
//! | `FAKE_VDDK_ESX_HOST` | the ESXi host Open's `DISKLIB-LINK  : Opened '...@HOST:902'` log line names | ConnectEx's server |
//!
//! The wire model: a read of `len` bytes occupies its handle's wire for `len / BANDWIDTH`
//! seconds from when the wire is free, then completes `LATENCY` later. A synchronous read
//! sleeps until then; asynchronous reads in flight together overlap their latencies and share
//! the bandwidth, as VDDK's NFC AIO does. Injected read failures still take their time; a
//! failed ReadAsync returns `VIX_ASYNC` and delivers the code through its callback.
//!
//! # Calls
//! - InitEx stores the callbacks and logs `VMware VixDiskLib (VERSION) Release
//!   build-24114575\n` through the `log` callback, as real VDDK does (callers parse the
//!   version from it). A second InitEx without Exit is logged and returns `VIX_OK`.
//! - ConnectEx wants a `moref=` vmxSpec, a server name and `VIXDISKLIB_CRED_UID` with a user
//!   name (else 3). A thumbprint mismatch warns `SSL thumbprint mismatch for SERVER: expected
//!   X, got Y`, a wrong password `Cannot connect to host SERVER: incorrect user name or
//!   password` (never the password).
//! - Open picks the handle's transport mode: the first of ConnectEx's `transportModes` (all
//!   offered ones when NULL) that is offered; when none is, Open fails with 1 and warns `none
//!   of the requested transport modes (X) is available`. It then logs `DISKLIB-LINK  :
//!   Opened 'vpxa-nfc[ssl]://PATH@HOST:902' (0xa): custom, N sectors / M MB.`, as VDDK does.
//! - ReadAsync returns `VIX_ASYNC` (25000) and calls the callback from the handle's completion
//!   thread; a range past the end returns 3 at once, without a callback. Wait returns once
//!   every callback has returned; Close waits too.
//! - QueryAllocatedBlocks enforces VDDK's rules (a power-of-two chunk of at least 128
//!   sectors, a non-empty aligned range of at most 524288 chunks within the disk; else 3) and
//!   returns the chunks that meet an allocated range, merged into blocks.
//! - GetInfo, GetErrorText, QueryAllocatedBlocks and AllocateConnectParams return `malloc`ed
//!   memory their `Free*` call frees.
//!
//! Warning lines passed to the `warn` callback end with a newline, like VDDK's own. The
//! callbacks get the message as a format without conversions (`%` escaped as `%%`) and an
//! empty `va_list`.
//!
//! # Call log
//! With `FAKE_VDDK_LOG` set, every call appends one JSON object line (written with one
//! `write`, so concurrent lines do not mix) with `"call"` (the name without `VixDiskLib_`),
//! `"thread"` (the OS thread id) and `"result"` (the VixError number) where the call returns
//! one, plus its arguments; calls on a handle add `"disk"` (its datastore path):
//!
//! | call | fields |
//! | --- | --- |
//! | InitEx | major, minor, libdir, config, ld_library_path (the environment's, or null), again (a second InitEx), errors (malformed knobs) |
//! | ConnectEx | vmxSpec, serverName, thumbPrint, port, nfcHostPort, credType, userName, password ("ok" / "wrong" / "none" against `FAKE_VDDK_PASSWORD`, "set" / "none" without it: never the text), readOnly (the Bool as a number), snapshotRef, transportModes |
//! | PrepareForAccess, EndAccess | identity, vmxSpec |
//! | Open | path, flags, file (the local file chosen, or null) |
//! | GetInfo | capacity |
//! | Read, ReadAsync | sector, count (ReadAsync at submission, result 25000 when queued) |
//! | ReadAsyncDone | sector, count, result: a completion, on the completion thread |
//! | QueryAllocatedBlocks | start, count, chunk, blocks (the number returned, or null) |
//! | Close | pending (asynchronous reads outstanding when Close was called) |
//! | GetTransportMode | mode |
//! | ListTransportModes | modes |
//! | GetErrorText | code |
//! | Disconnect | server |
//! | Wait, Flush, Exit, FreeInfo, FreeErrorText, FreeBlockList, AllocateConnectParams, FreeConnectParams | none |
//!
//! Without `FAKE_VDDK_LOG` no log line is even built, so benchmarks pay nothing for it.

pub mod api;
pub mod api67;
mod connection;
mod disk;
mod extents;
mod ffi;
mod global;
mod knobs;
