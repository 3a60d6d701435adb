//! `--resume`: the rows an earlier output already holds are kept, and only the patches it
//! lacks are scored. Kept rows must come from the same model, with the same columns and the
//! same calibration (every kept row's calibrated probability and decision are recomputed
//! from its logit), and rows of patches no longer among the inputs are dropped.
use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use crate::calib::{same_calibration, Cal};
use crate::output::Format;
use crate::InferError;

fn input_err(path: &Path, msg: impl Into<String>) -> InferError {
    InferError::Input {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// What an earlier output contributes to a resumed run.
pub(crate) struct Previous {
    /// The kept rows as text, ready to be written first (the CSV header included).
    pub text: Vec<u8>,
    /// The patches those rows score.
    pub done: HashSet<String>,
    /// Rows dropped because their patch is no longer among the inputs.
    pub dropped: usize,
}

/// Reads an existing output for `--resume`: checks every row (model, columns, calibration)
/// and keeps those of patches still among the inputs (`names`).
pub(crate) fn read_previous(
    path: &Path,
    format: Format,
    header: &[&str],
    model_sha256: &str,
    cal: Option<&Cal>,
    names: &HashSet<&str>,
) -> Result<Previous, InferError> {
    let bytes = models::fsutil::read_regular(path)?;
    let mut prev = Previous {
        text: Vec::new(),
        done: HashSet::new(),
        dropped: 0,
    };
    let other_calibration = |line: usize| {
        input_err(
            path,
            format!(
                "--resume: line {line} was calibrated otherwise than this run calibrates \
                 (another --calibration?); not mixing two in one output"
            ),
        )
    };
    let other_model = |line: usize| input_err(path, format!("--resume: line {line} was scored by another model"));
    let damaged = |line: usize, e: &dyn std::fmt::Display| {
        input_err(path, format!("line {line}: {e} (a damaged output; not resuming)"))
    };
    match format {
        Format::Luna16 => {
            return Err(input_err(
                path,
                "--resume needs an output that names its patches (csv or jsonl, not luna16)",
            ))
        }
        Format::Csv => {
            let mut r = csv::Reader::from_reader(bytes.as_slice());
            let got: Vec<String> = r
                .headers()
                .map_err(|e| input_err(path, e.to_string()))?
                .iter()
                .map(String::from)
                .collect();
            if got != header {
                return Err(input_err(
                    path,
                    format!(
                        "--resume: its columns ({}) differ from this run's ({})",
                        got.join(","),
                        header.join(",")
                    ),
                ));
            }
            let at = |name: &str| got.iter().position(|h| h == name);
            let sha_col = at("model_sha256");
            let cal_cols = (
                at("logit"),
                at("calibrated_probability"),
                at("decision"),
                at("operating_point"),
            );
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(&got).map_err(|e| input_err(path, e.to_string()))?;
            for (line, rec) in models::csvio::rows(&mut r) {
                let rec = rec.map_err(|e| damaged(line, &e))?;
                if let (Some(cal), (Some(l), Some(p), Some(d), Some(o))) = (cal, cal_cols) {
                    let num = |c: usize| rec.get(c).and_then(|v| v.parse::<f64>().ok());
                    if !same_calibration(cal, num(l), num(p), num(d), rec.get(o)) {
                        return Err(other_calibration(line));
                    }
                }
                if sha_col.is_some_and(|c| rec.get(c) != Some(model_sha256)) {
                    return Err(other_model(line));
                }
                let name = rec.get(0).unwrap_or("");
                if !names.contains(name) {
                    prev.dropped += 1;
                    continue;
                }
                if !prev.done.insert(name.to_string()) {
                    return Err(damaged(line, &format!("{name} is already scored on an earlier line")));
                }
                w.write_record(&rec).map_err(|e| input_err(path, e.to_string()))?;
            }
            prev.text = w.into_inner().map_err(|e| input_err(path, e.to_string()))?;
        }
        Format::Jsonl => {
            for (i, line) in bytes.lines().enumerate() {
                let n = i + 1;
                let line = line.map_err(|e| models::Error::io(path, e))?;
                let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| damaged(n, &e))?;
                let name = v["patch_file"]
                    .as_str()
                    .ok_or_else(|| input_err(path, format!("line {n}: no patch_file")))?;
                if v["model_sha256"].as_str() != Some(model_sha256) {
                    return Err(other_model(n));
                }
                let keys: Vec<&str> = v
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                if keys.len() != header.len() || header.iter().any(|h| !keys.contains(h)) {
                    return Err(input_err(
                        path,
                        format!("--resume: line {n} has other fields than this run writes"),
                    ));
                }
                if let Some(cal) = cal {
                    let (l, p, d) = (
                        v["logit"].as_f64(),
                        v["calibrated_probability"].as_f64(),
                        v["decision"].as_f64(),
                    );
                    if !same_calibration(cal, l, p, d, v["operating_point"].as_str()) {
                        return Err(other_calibration(n));
                    }
                }
                if !names.contains(name) {
                    prev.dropped += 1;
                    continue;
                }
                if !prev.done.insert(name.to_string()) {
                    return Err(damaged(n, &format!("{name} is already scored on an earlier line")));
                }
                prev.text.extend_from_slice(line.as_bytes());
                prev.text.push(b'\n');
            }
        }
    }
    Ok(prev)
}
