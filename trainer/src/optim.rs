//! AdamW written on tensors, with its state saved and restored, so a run can resume exactly.
//!
//! tch's optimizers wrap libtorch's C++ ones and expose no state, so resuming with them
//! would restart the moment estimates. This follows `torch.optim.AdamW` (decoupled weight
//! decay, bias-corrected moments, `eps` added after the square root) and
//! `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`, capped at 1).
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// AdamW over a VarStore's trainable variables, sorted by name.
///
/// All trainable parameters live in one contiguous buffer (`flat`; each variable's data is
/// re-pointed at its slice of it), gradients come flattened into a buffer of the same
/// layout, and the moments are flat too, so one update is about ten kernels whatever the
/// number of tensors. tch exposes neither libtorch's `_foreach_*` nor its fused AdamW, and
/// per-tensor updates cost ~15 small kernel launches per parameter tensor (~1,000 per step
/// for r3d_18), which left a GPU waiting on the host.
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    /// Start of each parameter in the flat buffers.
    offsets: Vec<i64>,
    flat: Tensor,
    m: Tensor,
    v: Tensor,
    /// Reused buffers (the flat gradient and one temporary): a fresh tensor of the whole
    /// model's size every step would be a fresh mmap with page faults on CPU (glibc maps
    /// allocations above 32 MiB anew each time).
    grad: Tensor,
    scratch: Tensor,
    pub step: i64,
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
            grad: flat.zeros_like(),
            scratch: flat.zeros_like(),
            flat,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        };
        opt.bind();
        opt
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
                bail!(
                    "internal error: parameter `{}` no longer lives in the optimizer's buffer (call AdamW::bind after loading weights)",
                    self.params[i].0
                );
            }
        }
        Ok(())
    }

    /// Gradients of `loss` for every parameter, flattened in the parameters' order
    /// (`torch.autograd.grad`: nothing accumulates in `.grad`, so there is nothing to zero).
    /// The returned tensor shares the optimizer's gradient buffer: pass it to
    /// [`AdamW::step`] before the next call.
    pub fn flat_grad(&self, loss: &Tensor) -> Result<Tensor> {
        let inputs: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        let grads = Tensor::f_run_backward(&[loss], &inputs, false, false).context("backward pass")?;
        if let Some(i) = grads.iter().position(|g| !g.defined()) {
            bail!("parameter `{}` does not take part in the loss", self.params[i].0);
        }
        let flat: Vec<Tensor> = grads.iter().map(|g| g.reshape([-1])).collect();
        Ok(tch::no_grad(|| Tensor::cat_out(&self.grad, &flat, 0)))
    }

    /// One update from the flat gradient `grad` with learning rate `lr`, clipping the
    /// global gradient norm to `clip` first when `clip > 0`. With a `scaler` (mixed
    /// precision) the gradient is unscaled first and the update is skipped, as
    /// `torch.amp.GradScaler.step` does, when any of it is not finite; returns whether the
    /// parameters were updated.
    pub fn step(&mut self, grad: &Tensor, lr: f64, clip: f64, scaler: Option<&mut GradScaler>) -> Result<bool> {
        self.check_bound()?;
        Ok(tch::no_grad(|| {
            let mut g = grad.shallow_clone();
            if let Some(s) = scaler {
                let found_inf = s.unscale(&g);
                s.update(found_inf);
                if found_inf {
                    return false;
                }
            }
            if clip > 0.0 {
                // Computed on the device, as clip_grad_norm_ does: no host sync per step.
                let coef = (g.norm() + 1e-6).reciprocal().g_mul_scalar(clip).clamp_max(1.0);
                let _ = g.g_mul_(&coef);
            }
            self.step += 1;
            let bc1 = 1.0 - self.beta1.powi(self.step as i32);
            let bc2 = 1.0 - self.beta2.powi(self.step as i32);
            // In place, through one scratch buffer (no allocation per step):
            // p ← p·(1 − lr·wd); m ← lerp(m, g, 1 − β1); v ← β2·v + (1 − β2)·g²;
            // p ← p − (lr / bc1) · m / (√v / √bc2 + eps).
            let s = &mut self.scratch;
            let _ = self.flat.g_mul_scalar_(1.0 - lr * self.weight_decay);
            let _ = self.m.lerp_(&g, 1.0 - self.beta1);
            let _ = g.mul_out(s, &g);
            let _ = s.g_mul_scalar_(1.0 - self.beta2);
            let _ = self.v.g_mul_scalar_(self.beta2);
            let _ = self.v.g_add_(s);
            let _ = self.v.sqrt_out(s);
            let _ = s.g_mul_scalar_(1.0 / bc2.sqrt());
            let _ = s.g_add_scalar_(self.eps);
            let _ = self.m.div_out(s, s);
            let _ = s.g_mul_scalar_(lr / bc1);
            let _ = self.flat.g_sub_(s);
            true
        }))
    }

    /// Saves the moments (one entry per parameter, as before) and the step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            named.push((
                format!("m.{name}"),
                self.slice(&self.m, i).to_device(tch::Device::Cpu).copy(),
            ));
            named.push((
                format!("v.{name}"),
                self.slice(&self.v, i).to_device(tch::Device::Cpu).copy(),
            ));
        }
        named.push(("step".into(), Tensor::from(self.step)));
        models::fsutil::replace_with(path, |tmp| Tensor::write_safetensors(&named, tmp))
            .context("cannot save optimizer state")?;
        Ok(())
    }

    /// Restores what [`AdamW::save`] wrote; every moment must be present with its shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("{}: cannot read optimizer state", path.display()))?
            .into_iter()
            .collect();
        tch::no_grad(|| -> Result<()> {
            for (i, (name, _)) in self.params.iter().enumerate() {
                for (prefix, buf) in [("m", &self.m), ("v", &self.v)] {
                    let mut dst = self.slice(buf, i);
                    let Some(src) = saved.get(&format!("{prefix}.{name}")) else {
                        bail!("{}: no optimizer state for `{name}`", path.display());
                    };
                    if src.size() != dst.size() {
                        bail!(
                            "{}: optimizer state for `{name}` has shape {:?}, expected {:?}",
                            path.display(),
                            src.size(),
                            dst.size()
                        );
                    }
                    dst.copy_(src);
                }
            }
            Ok(())
        })?;
        self.step = saved
            .get("step")
            .and_then(|t| i64::try_from(t).ok())
            .with_context(|| format!("{}: no step count in the optimizer state", path.display()))?;
        Ok(())
    }
}

