//! A tiny trained run shared by the tests of this binary (trained once, through the real
//! `trainer`), under cargo's per-target temporary folder.
use std::path::PathBuf;
use std::sync::OnceLock;

use chain_tests::{run_ok, s, synth};

pub struct Fixture {
    pub root: PathBuf,
    pub patches: PathBuf,
    pub run: PathBuf,
    pub train_stdout: String,
}

pub const CUBE: usize = 16;
pub const EPOCHS: usize = 4;
/// 20 series of 4 patches: validation gets 5 series, enough for 5-fold series-grouped
/// cross-validation in `calibrate --method auto`.
pub const SERIES: usize = 20;
pub const PER_SERIES: usize = 4;
pub const PATCHES: usize = SERIES * PER_SERIES;

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let root = chain_tests::process_dir(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")), "chain");
        let patches = synth(&root, SERIES, PER_SERIES, CUBE, 5);
        let run = root.join("run");
        let r = run_ok(
            "trainer",
            &[
                "train",
                "--data",
                s(&patches),
                "--out",
                s(&run),
                "--cube-size",
                &CUBE.to_string(),
                "--width",
                "4",
                "--epochs",
                &EPOCHS.to_string(),
                "--batch-size",
                "8",
                "--lr",
                "0.003",
                "--device",
                "cpu",
            ],
        );
        Fixture {
            root,
            patches,
            run,
            train_stdout: r.stdout,
        }
    })
}
