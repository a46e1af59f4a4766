//! What every side-by-side benchmark of ferry shares: the measuring method ([`method`]).
//! The binaries are `transfer-bench` (`src/main.rs`) and those in `src/bin/`.

pub mod method;
