//! Training configuration: YAML file, then command-line overrides, then defaults. The
//! resolved config is written into the run folder and its hash into the ONNX metadata.
use std::path::{Path, PathBuf};

use crate::{Result, TrainError};
use serde::{Deserialize, Serialize};

use models::preprocess::Preprocess;

/// `pos_weight` of the BCE loss: `auto` = negatives / positives on the training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PosWeight {
    Auto(AutoTag),
    Value(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoTag {
    Auto,
}

/// How to split by series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Fraction of series (in each stratum) held out for validation (single split).
    pub val_fraction: f64,
    pub seed: u64,
    /// k-fold cross-validation over series when ≥ 2: one run folder per fold
    /// (`OUT/fold_N`) and `OUT/cv_summary.yaml`; `val_fraction` is then unused.
    pub folds: usize,
    /// Run only this fold (1-based) of a k-fold split.
    pub fold: Option<usize>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            val_fraction: 0.25,
            seed: 42,
            folds: 0,
            fold: None,
        }
    }
}

/// The optimisation loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainLoop {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub pos_weight: PosWeight,
    /// Linear warm-up of the learning rate over this many epochs, then cosine decay to 0.
    pub warmup_epochs: usize,
    /// Clip the global gradient norm to this (0: off).
    pub grad_clip: f64,
    /// Stop after this many epochs without a better validation AUROC (0: never).
    pub early_stopping_patience: usize,
    /// `shuffle` (each patch once per epoch) or `balanced` (as many positives as negatives,
    /// drawn with replacement).
    pub sampler: Sampler,
    /// `bce` (with `pos_weight`) or `focal` (BCE scaled by `(1 − p_t)^gamma`).
    pub loss: Loss,
    pub focal_gamma: f64,
    /// Augmentation of training patches, both classes.
    pub augment: crate::augment::Augment,
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads (0: its default).
    pub threads: usize,
    /// `auto` (fp16 mixed precision on CUDA, fp32 on CPU), `fp32`, or `fp16` (CUDA only:
    /// autocast with dynamic loss scaling).
    pub precision: Precision,
    /// Memory for preprocessed patches, in MiB (validation first, then training); patches
    /// beyond it are read from disk for every batch, in parallel and ahead of the step.
    /// Unset: every patch in memory.
    pub cache_mb: Option<u64>,
    /// Start from these weights instead of a random initialisation: a safetensors state
    /// dict with torchvision's names (a run's `best.safetensors`, or one saved from
    /// PyTorch), matched strictly ([`models::state_dict`]). A resumed run continues from its
    /// checkpoint instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// With `init`: leave the file's head out and initialise it afresh (a head of another
    /// shape, such as a Kinetics-400 classifier's).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reinit_head: bool,
    /// With `init`: leave the file's first convolution out and initialise it afresh
    /// (torchvision's Kinetics-400 `r3d_18` has a 3×7×7 stem where the notebook's is 7³; the
    /// notebook replaced it by a fresh one).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reinit_stem: bool,
}

impl TrainLoop {
    /// What of `init` to leave out.
    pub fn reinit(&self) -> models::state_dict::Reinit {
        models::state_dict::Reinit {
            stem: self.reinit_stem,
            head: self.reinit_head,
            features: true,
            training: true,
        }
    }
}

/// Arithmetic precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Auto,
    Fp32,
    Fp16,
}

/// How training batches are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    Shuffle,
    Balanced,
}

/// The training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    Bce,
    Focal,
}

impl Default for TrainLoop {
    fn default() -> Self {
        TrainLoop {
            epochs: 10,
            batch_size: 16,
            lr: 1e-3,
            weight_decay: 1e-4,
            pos_weight: PosWeight::Auto(AutoTag::Auto),
            warmup_epochs: 1,
            grad_clip: 1.0,
            early_stopping_patience: 10,
            sampler: Sampler::Shuffle,
            loss: Loss::Bce,
            focal_gamma: 2.0,
            augment: crate::augment::Augment::default(),
            seed: 0,
            device: "auto".into(),
            threads: 0,
            precision: Precision::Auto,
            cache_mb: None,
            init: None,
            reinit_head: false,
            reinit_stem: false,
        }
    }
}

