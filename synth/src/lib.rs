//! Synthetic CT-like patch sets for the demo and the tests.
//!
//! Each patch is a cube of 1 mm voxels in Hounsfield units (`z, y, x`):
//! lung parenchyma around −850 HU with smooth texture and noise whose level varies per
//! series (scanner/reconstruction effect), and:
//! * positives (`label = 1`): a solid (≈ 0 HU) or part-solid (ground-glass ≈ −550 HU
//!   halo around a solid core) ellipsoid of 3–30 mm near the centre, sometimes touched by
//!   a vessel;
//! * negatives (`label = 0`): plain parenchyma, vessel-like tubes (single, crossing, or a
//!   short thick segment that looks like an elongated blob), and chest-wall edges (soft
//!   tissue and fat across a plane).
//!
//! Small faint nodules in noisy series and thick vessel segments overlap in appearance,
//! so a small network lands clearly above chance and clearly below a perfect score.
//! Deterministic for a seed: every patch has its own RNG seeded from `(seed, series,
//! patch)`, so patches are generated in parallel and identically on every run.
#![warn(clippy::unwrap_used)]
use std::path::{Path, PathBuf};

use ndarray::Array3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
// Normal deviates as z-scores (`StandardNormal`) scaled here: the same values as
// `Normal::new(0, sd)` gives (mean + sd·z), without a constructor that can fail.
use rand_distr::StandardNormal;
use rayon::prelude::*;

use tables::index::{IndexRow, PatchIndex, INDEX_FILE};

/// Why a synthetic set could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Settings out of range.
    #[error("{0}")]
    Settings(String),
    /// The folder already holds a patch index.
    #[error("{}: already exists; choose an empty folder", .0.display())]
    Exists(PathBuf),
    /// The draw gave one class only (too few patches for the positive fraction).
    #[error("the synthetic set came out with one class only; use more patches or another seed")]
    OneClass,
    /// A folder could not be created.
    #[error("{}: cannot create folder: {source}", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A CSV could not be encoded.
    #[error("{}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    /// A file could not be written (atomically, under the folder's lock), or the index:
    /// `files` and `tables` errors arrive through [`models::Error`], where every crate
    /// matches them.
    #[error(transparent)]
    Models(#[from] models::Error),
}

models::errors_through_models!(SynthError);

/// This crate's result type.
pub type Result<T, E = SynthError> = std::result::Result<T, E>;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Number of series (scans); patches never mix series.
    pub series: usize,
    /// Patches per series.
    pub patches_per_series: usize,
    /// Fraction of patches that are nodules.
    pub positive_fraction: f64,
    /// Cube side in voxels (1 mm each).
    pub cube_size: usize,
    pub seed: u64,
    /// Also write tabular features: `suv_max` in the index (per patch; higher for
    /// nodules, as PET uptake is, so it carries signal) and `clinical.csv` with per-series
    /// `pack_years` (independent of the labels: no signal) for `model.features_csv`.
    pub features: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            series: 40,
            patches_per_series: 10,
            positive_fraction: 0.35,
            cube_size: 32,
            seed: 7,
            features: false,
        }
    }
}

/// Per-series acquisition character.
struct SeriesLook {
    parenchyma_hu: f64,
    noise_sd: f64,
    texture_amp: f64,
}

/// A 3-D point in voxel units.
type V3 = [f64; 3];

fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn norm(a: V3) -> V3 {
    let n = dot(a, a).sqrt().max(1e-12);
    [a[0] / n, a[1] / n, a[2] / n]
}
fn random_dir(rng: &mut StdRng) -> V3 {
    norm([rng.sample(StandardNormal), rng.sample(StandardNormal), rng.sample(StandardNormal)])
}

/// Partial-volume edge: 1 inside, 0 outside, linear over one voxel around `d = 0`
/// (`d` = signed distance, negative inside).
fn edge(d: f64) -> f64 {
    (0.5 - d).clamp(0.0, 1.0)
}

/// Blends `value` into a voxel with weight `w`.
fn blend(v: &mut f64, value: f64, w: f64) {
    *v = *v * (1.0 - w) + value * w;
}

struct Tube {
    p0: V3,
    dir: V3,
    radius: f64,
    half_len: f64,
    hu: f64,
}

