//! A scores CSV with labels (`infer`'s output, a run's `val_scores.csv`): a logit or a
//! probability per row, a 0/1 label, and optionally series, patch and decision columns. Read
//! by `calibrate` (what it fits on) and by `froc compare` (the models it compares). Every
//! problem names the file and line.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

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

/// "This input is bad, and here is why": [`files::Error::bad_input`], the one constructor.
fn input_err(path: &Path, msg: String) -> Error {
    files::Error::bad_input(path, msg).into()
}

/// A row's score as a logit: a finite number a float32 model can output, or (`probability`)
/// a probability in [0, 1] turned into its logit.
fn logit_of(path: &Path, line: usize, raw: &str, score_col: &str, probability: bool) -> Result<f64> {
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
    if !probability {
        return Ok(s);
    }
    if !(0.0..=1.0).contains(&s) {
        return Err(input_err(path, format!("line {line}: probability {s} outside [0, 1]")));
    }
    Ok(metrics::logit(s))
}

impl ScoreTable {
    /// Reads a scores CSV. Every problem names the file and line.
    pub fn read(path: &Path, cols: &Columns) -> Result<Self> {
        let (mut rdr, headers) = crate::csvio::open(path, true)?;
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
        for (line, rec) in crate::csvio::rows(&mut rdr) {
            let rec = rec.map_err(|e| crate::Error::row(path, line, e))?;
            let z = logit_of(path, line, rec.get(si).unwrap_or(""), score_col, cols.probability.is_some())?;
            let y = match rec.get(li).unwrap_or("") {
                "0" | "0.0" => 0,
                "1" | "1.0" => 1,
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
                match rec.get(di).unwrap_or("") {
                    "0" => t.decisions.push(0),
                    "1" => t.decisions.push(1),
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

    /// `Ok` when the table has both classes (what a fit or a comparison needs); else an
    /// error naming `path`.
    pub fn check(&self, path: &Path) -> Result<()> {
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
