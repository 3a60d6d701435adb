//! The training run: split, load, train, keep the best checkpoint by validation AUROC,
//! export, check parity, write the run folder.
//!
//! Run folder:
//! * `config.yaml` — the resolved config; `split.csv` — series → train/val;
//! * `metrics.csv` — per epoch: train loss, validation loss, validation AUROC (rewritten
//!   atomically after every epoch, so a run stopped half-way keeps what it finished);
//! * `best.safetensors` — weights of the best epoch by validation AUROC;
//! * `model.onnx` — those weights exported; `parity.yaml` — libtorch vs ONNX Runtime;
//! * `val_scores.csv` — the exported model's validation logits (ONNX Runtime);
//! * `summary.yaml`.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use models::index::PatchIndex;

use crate::config::{Loss, PosWeight, Precision, Sampler, TrainConfig};
use crate::data::{Cubes, Side, Split};
use crate::export;
use crate::net::{self, Net};

/// One epoch's numbers.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_auroc: f64,
    pub val_auprc: f64,
    /// Training samples changed by augmentation, per class (both classes are augmented).
    pub augmented_positive: usize,
    pub augmented_negative: usize,
    /// Training-loop throughput of the epoch (validation excluded).
    pub train_samples_per_s: f64,
    pub seconds: f64,
    pub best: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub device: String,
    pub arch: String,
    pub train_patches: usize,
    pub train_positives: usize,
    pub val_patches: usize,
    pub val_positives: usize,
    pub val_series: usize,
    pub pos_weight: f64,
    pub best_epoch: usize,
    pub best_val_auroc: f64,
    /// AUROC of the exported ONNX model on validation (ONNX Runtime logits).
    pub onnx_val_auroc: f64,
    /// DeLong 95% interval of that AUROC.
    pub onnx_val_auroc_delong_ci95: [f64; 2],
    /// The epoch early stopping ended the run at, if it did.
    pub stopped_early_at_epoch: Option<usize>,
    /// Provenance: tool version and commit, libtorch, CUDA, index and split hashes.
    pub provenance: std::collections::BTreeMap<String, String>,
    pub parity_max_abs_diff_logit: f64,
    /// The figure the parity check bounds: max |Δlogit| / max(1, max |logit|).
    pub parity_max_scaled_diff_logit: f64,
    pub seconds: f64,
}

/// Options that are not part of the reproducible config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Replace an existing run folder's files.
    pub force: bool,
    /// libonnxruntime for the parity check.
    pub ort_lib: Option<PathBuf>,
    /// No per-epoch lines.
    pub quiet: bool,
    /// Continue the run in `cfg.out` from its last finished epoch (same config required).
    pub resume: bool,
    /// Pause after this epoch, leaving the run resumable (no export yet).
    pub stop_after: Option<usize>,
}

/// Where a run stands after each epoch (`train_state.yaml`), for `--resume`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TrainState {
    pub epochs_done: usize,
    pub step: usize,
    pub best_epoch: usize,
    pub best_val_auroc: f64,
    pub best_val_loss: f64,
    /// Set when early stopping ended the run at this epoch.
    #[serde(default)]
    pub stopped_early: Option<usize>,
    pub last_sha256: String,
    pub best_sha256: String,
    pub optimizer_sha256: String,
    /// The fp16 loss scaler's state (mixed-precision runs only).
    #[serde(default)]
    pub grad_scaler: Option<crate::optim::GradScaler>,
    /// `fp16` or `fp32`: what `precision` resolved to.
    #[serde(default)]
    pub precision: Option<String>,
}

/// Every file a run writes (what `--force` clears).
pub const RUN_FILES: &[&str] = &[
    "config.yaml",
    "split.csv",
    "metrics.csv",
    "best.safetensors",
    "last.safetensors",
    "optimizer.safetensors",
    "train_state.yaml",
    "curves.png",
    "model.onnx",
    "model.parity-failed.onnx",
    "parity.yaml",
    "val_scores.csv",
    "summary.yaml",
    "calibration.yaml",
];

fn prepare_run_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read", dir.display()))?
            .next()
            .is_some();
        if non_empty && !force {
            bail!(
                "{}: run folder exists and is not empty; choose another --out or pass --force",
                dir.display()
            );
        }
        // --force: remove the previous run's artefacts so the folder never mixes two runs.
        for name in RUN_FILES {
            let p = dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("{}: cannot remove", p.display()))?;
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create run folder", dir.display()))
}

/// Training batches assembled ahead of the one being trained on.
const PREFETCH_BATCHES: usize = 2;

type AugmentState<'a> = (&'a crate::augment::Augment, f64, &'a mut StdRng, &'a mut [usize; 2]);

