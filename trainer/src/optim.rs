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
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
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
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        AdamW {
            params,
            m,
            v,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr`, clipping the global gradient norm to `clip`
    /// first when `clip > 0`. With a `scaler` (mixed precision) the gradients are unscaled
    /// first and the update is skipped, as `torch.amp.GradScaler.step` does, when any of them
    /// is not finite; returns whether the parameters were updated.
    pub fn step(&mut self, lr: f64, clip: f64, scaler: Option<&mut GradScaler>) -> bool {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).collect();
            if let Some(s) = scaler {
                let found_inf = s.unscale(&grads);
                s.update(found_inf);
                if found_inf {
                    return false;
                }
            }
            if clip > 0.0 {
                let total = grads
                    .iter()
                    .filter(|g| g.defined())
                    .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float))
                    .fold(Tensor::zeros([], (Kind::Float, self.params[0].1.device())), |a, b| {
                        a + b
                    })
                    .sqrt();
                // Computed on the device, as clip_grad_norm_ does: no host sync per step.
                let coef = (total + 1e-6).reciprocal().g_mul_scalar(clip).clamp_max(1.0);
                for g in grads.iter().filter(|g| g.defined()) {
                    let _ = g.shallow_clone().g_mul_(&coef);
                }
            }
            self.step += 1;
            let bc1 = 1.0 - self.beta1.powi(self.step as i32);
            let bc2 = 1.0 - self.beta2.powi(self.step as i32);
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let g = &grads[i];
                if !g.defined() {
                    continue;
                }
                let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                let m = &mut self.m[i];
                let _ = m.g_mul_scalar_(self.beta1);
                let _ = m.g_add_(&(g * (1.0 - self.beta1)));
                let v = &mut self.v[i];
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.g_add_(&(g * g * (1.0 - self.beta2)));
                let denom = v.sqrt() / bc2.sqrt() + self.eps;
                let _ = p.g_sub_(&(&*m / denom * (lr / bc1)));
            }
            true
        })
    }

    /// Saves the moments and the step count (safetensors).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            named.push((format!("m.{name}"), self.m[i].to_device(tch::Device::Cpu)));
            named.push((format!("v.{name}"), self.v[i].to_device(tch::Device::Cpu)));
        }
        named.push(("step".into(), Tensor::from(self.step)));
        let tmp = path.with_extension("tmp.safetensors");
        Tensor::write_safetensors(&named, &tmp)
            .with_context(|| format!("{}: cannot save optimizer state", tmp.display()))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("{}: cannot sync", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot save optimizer state", path.display()))?;
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
                for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
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
        self.step = saved.get("step").map(|t| i64::try_from(t).unwrap_or(0)).unwrap_or(0);
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
    /// Divides every gradient by the scale in place; true when any gradient holds an Inf or
    /// NaN (then the gradients are garbage and the step must be skipped).
    pub fn unscale(&self, grads: &[Tensor]) -> bool {
        let grads: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
        let Some(first) = grads.first() else { return false };
        let device = first.device();
        let mut found = Tensor::zeros([1], (Kind::Float, device));
        let inv = Tensor::from_slice(&[(1.0 / self.scale) as f32]).to_device(device);
        for g in grads {
            if device.is_cuda() {
                // libtorch's fused check-and-unscale kernel (CUDA only).
                g.shallow_clone()
                    .internal_amp_non_finite_check_and_unscale(&mut found, &inv);
            } else {
                let bad = g.isfinite().logical_not().any().to_kind(Kind::Float).view([1]);
                found = found.maximum(&bad);
                let _ = g.shallow_clone().g_mul_(&inv);
            }
        }
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
            opt.zero_grad();
            if scaled {
                (&loss * scaler.scale).backward();
                assert!(opt.step(1e-2, 0.5, Some(&mut scaler)));
                assert_eq!(scaler.growth_tracker, 1);
            } else {
                loss.backward();
                assert!(opt.step(1e-2, 0.5, None));
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
        opt.zero_grad();
        loss.backward();
        let mut scaler = GradScaler {
            growth_tracker: 7,
            ..GradScaler::default()
        };
        assert!(!opt.step(1e-2, 1.0, Some(&mut scaler)));
        assert_eq!(scaler.scale, 32768.0);
        assert_eq!(scaler.growth_tracker, 0);
        assert!(lin.ws.equal(&before), "a skipped step must leave the weights alone");
        assert_eq!(opt.step, 0);
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
