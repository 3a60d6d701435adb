//! LUNA16's CSV files: `annotations.csv`, `annotations_excluded.csv`, `candidates*.csv`,
//! results in the submission format (all `seriesuid, coordX, coordY, coordZ` and one value
//! column), and the series list. Read by `scans prepare` (what to cut) and `froc` (what to
//! score against); positions are world millimetres in ITK/LPS, as the challenge gives them.
use std::path::Path;

use serde::Serialize;

use tables::{Error, Result};

/// A finding with a position in world millimetres.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub seriesuid: String,
    #[serde(rename = "coordX")]
    pub x: f64,
    #[serde(rename = "coordY")]
    pub y: f64,
    #[serde(rename = "coordZ")]
    pub z: f64,
    /// Diameter for annotations; probability for candidates.
    #[serde(skip)]
    pub value: f64,
}

impl Finding {
    /// Squared distance in world millimetres.
    pub fn dist2(&self, other: &Finding) -> f64 {
        (self.x - other.x).powi(2) + (self.y - other.y).powi(2) + (self.z - other.z).powi(2)
    }
}

fn input_err(path: &Path, msg: String) -> Error {
    Error::BadCsv {
        path: path.to_path_buf(),
        msg,
    }
}

/// Reads a LUNA16-style CSV with a header: `seriesuid, coordX, coordY, coordZ` and
/// `value_col`. Every problem names the file and line.
pub fn read_findings(path: &Path, value_col: &str) -> Result<Vec<Finding>> {
    read_findings_from(path, ["seriesuid", "coordX", "coordY", "coordZ", value_col])
}

/// As [`read_findings`] with other column names, in the order series, x, y, z, value (a
/// scores CSV of `infer --index`: `seriesuid, center_x, center_y, center_z, logit`).
pub fn read_findings_from(path: &Path, want: [&str; 5]) -> Result<Vec<Finding>> {
    let (mut rdr, headers) = tables::csvio::open(path, true)?;
    let idx: Vec<Option<usize>> = want.iter().map(|w| headers.iter().position(|h| h == *w)).collect();
    let missing: Vec<&str> = want
        .iter()
        .zip(&idx)
        .filter(|(_, i)| i.is_none())
        .map(|(w, _)| *w)
        .collect();
    if !missing.is_empty() {
        return Err(input_err(
            path,
            format!(
                "missing column(s) {} (expected {}; found {})",
                missing.join(", "),
                want.join(", "),
                headers.iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let idx: Vec<usize> = idx.into_iter().flatten().collect();
    let mut out = Vec::new();
    for (line, rec) in tables::csvio::rows(&mut rdr) {
        let rec = rec.map_err(|e| Error::row(path, line, e))?;
        let num = |k: usize| -> Result<f64> {
            let s = rec.get(idx[k]).unwrap_or("");
            let v: f64 = s
                .parse()
                .map_err(|_| input_err(path, format!("line {line}: {} is not a number: {s:?}", want[k])))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(input_err(path, format!("line {line}: {} is not finite: {s}", want[k])))
            }
        };
        out.push(Finding {
            seriesuid: rec.get(idx[0]).unwrap_or("").to_string(),
            x: num(1)?,
            y: num(2)?,
            z: num(3)?,
            value: num(4)?,
        });
    }
    Ok(out)
}

/// Reads the series list (LUNA16's `seriesuids.csv`: no header, column 0 of every row). Returns the uids and any warning.
pub fn read_series_list(path: &Path) -> Result<(Vec<String>, Option<String>)> {
    let (mut rdr, _) = tables::csvio::open(path, false)?;
    let mut uids = Vec::new();
    for (line, rec) in tables::csvio::rows(&mut rdr) {
        let rec = rec.map_err(|e| Error::row(path, line, e))?;
        let uid = rec.get(0).unwrap_or("").to_string();
        if uid.is_empty() {
            return Err(input_err(path, format!("line {line}: empty seriesuid")));
        }
        uids.push(uid);
    }
    let mut warning = None;
    if uids.first().is_some_and(|u| u == "seriesuid") {
        uids.remove(0);
        warning = Some(format!(
            "{}: first row `seriesuid` taken as a header (the official script would count it as a scan)",
            path.display()
        ));
    }
    if uids.is_empty() {
        return Err(input_err(path, "no series listed".into()));
    }
    Ok((uids, warning))
}
