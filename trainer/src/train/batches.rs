//! The pieces of a training epoch: the order of its samples ([`epoch_order`]), batches
//! gathered and augmented on a thread of their own ([`produce_batches`]), the learning rate
//! of each step ([`lr_at`]), the loss ([`loss_of`]) summed on the device ([`add_loss`]), and
//! the watch for a loss that stops being finite ([`Watch`]).
use std::io::IsTerminal;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tch::{Device, Tensor};

use crate::config::{Loss, Sampler, TrainConfig};
use crate::data::Cubes;
use crate::{Result, TrainError};

/// Training batches assembled ahead of the one being trained on.
pub(crate) const PREFETCH_BATCHES: usize = 2;

pub(crate) type AugmentState<'a> = (&'a crate::augment::Augment, f64, &'a mut StdRng, &'a mut [usize; 2]);

/// A batch on `device`; with `aug`, each sample is augmented (any label) and counted per
/// class in `aug.3` when changed.
/// The cubes, labels and (a model with them) tabular features `[n, F]` of the patches `idx`.
pub(crate) fn batch_tensor(
    c: &Cubes,
    idx: &[usize],
    aug: Option<AugmentState>,
    device: Device,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
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
    let f = (c.nf > 0).then(|| {
        Tensor::from_slice(&c.gather_features(idx))
            .view([idx.len() as i64, c.nf as i64])
            .to_device(device)
    });
    Ok((x.to_device(device), Tensor::from_slice(&y).to_device(device), f))
}