impl Tube {
    fn signed_distance(&self, p: V3) -> f64 {
        let d = sub(p, self.p0);
        let t = dot(d, self.dir).clamp(-self.half_len, self.half_len);
        let closest = [
            self.p0[0] + t * self.dir[0],
            self.p0[1] + t * self.dir[1],
            self.p0[2] + t * self.dir[2],
        ];
        let r = sub(p, closest);
        dot(r, r).sqrt() - self.radius
    }
}

fn random_tube(rng: &mut StdRng, c: f64, n: f64, thick: bool) -> Tube {
    let jitter = |rng: &mut StdRng| rng.random_range(-n * 0.15..n * 0.15);
    Tube {
        p0: [c + jitter(rng), c + jitter(rng), c + jitter(rng)],
        dir: random_dir(rng),
        radius: if thick {
            rng.random_range(2.0..4.5)
        } else {
            rng.random_range(0.8..2.5)
        },
        half_len: if thick { rng.random_range(3.0..7.0) } else { n * 2.0 },
        hu: rng.random_range(-20.0..60.0),
    }
}

/// Generates one patch; returns the HU cube and the nodule diameter (0 for negatives).
fn patch(cfg: &SynthConfig, look: &SeriesLook, positive: bool, rng: &mut StdRng) -> (Array3<f32>, f64) {
    let n = cfg.cube_size;
    let nf = n as f64;
    let c = (nf - 1.0) / 2.0;
    // Smooth texture: a few random plane waves.
    let waves: Vec<(V3, f64, f64)> = (0..4)
        .map(|_| {
            let k = random_dir(rng);
            let freq = rng.random_range(0.15..0.6);
            let phase = rng.random_range(0.0..std::f64::consts::TAU);
            (
                [k[0] * freq, k[1] * freq, k[2] * freq],
                phase,
                rng.random_range(0.5..1.0),
            )
        })
        .collect();
    let mut vol = Array3::<f64>::zeros((n, n, n));
    for ((z, y, x), v) in vol.indexed_iter_mut() {
        let p = [z as f64, y as f64, x as f64];
        let tex: f64 = waves.iter().map(|(k, ph, a)| a * (dot(*k, p) + ph).sin()).sum();
        *v = look.parenchyma_hu + look.texture_amp * tex / 2.0;
    }
    let mut diam = 0.0;
    let mut tubes = Vec::new();
    let mut wall = None;
    if positive {
        // Diameters skewed to small, as in screening: 3–30 mm, clamped to the cube.
        let u: f64 = rng.random();
        diam = (3.0 + 27.0 * u * u).min(nf * 0.8);
        let r = diam / 2.0;
        let axes = [
            r * rng.random_range(0.75..1.25),
            r * rng.random_range(0.75..1.25),
            r * rng.random_range(0.75..1.25),
        ];
        let jitter = (nf * 0.1).max(1.0);
        let centre = [
            c + rng.random_range(-jitter..jitter),
            c + rng.random_range(-jitter..jitter),
            c + rng.random_range(-jitter..jitter),
        ];
        let part_solid = rng.random_bool(0.3);
        let solid_hu = rng.random_range(-80.0..60.0);
        let ggo_hu = rng.random_range(-650.0..-450.0);
        let core = if part_solid { rng.random_range(0.3..0.6) } else { 1.0 };
        let d_at = |p: V3, scale: f64| {
            let q = [
                (p[0] - centre[0]) / (axes[0] * scale),
                (p[1] - centre[1]) / (axes[1] * scale),
                (p[2] - centre[2]) / (axes[2] * scale),
            ];
            // Approximate signed distance in voxels for an ellipsoid.
            (dot(q, q).sqrt() - 1.0) * r * scale
        };
        for ((z, y, x), v) in vol.indexed_iter_mut() {
            let p = [z as f64, y as f64, x as f64];
            if part_solid {
                blend(v, ggo_hu, edge(d_at(p, 1.0)));
            }
            blend(v, solid_hu, edge(d_at(p, core)));
        }
        if rng.random_bool(0.4) {
            tubes.push(random_tube(rng, c, nf, false));
        }
    } else {
        match rng.random_range(0..5) {
            0 => {}
            1 => tubes.push(random_tube(rng, c, nf, false)),
            2 => {
                tubes.push(random_tube(rng, c, nf, false));
                tubes.push(random_tube(rng, c, nf, false));
            }
            3 => tubes.push(random_tube(rng, c, nf, true)),
            _ => {
                let normal = random_dir(rng);
                let offset = rng.random_range(-nf * 0.3..nf * 0.3);
                wall = Some((normal, offset, rng.random_range(2.0..6.0)));
                if rng.random_bool(0.5) {
                    tubes.push(random_tube(rng, c, nf, false));
                }
            }
        }
    }
    for ((z, y, x), v) in vol.indexed_iter_mut() {
        let p = [z as f64, y as f64, x as f64];
        for t in &tubes {
            blend(v, t.hu, edge(t.signed_distance(p)));
        }
        if let Some((normal, offset, fat)) = wall {
            // Beyond the plane: a fat layer then soft tissue (chest wall).
            let s = dot(sub(p, [c, c, c]), normal) - offset;
            blend(v, -100.0, edge(-s));
            blend(v, 40.0, edge(-(s - fat)));
        }
    }
    let out = vol.mapv(|v| (v + look.noise_sd * rng.sample::<f64, _>(StandardNormal)).clamp(-1024.0, 3071.0) as f32);
    (out, diam)
}

