//! Finding and loading VixDiskLib from the directory the user provides (CDI mounts it at
//! `/opt/vmware-vix-disklib-distrib`): `lib64/libvixDiskLib.so.N`, then `libvixDiskLib.so.N`,
//! newest major version first. Every symbol ferry uses is listed once with whether VDDK must have
//! it and the VDDK version that added it; a library without a required symbol is refused with
//! the missing names, and optional ones may be absent (the caller asks [`Loaded::has`]).
//!
//! VDDK's own dependencies live in its `lib64` directory; the dynamic loader finds them only
//! through `LD_LIBRARY_PATH`, which a process reads at start, so the program that loads VDDK
//! must start with it set ([`lib64_dir`] names the directory).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::VixDiskLib;

/// Major versions of `libvixDiskLib.so.N` looked for, newest first.
pub const VERSIONS: [u32; 4] = [9, 8, 7, 6];

/// A VixDiskLib symbol ferry uses.
#[derive(Debug, Clone, Copy)]
pub struct Symbol {
    /// Its name.
    pub name: &'static str,
    /// Whether a library without it is refused.
    pub required: bool,
    /// The VDDK version that added it.
    pub since: &'static str,
}

const fn req(name: &'static str, since: &'static str) -> Symbol {
    Symbol {
        name,
        required: true,
        since,
    }
}

const fn opt(name: &'static str, since: &'static str) -> Symbol {
    Symbol {
        name,
        required: false,
        since,
    }
}

/// Every symbol ferry uses. Required are the calls made without a fallback; the others are
/// optional: without GetErrorText a failure names only its code, without GetTransportMode the
/// mode is "unknown", without ReadAsync and Wait reads are synchronous, without
/// QueryAllocatedBlocks every range is data, and without AllocateConnectParams the parameters
/// are a structure of our own.
pub const SYMBOLS: [Symbol; 19] = [
    req("VixDiskLib_InitEx", "5.5"),
    req("VixDiskLib_Exit", "5.5"),
    req("VixDiskLib_ConnectEx", "5.5"),
    req("VixDiskLib_Disconnect", "5.5"),
    req("VixDiskLib_Open", "5.5"),
    req("VixDiskLib_Close", "5.5"),
    req("VixDiskLib_GetInfo", "5.5"),
    req("VixDiskLib_FreeInfo", "5.5"),
    req("VixDiskLib_Read", "5.5"),
    opt("VixDiskLib_GetErrorText", "5.5"),
    opt("VixDiskLib_FreeErrorText", "5.5"),
    opt("VixDiskLib_GetTransportMode", "5.5"),
    opt("VixDiskLib_ListTransportModes", "5.5"),
    opt("VixDiskLib_ReadAsync", "6.0"),
    opt("VixDiskLib_Wait", "6.0"),
    opt("VixDiskLib_QueryAllocatedBlocks", "6.7"),
    opt("VixDiskLib_FreeBlockList", "6.7"),
    opt("VixDiskLib_AllocateConnectParams", "6.7"),
    opt("VixDiskLib_FreeConnectParams", "6.7"),
];

/// Whether `lib` has the symbol `name` (false for names ferry does not use).
fn present(lib: &VixDiskLib, name: &str) -> bool {
    match name {
        "VixDiskLib_InitEx" => lib.VixDiskLib_InitEx.is_ok(),
        "VixDiskLib_Exit" => lib.VixDiskLib_Exit.is_ok(),
        "VixDiskLib_ConnectEx" => lib.VixDiskLib_ConnectEx.is_ok(),
        "VixDiskLib_Disconnect" => lib.VixDiskLib_Disconnect.is_ok(),
        "VixDiskLib_Open" => lib.VixDiskLib_Open.is_ok(),
        "VixDiskLib_Close" => lib.VixDiskLib_Close.is_ok(),
        "VixDiskLib_GetInfo" => lib.VixDiskLib_GetInfo.is_ok(),
        "VixDiskLib_FreeInfo" => lib.VixDiskLib_FreeInfo.is_ok(),
        "VixDiskLib_Read" => lib.VixDiskLib_Read.is_ok(),
        "VixDiskLib_GetErrorText" => lib.VixDiskLib_GetErrorText.is_ok(),
        "VixDiskLib_FreeErrorText" => lib.VixDiskLib_FreeErrorText.is_ok(),
        "VixDiskLib_GetTransportMode" => lib.VixDiskLib_GetTransportMode.is_ok(),
        "VixDiskLib_ListTransportModes" => lib.VixDiskLib_ListTransportModes.is_ok(),
        "VixDiskLib_ReadAsync" => lib.VixDiskLib_ReadAsync.is_ok(),
        "VixDiskLib_Wait" => lib.VixDiskLib_Wait.is_ok(),
        "VixDiskLib_QueryAllocatedBlocks" => lib.VixDiskLib_QueryAllocatedBlocks.is_ok(),
        "VixDiskLib_FreeBlockList" => lib.VixDiskLib_FreeBlockList.is_ok(),
        "VixDiskLib_AllocateConnectParams" => lib.VixDiskLib_AllocateConnectParams.is_ok(),
        "VixDiskLib_FreeConnectParams" => lib.VixDiskLib_FreeConnectParams.is_ok(),
        _ => false,
    }
}

