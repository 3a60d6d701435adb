//! From the best checkpoint to `model.onnx`, then the libtorch ↔ ONNX Runtime parity check.
use std::collections::BTreeMap;
use std::path::Path;

use crate::{Result, TrainError};
use serde::Serialize;
use tch::nn;
use tch::Tensor;

use models::preprocess::Preprocess;
use models::spec::ArchSpec;

use crate::net::{self, Net};

/// Largest |Δlogit| between libtorch and ONNX Runtime a run accepts, for logits up to 1 in
/// size; beyond that the bound grows with the largest logit (see [`scaled_diff`]).
pub const PARITY_TOLERANCE: f64 = 1e-4;

/// `max |aᵢ − bᵢ| / max(1, max |aᵢ|)` over the libtorch logits `a` and the ONNX Runtime
/// logits `b`; infinite when any logit is not finite. The check passes when it is at most
/// [`PARITY_TOLERANCE`]: an absolute bound of 1e-4 while every logit is within [−1, 1], and
/// beyond that one relative to the largest. fp32 sums taken in another order differ in
/// proportion to the size of what is summed, and a network trained for an epoch or two,
/// whose BatchNorm running statistics are still far from its activations, can give logits
/// in the thousands; a patch whose logit cancels to near 0 among them carries the same
/// absolute error, hence the run's largest logit rather than each patch's own. An export
/// error (a wrong weight, a wrong layout) moves logits by a sizeable fraction of that scale.
pub fn scaled_diff(a: &[f32], b: &[f32]) -> f64 {
    let (mut diff, mut scale) = (0.0f64, 1.0f64);
    for (&a, &b) in a.iter().zip(b) {
        if !(a.is_finite() && b.is_finite()) {
            return f64::INFINITY;
        }
        diff = diff.max((f64::from(a) - f64::from(b)).abs());
        scale = scale.max(f64::from(a.abs()));
    }
    diff / scale
}

/// Everything a scorer must know, for the ONNX file's `metadata_props`
/// ([`models::onnx::model_metadata`]), with this build's git commit.
pub fn metadata(spec: &ArchSpec, pre: &Preprocess, extra: &[(&str, String)]) -> Result<BTreeMap<String, String>> {
    let mut all = vec![("tool.git_commit", env!("NODULE_GIT_COMMIT").to_string())];
    all.extend(extra.iter().cloned());
    Ok(models::onnx::model_metadata(spec, pre, &all)?)
}

/// Writes `model.onnx` for `spec` with the VarStore's weights, atomically.
pub fn export_onnx(
    spec: &ArchSpec,
    vs: &nn::VarStore,
    pre: &Preprocess,
    md: &BTreeMap<String, String>,
    out: &Path,
) -> Result<()> {
    // One copy of the weights at a time besides the encoded bytes: the host copy is dropped
    // once the model holds its own, and the model once it is encoded.
    let model = {
        let weights = net::weights(vs)?;
        models::onnx::export(spec, &weights, pre.cube_size, md)?
    };
    let bytes = models::onnx::to_bytes(&model);
    drop(model);
    files::write_atomic(out, &bytes)?;
    Ok(())
}

/// The outcome of the parity check, written to the run folder.
#[derive(Debug, Clone, Serialize)]
pub struct Parity {
    pub patches: usize,
    pub batch_size: usize,
    pub max_abs_diff_logit: f64,
    pub mean_abs_diff_logit: f64,
    /// [`scaled_diff`]: max |Δlogit| / max(1, max |libtorch logit|).
    pub max_scaled_diff_logit: f64,
    /// The bound on `max_scaled_diff_logit`.
    pub tolerance: f64,
    pub passed: bool,
    pub onnxruntime_version: String,
    pub onnxruntime_provider: String,
    /// The training device; when it is a GPU, the same weights are also run there (fp32;
    /// cuDNN may use TF32) and compared with ONNX Runtime, for information.
    pub device: String,
    pub device_max_abs_diff_logit: Option<f64>,
}

/// The cubes (each `D³`, preprocessed) and tabular features (`F` raw values each; empty for a
/// model without) of a range of patches, for [`parity`].
pub type Fetch<'a> = dyn Fn(std::ops::Range<usize>) -> Result<(Vec<f32>, Vec<f32>)> + Sync + 'a;

