//! The epochs: the model and optimizer ([`start`], fresh or from the resumed state), then
//! per epoch the training steps on batches a background thread assembles, validation, the
//! checkpoints and the state to resume from ([`run`]).
//!
//! A loss that is not finite stops the run at that step, with an error naming the epoch and
//! the step; what is on disk is then the last finished epoch, which `--resume` continues
//! (a run that had not finished one starts again without `--force`). On the CPU the loss is
//! checked after every step; on CUDA the check is recorded on the device and read every
//! [`CUDA_CHECK_EVERY`] steps, so the step never waits on the device. With fp16 mixed
//! precision an overflowed step is skipped, as loss scaling intends; an epoch in which
//! every step overflowed is an error, since nothing was learnt.
use std::path::Path;
use std::time::Instant;

use crate::error::{torch, Site};
use crate::{Result, TrainError};
use tch::nn;
use tch::{Device, Tensor};

use crate::config::{Sampler, TrainConfig};
use crate::data::Cubes;
use crate::net::{self, Net};
use crate::train::batches::{
    add_loss, batch_tensor, diverged, epoch_bar, epoch_loss, epoch_order, loss_of, lr_at, produce_batches, Batch, Watch,
    PREFETCH_BATCHES,
};
use crate::train::folder::RunFolder;
use crate::train::inputs::Data;
use crate::train::{write_csv, yaml, EpochMetrics, RunOptions, TrainState};

/// How often (in steps) a CUDA run reads back whether a loss was not finite.
pub const CUDA_CHECK_EVERY: usize = 32;

/// A test hook: `NODULE_FAILPOINT=nan_loss_at_step=N` makes the loss of the run's step N
/// (1-based) NaN, so the tests can show, through the real binary, what a diverging run
/// does (no setting the config accepts makes a loss non-finite on demand).
fn failpoint_nan_step() -> Option<usize> {
    std::env::var("NODULE_FAILPOINT")
        .ok()?
        .strip_prefix("nan_loss_at_step=")?
        .parse()
        .ok()
}

/// Saves the VarStore beside `path`, then renames over it.
fn save_atomic(vs: &nn::VarStore, path: &Path) -> Result<()> {
    files::replace_with(path, |tmp| vs.save(tmp))?;
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
    let site = Site {
        device,
        batch: Some(batch),
    };
    for chunk in idx.chunks(batch) {
        let (l, z) = torch("validation", site, || {
            let (x, y, f) = batch_tensor(c, chunk, None, device)?;
            let z = tch::no_grad(|| crate::cuda::autocast(amp, || net.forward_with(&x, f.as_ref(), false)))?
                .flatten(0, -1)
                .to_kind(tch::Kind::Float);
            let l = z.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Sum);
            Ok((f64::try_from(&l)?, Vec::<f32>::try_from(&z.to_device(Device::Cpu))?))
        })?;
        loss_sum += l;
        logits.extend(z);
    }
    Ok((logits, loss_sum / c.len() as f64))
}

/// The model, its optimizer and where training stands.
pub struct Training {
    pub vs: nn::VarStore,
    pub net: Net,
    pub opt: crate::optim::AdamW,
    /// The fp16 loss scaler (mixed precision only), on the device.
    pub scaler: Option<crate::optim::DeviceScaler>,
    pub pos_weight: Tensor,
    pub history: Vec<EpochMetrics>,
    /// (epoch, AUROC, validation loss) of the best epoch so far.
    pub best: Option<(usize, f64, f64)>,
    pub first_epoch: usize,
    pub step: usize,
    pub stopped_early: Option<usize>,
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch ran (or early stopping ended the run): export next.
    Done,
    /// `--stop-after` paused the run; it resumes from the folder.
    Paused,
}

