//! Loss scaling for fp16 mixed precision, as `torch.cuda.amp.GradScaler` does it.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::{Result, TrainError};

/// Dynamic loss scaling for fp16 mixed precision, as `torch.amp.GradScaler` does it (tch has
/// autocast but no scaler): the loss is multiplied by `scale` before `backward`, gradients
/// are divided by it before the update, a step whose gradients overflowed is skipped and
/// halves the scale, and `growth_interval` clean steps in a row double it.
///
/// This is the saved form (in `train_state.yaml`); training uses a [`DeviceScaler`].
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

/// A [`GradScaler`] whose scale, growth tracker and overflow flag live on the training
/// device, updated there by libtorch's own kernels (`_amp_foreach_non_finite_check_and_unscale_`
/// and `_amp_update_scale_`, on CPU and CUDA alike), so a step never waits to learn whether
/// it overflowed. [`DeviceScaler::state`] reads it back for saving.
pub struct DeviceScaler {
    /// f32, shape [1].
    scale: Tensor,
    /// i32, shape [1].
    growth_tracker: Tensor,
    /// f32, shape [1]: 1 after a step whose gradient held an Inf or NaN.
    found_inf: Tensor,
    config: GradScaler,
}

impl DeviceScaler {
    pub fn new(s: &GradScaler, device: tch::Device) -> Self {
        DeviceScaler {
            scale: Tensor::from_slice(&[s.scale as f32]).to_device(device),
            growth_tracker: Tensor::from_slice(&[s.growth_tracker as i32]).to_device(device),
            found_inf: Tensor::zeros([1], (Kind::Float, device)),
            config: *s,
        }
    }

    /// `loss × scale`, what the backward pass runs on.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.scale.view([])
    }

    /// Divides the (flat) gradient by the scale in place, records whether it held an Inf
    /// or NaN, and updates the scale for the next step. Returns the flag (f32, shape `[1]`).
    pub fn unscale_and_update(&mut self, grad: &Tensor) -> Result<Tensor> {
        let _ = self.found_inf.zero_();
        let inv = self.scale.reciprocal();
        grad.shallow_clone()
            .f_internal_amp_non_finite_check_and_unscale(&mut self.found_inf, &inv)
            .map_err(TrainError::tch("unscaling the gradient"))?;
        let c = &self.config;
        let _ = self
            .scale
            .f_internal_amp_update_scale_(
                &self.growth_tracker,
                &self.found_inf,
                c.growth_factor,
                c.backoff_factor,
                i64::from(c.growth_interval),
            )
            .map_err(TrainError::tch("updating the loss scale"))?;
        Ok(self.found_inf.shallow_clone())
    }

    /// The state to save (waits for the device).
    pub fn state(&self) -> Result<GradScaler> {
        let scale = f64::try_from(&self.scale.view([])).map_err(TrainError::tch("reading the loss scale"))?;
        let tracker =
            i64::try_from(&self.growth_tracker.view([])).map_err(TrainError::tch("reading the loss scaler"))?;
        Ok(GradScaler {
            scale,
            growth_tracker: u32::try_from(tracker).unwrap_or(0),
            ..self.config
        })
    }
}