/// Dynamic loss scaling for fp16 mixed precision, as `torch.amp.GradScaler` does it (tch has
/// autocast but no scaler): the loss is multiplied by `scale` before `backward`, gradients
/// are divided by it before the update, a step whose gradients overflowed is skipped and
/// halves the scale, and `growth_interval` clean steps in a row double it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub growth_tracker: u32,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u32,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_tracker: 0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

impl GradScaler {
    /// Divides the (flat) gradient by the scale in place; true when it holds an Inf or NaN
    /// (then it is garbage and the step must be skipped).
    pub fn unscale(&self, grad: &Tensor) -> bool {
        let device = grad.device();
        let inv = Tensor::from_slice(&[(1.0 / self.scale) as f32]).to_device(device);
        let found = if device.is_cuda() {
            // libtorch's fused check-and-unscale kernel (CUDA only).
            let mut found = Tensor::zeros([1], (Kind::Float, device));
            grad.shallow_clone()
                .internal_amp_non_finite_check_and_unscale(&mut found, &inv);
            found
        } else {
            let bad = grad.isfinite().logical_not().any().to_kind(Kind::Float);
            let _ = grad.shallow_clone().g_mul_(&inv);
            bad
        };
        f64::try_from(&found).map_or(true, |v| v > 0.0)
    }

    /// Adjusts the scale after a step (`torch._amp_update_scale_`).
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        }
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
            let mut scaler = GradScaler::default();
            let loss = lin.forward(&x).pow_tensor_scalar(2).mean(Kind::Float);
            if scaled {
                let g = opt.flat_grad(&(&loss * scaler.scale)).unwrap();
                assert!(opt.step(&g, 1e-2, 0.5, Some(&mut scaler)).unwrap());
                assert_eq!(scaler.growth_tracker, 1);
            } else {
                let g = opt.flat_grad(&loss).unwrap();
                assert!(opt.step(&g, 1e-2, 0.5, None).unwrap());
            }
            after.push(lin.ws.flatten(0, -1));
        }
        let d = f64::try_from((&after[0] - &after[1]).abs().max()).unwrap();
        assert!(d < 1e-6, "scaled and unscaled updates differ by {d}");
    }

    #[test]
    fn overflow_skips_the_step_and_halves_the_scale() {
        let (vs, lin) = tiny();
        let mut opt = AdamW::new(&vs, 1e-2);
        let before = lin.ws.copy();
        let x = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0]).view([1, 4]);
        let loss = lin.forward(&x).sum(Kind::Float) * f64::INFINITY;
        let g = opt.flat_grad(&loss).unwrap();
        let mut scaler = GradScaler {
            growth_tracker: 7,
            ..GradScaler::default()
        };
        assert!(!opt.step(&g, 1e-2, 1.0, Some(&mut scaler)).unwrap());
        assert_eq!(scaler.scale, 32768.0);
        assert_eq!(scaler.growth_tracker, 0);
        assert!(lin.ws.equal(&before), "a skipped step must leave the weights alone");
        assert_eq!(opt.step, 0);
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
        assert!(opt.step(&g, 0.01, 0.0, None).unwrap());
        let w1 = Vec::<f32>::try_from(lin.ws.flatten(0, -1)).unwrap();
        for (k, (&a, &b)) in w0.iter().zip(&w1).enumerate() {
            let xk = [1.0f32, -2.0, 0.5, 3.0][k];
            let want = f64::from(a) * (1.0 - 0.01 * 0.1) - 0.01 * f64::from(xk.signum());
            assert!((f64::from(b) - want).abs() < 1e-6, "w[{k}]: {b} vs {want}");
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
        assert!(opt.step(&g, 0.5, 0.0, None).unwrap());
        // 2 − 0.5·sign(1) = 1.5 for every weight.
        let w = Vec::<f32>::try_from(lin.ws.flatten(0, -1)).unwrap();
        assert!(w.iter().all(|&v| (v - 1.5).abs() < 1e-5), "{w:?}");
    }

    #[test]
    fn scale_grows_after_the_interval() {
        let mut s = GradScaler {
            growth_interval: 3,
            ..GradScaler::default()
        };
        for _ in 0..3 {
            s.update(false);
        }
        assert_eq!((s.scale, s.growth_tracker), (131072.0, 0));
    }
}