/// Scores `cubes` (each `D³` floats, contiguous, with their features) with libtorch on CPU
/// (eval mode) and with ONNX Runtime on CPU, in batches of `batch`; returns the comparison
/// and the ORT logits. `net` is the network whose variables `vs` holds. When `device` is a
/// GPU the weights are also run there and compared, for information.
#[allow(clippy::too_many_arguments)] // few call sites; a struct would only rename them
pub fn parity(
    spec: &ArchSpec,
    net: &Net,
    vs: &nn::VarStore,
    model: &Path,
    n: usize,
    fetch: &Fetch,
    cube: usize,
    batch: usize,
    ort_lib: Option<&Path>,
    device: tch::Device,
) -> Result<(Parity, Vec<f32>)> {
    let n_vox = cube * cube * cube;
    // The reference runs on the CPU, so CUDA kernels (TF32, cuDNN) do not blur the
    // comparison; weights held elsewhere are copied there (weights on the CPU are not: a
    // copy of r3d_18 is 133 MB).
    let cpu_copy = if vs.device() == tch::Device::Cpu {
        None
    } else {
        Some(copy_to(spec, vs, tch::Device::Cpu, "copying the weights to the CPU")?)
    };
    let net = cpu_copy.as_ref().map_or(net, |(_, n)| n);
    let on_device = if device.is_cuda() {
        Some(copy_to(spec, vs, device, "copying the weights on the device")?)
    } else {
        None
    };
    let mut dev_max = 0.0f64;
    let mut scorer = scorer::Scorer::open(
        model,
        &scorer::ScorerOptions {
            device: scorer::Device::Cpu,
            threads: 0,
            ort_lib: ort_lib.map(Path::to_path_buf),
            spin: false,
        },
    )?;
    let (mut max_d, mut sum_d) = (0.0f64, 0.0f64);
    let mut torch_all = Vec::with_capacity(n);
    let mut ort_all = Vec::with_capacity(n);
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch).min(n);
        let (chunk, feats) = &fetch(start..end)?;
        let nf = net.feature_count();
        if chunk.len() != (end - start) * n_vox || feats.len() != (end - start) * nf {
            return Err(TrainError::Export(format!(
                "parity: {} values and {} features for {} cubes of {cube}³ with {nf} features each",
                chunk.len(),
                feats.len(),
                end - start
            )));
        }
        let x = Tensor::from_slice(chunk).view([(end - start) as i64, 1, cube as i64, cube as i64, cube as i64]);
        let f = (nf > 0).then(|| Tensor::from_slice(feats).view([(end - start) as i64, nf as i64]));
        let t = torch_logits(net, &x, f.as_ref(), batch)?;
        let o = scorer.score_flat_with(chunk, (nf > 0).then_some(feats.as_slice()))?;
        if o.len() != t.len() {
            return Err(TrainError::Export(format!(
                "parity: libtorch gave {} logits, ONNX Runtime {}",
                t.len(),
                o.len()
            )));
        }
        if let Some((g, gnet)) = &on_device {
            dev_max = dev_max.max(device_diff(g, gnet, &x, f.as_ref(), &o)?);
        }
        for (&a, &b) in t.iter().zip(&o) {
            // A non-finite logit on either side fails the check (f64::max would skip NaN).
            let d = if a.is_finite() && b.is_finite() {
                (f64::from(a) - f64::from(b)).abs()
            } else {
                f64::INFINITY
            };
            max_d = max_d.max(d);
            sum_d += d;
        }
        torch_all.extend(t);
        ort_all.extend(o);
    }
    let max_scaled = scaled_diff(&torch_all, &ort_all);
    Ok((
        Parity {
            patches: n,
            batch_size: batch,
            max_abs_diff_logit: max_d,
            mean_abs_diff_logit: sum_d / n.max(1) as f64,
            max_scaled_diff_logit: max_scaled,
            tolerance: PARITY_TOLERANCE,
            passed: max_scaled <= PARITY_TOLERANCE,
            onnxruntime_version: scorer.runtime.version.clone(),
            onnxruntime_provider: scorer.provider.to_string(),
            device: crate::device_name(device),
            device_max_abs_diff_logit: on_device.is_some().then_some(dev_max),
        },
        ort_all,
    ))
}

