//! `trainer synth`: a synthetic patch folder.
use std::path::{Path, PathBuf};

use anyhow::Result;

use synth::SynthConfig;

/// `trainer synth`'s flags.
#[derive(clap::Args, Debug)]
pub(crate) struct SynthArgs {
    /// Output folder (must not already hold an index).
    #[arg(short, long)]
    pub(crate) out: PathBuf,
    /// Series (2 to 100000).
    #[arg(long, default_value_t = SynthConfig::default().series)]
    pub(crate) series: usize,
    /// Patches per series (1 to 100000; 10 million in all at most).
    #[arg(long, default_value_t = SynthConfig::default().patches_per_series)]
    pub(crate) patches_per_series: usize,
    /// Chance of a patch being a nodule, in (0, 1).
    #[arg(long, default_value_t = SynthConfig::default().positive_fraction)]
    pub(crate) positive_fraction: f64,
    /// Cube side in voxels (1 mm each; 8 to 512).
    #[arg(long, default_value_t = SynthConfig::default().cube_size)]
    pub(crate) cube_size: usize,
    #[arg(long, default_value_t = SynthConfig::default().seed)]
    pub(crate) seed: u64,
    /// Also write tabular features: `suv_max` in the index (carries signal) and
    /// clinical.csv with per-series `pack_years` (no signal), for model.features.
    #[arg(long)]
    pub(crate) features: bool,
}

impl SynthArgs {
    pub(crate) fn config(&self) -> SynthConfig {
        SynthConfig {
            series: self.series,
            patches_per_series: self.patches_per_series,
            positive_fraction: self.positive_fraction,
            cube_size: self.cube_size,
            seed: self.seed,
            features: self.features,
        }
    }
}

/// `trainer synth`.
pub(crate) fn synth(cfg: &SynthConfig, out: &Path) -> Result<()> {
    let idx = synth::generate(cfg, out)?;
    println!(
        "wrote {} patches of {}³ from {} series -> {}",
        cfg.series * cfg.patches_per_series,
        cfg.cube_size,
        cfg.series,
        idx.display()
    );
    Ok(())
}