/// Largest `model.width` (the baseline's last stage has 4× that many channels).
pub const MAX_WIDTH: usize = 256;
/// Largest `train.lr`: AdamW moves each weight by about `lr` per step, so beyond 1 it
/// cannot train.
pub const MAX_LR: f64 = 1.0;
/// Largest `train.batch_size`.
pub const MAX_BATCH: usize = 4096;
/// Largest `train.epochs`.
pub const MAX_EPOCHS: usize = 100_000;

/// The model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A built-in architecture: `baseline_cnn`, `r3d_18`, `mc3_18` or `r2plus1d_18` (or, with
    /// `spec`, that spec's name).
    pub arch: String,
    /// Width of the baseline CNN's first stage (the other architectures have fixed widths).
    pub width: usize,
    /// An architecture as data: a spec file (a path, relative to the config file that names
    /// it) or the spec inline. It replaces `arch`; the run folder's config holds it inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<SpecRef>,
    /// Tabular (clinical) features: numeric columns of the index, or of `features_csv`
    /// joined on `seriesuid`, joined to the image embedding before the head.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// A CSV of per-series values (`seriesuid` and feature columns) for the features the
    /// index lacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features_csv: Option<PathBuf>,
}

/// `model.spec`: a file still to read, or the spec itself.
#[derive(Debug, Clone, PartialEq)]
pub enum SpecRef {
    File(PathBuf),
    Inline(Box<models::spec::ArchSpec>),
}

impl Serialize for SpecRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            SpecRef::File(p) => p.serialize(s),
            SpecRef::Inline(spec) => spec.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SpecRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        match yaml_serde::Value::deserialize(d)? {
            yaml_serde::Value::String(p) => Ok(SpecRef::File(PathBuf::from(p))),
            v @ yaml_serde::Value::Mapping(_) => models::spec::ArchSpec::from_value(v, "model.spec (inline)")
                .map(|s| SpecRef::Inline(Box::new(s)))
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "model.spec must be a spec file's path or a spec inline, got {}",
                match other {
                    yaml_serde::Value::Bool(_) => "a boolean",
                    yaml_serde::Value::Number(_) => "a number",
                    yaml_serde::Value::Sequence(_) => "a list",
                    // (null is no spec at all: the field is optional)
                    _ => "a tagged value",
                }
            ))),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: "baseline_cnn".into(),
            width: 16,
            spec: None,
            features: Vec::new(),
            features_csv: None,
        }
    }
}

impl ModelConfig {
    /// Reads `model.spec` if it names a file (a relative path taken from `dir`) and puts the
    /// spec inline, its name as `arch`. A given `arch` other than the default must be the
    /// spec's name.
    pub fn resolve_spec(&mut self, dir: &Path) -> Result<()> {
        let Some(r) = &self.spec else { return Ok(()) };
        let spec = match r {
            SpecRef::Inline(s) => (**s).clone(),
            SpecRef::File(p) => {
                let p = if p.is_relative() { dir.join(p) } else { p.clone() };
                let text = files::read_regular_to_string(&p)?;
                models::spec::ArchSpec::from_yaml(&text, &p.display().to_string())?
            }
        };
        if self.arch != ModelConfig::default().arch && self.arch != spec.name {
            return Err(TrainError::Config(format!(
                "model.arch `{}` and model.spec (`{}`) both name the architecture; give one",
                self.arch, spec.name
            )));
        }
        self.arch = spec.name.clone();
        self.spec = Some(SpecRef::Inline(Box::new(spec)));
        Ok(())
    }

    pub fn spec(&self) -> Result<models::spec::ArchSpec> {
        if !(1..=MAX_WIDTH).contains(&self.width) {
            return Err(TrainError::Config(format!(
                "model.width must be from 1 to {MAX_WIDTH}, got {}",
                self.width
            )));
        }
        let spec = match (&self.spec, self.arch.as_str()) {
            (Some(SpecRef::Inline(s)), _) => (**s).clone(),
            (Some(SpecRef::File(p)), _) => {
                let text = files::read_regular_to_string(p)?;
                models::spec::ArchSpec::from_yaml(&text, &p.display().to_string())?
            }
            (None, "baseline_cnn") => models::spec::ArchSpec::baseline_cnn(self.width),
            (None, other) => models::spec::ArchSpec::by_name(other)?,
        };
        models::features::check_columns(&self.features)
            .map_err(|e| TrainError::Config(format!("model.features: {e}")))?;
        if self.features_csv.is_some() && self.features.is_empty() {
            return Err(TrainError::Config(
                "model.features_csv is given but model.features names no column".into(),
            ));
        }
        let spec = spec.with_features(self.features.len())?;
        spec.validate()?;
        Ok(spec)
    }

