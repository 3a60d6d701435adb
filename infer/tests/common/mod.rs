//! What `infer`'s tests share: the binary Cargo builds for them, and the shared patch folder
//! with an untrained model for it (`chain_tests::fixtures::shared`).
#![allow(dead_code)] // each test file uses its own part
use std::path::{Path, PathBuf};

pub use chain_tests::fixtures::PATCHES;
use chain_tests::fixtures::{shared, Shared};
use chain_tests::{run, s};

pub const INFER: &str = env!("CARGO_BIN_EXE_infer");

/// The shared patch folder and its untrained model.
pub fn fixture() -> &'static Shared {
    shared(env!("CARGO_TARGET_TMPDIR"))
}

/// `infer --model MODEL --device cpu -q ARGS` with the fixture's model.
pub fn infer(args: &[&str]) -> chain_tests::Run {
    let mut a = vec!["--model", s(&fixture().model), "--device", "cpu", "-q"];
    a.extend_from_slice(args);
    run(INFER, &a)
}

/// A copy of the fixture's patch folder as `dir/name` (tests must not change the shared one).
pub fn patches_copy(dir: &Path, name: &str) -> PathBuf {
    chain_tests::fixtures::copy_files(&fixture().patches, &dir.join(name))
}
