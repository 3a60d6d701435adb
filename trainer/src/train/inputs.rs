//! What a training run reads: the index and its series split ([`find`], cheap, before the
//! run folder is touched), then every patch, read and checked ([`load`]), and ONNX Runtime
//! located for the parity check at the end (an hour of training must not end in "library
//! not found").
use std::collections::BTreeSet;

use crate::{Result, TrainError};
use tch::Device;

use tables::index::PatchIndex;
use models::spec::ArchSpec;

use crate::config::{PosWeight, Precision, TrainConfig};
use crate::data::{Cubes, Side, Split};
use crate::train::RunOptions;

/// The index, the split and the device, found before anything is written.
pub struct Found {
    pub spec: ArchSpec,
    pub index: PatchIndex,
    pub split: Split,
    pub device: Device,
    /// fp16 mixed precision (CUDA only).
    pub amp: bool,
    /// `split.csv` as the run writes it.
    pub manifest: Vec<u8>,
    /// `train.init`'s weights, matched to the spec before any work (taken by the start of
    /// training, which loads them, so they are not held through it).
    pub init: Option<models::state_dict::Matched>,
    /// `train.init`'s sha256, for the model's metadata.
    pub init_sha256: Option<String>,
    /// Each index row's tabular features, by patch file (a model with them).
    pub features: Option<std::collections::HashMap<String, Vec<f32>>>,
}

/// Everything the epochs train on.
pub struct Data {
    pub found: Found,
    pub train: Cubes,
    pub val: Cubes,
    /// Positives among the training patches.
    pub n_pos: usize,
    pub pos_weight: f64,
    /// Series on the validation side.
    pub val_series: usize,
    /// The tabular features' training-split statistics (a model with features).
    pub feature_stats: Option<models::features::FeatureStats>,
}

impl Data {
    /// What the run trains on, in the lines it prints first.
    pub fn describe(&self, cfg: &TrainConfig) -> Vec<String> {
        let (train, val, f) = (&self.train, &self.val, &self.found);
        let mut lines = vec![format!(
            "trainer: {} on {}{}; train {} patches ({} positive), val {} patches ({} positive) from {} series; pos_weight {:.3}",
            f.spec.name,
            crate::device_name(f.device),
            if f.amp { " (fp16 mixed precision, loss scaling)" } else { " (fp32)" },
            train.len(),
            self.n_pos,
            val.len(),
            val.labels.iter().filter(|&&l| l == 1.0).count(),
            self.val_series,
            self.pos_weight
        )];
        // Which folder relative paths were taken from (a config's `model.spec` excepted:
        // from the config file's folder, resolved when it was read).
        let relative: Vec<String> = [
            ("data", Some(&cfg.data)),
            ("out", Some(&cfg.out)),
            ("train.init", cfg.train.init.as_ref()),
            ("model.features_csv", cfg.model.features_csv.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.filter(|p| p.is_relative()).map(|p| format!("{k} {}", p.display())))
        .collect();
        if !relative.is_empty() {
            let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
            lines.push(format!(
                "trainer: {} (relative: from the working folder {cwd})",
                relative.join(", ")
            ));
        }
        if cfg.train.cache_mb.is_some() {
            lines.push(format!(
                "patches in memory: {} of {} validation, {} of {} training ({:.0} MiB); the rest are read from disk for each batch",
                val.cached(),
                val.len(),
                train.cached(),
                train.len(),
                (val.cache_bytes() + train.cache_bytes()) as f64 / f64::from(1 << 20)
            ));
        }
        lines
    }

    /// The validation labels as 0/1.
    pub fn val_labels(&self) -> Vec<u8> {
        self.val.labels.iter().map(|&l| l as u8).collect()
    }
}

/// `fp16` or `fp32`: what `precision` resolves to on `device`.
fn resolve_precision(cfg: &TrainConfig, device: Device) -> Result<bool> {
    Ok(match (cfg.train.precision, device.is_cuda()) {
        (Precision::Fp16, false) => {
            return Err(TrainError::Config(format!(
                "train.precision fp16 needs a CUDA device (the run resolved to {}); use auto or fp32",
                crate::device_name(device)
            )))
        }
        (Precision::Fp32, _) | (Precision::Auto, false) => false,
        (Precision::Fp16 | Precision::Auto, true) => true,
    })
}

/// Reads the index (every patch file must exist), splits it by series, resolves the device,
/// and reads and matches `train.init`'s weights.
pub fn find(cfg: &TrainConfig) -> Result<Found> {
    let spec = cfg.model.spec()?;
    let index = PatchIndex::read(&cfg.data)?;
    let split = Split::new(&index.rows, &cfg.split, &index.path)?;
    let device = crate::resolve_device(&cfg.train.device)?;
    let amp = resolve_precision(cfg, device)?;
    let manifest = split.manifest_csv(&index.rows)?;
    // The features are read (and every bad value reported) before the run folder is touched.
    let features = match cfg.model.feature_source() {
        Some(src) => Some(crate::data::read_features(&index, &src)?),
        None => None,
    };
    let (init, init_sha256) = match &cfg.train.init {
        Some(p) => {
            let sd = models::state_dict::read(p)?;
            let m = models::state_dict::match_spec(&spec, sd, p, cfg.train.reinit())?;
            (Some(m), Some(files::sha256_file(p)?))
        }
        None => (None, None),
    };
    Ok(Found {
        features,
        init,
        init_sha256,
        spec,
        index,
        split,
        device,
        amp,
        manifest,
    })
}

/// Reads and preprocesses every patch (a bad file stops the run before training, all of
/// them listed), keeps what the cache budget allows in memory, and locates ONNX Runtime.
pub fn load(cfg: &TrainConfig, opts: &RunOptions, found: Found) -> Result<Data> {
    let pre = &cfg.preprocess;
    let train_rows = found.split.rows(&found.index.rows, Side::Train);
    let val_rows = found.split.rows(&found.index.rows, Side::Val);
    // The cache budget goes to validation first (read in full every epoch), then training.
    let budget = cfg.train.cache_mb.map(|mb| mb.saturating_mul(1 << 20));
    let mut val = Cubes::load(&found.index, &val_rows, pre, budget)?;
    let mut train = Cubes::load(
        &found.index,
        &train_rows,
        pre,
        budget.map(|b| b.saturating_sub(val.cache_bytes() as u64)),
    )?;
    let feature_stats = match (cfg.model.feature_source(), &found.features) {
        (Some(src), Some(values)) => {
            train.set_features(values, src.columns.len())?;
            val.set_features(values, src.columns.len())?;
            Some(
                models::features::FeatureStats::fit(&src.columns, &train.features)
                    .map_err(|e| TrainError::from(files::Error::bad_input(&found.index.path, e)))?,
            )
        }
        _ => None,
    };
    scorer::runtime::init(opts.ort_lib.as_deref())?;
    let n_pos = train.labels.iter().filter(|&&l| l == 1.0).count();
    let pos_weight = match cfg.train.pos_weight {
        PosWeight::Value(v) => v,
        PosWeight::Auto(_) => (train.len() - n_pos) as f64 / n_pos as f64,
    };
    let val_series = val_rows.iter().map(|r| &r.seriesuid).collect::<BTreeSet<_>>().len();
    Ok(Data {
        found,
        train,
        val,
        n_pos,
        pos_weight,
        val_series,
        feature_stats,
    })
}
