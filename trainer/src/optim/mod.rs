//! AdamW written on tensors, with its state saved and restored, so a run can resume exactly.
//!
//! tch's optimizers wrap libtorch's C++ ones and expose no state, so resuming with them
//! would restart the moment estimates. This follows `torch.optim.AdamW` (decoupled weight
//! decay, bias-corrected moments, `eps` added after the square root) and
//! `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`, capped at 1).
use std::path::Path;

use crate::{Result, TrainError};
use rayon::prelude::*;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

mod cpu;
mod scaler;

pub use scaler::{DeviceScaler, GradScaler};

/// Elements per piece of work of the fused CPU step (and its norm) on the rayon pool.
const CHUNK: usize = 1 << 15;

/// The factor that clips the gradients' global L2 norm to `clip` (1 when `clip` is 0 or the
/// norm is below it; NaN for a NaN norm, as `step`'s clamp_max gives).
fn clip_coefficient(pool: Option<&rayon::ThreadPool>, gs: &[&[f32]], clip: f64) -> f32 {
    if clip <= 0.0 {
        return 1.0;
    }
    // Partial sums in a fixed order, so the norm (and the run) is reproducible
    // whatever the thread count.
    // Eight independent lanes per chunk: a loop the compiler can vectorize, with the
    // same order of additions on every run.
    let chunk_sq = |c: &[f32]| {
        let mut acc = [0f64; 8];
        let mut it = c.chunks_exact(8);
        for w in &mut it {
            for k in 0..8 {
                acc[k] += f64::from(w[k]) * f64::from(w[k]);
            }
        }
        acc.iter().sum::<f64>() + it.remainder().iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()
    };
    let sq: f64 = in_pool(pool, || {
        gs.iter()
            .map(|g| {
                g.par_chunks(CHUNK)
                    .map(chunk_sq)
                    .collect::<Vec<f64>>()
                    .iter()
                    .sum::<f64>()
            })
            .sum()
    });
    let norm = sq.sqrt() as f32;
    // As `step`'s clamp_max: a NaN norm gives a NaN coefficient (f32::min would
    // drop it), an infinite one gives 0.
    let c = clip as f32 / (norm + 1e-6);
    if c.is_nan() {
        f32::NAN
    } else {
        c.min(1.0)
    }
}