/// Why VDDK could not be loaded: one line naming the directory and every reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(String);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

/// A loaded VixDiskLib.
pub struct Loaded {
    /// The raw entry points.
    pub lib: VixDiskLib,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Its major version (the `N` of `libvixDiskLib.so.N`).
    pub major: u32,
}

impl Loaded {
    /// Whether the library has `name` (optional symbols may be absent).
    pub fn has(&self, name: &str) -> bool {
        present(&self.lib, name)
    }

    /// Whether reads can be asynchronous: ReadAsync is used only together with Wait, which
    /// is what makes it safe to close a handle (and free its buffers) after them.
    pub fn async_reads(&self) -> bool {
        self.has("VixDiskLib_ReadAsync") && self.has("VixDiskLib_Wait")
    }

    /// The optional symbols the library lacks.
    pub fn missing_optional(&self) -> Vec<&'static str> {
        SYMBOLS
            .iter()
            .filter(|s| !s.required && !present(&self.lib, s.name))
            .map(|s| s.name)
            .collect()
    }
}

/// The directory of VDDK's own shared libraries under `libdir`.
pub fn lib64_dir(libdir: &Path) -> PathBuf {
    libdir.join("lib64")
}

/// The files looked for under `libdir`, in order.
pub fn candidates(libdir: &Path) -> Vec<(PathBuf, u32)> {
    let mut v = Vec::new();
    for n in VERSIONS {
        v.push((lib64_dir(libdir).join(format!("libvixDiskLib.so.{n}")), n));
        v.push((libdir.join(format!("libvixDiskLib.so.{n}")), n));
    }
    v
}

/// Loads the newest `libvixDiskLib.so.N` under `libdir` and checks its required symbols.
pub fn load(libdir: &Path) -> Result<Loaded, LoadError> {
    let mut reasons: Vec<String> = Vec::new();
    for (path, major) in candidates(libdir) {
        if !path.exists() {
            continue;
        }
        // SAFETY: loading a shared library runs its initialisers. The file is the VixDiskLib
        // of the VDDK installation the user pointed us at (only the names VDDK ships are
        // tried), which is the trust the user gives VDDK anyway; the library stays loaded for
        // as long as `Loaded` (and every function pointer taken from it) lives.
        let lib = match unsafe { VixDiskLib::new(&path) } {
            Ok(lib) => lib,
            Err(e) => {
                reasons.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let missing: Vec<&str> = SYMBOLS
            .iter()
            .filter(|s| s.required && !present(&lib, s.name))
            .map(|s| s.name)
            .collect();
        if !missing.is_empty() {
            reasons.push(format!(
                "{}: not a usable VixDiskLib (missing {})",
                path.display(),
                missing.join(", ")
            ));
            continue;
        }
        return Ok(Loaded { lib, path, major });
    }
    if reasons.is_empty() {
        return Err(LoadError(format!(
            "cannot load VDDK from {}: no libvixDiskLib.so.{{{}}} in {} or {}",
            libdir.display(),
            VERSIONS.map(|n| n.to_string()).join(","),
            lib64_dir(libdir).display(),
            libdir.display()
        )));
    }
    Err(LoadError(format!(
        "cannot load VDDK from {}: {}",
        libdir.display(),
        reasons.join("; ")
    )))
}
