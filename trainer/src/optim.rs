//! AdamW written on tensors, with its state saved and restored, so a run can resume exactly.
//!
//! tch's optimizers wrap libtorch's C++ ones and expose no state, so resuming with them
//! would restart the moment estimates. This follows `torch.optim.AdamW` (decoupled weight
//! decay, bias-corrected moments, `eps` added after the square root) and
//! `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`, capped at 1).
use std::path::Path;

use anyhow::{bail, Context, Result};
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
    /// first when `clip > 0`.
    pub fn step(&mut self, lr: f64, clip: f64) {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).collect();
            if clip > 0.0 {
                let total = grads
                    .iter()
                    .filter(|g| g.defined())
                    .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float))
                    .fold(Tensor::zeros([], (Kind::Float, self.params[0].1.device())), |a, b| {
                        a + b
                    })
                    .sqrt();
                let coef = (clip / (f64::try_from(&total).unwrap_or(0.0) + 1e-6)).min(1.0);
                if coef < 1.0 {
                    for g in grads.iter().filter(|g| g.defined()) {
                        let _ = g.shallow_clone().g_mul_scalar_(coef);
                    }
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
        });
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