/// The net's logits on the CPU for cubes `x` (and features `f`), an error naming the batch.
fn torch_logits(net: &Net, x: &Tensor, f: Option<&Tensor>, batch: usize) -> Result<Vec<f32>> {
    let site = crate::error::Site {
        device: tch::Device::Cpu,
        batch: Some(batch),
    };
    crate::error::torch("the parity check's libtorch pass", site, || {
        Ok(Vec::<f32>::try_from(
            &tch::no_grad(|| net.forward_with(x, f, false))?.flatten(0, -1),
        )?)
    })
}

/// A copy of `vs`'s weights in a net of `spec` on `device`.
fn copy_to(spec: &ArchSpec, vs: &nn::VarStore, device: tch::Device, what: &'static str) -> Result<(nn::VarStore, Net)> {
    let mut g = nn::VarStore::new(device);
    let n = Net::new(&g.root(), spec)?;
    g.copy(vs).map_err(TrainError::tch(what))?;
    Ok((g, n))
}

/// The largest difference between the logits of the net on the training device and ONNX
/// Runtime's `o` on the same cubes (infinite when either is not finite).
fn device_diff(g: &nn::VarStore, gnet: &Net, x: &Tensor, f: Option<&Tensor>, o: &[f32]) -> Result<f64> {
    let fd = f.map(|f| f.to_device(g.device()));
    let z = tch::no_grad(|| gnet.forward_with(&x.to_device(g.device()), fd.as_ref(), false))?.flatten(0, -1);
    let mut max = 0.0f64;
    for (a, b) in Vec::<f32>::try_from(&z.to_device(tch::Device::Cpu))?.iter().zip(o) {
        let d = f64::from((a - b).abs());
        max = if d.is_finite() { max.max(d) } else { f64::INFINITY };
    }
    Ok(max)
}

/// `trainer export`: weights from a safetensors state dict (a run's, or one saved from
/// PyTorch with torchvision's names) to a parity-checked ONNX model, without training.
#[derive(Debug, Clone)]
pub struct WeightsExport {
    pub weights: std::path::PathBuf,
    pub out: std::path::PathBuf,
    pub spec: ArchSpec,
    /// The tabular feature columns (`model.features`), for a spec that takes features.
    pub features: Vec<String>,
    pub preprocess: Preprocess,
    pub ort_lib: Option<std::path::PathBuf>,
}

/// What [`export_weights`] did.
#[derive(Debug, Clone)]
pub struct WeightsExported {
    pub parity: Parity,
    pub notes: Vec<String>,
    pub weights_sha256: String,
}

/// Cubes the parity check of an export without data runs on: air, then fields of
/// pseudo-random HU over the window, smoothed so the network sees structure at several
/// scales rather than white noise alone; preprocessed.
pub fn test_cubes(pre: &Preprocess, n: usize) -> Vec<f32> {
    let c = pre.cube_size;
    let mut st: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        (st >> 11) as f32 / (1u64 << 53) as f32
    };
    let mut out = vec![pre.scale(pre.pad_hu); c * c * c];
    for k in 1..n {
        // A ball of soft tissue of random size and place in noisy lung.
        let r = (c as f32) * (0.1 + 0.3 * next());
        let centre = [next(), next(), next()].map(|v| (c as f32) * (0.25 + 0.5 * v));
        let amp = 100.0 * k as f32;
        for z in 0..c {
            for y in 0..c {
                for x in 0..c {
                    let d2 = [z, y, x]
                        .iter()
                        .zip(&centre)
                        .map(|(&p, &q)| (p as f32 - q).powi(2))
                        .sum::<f32>();
                    let base = if d2 <= r * r { 40.0 } else { -850.0 };
                    out.push(pre.scale(base + amp * (next() - 0.5)));
                }
            }
        }
    }
    out
}

/// The name of the spec's `features` layer (the prefix of its buffers).
fn feature_layer(spec: &ArchSpec) -> String {
    spec.layers
        .iter()
        .find_map(|l| match l {
            models::spec::Layer::Features { name, .. } => Some(format!("{name}.")),
            _ => None,
        })
        .unwrap_or_default()
}

