//! `trainer ensemble`: the fold models of a k-fold cross-validation (or any models of ours
//! with the same preprocessing) as one ONNX model averaging their logits
//! ([`models::onnx::ensemble`]), checked against the mean of the members' own logits in ONNX
//! Runtime before it is written.
use std::path::{Path, PathBuf};

use crate::{Result, TrainError};

/// What [`build`] made.
#[derive(Debug, Clone)]
pub struct Built {
    pub members: Vec<PathBuf>,
    /// Largest |ensemble logit − mean of the members' logits| on the test cubes.
    pub max_abs_diff: f64,
    pub cubes: usize,
    pub onnxruntime_version: String,
}

/// A member argument: a model file, or a run folder (its `model.onnx`).
fn model_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("model.onnx")
    } else {
        p.to_path_buf()
    }
}

fn open(p: &Path, ort_lib: Option<&Path>) -> Result<scorer::Scorer> {
    Ok(scorer::Scorer::open(
        p,
        &scorer::ScorerOptions {
            device: scorer::Device::Cpu,
            threads: 0,
            ort_lib: ort_lib.map(Path::to_path_buf),
            spin: false,
        },
    )?)
}

/// Builds the ensemble of `members` into `out` (atomically; nothing is written unless the
/// check passes).
pub fn build(members: &[PathBuf], out: &Path, ort_lib: Option<&Path>) -> Result<Built> {
    let paths: Vec<PathBuf> = members.iter().map(|p| model_path(p)).collect();
    let mut io = files::RunIo::new();
    io.inputs("member model", paths.iter().map(PathBuf::as_path));
    files::create_parent(out)?;
    let target = io.output("ensemble model", out)?;
    files::check_replaceable(out, "model", &models::onnx::looks_like_onnx)?;
    let _lock = match &target {
        files::Target::File(p) => Some(files::Lock::beside(p, &format!("output {}", out.display()))?),
        files::Target::Stream(_) => None,
    };
    let mut ms = Vec::with_capacity(paths.len());
    for p in &paths {
        let bytes = files::read_regular(p)?;
        ms.push(models::onnx::ensemble::Member {
            path: p.clone(),
            sha256: files::sha256_bytes(&bytes),
            model: models::onnx::parse_model(&bytes, p)?,
        });
    }
    let extra = [
        ("tool.name", "nodule-toolchain".to_string()),
        ("tool.version", models::TOOL_VERSION.to_string()),
        ("tool.git_commit", env!("NODULE_GIT_COMMIT").to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let model = models::onnx::ensemble::ensemble(&ms, &extra)?;
    let pre = models::preprocess::Preprocess::from_metadata(&models::onnx::metadata(&model))?;
    // Members with tabular features: test values around the first member's statistics
    // (mean + k·std, k from −2 to 2).
    let stats = models::features::FeatureStats::from_metadata(&models::onnx::metadata(&ms[0].model))?;
    drop(ms);
    let bytes = models::onnx::to_bytes(&model);
    drop(model);
    // The members' mean on test cubes, each member in ONNX Runtime on its own.
    let n = 8;
    let cubes = crate::export::test_cubes(&pre, n);
    let feats: Option<Vec<f32>> = stats.map(|s| {
        (0..n)
            .flat_map(|i| {
                let k = (i as f32 / (n - 1) as f32) * 4.0 - 2.0;
                s.mean
                    .iter()
                    .zip(&s.std)
                    .map(move |(m, sd)| m + k * sd)
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    let mut mean = vec![0.0f64; n];
    for p in &paths {
        let logits = open(p, ort_lib)?.score_flat_with(&cubes, feats.as_deref())?;
        for (m, l) in mean.iter_mut().zip(&logits) {
            *m += f64::from(*l) / paths.len() as f64;
        }
    }
    let mut checked = None;
    files::replace_with(out, |tmp: &Path| -> Result<()> {
        std::fs::write(tmp, &bytes).map_err(|e| TrainError::file(format!("{}: cannot write", tmp.display()), e))?;
        let mut sc = open(tmp, ort_lib)?;
        let got = sc.score_flat_with(&cubes, feats.as_deref())?;
        let (mut diff, mut scale) = (0.0f64, 1.0f64);
        for (g, m) in got.iter().zip(&mean) {
            let d = (f64::from(*g) - m).abs();
            diff = if d.is_nan() { f64::INFINITY } else { diff.max(d) };
            scale = scale.max(m.abs());
        }
        if got.len() != n || diff > 1e-5 * scale {
            return Err(TrainError::Export(format!(
                "the ensemble's logits differ from the mean of its members' by {diff:e}; nothing written"
            )));
        }
        checked = Some((diff, sc.runtime.version.clone()));
        Ok(())
    })?;
    let (max_abs_diff, onnxruntime_version) =
        checked.ok_or_else(|| TrainError::Internal("the ensemble was not checked".into()))?;
    Ok(Built {
        members: paths,
        max_abs_diff,
        cubes: n,
        onnxruntime_version,
    })
}