/// Adds a step's mean loss over `n` samples to the epoch's sums, on the device. `applied`
/// (from a loss-scaled step: 1 applied, 0 skipped) leaves a skipped step out; it is
/// selected, not multiplied, because a skipped step's loss may be Inf or NaN (an fp16
/// overflow in the forward pass) and Inf · 0 is NaN.
pub(crate) fn add_loss(sum: &mut Tensor, seen: &mut Tensor, loss: &Tensor, n: usize, applied: Option<&Tensor>) {
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

/// The order training samples are drawn in during `epoch`, from its own seeded generator
/// (so a resumed run draws what an uninterrupted one does); the generator goes on to the
/// augmentation.
pub(crate) fn epoch_order(cfg: &TrainConfig, train: &Cubes, epoch: usize) -> (Vec<usize>, StdRng) {
    let t = &cfg.train;
    let mut rng = StdRng::seed_from_u64(t.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    tch::manual_seed(t.seed.wrapping_add(epoch as u64) as i64);
    let order = match t.sampler {
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
    (order, rng)
}

/// The learning rate at `step`: linear warm-up, then cosine decay, per step.
pub(crate) fn lr_at(lr: f64, step: usize, warmup_steps: usize, total_steps: usize) -> f64 {
    if step < warmup_steps {
        lr * (step + 1) as f64 / warmup_steps as f64
    } else {
        let prog = (step - warmup_steps) as f64 / (total_steps - warmup_steps).max(1) as f64;
        lr * 0.5 * (1.0 + (std::f64::consts::PI * prog.min(1.0)).cos())
    }
}

/// The training loss of a batch.
pub(crate) fn loss_of(loss: Loss, gamma: f64, z: &Tensor, y: &Tensor, pw: &Tensor) -> Tensor {
    match loss {
        Loss::Bce => z.binary_cross_entropy_with_logits(y, None::<&Tensor>, Some(pw), tch::Reduction::Mean),
        Loss::Focal => {
            let weighted = z.binary_cross_entropy_with_logits(y, None::<&Tensor>, Some(pw), tch::Reduction::None);
            let plain = z.binary_cross_entropy_with_logits::<Tensor>(y, None, None, tch::Reduction::None);
            // p_t = exp(−BCE); focal weight (1 − p_t)^γ.
            let p_t: Tensor = (-plain).exp();
            let focal = p_t.neg().g_add_scalar(1.0).pow_tensor_scalar(gamma);
            (focal * weighted).mean(tch::Kind::Float)
        }
    }
}

/// Watches an epoch's losses for the first that is not finite. The record is kept on the
/// device (no host sync per step) and read back every `check_every` steps.
pub(crate) struct Watch {
    /// The first step (0-based, in the epoch) whose loss was not finite, or −1.
    bad_at: Tensor,
    /// Steps recorded, on the device.
    steps: Tensor,
    recorded: usize,
    check_every: usize,
}

impl Watch {
    pub(crate) fn new(device: Device, check_every: usize) -> Self {
        Watch {
            bad_at: Tensor::full([], -1i64, (tch::Kind::Int64, device)),
            steps: Tensor::zeros([], (tch::Kind::Int64, device)),
            recorded: 0,
            check_every: check_every.max(1),
        }
    }

    /// Records a step's loss (before the step is applied: the weights it would write are
    /// garbage); on every `check_every`-th step, returns the first bad step so far.
    pub(crate) fn record(&mut self, loss: &Tensor) -> Result<Option<usize>> {
        let bad = loss.detach().isfinite().logical_not().logical_and(&self.bad_at.lt(0));
        self.bad_at = self.steps.where_self(&bad, &self.bad_at);
        self.steps += 1;
        self.recorded += 1;
        if self.recorded.is_multiple_of(self.check_every) {
            self.first_bad()
        } else {
            Ok(None)
        }
    }

    /// The first step whose loss was not finite, if any (reads the device).
    pub(crate) fn first_bad(&self) -> Result<Option<usize>> {
        let b = i64::try_from(&self.bad_at)?;
        Ok(usize::try_from(b).ok())
    }
}

/// The message of a loss that stopped being finite.
pub(crate) fn diverged(epoch: usize, in_epoch: usize, per_epoch: usize, global: usize, lr: f64) -> TrainError {
    let kept = if epoch > 1 {
        format!(
            "the run folder keeps epoch {} (`trainer train --resume` continues from it)",
            epoch - 1
        )
    } else {
        "no epoch was finished, so the same command starts the run again (no --force needed)".to_string()
    };
    TrainError::Diverged(format!(
        "training diverged at epoch {epoch}, step {in_epoch} of {per_epoch} (step {global} of the run): the loss is \
         not finite (learning rate {lr:.3e} at that step; lower train.lr); {kept}"
    ))
}

/// The epoch's mean training loss over the samples of applied steps (read from the device
/// once); an error when every step was skipped (fp16 overflow) or the loss is not finite.
pub(crate) fn epoch_loss(loss_sum: &Tensor, loss_seen: &Tensor, seen: usize, epoch: usize) -> Result<f64> {
    let loss_sum = f64::try_from(loss_sum)?;
    let loss_seen = f64::try_from(loss_seen)?;
    if loss_seen == 0.0 && seen > 0 {
        return Err(TrainError::Diverged(format!(
            "epoch {epoch}: every step overflowed in fp16 and was skipped, so nothing was learnt (the forward pass \
             itself overflows: train in fp32 with train.precision: fp32, or lower train.lr)"
        )));
    }
    let train_loss = loss_sum / loss_seen.max(1.0);
    if !train_loss.is_finite() {
        return Err(TrainError::Diverged(format!(
            "training diverged at epoch {epoch} (loss {train_loss}); lower train.lr"
        )));
    }
    Ok(train_loss)
}

/// The progress bar of an epoch of `n` samples (hidden when quiet or not on a terminal).
pub(crate) fn epoch_bar(quiet: bool, n: usize, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(n as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("epoch {msg} {bar:30} {pos}/{len} samples  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(format!("{epoch}/{epochs}"));
    pb
}

/// A training batch: cubes, labels, features (a model with them), and its size.
pub(crate) type Batch = (Tensor, Tensor, Option<Tensor>, usize);

/// The batch-loading thread: gathers and augments each chunk of the epoch's order on the
/// CPU (pinned for a CUDA device) and sends it, stopping at the first error or when the
/// training loop stops listening; returns how many cubes each augmentation touched.
pub(crate) fn produce_batches(
    train: &Cubes,
    chunks: Vec<&[usize]>,
    (aug, pad, mut rng): (&crate::augment::Augment, f64, StdRng),
    device: Device,
    tx: &std::sync::mpsc::SyncSender<Result<Batch>>,
) -> [usize; 2] {
    let mut augmented = [0usize; 2];
    for chunk in chunks {
        let batch = batch_tensor(train, chunk, Some((aug, pad, &mut rng, &mut augmented)), Device::Cpu).map(
            |(mut x, mut y, f)| {
                if device.is_cuda() {
                    // `_pin_memory`: `pin_memory(device)` warns (deprecated argument) per call.
                    x = x.f_internal_pin_memory(device).unwrap_or(x);
                    y = y.f_internal_pin_memory(device).unwrap_or(y);
                }
                (x, y, f, chunk.len())
            },
        );
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            break;
        }
    }
    augmented
}
