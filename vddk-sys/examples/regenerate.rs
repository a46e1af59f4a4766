//! Regenerates `src/bindings.rs` from `include/vixDiskLib_ferry.h` with the pinned flags of
//! `regen/mod.rs`. Needs libclang (`apt-get install libclang-dev`).
//!
//! Run: `cargo run -p vddk-sys --example regenerate`

#[path = "../regen/mod.rs"]
mod regen;

fn main() {
    match regen::generate() {
        Ok(text) => {
            let path = regen::bindings_path();
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("regenerate: writing {}: {e}", path.display());
                std::process::exit(1);
            }
            println!("wrote {}", path.display());
        }
        Err(e) => {
            eprintln!("regenerate: {e}");
            std::process::exit(1);
        }
    }
}