/// A batch on `device`; with `aug`, each sample is augmented (any label) and counted per
/// class in `aug.3` when changed.
fn batch_tensor(c: &Cubes, idx: &[usize], aug: Option<AugmentState>, device: Device) -> Result<(Tensor, Tensor)> {
    let d = c.cube as i64;
    let mut x = Tensor::from_slice(&c.gather(idx)?).view([idx.len() as i64, 1, d, d, d]);
    if let Some((a, pad, rng, counts)) = aug {
        let mut xs = Vec::with_capacity(idx.len());
        let mut any = false;
        for (k, &i) in idx.iter().enumerate() {
            let (out, changed) = a.apply(&x.get(k as i64), pad, rng);
            if changed {
                counts[usize::from(c.labels[i] == 1.0)] += 1;
                any = true;
            }
            xs.push(out);
        }
        // A batch that no augmentation touched is used as it is, not copied again.
        if any {
            x = Tensor::stack(&xs, 0);
        }
    }
    let y: Vec<f32> = idx.iter().map(|&i| c.labels[i]).collect();
    Ok((x.to_device(device), Tensor::from_slice(&y).to_device(device)))
}

/// What `precision` resolved to, as `train_state.yaml` records it.
fn precision_name(amp: bool) -> &'static str {
    if amp {
        "fp16"
    } else {
        "fp32"
    }
}

/// Adds a step's mean loss over `n` samples to the epoch's sums, on the device. `applied`
/// (from a loss-scaled step: 1 applied, 0 skipped) leaves a skipped step out; it is
/// selected, not multiplied, because a skipped step's loss may be Inf or NaN (an fp16
/// overflow in the forward pass) and Inf · 0 is NaN.
fn add_loss(sum: &mut Tensor, seen: &mut Tensor, loss: &Tensor, n: usize, applied: Option<&Tensor>) {
    let loss = loss.detach().to_kind(tch::Kind::Double) * n as f64;
    match applied {
        Some(a) => {
            *sum += loss.where_scalarother(&a.to_kind(tch::Kind::Bool), 0.0);
            *seen += a.to_kind(tch::Kind::Double) * n as f64;
        }
        None => {
            *sum += loss;
            *seen += n as f64;
        }
    }
}

/// Saves the VarStore beside `path`, then renames over it.
fn save_atomic(vs: &nn::VarStore, path: &Path) -> Result<()> {
    models::fsutil::replace_with(path, |tmp| vs.save(tmp)).context("cannot save checkpoint")?;
    Ok(())
}

/// Loss and discrimination against epoch, in one PNG.
fn plot_curves(h: &[EpochMetrics], path: &Path) -> Result<()> {
    let pts =
        |f: &dyn Fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> { h.iter().map(|m| (m.epoch as f64, f(m))).collect() };
    let top = h.iter().map(|m| m.train_loss.max(m.val_loss)).fold(1.0, f64::max) * 1.05;
    let line = |label: &str, points, color| plots::Series {
        label: label.into(),
        points,
        color,
        markers: h.len() < 3,
    };
    let chart = plots::Chart {
        title: "Training curves".into(),
        x_label: "epoch".into(),
        y_label: "loss / AUROC / AUPRC".into(),
        x_range: (1.0, (h.len().max(2)) as f64),
        y_range: (0.0, top),
        log_x: false,
        series: vec![
            line("train loss", pts(&|m| m.train_loss), (200, 60, 40)),
            line("val loss", pts(&|m| m.val_loss), (230, 150, 40)),
            line("val AUROC", pts(&|m| m.val_auroc), (30, 80, 200)),
            line("val AUPRC", pts(&|m| m.val_auprc), (40, 150, 60)),
        ],
        bands: vec![],
        annotations: vec![],
    };
    plots::line_chart(&chart, path)?;
    Ok(())
}

/// Validation logits (eval mode) and the mean unweighted BCE.
fn evaluate(net: &Net, c: &Cubes, batch: usize, device: Device, amp: bool) -> Result<(Vec<f32>, f64)> {
    let mut logits = Vec::with_capacity(c.len());
    let mut loss_sum = 0.0;
    let idx: Vec<usize> = (0..c.len()).collect();
    for chunk in idx.chunks(batch) {
        let (x, y) = batch_tensor(c, chunk, None, device)?;
        let z = tch::no_grad(|| crate::cuda::autocast(amp, || net.forward_t(&x, false)))
            .flatten(0, -1)
            .to_kind(tch::Kind::Float);
        let l = z.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Sum);
        loss_sum += f64::try_from(&l)?;
        logits.extend(Vec::<f32>::try_from(&z.to_device(Device::Cpu))?);
    }
    Ok((logits, loss_sum / c.len() as f64))
}

fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    models::fsutil::write_atomic(path, &w.into_inner()?)?;
    Ok(())
}

fn yaml<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    models::fsutil::write_atomic(path, serde_yaml::to_string(v)?.as_bytes())?;
    Ok(())
}

/// Runs a whole training job as configured.
/// `Ok(None)` when the run paused (`stop_after`) before its last epoch.
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<Option<RunSummary>> {
    let t0 = Instant::now();
    cfg.validate()?;
    let spec = cfg.model.spec()?;
    let pre = &cfg.preprocess;
    let index = PatchIndex::read(&cfg.data)?;
    let split = Split::new(&index.rows, &cfg.split, &index.path)?;
    let device = crate::resolve_device(&cfg.train.device)?;
    let amp = match (cfg.train.precision, device.is_cuda()) {
        (Precision::Fp16, false) => bail!(
            "train.precision fp16 needs a CUDA device (the run resolved to {}); use auto or fp32",
            crate::device_name(device)
        ),
        (Precision::Fp32, _) | (Precision::Auto, false) => false,
        (Precision::Fp16 | Precision::Auto, true) => true,
    };
    // Load everything before creating the run folder: bad input leaves no folder behind.
    let train_rows = split.rows(&index.rows, Side::Train);
    let val_rows = split.rows(&index.rows, Side::Val);
    // The cache budget goes to validation first (read in full every epoch), then training.
    let budget = cfg.train.cache_mb.map(|mb| mb.saturating_mul(1 << 20));
    let val = Cubes::load(&index, &val_rows, pre, budget)?;
    let train = Cubes::load(
        &index,
        &train_rows,
        pre,
        budget.map(|b| b.saturating_sub(val.cache_bytes() as u64)),
    )?;
    // The parity check after training needs ONNX Runtime: find it now, not after an hour.
    scorer::runtime::init(opts.ort_lib.as_deref())?;
    let dir = &cfg.out;
    let manifest = split.manifest_csv(&index.rows)?;
    let resumed: Option<TrainState> = if opts.resume {
        // The same job or nothing: config and split must be the ones the folder holds.
        let saved = std::fs::read_to_string(dir.join("config.yaml"))
            .with_context(|| format!("{}: no run to resume here (config.yaml missing)", dir.display()))?;
        // The cache budget only decides what sits in memory, the thread count how fast it
        // goes (a run begun on a workstation may go on on a smaller host): a resume may change
        // either. With another thread count libtorch may sum in another order, so the weights
        // need not equal an uninterrupted run's bit for bit.
        let comparable = |text: &str| -> Result<String> {
            let mut c: TrainConfig =
                serde_yaml::from_str(text).with_context(|| format!("{}: unreadable config.yaml", dir.display()))?;
            c.train.cache_mb = cfg.train.cache_mb;
            c.train.threads = cfg.train.threads;
            // The folder being resumed is the run, wherever it has been moved or copied to.
            c.out = cfg.out.clone();
            Ok(serde_yaml::to_string(&c)?)
        };
        let saved = comparable(&saved)?;
        if saved != serde_yaml::to_string(cfg)? {
            let ours = serde_yaml::to_string(cfg)?;
            let diff = saved
                .lines()
                .zip(ours.lines())
                .find(|(a, b)| a != b)
                .map_or_else(String::new, |(a, b)| format!(": `{a}` there, `{b}` now"));
            bail!(
                "{}: this run was made with another config or architecture{diff}; resume with the same settings",
                dir.display()
            );
        }
        if std::fs::read(dir.join("split.csv")).ok().as_deref() != Some(manifest.as_slice()) {
            bail!(
                "{}: the split differs from the one this run used (has the index changed?)",
                dir.display()
            );
        }
        let st: TrainState = serde_yaml::from_str(
            &std::fs::read_to_string(dir.join("train_state.yaml"))
                .with_context(|| format!("{}: no finished epoch to resume from", dir.display()))?,
        )?;
        Some(st)
    } else {
        prepare_run_dir(dir, opts.force)?;
        yaml(&dir.join("config.yaml"), cfg)?;
        models::fsutil::write_atomic(&dir.join("split.csv"), &manifest)?;
        None
    };
    let n_pos = train.labels.iter().filter(|&&l| l == 1.0).count();
    let pos_weight = match cfg.train.pos_weight {
        PosWeight::Value(v) => v,
        PosWeight::Auto(_) => (train.len() - n_pos) as f64 / n_pos as f64,
    };
    let log = |s: String| {
        if !opts.quiet {
            eprintln!("{s}");
        }
    };
    log(format!(
        "trainer: {} on {}{}; train {} patches ({} positive), val {} patches ({} positive) from {} series; pos_weight {:.3}",
        spec.name,
        crate::device_name(device),
        if amp { " (fp16 mixed precision, loss scaling)" } else { " (fp32)" },
        train.len(),
        n_pos,
        val.len(),
        val.labels.iter().filter(|&&l| l == 1.0).count(),
        val_rows.iter().map(|r| &r.seriesuid).collect::<std::collections::BTreeSet<_>>().len(),
        pos_weight
    ));

    if cfg.train.cache_mb.is_some() {
        log(format!(
            "patches in memory: {} of {} validation, {} of {} training ({:.0} MiB); the rest are read from disk for each batch",
            val.cached(),
            val.len(),
            train.cached(),
            train.len(),
            (val.cache_bytes() + train.cache_bytes()) as f64 / f64::from(1 << 20)
        ));
    }
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    tch::manual_seed(cfg.train.seed as i64);
    if device.is_cuda() {
        // Fixed input shapes: let cuDNN pick the fastest convolution algorithms.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut scaler_state = amp.then(crate::optim::GradScaler::default);
    let vs = nn::VarStore::new(device);
    let net = Net::new(&vs.root(), &spec)?;
    net::check_names(&vs, &spec)?;
    let t = &cfg.train;
    let mut opt = crate::optim::AdamW::new(&vs, t.weight_decay);
    if t.threads > 0 {
        opt.set_threads(t.threads)?;
    }
    let pw = Tensor::from_slice(&[pos_weight as f32]).to_device(device);
    let mut history: Vec<EpochMetrics> = Vec::new();
    let best_path = dir.join("best.safetensors");
    let last_path = dir.join("last.safetensors");
    let opt_path = dir.join("optimizer.safetensors");
    // (epoch, AUROC, validation loss) of the best epoch so far.
    let mut best: Option<(usize, f64, f64)> = None;
    let mut first_epoch = 1;
    let mut stopped_early: Option<usize> = None;
    let mut resumed_step = 0;
    let mut vs = vs;
    if let Some(st) = &resumed {
        for (file, want) in [
            (&last_path, &st.last_sha256),
            (&best_path, &st.best_sha256),
            (&opt_path, &st.optimizer_sha256),
        ] {
            if !file.is_file() || models::fsutil::sha256_file(file)? != *want {
                bail!(
                    "{}: does not match train_state.yaml (the run was stopped while saving epoch {}); \
                     it cannot resume safely: start it again",
                    file.display(),
                    st.epochs_done + 1
                );
            }
        }
        vs.load(&last_path)
            .with_context(|| format!("{}: cannot load the last checkpoint", last_path.display()))?;
        opt.load(&opt_path)?;
        opt.bind();
        let mut r = csv::Reader::from_path(dir.join("metrics.csv"))?;
        history = r.deserialize().collect::<Result<_, _>>()?;
        history.truncate(st.epochs_done);
        best = Some((st.best_epoch, st.best_val_auroc, st.best_val_loss));
        first_epoch = st.epochs_done + 1;
        if let Some(e) = st.stopped_early {
            // It had already stopped early: only the export is left to do.
            stopped_early = Some(e);
            first_epoch = t.epochs + 1;
        }
        resumed_step = st.step;
        // `auto` resolves by host: a run begun in fp32 on a CPU must not go on in fp16 on a
        // GPU (or back) and still claim to be the same run.
        let now = precision_name(amp);
        if let Some(was) = st.precision.as_deref() {
            if was != now {
                bail!(
                    "{}: this run trained in {was}, here it would go on in {now} on {} (device and precision are `auto`?); \
                     resume it on the same kind of device (NODULE_NO_CUDA=1 keeps `auto` on the CPU)",
                    dir.display(),
                    crate::device_name(device)
                );
            }
        }
        if amp {
            scaler_state = Some(st.grad_scaler.unwrap_or_default());
        }
        log(format!("resuming after epoch {} (step {})", st.epochs_done, st.step));
    }
    // The loss scaler lives on the device while training; its state is read back per epoch.
    let mut scaler = scaler_state.map(|s| crate::optim::DeviceScaler::new(&s, device));
    let val_labels: Vec<u8> = val.labels.iter().map(|&l| l as u8).collect();
    let pad = f64::from(pre.scale(pre.pad_hu));
    let per_epoch = match t.sampler {
        Sampler::Shuffle => train.len(),
        Sampler::Balanced => 2 * (train.len() - n_pos),
    };
    // A final chunk of one sample is skipped (BatchNorm), so it is not a step.
    let steps_per_epoch = per_epoch / t.batch_size + usize::from(per_epoch % t.batch_size >= 2);
    let total_steps = (steps_per_epoch * t.epochs).max(1);
    let warmup_steps = steps_per_epoch * t.warmup_epochs;
    let mut step = resumed_step;
    for epoch in first_epoch..=t.epochs {
        let te = Instant::now();
        // Every epoch draws from its own seeded generators, so a resumed run makes the
        // same draws as an uninterrupted one.
        let mut rng = StdRng::seed_from_u64(t.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tch::manual_seed(t.seed.wrapping_add(epoch as u64) as i64);
        let order: Vec<usize> = match t.sampler {
            Sampler::Shuffle => {
                let mut o: Vec<usize> = (0..train.len()).collect();
                o.shuffle(&mut rng);
                o
            }
            Sampler::Balanced => {
                // Every negative once, and as many positives drawn with replacement.
                let pos: Vec<usize> = (0..train.len()).filter(|&i| train.labels[i] == 1.0).collect();
                let mut o: Vec<usize> = (0..train.len()).filter(|&i| train.labels[i] == 0.0).collect();
                let n_neg = o.len();
                o.extend((0..n_neg).map(|_| pos[rng.random_range(0..pos.len())]));
                o.shuffle(&mut rng);
                o
            }
        };
        let pb = if opts.quiet || !std::io::stderr().is_terminal() {
            indicatif::ProgressBar::hidden()
        } else {
            let pb = indicatif::ProgressBar::new(order.len() as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {msg} {bar:30} {pos}/{len} samples  {per_sec}  ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            pb.set_message(format!("{epoch}/{}", t.epochs));
            pb
        };
        // Summed on the device and read once per epoch: no host sync per step.
        let mut loss_sum = Tensor::zeros([], (tch::Kind::Double, device));
        // Samples in applied steps: a step the loss scaler skipped (fp16 overflow) does not
        // count in the loss; known on the device only.
        let mut loss_seen = Tensor::zeros([], (tch::Kind::Double, device));
        let mut seen = 0usize;
        let mut lr = t.lr;
        let t_loop = Instant::now();
        // BatchNorm statistics need more than one sample: a final chunk of one is skipped.
        let chunks: Vec<&[usize]> = order.chunks(t.batch_size).filter(|c| c.len() >= 2).collect();
        // A background thread reads, augments and stacks the next batches (and pins them
        // for an asynchronous copy on CUDA) while this one trains: the device never waits
        // on batch assembly. Draws come from the epoch's seeded generator in batch order,
        // so results do not depend on the overlap.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(Tensor, Tensor, usize)>>(PREFETCH_BATCHES);
        let (train_ref, aug_cfg) = (&train, &t.augment);
        let augmented = std::thread::scope(|s| -> Result<[usize; 2]> {
            let producer = s.spawn(move || {
                let mut rng = rng;
                let mut augmented = [0usize; 2];
                for chunk in chunks {
                    let batch = batch_tensor(
                        train_ref,
                        chunk,
                        Some((aug_cfg, pad, &mut rng, &mut augmented)),
                        Device::Cpu,
                    )
                    .map(|(mut x, mut y)| {
                        if device.is_cuda() {
                            // `_pin_memory`: `pin_memory(device)` warns (deprecated argument) per call.
                            x = x.f_internal_pin_memory(device).unwrap_or(x);
                            y = y.f_internal_pin_memory(device).unwrap_or(y);
                        }
                        (x, y, chunk.len())
                    });
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
                augmented
            });
            // Owning the receiver here means an error below drops it, which stops the
            // producer (its send fails) instead of leaving it blocked on a full channel.
            for batch in rx.into_iter() {
                let (x, y, n) = batch?;
                let x = x.to_device_(device, tch::Kind::Float, true, false);
                let y = y.to_device_(device, tch::Kind::Float, true, false);
                // Linear warm-up, then cosine decay, per step.
                lr = if step < warmup_steps {
                    t.lr * (step + 1) as f64 / warmup_steps as f64
                } else {
                    let prog = (step - warmup_steps) as f64 / (total_steps - warmup_steps).max(1) as f64;
                    t.lr * 0.5 * (1.0 + (std::f64::consts::PI * prog.min(1.0)).cos())
                };
                let z = crate::cuda::autocast(amp, || net.forward_t(&x, true))
                    .flatten(0, -1)
                    .to_kind(tch::Kind::Float);
                let loss = match t.loss {
                    Loss::Bce => {
                        z.binary_cross_entropy_with_logits(&y, None::<&Tensor>, Some(&pw), tch::Reduction::Mean)
                    }
                    Loss::Focal => {
                        let weighted =
                            z.binary_cross_entropy_with_logits(&y, None::<&Tensor>, Some(&pw), tch::Reduction::None);
                        let plain = z.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::None);
                        // p_t = exp(−BCE); focal weight (1 − p_t)^γ.
                        let p_t: Tensor = (-plain).exp();
                        let focal = p_t.neg().g_add_scalar(1.0).pow_tensor_scalar(t.focal_gamma);
                        (focal * weighted).mean(tch::Kind::Float)
                    }
                };
                let applied = opt.backward_step(&loss, lr, t.grad_clip, scaler.as_mut())?;
                net.count_batch();
                add_loss(&mut loss_sum, &mut loss_seen, &loss, n, applied.as_ref());
                seen += n;
                step += 1;
                pb.inc(n as u64);
            }
            Ok(producer.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        })?;
        pb.finish_and_clear();
        // Reading the loss waits for the device, so the time below covers all the work.
        let loss_sum = f64::try_from(&loss_sum)?;
        let loss_seen = f64::try_from(&loss_seen)?;
        let train_samples_per_s = seen as f64 / t_loop.elapsed().as_secs_f64().max(1e-9);
        let (logits, val_loss) = evaluate(&net, &val, t.batch_size, device, amp)?;
        let scores: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
        let auroc = models::metrics::auroc(&scores, &val_labels).unwrap_or(f64::NAN);
        let auprc = models::metrics::average_precision(&scores, &val_labels);
        let train_loss = loss_sum / loss_seen.max(1.0);
        if !train_loss.is_finite() {
            bail!("training diverged at epoch {epoch} (loss {train_loss}); lower train.lr");
        }
        // Best by validation AUROC; ties go to the lower validation loss.
        let is_best = best.is_none_or(|(_, b, bl)| auroc > b || (auroc == b && val_loss < bl));
        save_atomic(&vs, &last_path)?;
        if is_best {
            save_atomic(&vs, &best_path)?;
            best = Some((epoch, auroc, val_loss));
        }
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss,
            val_loss,
            val_auroc: auroc,
            val_auprc: auprc,
            augmented_positive: augmented[1],
            augmented_negative: augmented[0],
            train_samples_per_s,
            seconds: te.elapsed().as_secs_f64(),
            best: is_best,
        };
        log(format!(
            "epoch {epoch:>3}/{}  train_loss {train_loss:.4}  val_loss {val_loss:.4}  val_auroc {auroc:.4}  val_auprc {auprc:.4}  lr {lr:.2e}  ({:.1} s, {:.1} samples/s){}",
            t.epochs,
            m.seconds,
            train_samples_per_s,
            if is_best { "  *best" } else { "" }
        ));
        history.push(m);
        write_csv(&dir.join("metrics.csv"), &history)?;
        plot_curves(&history, &dir.join("curves.png"))?;
        if let Some((b, _, _)) = best {
            if t.early_stopping_patience > 0 && epoch - b >= t.early_stopping_patience {
                log(format!(
                    "early stopping: no better validation AUROC for {} epochs",
                    epoch - b
                ));
                stopped_early = Some(epoch);
            }
        }
        // The state to resume from is the commit point: written last, with the hashes of
        // the files it belongs to, so a run killed while saving is detected on resume.
        opt.save(&opt_path)?;
        if let Some((be, ba, bl)) = best {
            let st = TrainState {
                epochs_done: epoch,
                step,
                best_epoch: be,
                best_val_auroc: ba,
                best_val_loss: bl,
                stopped_early,
                last_sha256: models::fsutil::sha256_file(&last_path)?,
                best_sha256: models::fsutil::sha256_file(&best_path)?,
                optimizer_sha256: models::fsutil::sha256_file(&opt_path)?,
                grad_scaler: scaler.as_ref().map(|s| s.state()).transpose()?,
                precision: Some(precision_name(amp).to_string()),
            };
            yaml(&dir.join("train_state.yaml"), &st)?;
        }
        if stopped_early.is_some() {
            break;
        }
        if opts.stop_after == Some(epoch) && epoch < t.epochs {
            log(format!(
                "paused after epoch {epoch}; continue with `trainer train --resume {}`",
                dir.display()
            ));
            return Ok(None);
        }
    }
    let (best_epoch, best_auroc, _) = best.context("no epoch finished")?;
    // Training is over: free its state before the export makes copies of its own. The
    // weights, their gradients and the two AdamW moments are four copies of the model
    // (530 MB for r3d_18), and the training patches may be cached; kept, they would set the
    // run's peak memory during the export and parity check rather than during training.
    let train_patches = train.len();
    drop((opt, net, vs, pw, scaler, train));

    // Export the best checkpoint, not the last epoch.
    let mut best_vs = nn::VarStore::new(Device::Cpu);
    let best_net = Net::new(&best_vs.root(), &spec)?;
    best_vs
        .load(&best_path)
        .with_context(|| format!("{}: cannot reload best checkpoint", best_path.display()))?;
    let provenance: std::collections::BTreeMap<String, String> = [
        ("tool.version", models::TOOL_VERSION.to_string()),
        ("tool.git_commit", env!("NODULE_GIT_COMMIT").to_string()),
        ("training.libtorch_version", crate::libtorch_version()),
        ("training.cuda_available", tch::Cuda::is_available().to_string()),
        ("training.device", crate::device_name(device)),
        (
            "training.precision",
            (if amp { "fp16-mixed" } else { "fp32" }).to_string(),
        ),
        ("training.cuda_libraries", crate::cuda::loaded_cuda_libraries()),
        ("training.config_sha256", cfg.sha256()?),
        ("training.index_sha256", models::fsutil::sha256_file(&index.path)?),
        (
            "training.split_sha256",
            models::fsutil::sha256_file(&dir.join("split.csv"))?,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut extra: Vec<(&str, String)> = provenance.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    extra.push(("training.best_epoch", best_epoch.to_string()));
    extra.push(("training.val_auroc", format!("{best_auroc:.6}")));
    let md = export::metadata(&spec, pre, &extra)?;
    // Written under a temporary name; it becomes model.onnx only once parity holds.
    let onnx_path = dir.join("model.onnx");
    let unchecked = dir.join(".model.unchecked.onnx");
    export::export_onnx(&spec, &best_vs, pre, &md, &unchecked)?;
    let (parity, ort_logits) = export::parity(
        &spec,
        &best_net,
        &best_vs,
        &unchecked,
        val.len(),
        &|r: std::ops::Range<usize>| val.gather(&r.collect::<Vec<_>>()),
        val.cube,
        cfg.train.batch_size,
        opts.ort_lib.as_deref(),
        device,
    )?;
    yaml(&dir.join("parity.yaml"), &parity)?;
    log(format!(
        "export: {} (max |Δlogit| libtorch vs ONNX Runtime {} = {:.2e} over {} patches; \
         over max(1, largest |logit|): {:.2e}, tolerance {:.0e})",
        onnx_path.display(),
        parity.onnxruntime_version,
        parity.max_abs_diff_logit,
        parity.patches,
        parity.max_scaled_diff_logit,
        parity.tolerance
    ));
    if let Some(d) = parity.device_max_abs_diff_logit {
        log(format!(
            "export: the same weights on {} (fp32) vs ONNX Runtime: max |Δlogit| {d:.2e}",
            parity.device
        ));
    }
    if !parity.passed {
        let failed = dir.join("model.parity-failed.onnx");
        std::fs::rename(&unchecked, &failed)?;
        bail!(
            "{}: export parity failed: max |Δlogit| / max(1, largest |logit|) {:.3e} > {:.0e} (max |Δlogit| {:.3e}; \
             see parity.yaml); the file must not be used",
            failed.display(),
            parity.max_scaled_diff_logit,
            parity.tolerance,
            parity.max_abs_diff_logit
        );
    }
    std::fs::rename(&unchecked, &onnx_path)
        .with_context(|| format!("{}: cannot move the checked model into place", onnx_path.display()))?;
    #[derive(Serialize)]
    struct ValScore<'a> {
        patch_file: &'a str,
        seriesuid: &'a str,
        label: u8,
        logit: f32,
    }
    let vs_rows: Vec<ValScore> = val
        .rows
        .iter()
        .zip(&ort_logits)
        .map(|(r, &logit)| ValScore {
            patch_file: &r.patch_file,
            seriesuid: &r.seriesuid,
            label: r.label,
            logit,
        })
        .collect();
    write_csv(&dir.join("val_scores.csv"), &vs_rows)?;
    let ort_scores: Vec<f64> = ort_logits.iter().map(|&v| f64::from(v)).collect();
    let summary = RunSummary {
        run_dir: dir.clone(),
        device: crate::device_name(device),
        arch: spec.name.clone(),
        train_patches,
        train_positives: n_pos,
        val_patches: val.len(),
        val_positives: val_labels.iter().filter(|&&l| l == 1).count(),
        val_series: val_rows
            .iter()
            .map(|r| &r.seriesuid)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        pos_weight,
        best_epoch,
        best_val_auroc: best_auroc,
        onnx_val_auroc: models::metrics::auroc(&ort_scores, &val_labels).unwrap_or(f64::NAN),
        onnx_val_auroc_delong_ci95: models::metrics::auroc_delong_ci95(&ort_scores, &val_labels),
        stopped_early_at_epoch: stopped_early,
        provenance: provenance.clone(),
        parity_max_abs_diff_logit: parity.max_abs_diff_logit,
        parity_max_scaled_diff_logit: parity.max_scaled_diff_logit,
        seconds: t0.elapsed().as_secs_f64(),
    };
    yaml(&dir.join("summary.yaml"), &summary)?;
    Ok(Some(summary))
}

/// One fold's line of `cv_summary.yaml`.
#[derive(Debug, Clone, Serialize)]
pub struct FoldResult {
    pub fold: usize,
    pub run_dir: PathBuf,
    pub best_epoch: usize,
    pub val_series: usize,
    pub val_patches: usize,
    pub onnx_val_auroc: f64,
    pub onnx_val_auroc_delong_ci95: [f64; 2],
}

/// `cv_summary.yaml`.
#[derive(Debug, Clone, Serialize)]
pub struct CvSummary {
    pub folds: Vec<FoldResult>,
    pub mean_val_auroc: f64,
    pub sd_val_auroc: f64,
}

/// Runs the configured job: one training run, or with `split.folds >= 2` (and no single
/// `split.fold`) one run per fold in `OUT/fold_N` and `OUT/cv_summary.yaml`.
pub fn run(cfg: &TrainConfig, opts: &RunOptions) -> Result<(Vec<RunSummary>, Option<CvSummary>)> {
    let k = cfg.split.folds;
    if k < 2 || cfg.split.fold.is_some() {
        return Ok((train(cfg, opts)?.into_iter().collect(), None));
    }
    if opts.resume || opts.stop_after.is_some() {
        bail!("--resume and --stop-after work on one run: give split.fold to resume one fold");
    }
    cfg.validate()?;
    let summary_path = cfg.out.join("cv_summary.yaml");
    if summary_path.exists() && !opts.force {
        bail!(
            "{}: a cross-validation already lives here; choose another --out or pass --force",
            cfg.out.display()
        );
    }
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("{}: cannot create", cfg.out.display()))?;
    if summary_path.exists() {
        // --force: the old summary must not sit beside new folds if one of them fails.
        std::fs::remove_file(&summary_path).with_context(|| format!("{}: cannot remove", summary_path.display()))?;
    }
    let mut runs = Vec::new();
    for f in 1..=k {
        let mut c = cfg.clone();
        c.split.fold = Some(f);
        c.out = cfg.out.join(format!("fold_{f}"));
        if !opts.quiet {
            eprintln!("trainer: fold {f}/{k}");
        }
        runs.extend(train(&c, opts)?);
    }
    let aurocs: Vec<f64> = runs.iter().map(|r| r.onnx_val_auroc).collect();
    let mean = aurocs.iter().sum::<f64>() / k as f64;
    let sd = (aurocs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
    let cv = CvSummary {
        folds: runs
            .iter()
            .enumerate()
            .map(|(i, r)| FoldResult {
                fold: i + 1,
                run_dir: r.run_dir.clone(),
                best_epoch: r.best_epoch,
                val_series: r.val_series,
                val_patches: r.val_patches,
                onnx_val_auroc: r.onnx_val_auroc,
                onnx_val_auroc_delong_ci95: r.onnx_val_auroc_delong_ci95,
            })
            .collect(),
        mean_val_auroc: mean,
        sd_val_auroc: sd,
    };
    yaml(&summary_path, &cv)?;
    Ok((runs, Some(cv)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    /// A step the loss scaler skipped leaves the epoch's loss alone, even when its own loss
    /// overflowed to Inf or NaN.
    #[test]
    fn skipped_steps_do_not_count_in_the_loss() {
        let mut sum = Tensor::zeros([], (tch::Kind::Double, Device::Cpu));
        let mut seen = Tensor::zeros([], (tch::Kind::Double, Device::Cpu));
        let one = Tensor::from(1.0f32);
        let zero = Tensor::from(0.0f32);
        add_loss(&mut sum, &mut seen, &Tensor::from(0.5f32), 4, Some(&one));
        add_loss(&mut sum, &mut seen, &Tensor::from(f32::INFINITY), 4, Some(&zero));
        add_loss(&mut sum, &mut seen, &Tensor::from(f32::NAN), 2, Some(&zero));
        add_loss(&mut sum, &mut seen, &Tensor::from(0.25f32), 2, None);
        assert_eq!(f64::try_from(&sum).unwrap(), 0.5 * 4.0 + 0.25 * 2.0);
        assert_eq!(f64::try_from(&seen).unwrap(), 6.0);
    }
}
