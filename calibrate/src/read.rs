//! Reading what is calibrated: a scores CSV (logits or probabilities, labels, series), or a
//! labelled patch index scored through ONNX Runtime ([`scorer::Scorer`]). Every problem
//! names the file and line, before anything is fitted.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{metrics, CalError};

/// Scores with labels.
#[derive(Debug, Clone, Default)]
pub struct ScoreTable {
    pub source: PathBuf,
    /// Each row's line in the source (for messages); empty when the rows have no lines.
    pub lines: Vec<usize>,
    pub logits: Vec<f64>,
    pub labels: Vec<u8>,
    /// Empty when the source has no series column.
    pub seriesuid: Vec<String>,
    /// Each row's patch; empty when the source has no patch column.
    pub patches: Vec<String>,
    /// Each row's 0/1 `decision` (a calibrated infer output); empty without that column.
    pub decisions: Vec<u8>,
}

/// Which columns of a scores CSV hold what.
#[derive(Debug, Clone)]
pub struct Columns {
    /// Raw logit column; used unless `probability` is given.
    pub logit: String,
    /// Probability column instead of a logit (converted to a logit).
    pub probability: Option<String>,
    pub label: String,
    /// Optional series column (bootstrap and cross-validation group by it).
    pub seriesuid: String,
    /// Optional patch column: a patch listed twice is an error.
    pub patch: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            logit: "logit".into(),
            probability: None,
            label: "label".into(),
            seriesuid: "seriesuid".into(),
            patch: "patch_file".into(),
        }
    }
}

/// "This input is bad, and here is why": [`models::Error::bad_input`], the one constructor.
pub(crate) fn input_err(path: &Path, msg: String) -> CalError {
    files::Error::bad_input(path, msg).into()
}