/// Builds the model and optimizer on the run's device; for a resumed run, loads the last
/// checkpoint, the optimizer state, the metrics and the best so far.
/// `init`: `train.init`'s matched weights, loaded into a new run (a resumed one has its
/// checkpoint) and dropped.
pub fn start(
    cfg: &TrainConfig,
    opts: &RunOptions,
    data: &Data,
    folder: &RunFolder,
    init: Option<models::state_dict::Matched>,
) -> Result<Training> {
    let (device, amp, spec) = (data.found.device, data.found.amp, &data.found.spec);
    let t = &cfg.train;
    if t.threads > 0 {
        tch::set_num_threads(t.threads as i32);
    }
    tch::manual_seed(t.seed as i64);
    if device.is_cuda() {
        // Fixed input shapes: let cuDNN pick the fastest convolution algorithms.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut vs = nn::VarStore::new(device);
    let site = Site { device, batch: None };
    let (net, mut opt) = torch(&format!("building {} and its optimizer", spec.name), site, || {
        let net = Net::new(&vs.root(), spec)?;
        net::check_names(&vs, spec)?;
        Ok((net, crate::optim::AdamW::new(&vs, t.weight_decay)))
    })?;
    if t.threads > 0 {
        opt.set_threads(t.threads)?;
    }
    if let (Some(init), Some(path), None) = (&init, &t.init, &folder.resumed) {
        net::load_weights(&vs, &init.weights)?;
        if !opts.quiet {
            for note in &init.notes {
                eprintln!("init: {note}");
            }
            eprintln!("init: weights from {}", path.display());
        }
    }
    if let Some(st) = &data.feature_stats {
        // The training split's statistics, over any `train.init` brought (a resumed run's
        // checkpoint, loaded below, holds the same).
        net.set_feature_stats(&st.mean, &st.std)?;
    }
    let mut scaler_state = amp.then(crate::optim::GradScaler::default);
    let (mut history, mut best, mut first_epoch, mut step, mut stopped_early) = (Vec::new(), None, 1, 0, None);
    if let Some(st) = &folder.resumed {
        let dir = &folder.dir;
        let last = dir.join("last.safetensors");
        vs.load(&last).map_err(TrainError::tch(format!(
            "{}: cannot load the last checkpoint",
            last.display()
        )))?;
        opt.load(&dir.join("optimizer.safetensors"))?;
        opt.bind();
        let metrics = dir.join("metrics.csv");
        let mut r = csv::Reader::from_reader(files::open_regular(&metrics)?);
        history = r
            .deserialize()
            .collect::<Result<_, _>>()
            .map_err(TrainError::format(format!("{}: unreadable", metrics.display())))?;
        history.truncate(st.epochs_done);
        best = Some((st.best_epoch, st.best_val_auroc, st.best_val_loss));
        first_epoch = st.epochs_done + 1;
        if let Some(e) = st.stopped_early {
            // It had already stopped early: only the export is left to do.
            stopped_early = Some(e);
            first_epoch = t.epochs + 1;
        }
        step = st.step;
        if amp {
            scaler_state = Some(st.grad_scaler.unwrap_or_default());
        }
        if !opts.quiet {
            eprintln!("resuming after epoch {} (step {})", st.epochs_done, st.step);
        }
    }
    Ok(Training {
        vs,
        net,
        opt,
        // The loss scaler lives on the device while training; its state is read back per epoch.
        scaler: scaler_state.map(|s| crate::optim::DeviceScaler::new(&s, device)),
        pos_weight: Tensor::from_slice(&[data.pos_weight as f32]).to_device(device),
        history,
        best,
        first_epoch,
        step,
        stopped_early,
    })
}

/// The steps of a run: per epoch, in all, and of warm-up.
struct Schedule {
    per_epoch: usize,
    total: usize,
    warmup: usize,
}

impl Schedule {
    fn new(cfg: &TrainConfig, data: &Data) -> Self {
        let t = &cfg.train;
        let samples = match t.sampler {
            Sampler::Shuffle => data.train.len(),
            Sampler::Balanced => 2 * (data.train.len() - data.n_pos),
        };
        // A final chunk of one sample is skipped (BatchNorm), so it is not a step.
        let per_epoch = samples / t.batch_size + usize::from(samples % t.batch_size >= 2);
        Schedule {
            per_epoch,
            total: (per_epoch * t.epochs).max(1),
            warmup: per_epoch * t.warmup_epochs,
        }
    }
}

/// What one epoch's training steps give.
struct EpochTrained {
    train_loss: f64,
    lr: f64,
    augmented: [usize; 2],
    samples_per_s: f64,
}

/// Trains one epoch: a background thread reads, augments and stacks the next batches (and
/// pins them for an asynchronous copy on CUDA) while this one trains.
fn train_epoch(
    cfg: &TrainConfig,
    opts: &RunOptions,
    data: &Data,
    tr: &mut Training,
    epoch: usize,
    sched: &Schedule,
) -> Result<EpochTrained> {
    let (t, device, amp) = (&cfg.train, data.found.device, data.found.amp);
    let pre = &cfg.preprocess;
    let pad = f64::from(pre.scale(pre.pad_hu));
    let (order, rng) = epoch_order(cfg, &data.train, epoch);
    let pb = epoch_bar(opts.quiet, order.len(), epoch, t.epochs);
    // Summed on the device and read once per epoch: no host sync per step.
    let mut loss_sum = Tensor::zeros([], (tch::Kind::Double, device));
    // Samples in applied steps: a step the loss scaler skipped (fp16 overflow) does not
    // count in the loss; known on the device only.
    let mut loss_seen = Tensor::zeros([], (tch::Kind::Double, device));
    let mut watch = Watch::new(device, if device.is_cuda() { CUDA_CHECK_EVERY } else { 1 });
    let nan_step = failpoint_nan_step();
    let first_step = tr.step;
    let mut seen = 0usize;
    let mut lr = t.lr;
    let t_loop = Instant::now();
    // BatchNorm statistics need more than one sample: a final chunk of one is skipped.
    let chunks: Vec<&[usize]> = order.chunks(t.batch_size).filter(|c| c.len() >= 2).collect();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(PREFETCH_BATCHES);
    let (train_ref, aug_cfg) = (&data.train, &t.augment);
    let fail = |b: usize| {
        let lr = lr_at(t.lr, first_step + b, sched.warmup, sched.total);
        diverged(epoch, b + 1, sched.per_epoch, first_step + b + 1, lr)
    };
    let augmented = std::thread::scope(|s| -> Result<[usize; 2]> {
        let producer = s.spawn(move || produce_batches(train_ref, chunks, (aug_cfg, pad, rng), device, &tx));
        // Owning the receiver here means an error below drops it, which stops the
        // producer (its send fails) instead of leaving it blocked on a full channel.
        let site = Site {
            device,
            batch: Some(t.batch_size),
        };
        for batch in rx.into_iter() {
            let (x, y, f, n) = batch?;
            lr = lr_at(t.lr, tr.step, sched.warmup, sched.total);
            // The step's libtorch work: a failure (CUDA out of memory, say) is an error
            // naming the batch size and the device, not a panic.
            let (loss, applied) = torch(&format!("epoch {epoch}, training step {}", tr.step + 1), site, || {
                let x = x.to_device_(device, tch::Kind::Float, true, false);
                let y = y.to_device_(device, tch::Kind::Float, true, false);
                let f = f.map(|f| f.to_device_(device, tch::Kind::Float, true, false));
                let z = crate::cuda::autocast(amp, || tr.net.forward_with(&x, f.as_ref(), true))?
                    .flatten(0, -1)
                    .to_kind(tch::Kind::Float);
                let mut loss = loss_of(t.loss, t.focal_gamma, &z, &y, &tr.pos_weight);
                if nan_step == Some(tr.step + 1) {
                    loss *= f64::NAN;
                }
                if !amp {
                    if let Some(b) = watch.record(&loss)? {
                        return Err(fail(b));
                    }
                }
                let applied = tr.opt.backward_step(&loss, lr, t.grad_clip, tr.scaler.as_mut())?;
                Ok((loss, applied))
            })?;
            tr.net.count_batch();
            add_loss(&mut loss_sum, &mut loss_seen, &loss, n, applied.as_ref());
            seen += n;
            tr.step += 1;
            pb.inc(n as u64);
        }
        producer.join().map_err(|e| {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            TrainError::Internal(format!("the batch-loading thread failed: {why}"))
        })
    })?;
    pb.finish_and_clear();
    if let Some(b) = watch.first_bad()? {
        return Err(fail(b));
    }
    // Reading the loss waits for the device, so the time below covers all the work.
    let train_loss = epoch_loss(&loss_sum, &loss_seen, seen, epoch)?;
    Ok(EpochTrained {
        train_loss,
        lr,
        augmented,
        samples_per_s: seen as f64 / t_loop.elapsed().as_secs_f64().max(1e-9),
    })
}

/// Saves the checkpoints, the metrics and curves, and last the state to resume from: the
/// commit point, with the hashes of the files it belongs to, so a run killed while saving
/// is detected on resume.
fn save_epoch(data: &Data, folder: &RunFolder, tr: &mut Training, m: EpochMetrics) -> Result<()> {
    let dir = &folder.dir;
    let (last, best, opt) = (
        dir.join("last.safetensors"),
        dir.join("best.safetensors"),
        dir.join("optimizer.safetensors"),
    );
    save_atomic(&tr.vs, &last)?;
    if m.best {
        save_atomic(&tr.vs, &best)?;
    }
    tr.history.push(m);
    write_csv(&dir.join("metrics.csv"), &tr.history)?;
    plot_curves(&tr.history, &dir.join("curves.png"))?;
    tr.opt.save(&opt)?;
    let Some((be, ba, bl)) = tr.best else {
        return Ok(());
    };
    let st = TrainState {
        epochs_done: tr.history.last().map_or(0, |m| m.epoch),
        step: tr.step,
        best_epoch: be,
        best_val_auroc: ba,
        best_val_loss: bl,
        stopped_early: tr.stopped_early,
        last_sha256: files::sha256_file(&last)?,
        best_sha256: files::sha256_file(&best)?,
        optimizer_sha256: files::sha256_file(&opt)?,
        grad_scaler: tr.scaler.as_ref().map(|s| s.state()).transpose()?,
        precision: Some(crate::train::folder::precision_name(data.found.amp).to_string()),
        config_sha256: folder.config_sha256.clone(),
        split_sha256: folder.split_sha256.clone(),
        metrics_sha256: files::sha256_file(&dir.join("metrics.csv"))?,
    };
    yaml(&dir.join("train_state.yaml"), &st)
}

/// Runs the epochs from `tr.first_epoch`: train, validate, keep the best by validation
/// AUROC (ties: lower validation loss), save, stop early or pause as configured.
pub fn run(
    cfg: &TrainConfig,
    opts: &RunOptions,
    data: &Data,
    folder: &RunFolder,
    tr: &mut Training,
) -> Result<Outcome> {
    let t = &cfg.train;
    let (device, amp) = (data.found.device, data.found.amp);
    let val_labels = data.val_labels();
    let sched = Schedule::new(cfg, data);
    let log = |s: String| {
        if !opts.quiet {
            eprintln!("{s}");
        }
    };
    for epoch in tr.first_epoch..=t.epochs {
        let te = Instant::now();
        let e = train_epoch(cfg, opts, data, tr, epoch, &sched)?;
        let (logits, val_loss) = evaluate(&tr.net, &data.val, t.batch_size, device, amp)?;
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(TrainError::Diverged(format!(
                "training diverged at epoch {epoch}: the validation logit of {} is {} (lower train.lr); the run folder \
                 keeps the epoch before",
                data.val.rows[i].patch_file,
                logits[i]
            )));
        }
        let scores: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
        let auroc = metrics::auroc(&scores, &val_labels).unwrap_or(f64::NAN);
        let auprc = metrics::average_precision(&scores, &val_labels);
        let is_best = tr
            .best
            .is_none_or(|(_, b, bl)| auroc > b || (auroc == b && val_loss < bl));
        if is_best {
            tr.best = Some((epoch, auroc, val_loss));
        }
        if let Some((b, _, _)) = tr.best {
            if t.early_stopping_patience > 0 && epoch - b >= t.early_stopping_patience {
                log(format!(
                    "early stopping: no better validation AUROC for {} epochs",
                    epoch - b
                ));
                tr.stopped_early = Some(epoch);
            }
        }
        let m = EpochMetrics {
            epoch,
            lr: e.lr,
            train_loss: e.train_loss,
            val_loss,
            val_auroc: auroc,
            val_auprc: auprc,
            augmented_positive: e.augmented[1],
            augmented_negative: e.augmented[0],
            train_samples_per_s: e.samples_per_s,
            seconds: te.elapsed().as_secs_f64(),
            best: is_best,
        };
        log(format!(
            "epoch {epoch:>3}/{}  train_loss {:.4}  val_loss {val_loss:.4}  val_auroc {auroc:.4}  val_auprc {auprc:.4}  lr {:.2e}  ({:.1} s, {:.1} samples/s){}",
            t.epochs,
            e.train_loss,
            e.lr,
            m.seconds,
            e.samples_per_s,
            if is_best { "  *best" } else { "" }
        ));
        save_epoch(data, folder, tr, m)?;
        if tr.stopped_early.is_some() {
            break;
        }
        if opts.stop_after == Some(epoch) && epoch < t.epochs {
            log(format!(
                "paused after epoch {epoch}; continue with `trainer train --resume {}`",
                folder.dir.display()
            ));
            return Ok(Outcome::Paused);
        }
    }
    Ok(Outcome::Done)
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

    /// The watch names the first step whose loss is not finite, reading the device only
    /// every `check_every` steps, and the message names the epoch and the step.
    #[test]
    fn the_first_non_finite_loss_is_named_by_epoch_and_step() {
        let mut w = Watch::new(Device::Cpu, 3);
        let losses = [0.5f32, 0.4, f32::NAN, f32::INFINITY, 0.3];
        let got: Vec<Option<usize>> = losses.iter().map(|&l| w.record(&Tensor::from(l)).unwrap()).collect();
        assert_eq!(got, [None, None, Some(2), None, None]);
        assert_eq!(w.first_bad().unwrap(), Some(2));
        let mut clean = Watch::new(Device::Cpu, 1);
        for l in [1.0f32, 2.0, 1e30] {
            assert_eq!(clean.record(&Tensor::from(l)).unwrap(), None);
        }
        let msg = diverged(3, 3, 10, 23, 0.5).to_string();
        assert!(
            msg.contains("epoch 3, step 3 of 10 (step 23 of the run)") && msg.contains("keeps epoch 2"),
            "{msg}"
        );
        assert!(diverged(1, 1, 10, 1, 0.5).to_string().contains("no --force needed"));
    }
}