/// Runs `f` on `pool`, or on rayon's global pool when there is none.
fn in_pool<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// AdamW over a VarStore's trainable variables, sorted by name.
///
/// All trainable parameters live in one contiguous buffer (`flat`; each variable's data is
/// re-pointed at its slice of it), gradients come flattened into a buffer of the same
/// layout, and the moments are flat too, so one update is a fixed few dozen kernels whatever
/// the number of tensors. tch exposes neither libtorch's `_foreach_*` nor its fused AdamW, and
/// per-tensor updates cost ~15 small kernel launches per parameter tensor (~1,000 per step
/// for r3d_18), which left a GPU waiting on the host.
///
/// Nothing in a step waits for the device: the step count and every coefficient that
/// depends on it live on the device, and with a loss scaler a step whose gradient overflowed
/// is turned into a no-op there (as fused AdamW's `found_inf` argument does) instead of being
/// skipped on the host after reading the flag, so the host can queue the next batch's
/// kernels while the device still works on this one.
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    /// Start of each parameter in the flat buffers.
    offsets: Vec<i64>,
    flat: Tensor,
    m: Tensor,
    v: Tensor,
    /// Reused buffers of the tensor-op update (the flat gradient and one temporary), made on
    /// its first use: a fresh tensor of the whole model's size every step would be a fresh
    /// mmap with page faults on CPU (glibc maps allocations above 32 MiB anew each time), and
    /// the fused CPU update needs neither (for r3d_18 they are 2 × 133 MB).
    grad: Option<Tensor>,
    scratch: Option<Tensor>,
    /// Updates applied so far (skipped overflow steps excluded): a 0-dim f64 tensor on the
    /// device; [`AdamW::steps`] reads it.
    step_count: Tensor,
    /// Threads of the fused CPU update (rayon's global pool when `None`).
    pool: Option<rayon::ThreadPool>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(vs: &VarStore, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut offsets = Vec::with_capacity(params.len());
        let mut total = 0i64;
        for (_, p) in &params {
            offsets.push(total);
            total += p.numel() as i64;
        }
        let device = params.first().map_or(tch::Device::Cpu, |(_, p)| p.device());
        let flat = Tensor::zeros([total], (Kind::Float, device));
        let mut opt = AdamW {
            params,
            offsets,
            m: flat.zeros_like(),
            v: flat.zeros_like(),
            grad: None,
            scratch: None,
            step_count: Tensor::zeros([], (Kind::Double, device)),
            pool: None,
            flat,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        };
        opt.bind();
        opt
    }

    /// Runs the fused CPU update on `n` threads (the run's `train.threads`) rather than on
    /// one per core.
    pub fn set_threads(&mut self, n: usize) -> Result<()> {
        self.pool = Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("adamw-{i}"))
                .build()
                .map_err(|source| TrainError::Threads {
                    count: n,
                    what: "optimizer",
                    source,
                })?,
        );
        Ok(())
    }

    /// Updates applied so far (waits for the device).
    pub fn steps(&self) -> Result<i64> {
        Ok(f64::try_from(&self.step_count).map_err(TrainError::tch("reading the optimizer's step count"))? as i64)
    }

    /// The slice of a flat buffer that holds parameter `i`, shaped like it.
    fn slice(&self, t: &Tensor, i: usize) -> Tensor {
        let p = &self.params[i].1;
        t.narrow(0, self.offsets[i], p.numel() as i64).view(p.size().as_slice())
    }

    /// Copies every parameter's current values into the flat buffer and points the
    /// parameter at its slice. Call again after anything that may have replaced a
    /// variable's storage (a checkpoint load); [`AdamW::step`] refuses to run otherwise.
    pub fn bind(&mut self) {
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                if !self.is_bound(i) {
                    let mut view = self.slice(&self.flat, i);
                    let p = &mut self.params[i].1;
                    view.copy_(p);
                    p.set_data(&view);
                }
            }
        });
    }

    /// Whether parameter `i`'s data sit at its place in the flat (f32) buffer.
    fn is_bound(&self, i: usize) -> bool {
        let at = self.flat.data_ptr() as usize + self.offsets[i] as usize * std::mem::size_of::<f32>();
        self.params[i].1.data_ptr() as usize == at
    }

    fn check_bound(&self) -> Result<()> {
        for i in 0..self.params.len() {
            if !self.is_bound(i) {
                return Err(TrainError::Internal(format!(
                    "parameter `{}` no longer lives in the optimizer's buffer (call AdamW::bind after loading weights)",
                    self.params[i].0
                )));
            }
        }
        Ok(())
    }

    /// Gradients of `loss` for every parameter, in the parameters' order
    /// (`torch.autograd.grad`: nothing accumulates in `.grad`, so there is nothing to zero).
    fn grads(&self, loss: &Tensor) -> Result<Vec<Tensor>> {
        let inputs: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        let grads =
            Tensor::f_run_backward(&[loss], &inputs, false, false).map_err(TrainError::tch("the backward pass"))?;
        if let Some(i) = grads.iter().position(|g| !g.defined()) {
            return Err(TrainError::Internal(format!(
                "parameter `{}` does not take part in the loss",
                self.params[i].0
            )));
        }
        Ok(grads)
    }

    /// The gradients of `loss` flattened into one tensor in the parameters' order. The returned
    /// tensor shares the optimizer's gradient buffer: pass it to [`AdamW::step`] before the
    /// next call.
    pub fn flat_grad(&mut self, loss: &Tensor) -> Result<Tensor> {
        let grads = self.grads(loss)?;
        let flat: Vec<Tensor> = grads.iter().map(|g| g.reshape([-1])).collect();
        let buf = self.grad.get_or_insert_with(|| self.flat.empty_like());
        Ok(tch::no_grad(|| Tensor::cat_out(buf, &flat, 0)))
    }

    /// Backward pass and update in one: what the training loop calls. `loss` is unscaled;
    /// with a `scaler` it is scaled here. Returns what [`AdamW::step`] returns.
    ///
    /// On the CPU without a scaler the update is fused (`AdamW::step_fused_cpu`): one pass over
    /// the memory instead of a dozen (libtorch's fused AdamW kernel is not bound by tch, and
    /// `torch.optim.AdamW(fused=True)` is what a PyTorch user at best settings runs).
    pub fn backward_step(
        &mut self,
        loss: &Tensor,
        lr: f64,
        clip: f64,
        scaler: Option<&mut DeviceScaler>,
    ) -> Result<Option<Tensor>> {
        if scaler.is_none() && self.flat.device() == tch::Device::Cpu {
            let grads = self.grads(loss)?;
            self.step_fused_cpu(&grads, lr, clip)?;
            return Ok(None);
        }
        let g = match scaler.as_deref() {
            Some(s) => self.flat_grad(&s.scale_loss(loss))?,
            None => self.flat_grad(loss)?,
        };
        self.step(&g, lr, clip, scaler)
    }

    /// Each gradient has its parameter's size and memory of its own (not the optimizer's
    /// buffers, which the fused step writes while reading the gradients).
    fn check_grads(&self, grads: &[Tensor]) -> Result<()> {
    let own = [cpu::span(&self.flat), cpu::span(&self.m), cpu::span(&self.v)];
    for (i, g) in grads.iter().enumerate() {
        let n = self.params[i].1.numel();
        if g.numel() != n {
            return Err(TrainError::Internal(format!(
                "gradient of `{}` has {} elements, the parameter {n}",
                self.params[i].0,
                g.numel()
            )));
        }
        let s = cpu::span(g);
        if own.iter().any(|o| s.start < o.end && o.start < s.end) {
            return Err(TrainError::Internal(format!(
                "the gradient of `{}` shares the optimizer's memory",
                self.params[i].0
            )));
        }
    }
        Ok(())
    }

    /// The same update as [`AdamW::step`] without a scaler, for parameters on the CPU, fused:
    /// the global gradient norm is one read of the gradients, then one parallel pass reads
    /// each gradient where backward left it (no flat copy) and updates parameter and moments
    /// in place, element by element, with `step`'s formulas in f32.
    #[allow(unsafe_code)] // raw slices over the tensors' memory: see the `cpu` module
    fn step_fused_cpu(&mut self, grads: &[Tensor], lr: f64, clip: f64) -> Result<()> {
        self.check_bound()?;
        if grads.len() != self.params.len() {
            return Err(TrainError::Internal(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        let grads: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).contiguous()).collect();
        self.check_grads(&grads)?;
        // SAFETY: the gradients are tensors of their own (checked above not to overlap the
        // optimizer's buffers, the only memory written below), held in `grads` until the end
        // of this function, and nothing else touches them meanwhile.
        let gs: Vec<&[f32]> = grads
            .iter()
            .map(|g| unsafe { cpu::f32_slice(g) })
            .collect::<Result<_>>()?;
        let coef = clip_coefficient(self.pool.as_ref(), &gs, clip);
        let t = self.steps()? + 1;
        let bc1 = 1.0 - self.beta1.powi(t as i32);
        let bc2 = 1.0 - self.beta2.powi(t as i32);
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let w1 = (1.0 - self.beta1) as f32;
        let (b2, one_m_b2) = (self.beta2 as f32, (1.0 - self.beta2) as f32);
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let step_size = (lr / bc1) as f32;
        let eps = self.eps as f32;
        // SAFETY: three separate buffers this optimizer owns; the parameters' views into
        // `flat` are not used by anything while the slices live (this function is the only
        // code running on them, and libtorch CPU work is synchronous), and the gradients
        // were checked not to overlap them.
        let (flat, m, v) = unsafe {
            (
                cpu::f32_slice_mut(&mut self.flat)?,
                cpu::f32_slice_mut(&mut self.m)?,
                cpu::f32_slice_mut(&mut self.v)?,
            )
        };
        let offsets = &self.offsets;
        let update = || {
            for (i, g) in gs.iter().enumerate() {
                let r = offsets[i] as usize..offsets[i] as usize + g.len();
                flat[r.clone()]
                    .par_chunks_mut(CHUNK)
                    .zip(m[r.clone()].par_chunks_mut(CHUNK))
                    .zip(v[r].par_chunks_mut(CHUNK))
                    .zip(g.par_chunks(CHUNK))
                    .for_each(|(((p, m), v), g)| {
                        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                            let g = g * coef;
                            *p *= decay;
                            // torch.lerp for a weight below 0.5.
                            *m += w1 * (g - *m);
                            *v = b2 * *v + one_m_b2 * (g * g);
                            let denom = v.sqrt() * inv_sqrt_bc2 + eps;
                            *p -= step_size * *m / denom;
                        }
                    });
            }
        };
        in_pool(self.pool.as_ref(), update);
        let _ = self.step_count.fill_(t as f64);
        Ok(())
    }

    /// One update from the flat gradient `grad` with learning rate `lr`, clipping the
    /// global gradient norm to `clip` first when `clip > 0`.
    ///
    /// With a `scaler` (mixed precision) the gradient is unscaled first and, when any of it
    /// is not finite, the update leaves parameters, moments and step count exactly as they
    /// were (`torch.amp.GradScaler.step`); the scale is updated as `GradScaler.update` does.
    /// Returns the step's weight in the loss average: `None` when it certainly applied (no
    /// scaler), otherwise a 0-dim f32 device tensor, 1 if applied and 0 if skipped, so the
    /// caller can weigh the loss without waiting for the device.
    pub fn step(
        &mut self,
        grad: &Tensor,
        lr: f64,
        clip: f64,
        scaler: Option<&mut DeviceScaler>,
    ) -> Result<Option<Tensor>> {
        self.check_bound()?;
        tch::no_grad(|| {
            let mut g = grad.shallow_clone();
            let applied = match scaler {
                Some(s) => {
                    let found_inf = s.unscale_and_update(&g)?;
                    // A skipped step's gradient becomes zeros, so every use of it below is
                    // finite; the coefficients then make the update an exact no-op.
                    let _ = g.masked_fill_(&found_inf.to_kind(Kind::Bool), 0.0);
                    Some(found_inf.view([]).neg().g_add_scalar(1.0))
                }
                None => None,
            };
            if clip > 0.0 {
                // Computed on the device, as clip_grad_norm_ does: no host sync per step.
                let coef = (g.norm() + 1e-6).reciprocal().g_mul_scalar(clip).clamp_max(1.0);
                let _ = g.g_mul_(&coef);
            }
            let ok = applied.as_ref().map(|a| a.to_kind(Kind::Double));
            match &ok {
                Some(ok) => {
                    let _ = self.step_count.g_add_(ok);
                }
                None => {
                    let _ = self.step_count.g_add_scalar_(1.0);
                }
            }
            // Device scalars (0-dim), `on` for an applied step and `off` for a skipped one.
            // Made by kernels on the device: a host value copied over would wait for it.
            let device = self.flat.device();
            let gate = |on: f64, off: f64| -> Tensor {
                match &ok {
                    Some(ok) => ok.g_mul_scalar(on - off).g_add_scalar(off),
                    None => Tensor::full([], on, (Kind::Double, device)),
                }
            };
            // Bias corrections 1 − β^t at the step count (t ≥ 1 even before the first
            // applied step, where they would divide by zero and the gate then sees a NaN).
            let t = self.step_count.clamp_min(1.0);
            let bc1 = Tensor::pow_scalar(self.beta1, &t).neg().g_add_scalar(1.0);
            let bc2 = Tensor::pow_scalar(self.beta2, &t).neg().g_add_scalar(1.0);
            let f32s = |x: Tensor| x.to_kind(Kind::Float);
            let decay = f32s(gate(1.0 - lr * self.weight_decay, 1.0));
            let w1 = f32s(gate(1.0 - self.beta1, 0.0));
            let b2 = f32s(gate(self.beta2, 1.0));
            let inv_sqrt_bc2 = f32s(bc2.rsqrt());
            let lr_bc1 = f32s(bc1.reciprocal().g_mul_scalar(lr) * gate(1.0, 0.0));
            // In place, through one scratch buffer (no allocation per step):
            // p ← p·(1 − lr·wd); m ← lerp(m, g, 1 − β1); v ← β2·v + (1 − β2)·g²;
            // p ← p − (lr / bc1) · m / (√v / √bc2 + eps).
            let s = self.scratch.get_or_insert_with(|| self.flat.empty_like());
            let _ = self.flat.g_mul_(&decay);
            let _ = self.m.lerp_tensor_(&g, &w1);
            let _ = g.mul_out(s, &g);
            let _ = s.g_mul_scalar_(1.0 - self.beta2);
            let _ = self.v.g_mul_(&b2);
            let _ = self.v.g_add_(s);
            let _ = self.v.sqrt_out(s);
            let _ = s.g_mul_(&inv_sqrt_bc2);
            let _ = s.g_add_scalar_(self.eps);
            let _ = self.m.div_out(s, s);
            let _ = s.g_mul_(&lr_bc1);
            let _ = self.flat.g_sub_(s);
            Ok(applied)
        })
    }

    /// Saves the moments (one entry per parameter, as before) and the step count. On the
    /// CPU the entries are views of the flat buffers (safetensors copies one at a time as it
    /// writes), not a second copy of both moments.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            named.push((format!("m.{name}"), self.slice(&self.m, i).to_device(tch::Device::Cpu)));
            named.push((format!("v.{name}"), self.slice(&self.v, i).to_device(tch::Device::Cpu)));
        }
        named.push(("step".into(), Tensor::from(self.steps()?)));
        files::replace_with(path, |tmp| Tensor::write_safetensors(&named, tmp))?;
        Ok(())
    }

    /// Restores what [`AdamW::save`] wrote; every moment must be present with its shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(TrainError::tch(format!(
                "{}: cannot read the optimizer state",
                path.display()
            )))?
            .into_iter()
            .collect();
        tch::no_grad(|| -> Result<()> {
            for (i, (name, _)) in self.params.iter().enumerate() {
                for (prefix, buf) in [("m", &self.m), ("v", &self.v)] {
                    let mut dst = self.slice(buf, i);
                    let Some(src) = saved.get(&format!("{prefix}.{name}")) else {
                        return Err(TrainError::run_folder(path, format!("no optimizer state for `{name}`")));
                    };
                    if src.size() != dst.size() {
                        return Err(TrainError::run_folder(
                            path,
                            format!(
                                "optimizer state for `{name}` has shape {:?}, expected {:?}",
                                src.size(),
                                dst.size()
                            ),
                        ));
                    }
                    dst.copy_(src);
                }
            }
            Ok(())
        })?;
        let step = saved.get("step").and_then(|t| i64::try_from(t).ok()).ok_or_else(|| {
            TrainError::run_folder(path, "no step count in the optimizer state")
        })?;
        let _ = self.step_count.fill_(step as f64);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use tch::nn::{self, Module};

    /// A 4→1 linear layer with fixed weights (no global RNG: tests run in parallel).
    fn tiny() -> (VarStore, nn::Linear) {
        let vs = VarStore::new(tch::Device::Cpu);
        let mut lin = nn::linear(vs.root() / "fc", 4, 1, Default::default());
        tch::no_grad(|| {
            lin.ws
                .copy_(&Tensor::from_slice(&[0.3f32, -0.2, 0.1, 0.4]).view([1, 4]));
            if let Some(b) = lin.bs.as_mut() {
                b.copy_(&Tensor::from_slice(&[0.05f32]));
            }
        });
        (vs, lin)
    }

    #[test]
    fn scaled_step_equals_unscaled_step() {
        let x = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25, 1.0, 1.5, -0.5, 0.0]).view([2, 4]);
        let mut after = Vec::new();
        for scaled in [false, true] {
            let (vs, lin) = tiny();
            let mut opt = AdamW::new(&vs, 1e-2);
            let mut scaler = DeviceScaler::new(&GradScaler::default(), tch::Device::Cpu);
            let loss = lin.forward(&x).pow_tensor_scalar(2).mean(Kind::Float);
            if scaled {
                let g = opt.flat_grad(&scaler.scale_loss(&loss)).unwrap();
                let applied = opt.step(&g, 1e-2, 0.5, Some(&mut scaler)).unwrap().unwrap();
                assert_eq!(f64::try_from(&applied).unwrap(), 1.0);
                assert_eq!(scaler.state().unwrap().growth_tracker, 1);
            } else {
                let g = opt.flat_grad(&loss).unwrap();
                assert!(opt.step(&g, 1e-2, 0.5, None).unwrap().is_none());
            }
            assert_eq!(opt.steps().unwrap(), 1);
            after.push(lin.ws.flatten(0, -1));
        }
        let d = f64::try_from((&after[0] - &after[1]).abs().max()).unwrap();
        assert!(d < 1e-6, "scaled and unscaled updates differ by {d}");
    }

    /// An overflow, at the first step or later, leaves weights, moments and step count
    /// bit for bit as they were, halves the scale, and the run goes on as if it had not
    /// happened: the next applied step equals that of a run that never overflowed.
    #[test]
    fn overflow_skips_the_step_and_halves_the_scale() {
        let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]).view([1, 4]);
        let finite = |lin: &nn::Linear| lin.forward(&x).pow_tensor_scalar(2).sum(Kind::Float);
        let run = |overflows: &[usize]| {
            let (vs, lin) = tiny();
            let mut opt = AdamW::new(&vs, 1e-2);
            let mut scaler = DeviceScaler::new(
                &GradScaler {
                    growth_tracker: 7,
                    ..GradScaler::default()
                },
                tch::Device::Cpu,
            );
            for k in 0..4 {
                let loss = if overflows.contains(&k) {
                    finite(&lin) * f64::INFINITY
                } else {
                    finite(&lin)
                };
                let before = (lin.ws.copy(), opt.m.copy(), opt.v.copy(), opt.steps().unwrap());
                let g = opt.flat_grad(&scaler.scale_loss(&loss)).unwrap();
                let applied = opt.step(&g, 1e-2, 1.0, Some(&mut scaler)).unwrap().unwrap();
                let applied = f64::try_from(&applied).unwrap();
                if overflows.contains(&k) {
                    assert_eq!(applied, 0.0);
                    assert!(lin.ws.equal(&before.0), "a skipped step must leave the weights alone");
                    assert!(opt.m.equal(&before.1) && opt.v.equal(&before.2), "nor the moments");
                    assert_eq!(opt.steps().unwrap(), before.3);
                    assert_eq!(scaler.state().unwrap().growth_tracker, 0);
                } else {
                    assert_eq!(applied, 1.0);
                    assert_eq!(opt.steps().unwrap(), before.3 + 1);
                }
            }
            (lin.ws.flatten(0, -1), scaler.state().unwrap())
        };
        let (_, s0) = run(&[]);
        assert_eq!((s0.scale, s0.growth_tracker), (65536.0, 11));
        for overflows in [&[0usize][..], &[2], &[0, 1]] {
            let (w, s) = run(overflows);
            assert_eq!(s.scale, 65536.0 * 0.5f64.powi(overflows.len() as i32));
            // The skipped steps' inputs equal the next ones (weights did not move), so the
            // run ends where a clean run with as many fewer steps ends; compare the count.
            let (vs, lin) = tiny();
            let mut opt = AdamW::new(&vs, 1e-2);
            for _ in 0..4 - overflows.len() {
                let g = opt.flat_grad(&finite(&lin)).unwrap();
                let _ = opt.step(&g, 1e-2, 1.0, None).unwrap();
            }
            let want = lin.ws.flatten(0, -1);
            let d = f64::try_from((&w - &want).abs().max()).unwrap();
            assert!(d < 1e-6, "overflow at {overflows:?}: {d} from a clean run");
        }
    }

    /// One AdamW step from zero moments moves each weight by lr·sign(g) after decay:
    /// m̂ = g, v̂ = g², so the update is lr·g/(|g| + eps). Checks the flat buffers reach the
    /// model's own variables.
    #[test]
    fn first_step_matches_the_adamw_formula() {
        let (vs, lin) = tiny();
        let mut opt = AdamW::new(&vs, 0.1);
        let w0 = Vec::<f32>::try_from(lin.ws.flatten(0, -1)).unwrap();
        let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]).view([1, 4]);
        // d(sum)/dw = x, so sign(g) = sign(x).
        let g = opt.flat_grad(&lin.forward(&x).sum(Kind::Float)).unwrap();
        assert!(opt.step(&g, 0.01, 0.0, None).unwrap().is_none());
        let w1 = Vec::<f32>::try_from(lin.ws.flatten(0, -1)).unwrap();
        for (k, (&a, &b)) in w0.iter().zip(&w1).enumerate() {
            let xk = [1.0f32, -2.0, 0.5, 3.0][k];
            let want = f64::from(a) * (1.0 - 0.01 * 0.1) - 0.01 * f64::from(xk.signum());
            assert!((f64::from(b) - want).abs() < 1e-6, "w[{k}]: {b} vs {want}");
        }
    }

    /// Three steps against the AdamW recurrence written out in f64 on the host, so the
    /// device-side bias corrections are checked past the first step.
    #[test]
    fn steps_follow_the_adamw_recurrence() {
        let (vs, lin) = tiny();
        let (lr, wd) = (0.02, 0.05);
        let mut opt = AdamW::new(&vs, wd);
        let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]).view([1, 4]);
        let mut w: Vec<f64> = Vec::<f32>::try_from(lin.ws.flatten(0, -1))
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let (mut m, mut v) = (vec![0.0f64; 4], vec![0.0f64; 4]);
        for t in 1..=3 {
            // loss = (w·x + b)², dloss/dw = 2(w·x + b)x.
            let b = f64::from(Vec::<f32>::try_from(lin.bs.as_ref().unwrap()).unwrap()[0]);
            let z: f64 = w.iter().zip([1.0, -2.0, 0.5, 3.0]).map(|(a, c)| a * c).sum::<f64>() + b;
            let g = opt
                .flat_grad(&lin.forward(&x).pow_tensor_scalar(2).sum(Kind::Float))
                .unwrap();
            let _ = opt.step(&g, lr, 0.0, None).unwrap();
            for (k, xk) in [1.0, -2.0, 0.5, 3.0].into_iter().enumerate() {
                let gk = 2.0 * z * xk;
                w[k] *= 1.0 - lr * wd;
                m[k] = 0.9 * m[k] + 0.1 * gk;
                v[k] = 0.999 * v[k] + 0.001 * gk * gk;
                let bc1 = 1.0 - 0.9f64.powi(t);
                let bc2 = 1.0 - 0.999f64.powi(t);
                w[k] -= lr / bc1 * m[k] / (v[k].sqrt() / bc2.sqrt() + 1e-8);
            }
        }
        let got = Vec::<f32>::try_from(lin.ws.flatten(0, -1)).unwrap();
        for k in 0..4 {
            assert!(
                (f64::from(got[k]) - w[k]).abs() < 1e-5,
                "w[{k}]: {} vs {}",
                got[k],
                w[k]
            );
        }
    }
    /// The fused CPU update follows the tensor update: five steps of a two-layer network
    /// (several parameter tensors, one larger than a parallel chunk), with the gradient
    /// clipped on some steps and not on others, weight decay on; and it is reproducible,
    /// bit for bit, whatever the number of threads.
    #[test]
    fn fused_cpu_step_equals_the_tensor_step() {
        let x =
            Tensor::from_slice(&(0..96).map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0).collect::<Vec<_>>()).view([4, 24]);
        let run = |fused: bool, threads: Option<usize>| {
            let vs = VarStore::new(tch::Device::Cpu);
            let root = vs.root();
            // Fixed weights (no global RNG: tests run in parallel).
            let l1 = nn::linear(&root / "a", 24, 2048, Default::default());
            let l2 = nn::linear(&root / "b", 2048, 1, Default::default());
            let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            tch::no_grad(|| {
                for (k, (_, mut t)) in vars.into_iter().enumerate() {
                    let n = t.numel() as i64;
                    let vals = Tensor::arange(n, (Kind::Float, tch::Device::Cpu))
                        .g_mul_scalar(0.7 + k as f64)
                        .sin()
                        .g_mul_scalar(0.05);
                    t.copy_(&vals.view(t.size().as_slice()));
                }
            });
            let mut opt = AdamW::new(&vs, 0.05);
            if let Some(n) = threads {
                opt.set_threads(n).unwrap();
            }
            for step in 0..5 {
                let loss = l2
                    .forward(&l1.forward(&x).relu())
                    .pow_tensor_scalar(2)
                    .mean(Kind::Float);
                // Clip hard on odd steps (the coefficient bites), not at all on even ones.
                let clip = if step % 2 == 1 { 1e-3 } else { 0.0 };
                if fused {
                    assert!(opt.backward_step(&loss, 1e-2, clip, None).unwrap().is_none());
                } else {
                    let g = opt.flat_grad(&loss).unwrap();
                    let _ = opt.step(&g, 1e-2, clip, None).unwrap();
                }
            }
            assert_eq!(opt.steps().unwrap(), 5);
            (opt.flat.copy(), opt.m.copy(), opt.v.copy())
        };
        let (pf, mf, vf) = run(true, None);
        let (pt, mt, vt) = run(false, None);
        for (name, a, b) in [("weights", &pf, &pt), ("m", &mf, &mt), ("v", &vf, &vt)] {
            let scale = f64::try_from(b.abs().max()).unwrap();
            let d = f64::try_from((a - b).abs().max()).unwrap();
            assert!(
                d <= 1e-5 * scale.max(1e-3),
                "{name}: fused and tensor updates differ by {d} (scale {scale})"
            );
        }
        for threads in [None, Some(1), Some(3)] {
            let (again, _, _) = run(true, threads);
            assert!(
                again.equal(&pf),
                "the fused update differs on a rerun with {threads:?} threads"
            );
        }
    }

    /// A checkpoint loaded into the VarStore lands in the optimizer's buffer (tch's load
    /// copies in place), so training goes on from the loaded weights.
    #[test]
    fn loaded_weights_stay_in_the_flat_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, lin) = tiny();
        let mut opt = AdamW::new(&vs, 0.0);
        let _ = tch::no_grad(|| lin.ws.shallow_clone().fill_(2.0));
        vs.save(dir.path().join("w.safetensors")).unwrap();
        let _ = tch::no_grad(|| lin.ws.shallow_clone().fill_(-1.0));
        let mut vs = vs;
        vs.load(dir.path().join("w.safetensors")).unwrap();
        opt.bind();
        let g = opt
            .flat_grad(
                &lin.forward(&Tensor::ones([1, 4], (Kind::Float, tch::Device::Cpu)))
                    .sum(Kind::Float),
            )
            .unwrap();
        assert!(opt.step(&g, 0.5, 0.0, None).unwrap().is_none());
        // 2 − 0.5·sign(1) = 1.5 for every weight.
        let w = Vec::<f32>::try_from(lin.ws.flatten(0, -1)).unwrap();
        assert!(w.iter().all(|&v| (v - 1.5).abs() < 1e-5), "{w:?}");
    }

    #[test]
    fn scale_grows_after_the_interval() {
        let mut s = DeviceScaler::new(
            &GradScaler {
                growth_interval: 3,
                ..GradScaler::default()
            },
            tch::Device::Cpu,
        );
        let g = Tensor::from_slice(&[1.0f32, -2.0]);
        for _ in 0..3 {
            let found = s.unscale_and_update(&g).unwrap();
            assert_eq!(f64::try_from(found.view([])).unwrap(), 0.0);
        }
        let st = s.state().unwrap();
        assert_eq!((st.scale, st.growth_tracker), (131072.0, 0));
        // Unscaled in place three times by 65536 (the scale grew only after the third).
        let want = [1.0 / 65536f64.powi(3), -2.0 / 65536f64.powi(3)];
        let got = Vec::<f32>::try_from(&g).unwrap();
        for (a, b) in got.iter().zip(want) {
            assert!((f64::from(*a) - b).abs() <= b.abs() * 1e-6, "{got:?}");
        }
    }
}