impl ScoreTable {
    /// Reads a scores CSV. Every problem names the file and line.
    pub fn read(path: &Path, cols: &Columns) -> Result<Self, CalError> {
        let (mut rdr, headers) = tables::csvio::open(path, true)?;
        let find = |name: &str| headers.iter().position(|h| h == name);
        let score_col = cols.probability.as_deref().unwrap_or(&cols.logit);
        let (Some(si), Some(li)) = (find(score_col), find(&cols.label)) else {
            let missing: Vec<&str> = [score_col, cols.label.as_str()]
                .into_iter()
                .filter(|c| find(c).is_none())
                .collect();
            return Err(input_err(
                path,
                format!(
                    "missing column(s) {} (columns present: {})",
                    missing.join(", "),
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        let (ui, pi, di) = (find(&cols.seriesuid), find(&cols.patch), find("decision"));
        let mut t = ScoreTable {
            source: path.to_path_buf(),
            ..Default::default()
        };
        let mut seen = std::collections::HashMap::new();
        for (line, rec) in tables::csvio::rows(&mut rdr) {
            let rec = rec.map_err(|e| input_err(path, format!("line {line}: {e}")))?;
            let raw = rec.get(si).unwrap_or("");
            let s: f64 = raw
                .parse()
                .map_err(|_| input_err(path, format!("line {line}: `{score_col}` is not a number: {raw:?}")))?;
            if !s.is_finite() {
                return Err(input_err(
                    path,
                    format!("line {line}: `{score_col}` is not finite: {raw}"),
                ));
            }
            if s.abs() > f64::from(f32::MAX) {
                return Err(input_err(
                    path,
                    format!(
                        "line {line}: `{score_col}` is {raw}, beyond what a float32 model outputs (±3.4e38): \
                         not a logit of this toolchain's models"
                    ),
                ));
            }
            let z = if cols.probability.is_some() {
                if !(0.0..=1.0).contains(&s) {
                    return Err(input_err(path, format!("line {line}: probability {s} outside [0, 1]")));
                }
                metrics::logit(s)
            } else {
                s
            };
            let y = match rec.get(li) {
                Some("0" | "0.0") => 0,
                Some("1" | "1.0") => 1,
                other => {
                    return Err(input_err(
                        path,
                        format!("line {line}: label must be 0 or 1, got {other:?}"),
                    ))
                }
            };
            if let Some(pi) = pi {
                let p = rec.get(pi).unwrap_or("").to_string();
                if let Some(first) = seen.insert(p.clone(), line) {
                    return Err(input_err(
                        path,
                        format!("line {line}: patch {p:?} already scored on line {first}"),
                    ));
                }
                t.patches.push(p);
            }
            if let Some(di) = di {
                match rec.get(di) {
                    Some("0") => t.decisions.push(0),
                    Some("1") => t.decisions.push(1),
                    other => {
                        return Err(input_err(
                            path,
                            format!("line {line}: decision must be 0 or 1, got {other:?}"),
                        ))
                    }
                }
            }
            t.logits.push(z);
            t.labels.push(y);
            t.lines.push(line);
            if let Some(ui) = ui {
                let uid = rec.get(ui).unwrap_or("");
                // Folds and the bootstrap group by series: a row without one would turn
                // every grouping into per-patch (and count series wrongly).
                if uid.is_empty() {
                    return Err(input_err(
                        path,
                        format!(
                            "line {line}: `{}` is blank; every row needs its series (folds and the bootstrap \
                             group by it), or leave the column out to group by patch",
                            cols.seriesuid
                        ),
                    ));
                }
                t.seriesuid.push(uid.to_string());
            }
        }
        t.check(path)?;
        Ok(t)
    }

    /// Site recalibration: scores a labelled patch index (or folder with
    /// `patch_index.csv`) with `model` through ONNX Runtime. Unreadable patches are
    /// errors here: calibrating on a silently shrunken set would mislead.
    /// A model with tabular features reads them from the index's rows (and `features_csv`
    /// by series); a patch without a usable value is an error like an unreadable one.
    pub fn from_patches(
        model: &Path,
        index: &Path,
        features_csv: Option<&Path>,
        opts: &scorer::ScorerOptions,
    ) -> Result<Self, CalError> {
        let idx = tables::index::read_scoring_index(index)?;
        if !idx.has_label {
            return Err(input_err(
                index,
                "the index has no `label` column: calibration needs labelled patches".into(),
            ));
        }
        let mut scorer = scorer::Scorer::open(model, opts)?;
        let pre = scorer.preprocess.clone();
        let mut t = ScoreTable {
            source: index.to_path_buf(),
            ..Default::default()
        };
        let (root, rows) = (&idx.root, &idx.rows);
        let mut errors: Vec<String> = idx.refused.iter().map(|(_, why)| why.clone()).collect();
        // A model with tabular features: each patch's values, from the index's columns.
        let feats = match &scorer.features {
            Some(columns) => {
                let keys: Vec<(&str, &str)> = rows
                    .iter()
                    .map(|r| (r.patch_file.as_str(), r.seriesuid.as_str()))
                    .collect();
                let src = models::features::FeatureSource {
                    columns: columns.clone(),
                    join: features_csv.map(Path::to_path_buf),
                };
                Some(models::features::read(&idx.path, &keys, &src)?)
            }
            None => None,
        };
        let per = pre.cube_size.pow(3);
        let mut batch = Vec::new();
        let mut fbatch = Vec::new();
        for (c, chunk) in rows.chunks(32).enumerate() {
            batch.clear();
            fbatch.clear();
            let mut good = Vec::with_capacity(chunk.len());
            for (k, r) in chunk.iter().enumerate() {
                let f = match feats.as_ref().map(|f| &f[c * 32 + k]) {
                    Some(Err(why)) => {
                        errors.push(why.clone());
                        continue;
                    }
                    Some(Ok(v)) => v.as_slice(),
                    None => &[],
                };
                let path = root.join(&r.patch_file);
                let at = batch.len();
                batch.resize(at + per, 0.0);
                match models::patch::load_patch_into(&path, &pre, &mut batch[at..]) {
                    Ok(()) => {
                        good.push(r);
                        fbatch.extend_from_slice(f);
                    }
                    Err(e) => {
                        batch.truncate(at);
                        errors.push(e.to_string());
                    }
                }
            }
            let f = feats.is_some().then_some(fbatch.as_slice());
            for (r, z) in good.into_iter().zip(scorer.score_flat_with(&batch, f)?) {
                if !z.is_finite() {
                    errors.push(format!(
                        "{}: the model's logit is {z} (not finite)",
                        root.join(&r.patch_file).display()
                    ));
                    continue;
                }
                let y = r
                    .label
                    .ok_or_else(|| input_err(index, format!("{}: no label", r.patch_file)))?;
                t.logits.push(f64::from(z));
                t.labels.push(y);
                t.seriesuid.push(r.seriesuid.clone());
            }
        }
        if !errors.is_empty() {
            return Err(input_err(
                index,
                format!(
                    "{} patch(es) could not be scored:\n  {}",
                    errors.len(),
                    errors.join("\n  ")
                ),
            ));
        }
        t.check(index)?;
        Ok(t)
    }

    fn check(&self, path: &Path) -> Result<(), CalError> {
        let n_pos = self.labels.iter().filter(|&&l| l == 1).count();
        if n_pos == 0 || n_pos == self.labels.len() {
            return Err(input_err(
                path,
                format!(
                    "calibration needs both classes; found {n_pos} positive(s) among {} row(s)",
                    self.labels.len()
                ),
            ));
        }
        Ok(())
    }

    /// The table without the rows `drop` (sorted indices).
    pub fn without(&self, drop: &[usize]) -> ScoreTable {
        let keep = |i: &usize| drop.binary_search(i).is_err();
        let pick = |v: &[f64]| (0..v.len()).filter(keep).map(|i| v[i]).collect::<Vec<_>>();
        ScoreTable {
            source: self.source.clone(),
            lines: (0..self.lines.len()).filter(keep).map(|i| self.lines[i]).collect(),
            logits: pick(&self.logits),
            labels: (0..self.labels.len()).filter(keep).map(|i| self.labels[i]).collect(),
            seriesuid: (0..self.seriesuid.len())
                .filter(keep)
                .map(|i| self.seriesuid[i].clone())
                .collect(),
            patches: (0..self.patches.len())
                .filter(keep)
                .map(|i| self.patches[i].clone())
                .collect(),
            decisions: (0..self.decisions.len())
                .filter(keep)
                .map(|i| self.decisions[i])
                .collect(),
        }
    }

    /// Group ids for cross-validation and bootstrap: series when known, else each patch.
    pub fn groups(&self) -> (Vec<usize>, usize, &'static str) {
        let by_series = self.seriesuid.len() == self.logits.len() && self.seriesuid.iter().all(|u| !u.is_empty());
        if !by_series {
            return (
                (0..self.logits.len()).collect(),
                self.logits.len(),
                "patch (no seriesuid column)",
            );
        }
        let mut ids = BTreeMap::new();
        let g = self
            .seriesuid
            .iter()
            .map(|u| {
                let n = ids.len();
                *ids.entry(u.as_str()).or_insert(n)
            })
            .collect();
        (g, ids.len(), "seriesuid")
    }
}