/// Writes `cfg.series × cfg.patches_per_series` float32 `.npy` cubes and `patch_index.csv`
/// into `out`. Refuses a folder that already holds an index.
pub fn generate(cfg: &SynthConfig, out: &Path) -> Result<PathBuf> {
    if !(2..=100_000).contains(&cfg.series)
        || !(1..=100_000).contains(&cfg.patches_per_series)
        || cfg.series * cfg.patches_per_series > 10_000_000
        || !(8..=models::preprocess::MAX_CUBE).contains(&cfg.cube_size)
    {
        return Err(SynthError::Settings(format!(
            "a synthetic set takes 2 to 100000 series, 1 to 100000 patches per series (10 million at most in all) \
             and a cube of 8 to {} voxels",
            models::preprocess::MAX_CUBE
        )));
    }
    if !(0.0..1.0).contains(&cfg.positive_fraction) || cfg.positive_fraction == 0.0 {
        return Err(SynthError::Settings(format!(
            "positive_fraction must be in (0, 1), got {}",
            cfg.positive_fraction
        )));
    }
    std::fs::create_dir_all(out).map_err(|source| SynthError::Folder {
        path: out.to_path_buf(),
        source,
    })?;
    let _lock = files::Lock::within(out, &format!("folder {}", out.display()))?;
    // The output policy, as every binary applies it (synth reads nothing, so only the
    // folder's stale temporary files are at stake).
    files::RunIo::new().outputs_in("synthetic set", out, &[INDEX_FILE])?;
    let index_path = out.join(INDEX_FILE);
    if index_path.exists() {
        return Err(SynthError::Exists(index_path));
    }
    let jobs: Vec<(usize, usize)> = (0..cfg.series)
        .flat_map(|s| (0..cfg.patches_per_series).map(move |p| (s, p)))
        .collect();
    let rows: Vec<IndexRow> = jobs
        .par_iter()
        .map(|&(s, p)| -> Result<IndexRow> {
            let mut srng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(s as u64));
            let look = SeriesLook {
                parenchyma_hu: srng.random_range(-880.0..-820.0),
                noise_sd: srng.random_range(20.0..90.0),
                texture_amp: srng.random_range(15.0..45.0),
            };
            let mut rng =
                StdRng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((s as u64) << 32 | p as u64));
            let positive = rng.random_bool(cfg.positive_fraction);
            let (cube, diam) = patch(cfg, &look, positive, &mut rng);
            let uid = format!("1.2.826.0.1.3680043.8.498.{}.{}", cfg.seed, s + 1);
            let file = format!("s{:03}_p{:03}.npy", s + 1, p + 1);
            let path = out.join(&file);
            // Atomic, so an interrupted run leaves no half-written patch under its final name.
            files::write_atomic_with(&path, |w| {
                use ndarray_npy::WriteNpyExt;
                cube.write_npy(w).map_err(std::io::Error::other)
            })?;
            Ok(IndexRow {
                patch_file: file,
                seriesuid: uid,
                diam_mm: (diam * 10.0).round() / 10.0,
                center_x: rng.random_range(-150.0..150.0f64).round(),
                center_y: rng.random_range(-150.0..150.0f64).round(),
                center_z: rng.random_range(-300.0..0.0f64).round(),
                label: u8::from(positive),
            })
        })
        .collect::<Result<_>>()?;
    let n_pos = rows.iter().filter(|r| r.label == 1).count();
    if n_pos == 0 || n_pos == rows.len() {
        return Err(SynthError::OneClass);
    }
    write_luna16_reference(cfg, &rows, &out.join("luna16"))?;
    if cfg.features {
        write_with_features(cfg, &rows, &index_path, &out.join("clinical.csv"))?;
    } else {
        PatchIndex::write(&index_path, &rows)?;
    }
    Ok(index_path)
}

