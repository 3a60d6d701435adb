//! How a raw CT cube in Hounsfield units becomes the network input. The same
//! [`Preprocess`] is used in training, written into the ONNX file's `metadata_props`, and
//! read back by every scorer, so the user never re-types it.
use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{s, Array3, ArrayD, Ix3};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Centre crop / pad to a cube, then clip to an HU window and scale linearly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preprocess {
    /// Side of the cube fed to the network, in voxels (arrays are `z, y, x`).
    pub cube_size: usize,
    /// HU window `[hu_min, hu_max]`; values outside are clipped.
    pub hu_min: f32,
    pub hu_max: f32,
    /// The window is mapped linearly onto `[out_min, out_max]`.
    pub out_min: f32,
    pub out_max: f32,
    /// HU value used where padding is needed: air, so a padded border looks like air in
    /// any window rather than whatever a bare 0 would mean after scaling.
    pub pad_hu: f32,
}

/// Fields to replace in a [`Preprocess`] (the preprocessing flags of `infer import` and
/// `trainer export`): each one given replaces that field of the preprocessing the command
/// starts from (another model's, a config's, or the defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overrides {
    pub cube_size: Option<usize>,
    pub hu_min: Option<f32>,
    pub hu_max: Option<f32>,
    pub out_min: Option<f32>,
    pub out_max: Option<f32>,
    pub pad_hu: Option<f32>,
}

impl Overrides {
    /// `pre` with every field given put in (not validated: the caller validates the result).
    pub fn apply(&self, pre: &mut Preprocess) {
        if let Some(c) = self.cube_size {
            pre.cube_size = c;
        }
        for (v, slot) in [
            (self.hu_min, &mut pre.hu_min),
            (self.hu_max, &mut pre.hu_max),
            (self.out_min, &mut pre.out_min),
            (self.out_max, &mut pre.out_max),
            (self.pad_hu, &mut pre.pad_hu),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
    }
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            cube_size: 64,
            hu_min: -1000.0,
            hu_max: 400.0,
            out_min: 0.0,
            out_max: 1.0,
            pad_hu: -1000.0,
        }
    }
}

/// Largest cube side accepted (512³ float32 is 512 MiB per patch).
pub const MAX_CUBE: usize = 512;

/// The HU a window, or padding, may reach: beyond what any CT stores (int16 with an
/// intercept), a window only compresses the tissue into a sliver of the input range.
pub const HU_LIMITS: (f32, f32) = (-40_000.0, 100_000.0);

/// Air to dense bone: a window must overlap it, or every patch maps to one value.
pub const TISSUE_HU: (f32, f32) = (-1024.0, 3071.0);

/// The narrowest window taken, in HU.
pub const MIN_WINDOW_HU: f32 = 10.0;

/// The narrowest output range taken: a network fed values that differ by less sees none.
pub const MIN_OUT_SPAN: f32 = 1e-3;

/// The largest output value taken (the network's input scale).
pub const MAX_OUT: f32 = 1e6;

const KEYS: [&str; 6] = [
    "preprocess.cube_size",
    "preprocess.hu_min",
    "preprocess.hu_max",
    "preprocess.out_min",
    "preprocess.out_max",
    "preprocess.pad_hu",
];

/// For people: `cube 64³, HU window [-1000, 400] → [0, 1], padding -1000 HU`.
impl std::fmt::Display for Preprocess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cube {}³, HU window [{}, {}] → [{}, {}], padding {} HU",
            self.cube_size, self.hu_min, self.hu_max, self.out_min, self.out_max, self.pad_hu
        )
    }
}

