//! Loading a patch folder and splitting it by series.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::{Result, TrainError};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use tables::index::{IndexRow, PatchIndex};
use models::preprocess::Preprocess;

use crate::config::SplitConfig;

/// Which side of the split a series is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Train,
    Val,
}

/// A split of series into training and validation.
#[derive(Debug, Clone)]
pub struct Split {
    pub series: BTreeMap<String, Side>,
}

impl Split {
    /// Groups rows by `seriesuid` and splits the series, stratified by whether a series
    /// holds any positive, so validation gets both classes. Refuses a set without
    /// negatives or positives, a split that leaves a class out of either side, and (as a
    /// check on itself) any series on both sides.
    pub fn new(rows: &[IndexRow], cfg: &SplitConfig, index: &Path) -> Result<Self> {
        let n_pos = rows.iter().filter(|r| r.label == 1).count();
        if n_pos == 0 {
            return Err(TrainError::from(files::Error::bad_input(
                index,
                "no positive patches (label = 1); training needs nodules",
            )));
        }
        if n_pos == rows.len() {
            return Err(TrainError::from(files::Error::bad_input(
                index,
                "no negative patches (label = 0). Training needs real negatives (e.g. non-nodule candidates \
                 from the same scans); random noise is not offered as a substitute",
            )));
        }
        let mut has_pos: BTreeMap<&str, bool> = BTreeMap::new();
        for r in rows {
            *has_pos.entry(&r.seriesuid).or_default() |= r.label == 1;
        }
        if has_pos.len() < 2 {
            return Err(TrainError::from(files::Error::bad_input(
                index,
                "all patches come from one series; a series-disjoint split needs at least two",
            )));
        }
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut series = BTreeMap::new();
        for stratum in [true, false] {
            let mut s: Vec<&str> = has_pos.iter().filter(|(_, &p)| p == stratum).map(|(k, _)| *k).collect();
            s.shuffle(&mut rng);
            if cfg.folds >= 2 {
                // k-fold: deal each stratum's series round-robin into the folds; the
                // chosen fold is validation.
                let fold = cfg.fold.unwrap_or(1) - 1;
                for (i, uid) in s.into_iter().enumerate() {
                    series.insert(
                        uid.to_string(),
                        if i % cfg.folds == fold { Side::Val } else { Side::Train },
                    );
                }
                continue;
            }
            let mut n_val = (s.len() as f64 * cfg.val_fraction).round() as usize;
            if stratum && s.len() >= 2 {
                n_val = n_val.clamp(1, s.len() - 1);
            }
            for (i, uid) in s.into_iter().enumerate() {
                series.insert(uid.to_string(), if i < n_val { Side::Val } else { Side::Train });
            }
        }
        let split = Split { series };
        split.check(rows, index)?;
        Ok(split)
    }

    /// The run refuses to start unless the split is disjoint, by series and by patch file
    /// (an index that lists one file under two series would otherwise leak it), and both
    /// sides hold both classes.
    pub fn check(&self, rows: &[IndexRow], index: &Path) -> Result<()> {
        let mut series: [BTreeSet<&str>; 2] = Default::default();
        let mut files: [BTreeSet<&str>; 2] = Default::default();
        let mut counts = [[0usize; 2]; 2];
        for r in rows {
            let side = self
                .series
                .get(&r.seriesuid)
                .ok_or_else(|| TrainError::Internal(format!("series {} has no side", r.seriesuid)))?;
            let i = usize::from(*side == Side::Val);
            series[i].insert(&r.seriesuid);
            files[i].insert(&r.patch_file);
            counts[i][usize::from(r.label)] += 1;
        }
        let leaked: Vec<&str> = series[0].intersection(&series[1]).copied().collect();
        if !leaked.is_empty() {
            return Err(TrainError::from(files::Error::bad_input(
                index,
                format!(
                    "series in both training and validation: {}",
                    leaked.join(", ")
                ),
            )));
        }
        let leaked: Vec<&str> = files[0].intersection(&files[1]).copied().collect();
        if !leaked.is_empty() {
            return Err(TrainError::from(files::Error::bad_input(
                index,
                format!(
                    "patch file(s) listed under series on both sides of the split: {}",
                    leaked.iter().take(5).copied().collect::<Vec<_>>().join(", ")
                ),
            )));
        }
        for (side, name) in [(0, "training"), (1, "validation")] {
            if counts[side][0] == 0 || counts[side][1] == 0 {
                return Err(TrainError::from(files::Error::bad_input(
                    index,
                    format!(
                        "the {name} split has {} negative(s) and {} positive(s); it needs both classes \
                     (add series with {}, or change split.val_fraction / split.seed)",
                        counts[side][0],
                        counts[side][1],
                        if counts[side][1] == 0 { "nodules" } else { "negatives" }
                    ),
                )));
            }
        }
        Ok(())
    }

