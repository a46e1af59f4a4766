//! Loading VixDiskLib from a directory: the errors name the directory, the files tried and
//! dlopen's reason, and a library without VDDK's required symbols is refused by name.

use std::path::Path;

use vddk_sys::load::{candidates, load, SYMBOLS};

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn an_empty_directory_names_what_was_looked_for() {
    let d = dir();

    let e = load(d.path()).err().expect("nothing to load");

    let msg = e.to_string();
    assert!(msg.contains(&d.path().display().to_string()), "{msg}");
    assert!(msg.contains("libvixDiskLib.so.{9,8,7,6}"), "{msg}");
    assert!(msg.contains("lib64"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn a_file_that_is_no_library_gives_dlopens_reason() {
    let d = dir();
    std::fs::create_dir(d.path().join("lib64")).expect("mkdir");
    let fake = d.path().join("lib64/libvixDiskLib.so.8");
    std::fs::write(&fake, b"not an ELF file").expect("write");

    let e = load(d.path()).err().expect("not loadable");

    let msg = e.to_string();
    assert!(msg.contains(&fake.display().to_string()), "{msg}");
    assert!(
        msg.contains("invalid ELF header") || msg.contains("file too short"),
        "dlopen's reason: {msg}"
    );
}

#[test]
fn a_library_without_vddk_symbols_is_refused_by_name() {
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    let d = dir();
    std::os::unix::fs::symlink(libc, d.path().join("libvixDiskLib.so.7")).expect("symlink");

    let e = load(d.path()).err().expect("libc is no VixDiskLib");

    let msg = e.to_string();
    assert!(msg.contains("not a usable VixDiskLib"), "{msg}");
    assert!(msg.contains("VixDiskLib_InitEx"), "{msg}");
    assert!(msg.contains("VixDiskLib_ConnectEx"), "{msg}");
    assert!(
        !msg.contains("VixDiskLib_QueryAllocatedBlocks"),
        "optional symbols are not required: {msg}"
    );
}

#[test]
fn newest_versions_and_lib64_come_first() {
    let c = candidates(Path::new("/opt/vddk"));

    let names: Vec<String> = c.iter().map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(names[0], "/opt/vddk/lib64/libvixDiskLib.so.9");
    assert_eq!(names[1], "/opt/vddk/libvixDiskLib.so.9");
    assert_eq!(names[2], "/opt/vddk/lib64/libvixDiskLib.so.8");
    assert_eq!(
        names.last().map(String::as_str),
        Some("/opt/vddk/libvixDiskLib.so.6")
    );
    assert_eq!(
        c.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [9, 9, 8, 8, 7, 7, 6, 6]
    );
}

/// Builds `lib64/libvixDiskLib.so.8` under `d` from C stubs that export exactly `names`.
fn stub_library(d: &Path, names: &[&str]) {
    let lib64 = d.join("lib64");
    std::fs::create_dir_all(&lib64).expect("mkdir");
    let c = d.join("stubs.c");
    let src: String = names
        .iter()
        .map(|n| format!("int {n}(void) {{ return 1; }}\n"))
        .collect();
    std::fs::write(&c, src).expect("write");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(lib64.join("libvixDiskLib.so.8"))
        .arg(&c)
        .output()
        .expect("run cc (the C compiler Rust links with)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_library_with_only_the_calls_ferry_cannot_do_without_loads() {
    let required: Vec<&str> = SYMBOLS
        .iter()
        .filter(|s| s.required)
        .map(|s| s.name)
        .collect();
    let d = dir();
    stub_library(d.path(), &required);

    let lib = load(d.path()).expect("the required calls are enough");

    assert!(!lib.has("VixDiskLib_ListTransportModes"));
    assert!(!lib.async_reads(), "no ReadAsync: synchronous reads");
    let optional: Vec<&str> = SYMBOLS
        .iter()
        .filter(|s| !s.required)
        .map(|s| s.name)
        .collect();
    assert_eq!(lib.missing_optional(), optional);

    // ReadAsync is used only with Wait.
    let d = dir();
    stub_library(
        d.path(),
        &[&required[..], &["VixDiskLib_ReadAsync"]].concat(),
    );
    assert!(!load(d.path()).expect("loads").async_reads());
    let d = dir();
    let both = [&required[..], &["VixDiskLib_ReadAsync", "VixDiskLib_Wait"]].concat();
    stub_library(d.path(), &both);
    assert!(load(d.path()).expect("loads").async_reads());
}

#[test]
fn required_are_exactly_the_calls_without_a_fallback() {
    let required: Vec<&str> = SYMBOLS
        .iter()
        .filter(|s| s.required)
        .map(|s| s.name.trim_start_matches("VixDiskLib_"))
        .collect();

    assert_eq!(
        required,
        [
            "InitEx",
            "Exit",
            "ConnectEx",
            "Disconnect",
            "Open",
            "Close",
            "GetInfo",
            "FreeInfo",
            "Read"
        ]
    );
    for never_called in ["PrepareForAccess", "EndAccess", "Flush"] {
        assert!(
            !SYMBOLS.iter().any(|s| s.name.ends_with(never_called)),
            "{never_called} is not called, so not looked for"
        );
    }
    assert!(SYMBOLS
        .iter()
        .filter(|s| s.required)
        .all(|s| s.since == "5.5"));
}