/// The index with a `suv_max` column, and `clinical.csv` (`seriesuid, pack_years`). The
/// values come from generators of their own, so the cubes are those of a set without them.
/// `suv_max` is log-normal: median 3.5 for nodules, 1.5 otherwise, log-sd 0.55 (alone, an
/// AUROC of about 0.86).
fn write_with_features(cfg: &SynthConfig, rows: &[IndexRow], index: &Path, clinical: &Path) -> Result<()> {
    let err = |p: &Path, source: csv::Error| SynthError::Encode {
        path: p.to_path_buf(),
        source,
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<&str> = tables::index::COLUMNS.to_vec();
    header.push("suv_max");
    w.write_record(&header).map_err(|e| err(index, e))?;
    for (i, r) in rows.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ i as u64);
        let median: f64 = if r.label == 1 { 3.5 } else { 1.5 };
        let z: f64 = rng.sample(StandardNormal);
        let suv = (median.ln() + 0.55 * z).exp();
        w.write_record([
            r.patch_file.clone(),
            r.seriesuid.clone(),
            r.diam_mm.to_string(),
            r.center_x.to_string(),
            r.center_y.to_string(),
            r.center_z.to_string(),
            r.label.to_string(),
            format!("{suv:.3}"),
        ])
        .map_err(|e| err(index, e))?;
    }
    let bytes = w.into_inner().map_err(|e| err(index, e.into_error().into()))?;
    let mut text = String::from("seriesuid,pack_years\n");
    for s in 0..cfg.series {
        let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ s as u64);
        text += &format!(
            "1.2.826.0.1.3680043.8.498.{}.{},{:.1}\n",
            cfg.seed,
            s + 1,
            rng.random_range(0.0..60.0f64)
        );
    }
    files::write_atomic(clinical, text.as_bytes())?;
    files::write_atomic(index, &bytes)?;
    Ok(())
}