    /// Where the features come from (`None`: a model without features).
    pub fn feature_source(&self) -> Option<models::features::FeatureSource> {
        (!self.features.is_empty()).then(|| models::features::FeatureSource {
            columns: self.features.clone(),
            join: self.features_csv.clone(),
        })
    }
}

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Patch folder (holding `patch_index.csv`) or the index CSV itself.
    pub data: PathBuf,
    /// Run folder to create.
    pub out: PathBuf,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub preprocess: Preprocess,
    #[serde(default)]
    pub split: SplitConfig,
    #[serde(default)]
    pub train: TrainLoop,
}

impl TrainConfig {
    /// Reads a YAML config; unknown keys are errors (a typo must not be ignored quietly).
    pub fn load(path: &Path) -> Result<Self> {
        let text = files::read_regular_to_string(path)?;
        let mut cfg: TrainConfig = yaml_serde::from_str(&text).map_err(TrainError::format(format!(
            "{}: invalid training config",
            path.display()
        )))?;
        cfg.model
            .resolve_spec(path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| TrainError::Config(format!("{}: {e:#}", path.display())))?;
        Ok(cfg)
    }

    /// Checks values, reporting every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut p = Vec::new();
        self.check_model(&mut p);
        self.check_split(&mut p);
        self.check_train(&mut p);
        self.check_augment(&mut p);
        if p.is_empty() {
            Ok(())
        } else {
            Err(TrainError::Config(format!(
                "invalid training config:\n  {}",
                p.join("\n  ")
            )))
        }
    }

    /// The preprocessing, and the architecture against its cube.
    fn check_model(&self, p: &mut Vec<String>) {
        let pre_ok = match self.preprocess.validate() {
            Ok(()) => true,
            Err(e) => {
                p.push(e.to_string());
                false
            }
        };
        match self.model.spec() {
            Err(e) => p.push(format!("{e:#}")),
            Ok(spec) if pre_ok => {
                if let Err(e) = spec.check_input(self.preprocess.cube_size) {
                    p.push(format!("{e:#} (preprocess.cube_size)"));
                }
            }
            Ok(_) => {}
        }
    }

    /// `split`.
    fn check_split(&self, p: &mut Vec<String>) {
        if self.split.folds == 1 || self.split.folds > 100 {
            p.push(format!(
                "split.folds must be 0 (single split) or 2 to 100, got {}",
                self.split.folds
            ));
        }
        if let Some(f) = self.split.fold {
            if self.split.folds < 2 || f == 0 || f > self.split.folds {
                p.push(format!("split.fold {f} needs split.folds >= 2 and 1 <= fold <= folds"));
            }
        }
        if !(0.0 < self.split.val_fraction && self.split.val_fraction < 1.0) {
            p.push(format!(
                "split.val_fraction must be in (0, 1), got {}",
                self.split.val_fraction
            ));
        }
    }

    /// `train`'s optimisation, device and threads.
    fn check_train(&self, p: &mut Vec<String>) {
        let t = &self.train;
        if let Err(e) = host::check_threads("train.threads", t.threads) {
            p.push(e);
        }
        if !(1..=MAX_EPOCHS).contains(&t.epochs) {
            p.push(format!("train.epochs must be from 1 to {MAX_EPOCHS}, got {}", t.epochs));
        }
        if !(2..=MAX_BATCH).contains(&t.batch_size) {
            p.push(format!(
                "train.batch_size must be from 2 (BatchNorm needs two samples) to {MAX_BATCH}, got {}",
                t.batch_size
            ));
        }
        if !(t.lr > 0.0 && t.lr <= MAX_LR) {
            p.push(format!("train.lr must be in (0, {MAX_LR}], got {}", t.lr));
        }
        if (t.reinit_head || t.reinit_stem) && t.init.is_none() {
            p.push(
                "train.reinit_head and train.reinit_stem need train.init (the weights to leave them out of)"
                    .to_string(),
            );
        }
        if !(t.weight_decay.is_finite() && (0.0..=1.0).contains(&t.weight_decay)) {
            p.push(format!("train.weight_decay must be in [0, 1], got {}", t.weight_decay));
        }
        if let PosWeight::Value(v) = t.pos_weight {
            if !(v > 0.0 && v <= 1e6) {
                p.push(format!(
                    "train.pos_weight must be `auto` or a number in (0, 1e6], got {v}"
                ));
            }
        }
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            p.push(format!(
                "train.grad_clip must be a finite number >= 0 (0: off), got {}",
                t.grad_clip
            ));
        }
        if !(0.0..=10.0).contains(&t.focal_gamma) {
            p.push(format!("train.focal_gamma must be in [0, 10], got {}", t.focal_gamma));
        }
        if t.warmup_epochs >= t.epochs && t.epochs > 1 {
            p.push(format!(
                "train.warmup_epochs ({}) must be below train.epochs ({})",
                t.warmup_epochs, t.epochs
            ));
        }
        if crate::parse_device(&t.device).is_err() {
            p.push(format!("train.device `{}` is not auto, cpu, cuda or cuda:N", t.device));
        }
    }

    /// `train.augment`, against the cube.
    fn check_augment(&self, p: &mut Vec<String>) {
        let t = &self.train;
        let a = &t.augment;
        let half = self.preprocess.cube_size / 2;
        if a.jitter_voxels >= half.max(1) {
            p.push(format!(
                "train.augment.jitter_voxels must be below half the cube ({half} for {}³), got {}",
                self.preprocess.cube_size, a.jitter_voxels
            ));
        }
        if !(0.0..1.0).contains(&a.intensity_scale) {
            p.push(format!(
                "train.augment.intensity_scale must be in [0, 1) (x·(1 + a) with |a| below it), got {}",
                a.intensity_scale
            ));
        }
        if !(0.0..=1.0).contains(&a.intensity_shift) {
            p.push(format!(
                "train.augment.intensity_shift must be in [0, 1] (on the preprocessed scale), got {}",
                a.intensity_shift
            ));
        }
    }

    /// Hex sha256 of the resolved config as YAML.
    pub fn sha256(&self) -> Result<String> {
        Ok(files::sha256_bytes(yaml_serde::to_string(self)?.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_defaults_and_unknown_keys() {
        let c: TrainConfig =
            yaml_serde::from_str("data: d\nout: o\ntrain:\n  epochs: 3\n  pos_weight: 2.5\n").expect("parse");
        assert_eq!(c.train.epochs, 3);
        assert_eq!(c.train.pos_weight, PosWeight::Value(2.5));
        assert_eq!(c.train.batch_size, 16);
        assert_eq!(c.preprocess.cube_size, 64);
        let c: TrainConfig = yaml_serde::from_str("data: d\nout: o\ntrain:\n  pos_weight: auto\n").expect("parse");
        // A partial section keeps the other defaults.
        let c2: TrainConfig =
            yaml_serde::from_str("data: d\nout: o\npreprocess: { cube_size: 32 }\n").expect("partial");
        assert_eq!((c2.preprocess.cube_size, c2.preprocess.hu_min), (32, -1000.0));
        assert_eq!(c.train.pos_weight, PosWeight::Auto(AutoTag::Auto));
        let e = yaml_serde::from_str::<TrainConfig>("data: d\nout: o\ntrain:\n  epoch: 3\n").expect_err("typo");
        assert!(e.to_string().contains("epoch"), "{e}");
    }

    /// A `model.spec` that is neither a path nor a mapping is named by its kind, not by
    /// the YAML library's Debug text (`Number(3)`).
    #[test]
    fn a_spec_of_the_wrong_kind_is_named_for_people() {
        for (v, kind) in [("3", "a number"), ("true", "a boolean"), ("[a, b]", "a list")] {
            let e = yaml_serde::from_str::<TrainConfig>(&format!("data: d\nout: o\nmodel:\n  spec: {v}\n"))
                .expect_err("not a spec");
            let msg = e.to_string();
            assert!(msg.contains(&format!("a spec inline, got {kind}")), "{v}: {msg}");
        }
    }

    #[test]
    fn validate_lists_all_problems() {
        let mut c: TrainConfig = yaml_serde::from_str("data: d\nout: o\n").expect("parse");
        c.train.epochs = 0;
        c.train.lr = -1.0;
        c.train.device = "tpu".into();
        let msg = format!("{:#}", c.validate().expect_err("bad"));
        assert!(
            msg.contains("epochs") && msg.contains("lr") && msg.contains("tpu"),
            "{msg}"
        );
    }
}