/// The tabular features of the parity check's test cubes, for a model with them (none
/// without): the file's statistics go into the metadata `md`, and the test values spread
/// around them (mean + k·std, k from −2 to 2).
fn test_features(job: &WeightsExport, vs: &nn::VarStore, n: usize, md: &mut BTreeMap<String, String>) -> Result<Vec<f32>> {
    let nf = job.spec.feature_count();
    let mut feats = Vec::new();
    if nf == 0 {
        return Ok(feats);
    }
    let w = net::weights(vs)?;
    let stat = |suffix: &str| {
        w.iter()
            .find(|(k, _)| k.ends_with(suffix) && k.starts_with(&feature_layer(&job.spec)))
            .map(|(_, t)| t.data.clone())
            .unwrap_or_default()
    };
    let (mean, std) = (stat(".mean"), stat(".std"));
    let stats = models::features::FeatureStats {
        columns: job.features.clone(),
        mean: mean.clone(),
        std: std.clone(),
    };
    if stats.columns.len() != nf {
        return Err(TrainError::Config(format!(
            "the architecture takes {nf} tabular feature(s), model.features names {}",
            stats.columns.len()
        )));
    }
    md.extend(stats.to_metadata());
    for i in 0..n {
        for c in 0..nf {
            let k = (i as f32 / (n - 1) as f32) * 4.0 - 2.0 + 0.3 * c as f32;
            feats.push(mean[c] + k * std[c]);
        }
    }
    Ok(feats)
}

/// Reads, matches and loads the weights into the spec's network, exports it, and checks
/// libtorch against ONNX Runtime on [`test_cubes`] before the model is written (atomically;
/// a failed check writes nothing).
pub fn export_weights(job: &WeightsExport) -> Result<WeightsExported> {
    let mut io = files::RunIo::new();
    io.input("weights", &job.weights);
    files::create_parent(&job.out)?;
    let target = io.output("model", &job.out)?;
    files::check_replaceable(&job.out, "model", &models::onnx::looks_like_onnx)?;
    let _lock = match &target {
        files::Target::File(p) => Some(files::Lock::beside(
            p,
            &format!("output {}", job.out.display()),
        )?),
        files::Target::Stream(_) => None,
    };
    job.preprocess.validate()?;
    job.spec.validate()?;
    job.spec.check_input(job.preprocess.cube_size)?;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let net = Net::new(&vs.root(), &job.spec)?;
    net::check_names(&vs, &job.spec)?;
    let notes = net::init_from(&vs, &job.spec, &job.weights, Default::default())?;
    let weights_sha256 = files::sha256_file(&job.weights)?;
    let file = job
        .weights
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut extra = vec![
        ("export.weights_file", file),
        ("export.weights_sha256", weights_sha256.clone()),
    ];
    if !notes.is_empty() {
        extra.push(("export.notes", notes.join("; ")));
    }
    let mut md = metadata(&job.spec, &job.preprocess, &extra)?;
    let n = 8;
    let cubes = test_cubes(&job.preprocess, n);
    let n_vox = job.preprocess.cube_size.pow(3);
    let nf = job.spec.feature_count();
    let feats = test_features(job, &vs, n, &mut md)?;
    let fetch = |r: std::ops::Range<usize>| {
        Ok((
            cubes[r.start * n_vox..r.end * n_vox].to_vec(),
            feats[r.start * nf..r.end * nf].to_vec(),
        ))
    };
    let mut checked = None;
    files::replace_with(&job.out, |tmp: &Path| -> Result<()> {
        export_onnx(&job.spec, &vs, &job.preprocess, &md, tmp)?;
        let (p, _) = parity(
            &job.spec,
            &net,
            &vs,
            tmp,
            n,
            &fetch,
            job.preprocess.cube_size,
            4,
            job.ort_lib.as_deref(),
            tch::Device::Cpu,
        )?;
        if !p.passed {
            return Err(TrainError::Export(format!(
                "export parity failed: max |Δlogit| / max(1, largest |logit|) {:.3e} > {:.0e}; nothing written",
                p.max_scaled_diff_logit, p.tolerance
            )));
        }
        checked = Some(p);
        Ok(())
    })?;
    let parity = checked.ok_or_else(|| TrainError::Internal("the export was not checked".into()))?;
    Ok(WeightsExported {
        parity,
        notes,
        weights_sha256,
    })
}