    /// Rows on one side.
    pub fn rows<'a>(&self, rows: &'a [IndexRow], side: Side) -> Vec<&'a IndexRow> {
        rows.iter()
            .filter(|r| self.series.get(&r.seriesuid) == Some(&side))
            .collect()
    }

    /// The manifest: one line per series.
    pub fn manifest_csv(&self, rows: &[IndexRow]) -> Result<Vec<u8>> {
        let mut per: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for r in rows {
            let e = per.entry(&r.seriesuid).or_default();
            e.0 += 1;
            e.1 += usize::from(r.label);
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["seriesuid", "split", "patches", "positives"])?;
        for (uid, (n, p)) in per {
            let side = match self.series[uid] {
                Side::Train => "train",
                Side::Val => "val",
            };
            w.write_record([uid, side, &n.to_string(), &p.to_string()])?;
        }
        Ok(w.into_inner()?)
    }
}

/// The patches of one side of the split, preprocessed, as the training loop reads them.
///
/// Cubes are held in memory up to a byte budget (all of them without one), in row order;
/// the rest are read from disk again, in parallel, whenever a batch needs them (the
/// training loop assembles batches on a background thread, ahead of the step). Memory thus
/// stays bounded by the budget whatever the size of the set.
pub struct Cubes {
    pub rows: Vec<IndexRow>,
    pub labels: Vec<f32>,
    pub cube: usize,
    paths: Vec<std::path::PathBuf>,
    pre: Preprocess,
    /// The first `cached` cubes, contiguous.
    cache: Vec<f32>,
    cached: usize,
    /// Tabular features per patch (raw values, `nf` each), row-major.
    pub features: Vec<f32>,
    pub nf: usize,
}