/// The set's reference in LUNA16's own file formats, for `froc`: `annotations.csv` (every
/// nodule patch's centre and diameter), `annotations_excluded.csv` (every 7th negative's
/// centre as a finding without a size, diameter −1, as LUNA16 lists non-nodule findings),
/// and `seriesuids.csv` (every series, no header).
fn write_luna16_reference(cfg: &SynthConfig, rows: &[IndexRow], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| SynthError::Folder {
        path: dir.to_path_buf(),
        source,
    })?;
    let header = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"];
    let (mut ann, mut exc) = (
        csv::Writer::from_writer(Vec::new()),
        csv::Writer::from_writer(Vec::new()),
    );
    let encode = |name: &str| {
        let path = dir.join(name);
        move |source| SynthError::Encode { path, source }
    };
    ann.write_record(header).map_err(encode("annotations.csv"))?;
    exc.write_record(header).map_err(encode("annotations_excluded.csv"))?;
    for (i, r) in rows.iter().enumerate() {
        let line = |d: f64| {
            [r.center_x, r.center_y, r.center_z, d]
                .iter()
                .fold(vec![r.seriesuid.clone()], |mut v, x| {
                    v.push(x.to_string());
                    v
                })
        };
        if r.label == 1 {
            ann.write_record(line(r.diam_mm)).map_err(encode("annotations.csv"))?;
        } else if i % 7 == 3 {
            exc.write_record(line(-1.0)).map_err(encode("annotations_excluded.csv"))?;
        }
    }
    let text = |w: csv::Writer<Vec<u8>>, name: &str| {
        let path = dir.join(name);
        let bytes = w.into_inner().map_err(|e| SynthError::Encode {
            path: path.clone(),
            source: e.into_error().into(),
        })?;
        // The writer was given `String`s and numbers only.
        String::from_utf8(bytes).map_err(|e| SynthError::Encode {
            path,
            source: csv::Error::from(std::io::Error::other(e)),
        })
    };
    let ann = text(ann, "annotations.csv")?;
    let exc = text(exc, "annotations_excluded.csv")?;
    let uids: String = (0..cfg.series)
        .map(|s| format!("1.2.826.0.1.3680043.8.498.{}.{}\n", cfg.seed, s + 1))
        .collect();
    for (name, text) in [
        ("annotations.csv", ann),
        ("annotations_excluded.csv", exc),
        ("seriesuids.csv", uids),
    ] {
        files::write_atomic(&dir.join(name), text.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_ct_like() {
        let cfg = SynthConfig {
            series: 3,
            patches_per_series: 4,
            cube_size: 16,
            positive_fraction: 0.5,
            seed: 3,
            features: false,
        };
        let (a, b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        generate(&cfg, a.path()).expect("gen a");
        generate(&cfg, b.path()).expect("gen b");
        let ia = std::fs::read(a.path().join(INDEX_FILE)).expect("read");
        assert_eq!(ia, std::fs::read(b.path().join(INDEX_FILE)).expect("read"));
        let idx = PatchIndex::read(a.path()).expect("index");
        assert_eq!(idx.rows.len(), 12);
        let mut series: Vec<_> = idx.rows.iter().map(|r| r.seriesuid.clone()).collect();
        series.dedup();
        assert_eq!(series.len(), 3);
        for r in &idx.rows {
            let x = models::patch::read_npy_hu(&idx.patch_path(r)).expect("npy");
            let y = models::patch::read_npy_hu(&b.path().join(&r.patch_file)).expect("npy");
            assert_eq!(x, y, "{} differs between runs", r.patch_file);
            assert_eq!(x.shape(), &[16, 16, 16]);
            let mut v: Vec<f32> = x.iter().copied().collect();
            v.sort_by(f32::total_cmp);
            // Some lung parenchyma is visible in every patch.
            let p10 = v[v.len() / 10];
            assert!(
                (-1000.0..-700.0).contains(&p10),
                "{}: 10th percentile {p10} HU",
                r.patch_file
            );
            if r.label == 1 {
                assert!(r.diam_mm >= 3.0 && r.diam_mm <= 30.0);
                assert!(v[v.len() - 1] > -300.0, "a nodule must be dense somewhere");
            }
        }
        assert!(generate(&cfg, a.path()).is_err(), "must refuse to overwrite an index");
        // The LUNA16 reference lists every nodule patch and every series.
        let ann = std::fs::read_to_string(a.path().join("luna16/annotations.csv")).expect("annotations");
        assert_eq!(
            ann.lines().count() - 1,
            idx.rows.iter().filter(|r| r.label == 1).count()
        );
        let uids = std::fs::read_to_string(a.path().join("luna16/seriesuids.csv")).expect("uids");
        assert_eq!(uids.lines().count(), 3);
    }

    /// With features: the same cubes and rows, plus `suv_max` (higher for nodules) and a
    /// per-series clinical CSV that the feature reader joins.
    #[test]
    fn features_add_columns_and_leave_the_cubes() {
        let base = SynthConfig {
            series: 8,
            patches_per_series: 10,
            cube_size: 8,
            positive_fraction: 0.4,
            seed: 5,
            features: false,
        };
        let with = SynthConfig {
            features: true,
            ..base.clone()
        };
        let (a, b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        generate(&base, a.path()).expect("gen a");
        generate(&with, b.path()).expect("gen b");
        assert_eq!(
            std::fs::read(a.path().join("s003_p004.npy")).expect("a"),
            std::fs::read(b.path().join("s003_p004.npy")).expect("b")
        );
        let ia = PatchIndex::read(a.path()).expect("a");
        let ib = PatchIndex::read(b.path()).expect("b");
        assert_eq!(ia.rows, ib.rows);
        let src = models::features::FeatureSource {
            columns: vec!["suv_max".into(), "pack_years".into()],
            join: Some(b.path().join("clinical.csv")),
        };
        let keys: Vec<(&str, &str)> = ib
            .rows
            .iter()
            .map(|r| (r.patch_file.as_str(), r.seriesuid.as_str()))
            .collect();
        let v: Vec<Vec<f32>> = models::features::read(&ib.path, &keys, &src)
            .expect("read")
            .into_iter()
            .map(|r| r.expect("every value"))
            .collect();
        let mean = |label: u8| {
            let s: Vec<f32> = v
                .iter()
                .zip(&ib.rows)
                .filter(|(_, r)| r.label == label)
                .map(|(x, _)| x[0])
                .collect();
            s.iter().sum::<f32>() / s.len() as f32
        };
        assert!(mean(1) > 1.8 * mean(0), "{} vs {}", mean(1), mean(0));
        assert!(v.iter().all(|x| (0.0..60.0).contains(&x[1])));
    }
}
