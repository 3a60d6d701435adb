//! Training-time augmentation, applied to every training patch whatever its label (the
//! source notebook augmented positives only, so "augmented" meant "positive"), never to
//! validation, and seeded.
//!
//! On a `[1, D, H, W]` cube (`z, y, x`): random flips on each axis, a random multiple of 90°
//! in the axial (`y, x`) plane, a translation of up to `jitter_voxels` on each axis with the
//! vacated border filled with air, and an intensity jitter `x·(1 + a) + b`.
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// What to apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    pub flips: bool,
    pub rot90_axial: bool,
    /// Maximum shift per axis, in voxels (0: none).
    pub jitter_voxels: usize,
    /// `a ~ U(−s, s)` in `x·(1 + a) + b`, on the preprocessed scale.
    pub intensity_scale: f64,
    /// `b ~ U(−s, s)`.
    pub intensity_shift: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            flips: true,
            rot90_axial: true,
            jitter_voxels: 2,
            intensity_scale: 0.1,
            intensity_shift: 0.05,
        }
    }
}

impl Augment {
    /// No augmentation at all.
    pub fn none() -> Self {
        Augment {
            flips: false,
            rot90_axial: false,
            jitter_voxels: 0,
            intensity_scale: 0.0,
            intensity_shift: 0.0,
        }
    }

    pub fn is_off(&self) -> bool {
        *self == Self::none()
    }

    /// Augments one `[1, D, H, W]` cube; `pad` is the preprocessed value of air. Returns the
    /// cube and whether anything was changed.
    pub fn apply(&self, t: &Tensor, pad: f64, rng: &mut StdRng) -> (Tensor, bool) {
        let mut t = t.shallow_clone();
        let mut changed = false;
        if self.flips {
            let dims: Vec<i64> = (1..=3).filter(|_| rng.random_bool(0.5)).collect();
            if !dims.is_empty() {
                t = t.flip(dims.as_slice());
                changed = true;
            }
        }
        if self.rot90_axial {
            let k = rng.random_range(0..4i64);
            if k != 0 {
                t = t.rot90(k, [2, 3]);
                changed = true;
            }
        }
        if self.jitter_voxels > 0 {
            let j = self.jitter_voxels as i64;
            let shifts: Vec<i64> = (0..3).map(|_| rng.random_range(-j..=j)).collect();
            if shifts.iter().any(|&s| s != 0) {
                let size = t.size();
                // Pad with air, then take the window shifted by `s` on each axis.
                let mut p = t.constant_pad_nd([j, j, j, j, j, j]);
                let border = Tensor::ones_like(&t).constant_pad_nd([j, j, j, j, j, j]);
                p = &p + (1.0 - &border) * pad;
                for (axis, s) in shifts.iter().enumerate() {
                    let dim = axis as i64 + 1;
                    p = p.narrow(dim, j - s, size[dim as usize]);
                }
                t = p.contiguous();
                changed = true;
            }
        }
        if self.intensity_scale > 0.0 || self.intensity_shift > 0.0 {
            let a = if self.intensity_scale > 0.0 {
                rng.random_range(-self.intensity_scale..self.intensity_scale)
            } else {
                0.0
            };
            let b = if self.intensity_shift > 0.0 {
                rng.random_range(-self.intensity_shift..self.intensity_shift)
            } else {
                0.0
            };
            t = t * (1.0 + a) + b;
            changed = true;
        }
        (t, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tch::{Device, Kind};

    fn cube() -> Tensor {
        Tensor::arange(4 * 4 * 4, (Kind::Float, Device::Cpu)).view([1, 4, 4, 4]) / 64.0
    }

    #[test]
    fn both_classes_are_augmented_the_same_way() {
        // The augmenter never sees the label: a positive and a negative cube drawn with the
        // same seed get the same transform, and most draws change the cube.
        let a = Augment::default();
        let (pos, neg) = (cube(), cube() * 0.5);
        let (mut r1, mut r2) = (StdRng::seed_from_u64(9), StdRng::seed_from_u64(9));
        let mut changed = 0;
        for _ in 0..20 {
            let (p, cp) = a.apply(&pos, 0.0, &mut r1);
            let (n, cn) = a.apply(&neg, 0.0, &mut r2);
            assert_eq!(cp, cn);
            changed += usize::from(cp);
            assert_eq!(p.size(), [1, 4, 4, 4]);
            assert_eq!(n.size(), [1, 4, 4, 4]);
        }
        assert!(changed >= 18, "augmentation rarely applied: {changed}/20");
    }

    #[test]
    fn jitter_shifts_and_fills_with_air() {
        let a = Augment {
            jitter_voxels: 1,
            ..Augment::none()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen_shift = false;
        for _ in 0..20 {
            let (t, changed) = a.apply(&cube(), -7.0, &mut rng);
            if changed {
                seen_shift = true;
                // Some voxels are the air value, the rest come from the cube.
                let v = Vec::<f32>::try_from(&t.flatten(0, -1)).expect("vec");
                assert!(v.iter().any(|&x| x == -7.0));
                assert!(v.iter().filter(|&&x| x != -7.0).all(|&x| (0.0..1.0).contains(&x)));
            }
        }
        assert!(seen_shift);
        assert!(Augment::none().is_off());
        let (t, changed) = Augment::none().apply(&cube(), 0.0, &mut rng);
        assert!(!changed);
        assert_eq!(
            Vec::<f32>::try_from(&t.flatten(0, -1)).expect("v"),
            Vec::<f32>::try_from(&cube().flatten(0, -1)).expect("v")
        );
    }

    #[test]
    fn rot90_turns_the_axial_plane() {
        let a = Augment {
            rot90_axial: true,
            ..Augment::none()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let c = cube();
        for _ in 0..10 {
            let (t, _) = a.apply(&c, 0.0, &mut rng);
            // z is untouched: every axial slice keeps its set of values.
            for z in 0..4 {
                let mut x = Vec::<f32>::try_from(&t.get(0).get(z).flatten(0, -1)).expect("v");
                let mut y = Vec::<f32>::try_from(&c.get(0).get(z).flatten(0, -1)).expect("v");
                x.sort_by(f32::total_cmp);
                y.sort_by(f32::total_cmp);
                assert_eq!(x, y);
            }
        }
    }
}