impl Cubes {
    /// Reads and preprocesses every row's patch in parallel (so a bad file stops the run
    /// before training, every failing file reported, the first few named), keeping the
    /// first ones within `budget_bytes` (`None`: all) in memory.
    pub fn load(index: &PatchIndex, rows: &[&IndexRow], pre: &Preprocess, budget_bytes: Option<u64>) -> Result<Self> {
        let cube = pre.cube_size;
        let per = (cube * cube * cube * std::mem::size_of::<f32>()) as u64;
        let cached = budget_bytes.map_or(rows.len(), |b| ((b / per) as usize).min(rows.len()));
        let paths: Vec<std::path::PathBuf> = rows.iter().map(|r| index.patch_path(r)).collect();
        let mut cache = Vec::with_capacity(cached * cube * cube * cube);
        let mut errors: Vec<String> = Vec::new();
        // In chunks, so the cubes that are not kept never pile up in memory.
        for (k, chunk) in paths.chunks(256).enumerate() {
            let loaded: Vec<_> = chunk.par_iter().map(|p| models::patch::load_patch(p, pre)).collect();
            for (j, r) in loaded.into_iter().enumerate() {
                match r {
                    Ok(c) if k * 256 + j < cached => cache.extend(c.iter()),
                    Ok(_) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        if !errors.is_empty() {
            return Err(TrainError::Data(format!(
                "{} of {} patch file(s) could not be loaded:\n  {}{}",
                errors.len(),
                rows.len(),
                errors.iter().take(10).cloned().collect::<Vec<_>>().join("\n  "),
                if errors.len() > 10 { "\n  ..." } else { "" }
            )));
        }
        Ok(Cubes {
            rows: rows.iter().map(|r| (*r).clone()).collect(),
            labels: rows.iter().map(|r| f32::from(r.label)).collect(),
            cube,
            paths,
            pre: pre.clone(),
            cache,
            cached,
            features: Vec::new(),
            nf: 0,
        })
    }

    /// Takes each patch's features from `values` (by patch file, `nf` each).
    pub fn set_features(&mut self, values: &std::collections::HashMap<String, Vec<f32>>, nf: usize) -> Result<()> {
        let mut out = Vec::with_capacity(self.rows.len() * nf);
        for r in &self.rows {
            let v = values
                .get(&r.patch_file)
                .filter(|v| v.len() == nf)
                .ok_or_else(|| TrainError::Internal(format!("no features read for {}", r.patch_file)))?;
            out.extend_from_slice(v);
        }
        self.nf = nf;
        self.features = out;
        Ok(())
    }

    /// The features of the patches `idx`, `nf` each, concatenated (empty without features).
    pub fn gather_features(&self, idx: &[usize]) -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| &self.features[i * self.nf..(i + 1) * self.nf])
            .copied()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// How many cubes are held in memory.
    pub fn cached(&self) -> usize {
        self.cached
    }

    /// Bytes of the in-memory cubes.
    pub fn cache_bytes(&self) -> usize {
        self.cache.len() * std::mem::size_of::<f32>()
    }

    /// The cubes `idx`, each `D³` values, concatenated; those not in memory are read from
    /// disk in parallel.
    pub fn gather(&self, idx: &[usize]) -> Result<Vec<f32>> {
        let n = self.cube * self.cube * self.cube;
        let mut out = vec![0.0f32; idx.len() * n];
        out.par_chunks_mut(n)
            .zip(idx.par_iter())
            .try_for_each(|(slot, &i)| -> Result<()> {
                if i < self.cached {
                    slot.copy_from_slice(&self.cache[i * n..(i + 1) * n]);
                    return Ok(());
                }
                models::patch::load_patch_into(&self.paths[i], &self.pre, slot)
                    .map_err(TrainError::PatchChanged)
            })?;
        Ok(out)
    }
}

/// Reads `source`'s features for every row of `index`: every missing or non-finite value is
/// an error, all counted and the first few named.
pub fn read_features(
    index: &PatchIndex,
    source: &models::features::FeatureSource,
) -> Result<std::collections::HashMap<String, Vec<f32>>> {
    let keys: Vec<(&str, &str)> = index
        .rows
        .iter()
        .map(|r| (r.patch_file.as_str(), r.seriesuid.as_str()))
        .collect();
    let values = models::features::read(&index.path, &keys, source)?;
    let errors: Vec<&String> = values.iter().filter_map(|v| v.as_ref().err()).collect();
    if !errors.is_empty() {
        return Err(TrainError::Data(format!(
            "{} of {} patch(es) lack a usable value of a feature ({}):\n  {}{}",
            errors.len(),
            values.len(),
            source.columns.join(", "),
            errors
                .iter()
                .take(10)
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join("\n  "),
            if errors.len() > 10 { "\n  ..." } else { "" }
        )));
    }
    Ok(index
        .rows
        .iter()
        .zip(values)
        .filter_map(|(r, v)| v.ok().map(|v| (r.patch_file.clone(), v)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<IndexRow> {
        let mut v = Vec::new();
        for s in 0..12 {
            for p in 0..3 {
                v.push(IndexRow {
                    patch_file: format!("{s}_{p}.npy"),
                    seriesuid: format!("S{s}"),
                    diam_mm: 0.0,
                    center_x: 0.0,
                    center_y: 0.0,
                    center_z: 0.0,
                    label: u8::from(s % 3 == 0 && p == 0),
                });
            }
        }
        v
    }

    /// A patch removed under a run is `PatchChanged` when its batch is read from disk,
    /// naming the file and keeping the reader's error.
    #[test]
    fn a_patch_gone_during_the_run_is_named_with_its_cause() {
        let d = tempfile::tempdir().expect("tmp");
        let cfg = synth::SynthConfig {
            series: 2,
            patches_per_series: 2,
            positive_fraction: 0.5,
            cube_size: 8,
            seed: 3,
            features: false,
        };
        let dir = d.path().join("p");
        synth::generate(&cfg, &dir).expect("synth");
        let index = PatchIndex::read(&dir).expect("index");
        let rows: Vec<&IndexRow> = index.rows.iter().collect();
        let pre = Preprocess {
            cube_size: 8,
            ..Default::default()
        };
        let cubes = Cubes::load(&index, &rows, &pre, Some(0)).expect("load");
        assert_eq!(cubes.cached(), 0, "every batch read from disk");
        let gone = index.patch_path(rows[1]);
        std::fs::remove_file(&gone).expect("remove");
        let e = cubes.gather(&[0, 1]).expect_err("a patch is gone");
        assert!(matches!(e, TrainError::PatchChanged(_)), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
        let msg = e.to_string();
        assert!(msg.contains(&rows[1].patch_file) && msg.ends_with("(changed since the run started?)"), "{msg}");
    }

    #[test]
    fn split_is_series_disjoint_stratified_and_seeded() {
        let r = rows();
        let cfg = SplitConfig {
            val_fraction: 0.25,
            seed: 1,
            ..Default::default()
        };
        let a = Split::new(&r, &cfg, Path::new("i.csv")).expect("split");
        let b = Split::new(&r, &cfg, Path::new("i.csv")).expect("split");
        assert_eq!(a.series, b.series);
        let val = a.rows(&r, Side::Val);
        assert!(val.iter().any(|x| x.label == 1) && val.iter().any(|x| x.label == 0));
        let val_series: BTreeSet<_> = val.iter().map(|x| &x.seriesuid).collect();
        assert!(a
            .rows(&r, Side::Train)
            .iter()
            .all(|x| !val_series.contains(&x.seriesuid)));
        assert_eq!(val_series.len(), 3);
    }

    #[test]
    fn k_folds_partition_the_series() {
        let r = rows();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for fold in 1..=3 {
            let cfg = SplitConfig {
                folds: 3,
                fold: Some(fold),
                seed: 5,
                ..Default::default()
            };
            let s = Split::new(&r, &cfg, Path::new("i.csv")).expect("fold");
            for (uid, side) in &s.series {
                if *side == Side::Val {
                    *seen.entry(uid.clone()).or_default() += 1;
                }
            }
            let val = s.rows(&r, Side::Val);
            assert!(
                val.iter().any(|x| x.label == 1) && val.iter().any(|x| x.label == 0),
                "fold {fold}"
            );
        }
        // Every series is validation in exactly one fold.
        assert_eq!(seen.len(), 12);
        assert!(seen.values().all(|&n| n == 1));
    }

    #[test]
    fn refuses_no_negatives_and_leaks() {
        let mut r = rows();
        for x in &mut r {
            x.label = 1;
        }
        let msg = format!(
            "{:#}",
            Split::new(&r, &SplitConfig::default(), Path::new("i.csv")).expect_err("no neg")
        );
        assert!(msg.contains("no negative patches") && msg.contains("i.csv"), "{msg}");

        let r = rows();
        let s = Split::new(&r, &SplitConfig::default(), Path::new("i.csv")).expect("split");
        // One file listed under a training series and a validation series leaks.
        let val_uid = s
            .series
            .iter()
            .find(|(_, v)| **v == Side::Val)
            .map(|(k, _)| k.clone())
            .expect("val");
        let train_row = r
            .iter()
            .find(|x| s.series[&x.seriesuid] == Side::Train)
            .expect("train")
            .clone();
        let mut r2 = r.clone();
        r2.push(IndexRow {
            seriesuid: val_uid,
            ..train_row
        });
        let msg = format!("{:#}", s.check(&r2, Path::new("i.csv")).expect_err("leak"));
        assert!(msg.contains("both sides of the split"), "{msg}");
        // Validation without positives is refused.
        let mut r3 = r;
        for x in &mut r3 {
            if s.series.get(&x.seriesuid) == Some(&Side::Val) {
                x.label = 0;
            }
        }
        let msg = format!("{:#}", s.check(&r3, Path::new("i.csv")).expect_err("no val pos"));
        assert!(
            msg.contains("validation split has") && msg.contains("needs both classes"),
            "{msg}"
        );
    }
}
