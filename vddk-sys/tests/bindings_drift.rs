//! The committed bindings must be exactly what the pinned generator makes of the header today:
//! a header edit without a regeneration (or a hand edit of the bindings) fails here. Needs
//! libclang; without it the test fails under CI (`CI=true`) and prints SKIP otherwise (test-kit's
//! one skip helper).

#[path = "../regen/mod.rs"]
mod regen;

/// Whether bindgen can load libclang (it panics, rather than erring, when it cannot).
fn libclang_present() -> bool {
    std::panic::catch_unwind(|| {
        bindgen::Builder::default()
            .header_contents("probe.h", "int probe;")
            .generate()
            .is_ok()
    })
    .unwrap_or(false)
}

#[test]
fn committed_bindings_match_the_header() {
    if !libclang_present() {
        test_kit::unavailable("libclang (scripts/install-peers.sh installs libclang-dev)");
        return;
    }
    let fresh = regen::generate().expect("generating bindings");
    let committed =
        std::fs::read_to_string(regen::bindings_path()).expect("reading src/bindings.rs");

    assert!(
        fresh == committed,
        "src/bindings.rs differs from what the header generates; run \
         `cargo run -p vddk-sys --example regenerate` and commit the result"
    );
}
