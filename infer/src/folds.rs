//! The evaluation loop of a k-fold run: each fold's model scores the series it held out,
//! straight from the scans (`infer --scans DIR --candidates FILE --held-out RUN/fold_N`), and
//! `infer merge --folds` joins the K outputs into one file of out-of-fold scores over every
//! candidate, for `froc`: how LUNA16's false-positive-reduction track is evaluated.
//!
//! `--held-out RUN` reads the fold's `split.csv` (its validation series) and `config.yaml`
//! (`split.fold` of `split.folds`); only candidates of those series are scored, with the
//! fold's own model (`RUN/model.onnx`, or its calibrated copy; another model is refused:
//! scoring a series with a model that trained on it is the leak this loop exists to avoid).
//! Beside the output goes `OUT.fold.yaml`: which fold of which cross-validation (the sha256
//! of every series of the split and the number of folds), its validation series, the
//! candidates file, model, calibration, format, and the output's sha256. `merge --folds`
//! refuses outputs of different cross-validations or candidates, a fold missing or given
//! twice, series held out twice, and an output that is not the one its record describes.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::InferError;

/// A fold's held-out part, read from its run folder.
#[derive(Debug, Clone)]
pub struct HeldOut {
    pub run: PathBuf,
    pub fold: usize,
    pub folds: usize,
    /// The validation series of this fold.
    pub series: BTreeSet<String>,
    /// sha256 of every series of the split (sorted, one per line) and the number of folds:
    /// the same for every fold of one cross-validation.
    pub cv_sha256: String,
}

impl HeldOut {
    /// Reads `RUN/split.csv` and `RUN/config.yaml` of a fold's run folder.
    pub fn read(run: &Path) -> Result<Self, InferError> {
        let cfg_path = run.join("config.yaml");
        let text = files::read_regular_to_string(&cfg_path)
            .map_err(|e| crate::bad_input(run, format!("not a training run folder ({e})")))?;
        let cfg: yaml_serde::Value =
            yaml_serde::from_str(&text).map_err(|e| InferError::from(files::Error::parse(&cfg_path, "not a run's config", e)))?;
        let get = |k: &str| {
            cfg.get("split")
                .and_then(|s| s.get(k))
                .and_then(yaml_serde::Value::as_u64)
        };
        let (Some(fold), Some(folds)) = (get("fold"), get("folds")) else {
            return Err(crate::bad_input(
                &cfg_path,
                "not one fold of a k-fold run (no split.fold of split.folds): --held-out takes RUN/fold_N of `trainer train --folds K`",
            ));
        };
        let (fold, folds) = (fold as usize, folds as usize);
        if folds < 2 || !(1..=folds).contains(&fold) {
            return Err(crate::bad_input(&cfg_path, format!("split.fold {fold} of split.folds {folds}")));
        }
        let split = run.join("split.csv");
        let (mut rdr, headers) = tables::csvio::open(&split, true)?;
        let (Some(u), Some(k)) = (
            headers.iter().position(|h| h == "seriesuid"),
            headers.iter().position(|h| h == "split"),
        ) else {
            return Err(crate::bad_input(&split, "no seriesuid and split columns"));
        };
        let (mut all, mut series) = (BTreeSet::new(), BTreeSet::new());
        for (line, rec) in tables::csvio::rows(&mut rdr) {
            let rec = rec.map_err(|e| tables::Error::row(&split, line, e))?;
            let uid = rec.get(u).unwrap_or("").to_string();
            match rec.get(k).unwrap_or("") {
                "val" => {
                    series.insert(uid.clone());
                }
                "train" => {}
                other => return Err(crate::bad_input(&split, format!("line {line}: split {other:?} (train or val)"))),
            }
            all.insert(uid);
        }
        if series.is_empty() {
            return Err(crate::bad_input(&split, "no validation series"));
        }
        let mut text = format!("folds={folds}\n");
        for s in &all {
            text += s;
            text.push('\n');
        }
        Ok(HeldOut {
            run: run.to_path_buf(),
            fold,
            folds,
            series,
            cv_sha256: files::sha256_bytes(text.as_bytes()),
        })
    }

    /// The fold's models: `model.onnx`, and `model.calibrated.onnx` when calibrated.
    pub fn models(&self) -> Vec<PathBuf> {
        ["model.onnx", models::calibration::BAKED_FILE]
            .iter()
            .map(|f| self.run.join(f))
            .filter(|p| p.is_file())
            .collect()
    }