impl Preprocess {
    /// Checks the settings make sense.
    pub fn validate(&self) -> Result<()> {
        // Numbers as a person writes them: 1e38, not 39 digits.
        let n = |v: f32| {
            if v.is_finite() && v.abs() >= 1e6 {
                format!("{v:e}")
            } else {
                format!("{v}")
            }
        };
        let mut problems = Vec::new();
        if !(8..=MAX_CUBE).contains(&self.cube_size) {
            problems.push(format!("cube_size {} is outside 8..={MAX_CUBE} voxels", self.cube_size));
        }
        let (lo, hi) = HU_LIMITS;
        let window_ok = self.hu_min.is_finite() && self.hu_max.is_finite() && self.hu_min < self.hu_max;
        if !window_ok {
            problems.push(format!(
                "HU window [{}, {}] must be finite with min < max",
                n(self.hu_min),
                n(self.hu_max)
            ));
        } else if self.hu_min < lo || self.hu_max > hi {
            problems.push(format!(
                "HU window [{}, {}] reaches beyond [{lo}, {hi}] HU, where no CT has values: it would squeeze every \
                 tissue into a sliver of the input range",
                n(self.hu_min),
                n(self.hu_max)
            ));
        } else if self.hu_max - self.hu_min < MIN_WINDOW_HU {
            problems.push(format!(
                "HU window [{}, {}] is narrower than {MIN_WINDOW_HU} HU: every patch would be nearly all one value",
                n(self.hu_min),
                n(self.hu_max)
            ));
        } else if self.hu_max <= TISSUE_HU.0 || self.hu_min >= TISSUE_HU.1 {
            problems.push(format!(
                "HU window [{}, {}] lies outside the HU of air and tissue [{}, {}]: every patch would be one value",
                n(self.hu_min),
                n(self.hu_max),
                TISSUE_HU.0,
                TISSUE_HU.1
            ));
        }
        let out_ok = self.out_min.is_finite()
            && self.out_max.is_finite()
            && self.out_min.abs() <= MAX_OUT
            && self.out_max.abs() <= MAX_OUT;
        if !out_ok || (self.out_max - self.out_min).abs() < MIN_OUT_SPAN {
            problems.push(format!(
                "output range [{}, {}] must be finite, at least {MIN_OUT_SPAN} wide and within ±{}",
                n(self.out_min),
                n(self.out_max),
                n(MAX_OUT)
            ));
        } else if window_ok && problems.is_empty() {
            // One HU apart must stay apart after scaling in float32, at both ends.
            let apart = |a: f32, b: f32| self.scale(a) != self.scale(b);
            if !(apart(self.hu_min, self.hu_min + 1.0) && apart(self.hu_max - 1.0, self.hu_max)) {
                problems.push(format!(
                    "output range [{}, {}] over the HU window [{}, {}] maps 1 HU steps to one float32 value",
                    n(self.out_min),
                    n(self.out_max),
                    n(self.hu_min),
                    n(self.hu_max)
                ));
            }
        }
        if !(self.pad_hu.is_finite() && self.pad_hu >= lo && self.pad_hu <= hi) {
            problems.push(format!(
                "pad_hu {} must be finite and within [{lo}, {hi}] HU",
                self.pad_hu
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Metadata(format!(
                "invalid preprocessing: {}",
                problems.join("; ")
            )))
        }
    }

    /// Maps one HU value to the network's input scale.
    #[inline]
    pub fn scale(&self, hu: f32) -> f32 {
        let t = (hu.clamp(self.hu_min, self.hu_max) - self.hu_min) / (self.hu_max - self.hu_min);
        self.out_min + t * (self.out_max - self.out_min)
    }

    /// Centre-crops or pads (with `pad_hu`) each axis to `cube_size`, then windows and
    /// scales. `path` only names the file in errors.
    pub fn apply(&self, hu: &ArrayD<f32>, path: &Path) -> Result<Array3<f32>> {
        let v = hu.view().into_dimensionality::<Ix3>().map_err(|_| Error::BadPatch {
            path: path.to_path_buf(),
            msg: format!("expected a 3-D cube (z, y, x), got shape {:?}", hu.shape()),
        })?;
        if v.is_empty() {
            return Err(Error::BadPatch {
                path: path.to_path_buf(),
                msg: format!("empty array of shape {:?}", hu.shape()),
            });
        }
        let c = self.cube_size;
        let mut out = Array3::from_elem((c, c, c), self.scale(self.pad_hu));
        // For each axis: the source range and the destination range of the overlap.
        let ranges: Vec<(usize, usize, usize)> = v
            .shape()
            .iter()
            .map(|&n| {
                if n >= c {
                    ((n - c) / 2, 0, c)
                } else {
                    (0, (c - n) / 2, n)
                }
            })
            .collect();
        let (sz, dz, nz) = ranges[0];
        let (sy, dy, ny) = ranges[1];
        let (sx, dx, nx) = ranges[2];
        let src = v.slice(s![sz..sz + nz, sy..sy + ny, sx..sx + nx]);
        out.slice_mut(s![dz..dz + nz, dy..dy + ny, dx..dx + nx])
            .zip_mut_with(&src, |o, &h| *o = self.scale(h));
        Ok(out)
    }

    /// The settings as `metadata_props` entries.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let vals = [
            self.cube_size.to_string(),
            self.hu_min.to_string(),
            self.hu_max.to_string(),
            self.out_min.to_string(),
            self.out_max.to_string(),
            self.pad_hu.to_string(),
        ];
        KEYS.iter().map(|k| k.to_string()).zip(vals).collect()
    }

    /// Reads the settings back from `metadata_props`; every missing or unparsable key is
    /// reported in one error.
    pub fn from_metadata(md: &BTreeMap<String, String>) -> Result<Self> {
        let mut problems = Vec::new();
        let mut num = |k: &str| -> f64 {
            match md.get(k).map(|v| v.parse::<f64>()) {
                Some(Ok(v)) => v,
                Some(Err(_)) => {
                    problems.push(format!("`{k}` is not a number: {:?}", md.get(k).map_or("", String::as_str)));
                    f64::NAN
                }
                None => {
                    problems.push(format!("`{k}` missing"));
                    f64::NAN
                }
            }
        };
        let vals: Vec<f64> = KEYS.iter().map(|k| num(k)).collect();
        if !problems.is_empty() {
            return Err(Error::Metadata(format!(
                "the model does not say how to preprocess patches (was it exported by this toolchain?): {}",
                problems.join("; ")
            )));
        }
        let p = Preprocess {
            cube_size: if vals[0].fract() == 0.0 && (0.0..=(MAX_CUBE as f64)).contains(&vals[0]) {
                vals[0] as usize
            } else {
                return Err(Error::Metadata(format!(
                    "`preprocess.cube_size` must be a whole number up to {MAX_CUBE}, got {}",
                    vals[0]
                )));
            },
            hu_min: vals[1] as f32,
            hu_max: vals[2] as f32,
            out_min: vals[3] as f32,
            out_max: vals[4] as f32,
            pad_hu: vals[5] as f32,
        };
        p.validate()?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn p(c: usize) -> Preprocess {
        Preprocess {
            cube_size: c,
            ..Default::default()
        }
    }

    #[test]
    fn window_and_scale() {
        let pp = p(8);
        assert_eq!(pp.scale(-2000.0), 0.0);
        assert_eq!(pp.scale(-1000.0), 0.0);
        assert_eq!(pp.scale(400.0), 1.0);
        assert!((pp.scale(-300.0) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn pads_with_air_not_zero() {
        // Window where 0 HU maps to 0.5: padding must still come out as air (0.0 here),
        // and -> with out range [-1, 1] air is -1, not 0.
        let pp = Preprocess {
            cube_size: 8,
            out_min: -1.0,
            out_max: 1.0,
            hu_min: -1000.0,
            hu_max: 1000.0,
            ..Default::default()
        };
        let small = ArrayD::from_elem(IxDyn(&[4, 4, 4]), 1000.0f32);
        let out = pp.apply(&small, Path::new("x.npy")).expect("apply");
        assert_eq!(out[[0, 0, 0]], -1.0);
        assert_eq!(out[[2, 2, 2]], 1.0);
        assert_eq!(out[[5, 5, 5]], 1.0);
        assert_eq!(out[[6, 5, 5]], -1.0);
        assert_eq!(out.iter().filter(|&&v| v == 1.0).count(), 64);
    }

    #[test]
    fn crops_centre() {
        let pp = p(8);
        let mut big = ArrayD::from_elem(IxDyn(&[12, 10, 8]), -1000.0f32);
        big[[2, 1, 0]] = 400.0; // first voxel kept
        big[[1, 1, 0]] = 400.0; // cropped away
        let out = pp.apply(&big, Path::new("x.npy")).expect("apply");
        assert_eq!(out[[0, 0, 0]], 1.0);
        assert_eq!(out.iter().filter(|&&v| v == 1.0).count(), 1);
    }

    #[test]
    fn rejects_wrong_rank_naming_file() {
        let a = ArrayD::from_elem(IxDyn(&[4, 4]), 0.0f32);
        let msg = p(8).apply(&a, Path::new("flat.npy")).expect_err("rank").to_string();
        assert!(msg.contains("flat.npy") && msg.contains("3-D"), "{msg}");
    }

    #[test]
    fn metadata_roundtrip_and_missing_keys() {
        let pp = Preprocess {
            cube_size: 32,
            hu_min: -1200.0,
            ..Default::default()
        };
        assert_eq!(Preprocess::from_metadata(&pp.to_metadata()).expect("back"), pp);
        let mut md = pp.to_metadata();
        md.remove("preprocess.hu_max");
        md.insert("preprocess.pad_hu".into(), "air".into());
        let msg = Preprocess::from_metadata(&md).expect_err("missing").to_string();
        assert!(
            msg.contains("`preprocess.hu_max` missing") && msg.contains("`preprocess.pad_hu` is not a number"),
            "{msg}"
        );
    }
}