    /// Refuses a model that is not one of this fold's (by content).
    pub fn check_model(&self, model: &Path, sha256: &str) -> Result<(), InferError> {
        for m in self.models() {
            if files::sha256_file(&m)? == sha256 {
                return Ok(());
            }
        }
        Err(crate::bad_input(
            model,
            format!(
                "not the model of fold {} ({}): its held-out series must be scored by the model that did not train on them",
                self.fold,
                self.run.join("model.onnx").display()
            ),
        ))
    }
}

/// What a fold's output holds (`OUT.fold.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub fold: usize,
    pub folds: usize,
    pub cv_sha256: String,
    /// This fold's validation series.
    pub series: Vec<String>,
    pub candidates_sha256: String,
    pub rows: usize,
    pub failed: usize,
    pub model_sha256: String,
    /// The calibration file's sha256, `model` for the model's own, or `none`.
    pub calibration: String,
    pub format: String,
    pub header: Vec<String>,
    pub tta: String,
    pub output_sha256: String,
}

/// The record's path beside an output.
pub fn record_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".fold.yaml");
    PathBuf::from(s)
}

/// Writes a fold's record beside its output (after the output: the record commits it).
pub fn write_record(out: &Path, rec: &Record) -> Result<(), InferError> {
    let text = yaml_serde::to_string(rec).map_err(|e| crate::output_err(out, e))?;
    files::write_atomic(&record_path(out), text.as_bytes())?;
    Ok(())
}

/// What [`merge`] did.
#[derive(Debug, Clone)]
pub struct Merged {
    pub folds: usize,
    pub rows: usize,
    pub failed: usize,
}

/// Joins the K fold outputs into `out`: the header once, then each fold's rows in fold
/// order, byte for byte.
pub fn merge(outputs: &[PathBuf], out: &Path) -> Result<Merged, InferError> {
    let records: Vec<PathBuf> = outputs.iter().map(|p| record_path(p)).collect();
    let _lock = crate::shard::open_merge(outputs, &records, out, "fold")?;
    let mut parts: Vec<(Record, &PathBuf)> = Vec::with_capacity(outputs.len());
    for (p, r) in outputs.iter().zip(&records) {
        let text = files::read_regular_to_string(r).map_err(|e| {
            crate::bad_input(
                p,
                format!("no fold record beside it ({e}): was it written by `infer --scans ... --held-out RUN/fold_N`?"),
            )
        })?;
        let rec: Record = yaml_serde::from_str(&text).map_err(|e| InferError::from(files::Error::parse(r, "not a fold record", e)))?;
        parts.push((rec, p));
    }
    let Some((first, first_path)) = parts.first().map(|(r, p)| (r.clone(), (*p).clone())) else {
        return Err(InferError::Usage("infer merge --folds needs the fold outputs".into()));
    };
    for (r, p) in &parts {
        crate::shard::agree(
            p,
            &first_path,
            &[
                (
                    "the cross-validation (its series or number of folds)",
                    r.cv_sha256 == first.cv_sha256 && r.folds == first.folds,
                ),
                ("the candidates file", r.candidates_sha256 == first.candidates_sha256),
                ("the test-time augmentation (--tta)", r.tta == first.tta),
                (
                    "the output format",
                    r.format == first.format && r.header == first.header,
                ),
                (
                    "whether it is calibrated",
                    (r.calibration == "none") == (first.calibration == "none"),
                ),
            ],
            "not folds of one evaluation",
        )?;
    }
    parts.sort_by_key(|(r, _)| r.fold);
    let numbers: Vec<(usize, &PathBuf)> = parts.iter().map(|(r, p)| (r.fold, *p)).collect();
    crate::shard::each_once(&numbers, first.folds, "fold")?;
    let mut held = BTreeSet::new();
    for (r, p) in &parts {
        if let Some(s) = r.series.iter().find(|s| !held.insert(s.as_str())) {
            return Err(crate::bad_input(p, format!("series {s} is held out by two folds")));
        }
    }
    let joined = first.header.join(",");
    let header = (first.format != "jsonl").then_some(joined.as_str());
    let mut bodies = Vec::with_capacity(parts.len());
    for (r, p) in &parts {
        let body = crate::shard::checked_body(p, &record_path(p), &r.output_sha256, header, "fold")?;
        let n = crate::shard::patches_of(&body, &first.format)
            .map_err(|e| crate::bad_input(p, e))?
            .len();
        if n != r.rows {
            return Err(crate::bad_input(p, format!("{n} rows where its record says {}", r.rows)));
        }
        bodies.push(body);
    }
    crate::shard::write_merged(out, header, &bodies)?;
    Ok(Merged {
        folds: parts.len(),
        rows: parts.iter().map(|(r, _)| r.rows).sum(),
        failed: parts.iter().map(|(r, _)| r.failed).sum(),
    })
}
