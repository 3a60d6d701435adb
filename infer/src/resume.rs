//! `--resume`: the rows an earlier output already holds are kept, and only the patches it
//! lacks are scored. Kept rows must come from the same model, with the same columns and the
//! same calibration (every kept row's calibrated probability and decision are recomputed
//! from its logit), and of the same input: a row is kept only when its patch file still
//! gives the `input_sha256` the row records (another file of the same name, in another
//! folder or rewritten since, is scored again). Rows of patches no longer among the inputs
//! are dropped. The kept rows are copied as they were written, so a resumed output equals
//! one run's byte for byte, whatever the names hold (commas, quotes, newlines).
use std::collections::HashSet;
use std::path::Path;

use rayon::prelude::*;

use crate::calib::{same_calibration, Cal};
use crate::output::Format;
use crate::InferError;

/// What an earlier output contributes to a resumed run.
pub(crate) struct Previous {
    /// The kept rows as text, ready to be written first (the CSV header included).
    pub text: Vec<u8>,
    /// The patches those rows score.
    pub done: HashSet<String>,
    /// Rows dropped because their patch is no longer among the inputs.
    pub dropped: usize,
    /// Rows dropped because their patch file changed since (scored again).
    pub changed: usize,
}

/// One earlier row: its patch, recorded digest, and its bytes as written.
struct Row {
    name: String,
    digest: String,
    bytes: std::ops::Range<usize>,
}

/// What every earlier row is checked against, and the errors that name the output.
struct Check<'a> {
    path: &'a Path,
    header: &'a [&'a str],
    model_sha256: &'a str,
    cal: Option<&'a Cal>,
}

impl Check<'_> {
    fn other_calibration(&self, line: usize) -> InferError {
        crate::bad_input(
            self.path,
            format!(
                "--resume: line {line} was calibrated otherwise than this run calibrates \
                 (another --calibration?); not mixing two in one output"
            ),
        )
    }

    fn other_model(&self, line: usize) -> InferError {
        crate::bad_input(self.path, format!("--resume: line {line} was scored by another model"))
    }

    fn damaged(&self, line: usize, e: &dyn std::fmt::Display) -> InferError {
        crate::bad_input(self.path, format!("line {line}: {e} (a damaged output; not resuming)"))
    }

    /// A CSV output's rows (with their lines), and the length of its header.
    fn csv_rows(&self, bytes: &[u8]) -> Result<(usize, Vec<(usize, Row)>), InferError> {
        let path = self.path;
        // Rows are copied as written: an output cut short or re-saved with other line
        // ends (an editor's \r\n) is not ours as it was, and not resumed.
        if !bytes.ends_with(b"\n") {
            return Err(self.damaged(1, &"it does not end with a whole line"));
        }
        if bytes.contains(&b'\r') {
            return Err(crate::bad_input(
                path,
                "--resume: it holds \\r line ends (re-saved by another program?); this toolchain writes \\n; not resuming",
            ));
        }
        let mut r = csv::ReaderBuilder::new().from_reader(bytes);
        let got: Vec<String> = r
            .headers()
            .map_err(|source| tables::Error::Header {
                path: path.to_path_buf(),
                source,
            })?
            .iter()
            .map(String::from)
            .collect();
        if got != self.header {
            return Err(crate::bad_input(
                path,
                format!(
                    "--resume: its columns ({}) differ from this run's ({})",
                    got.join(","),
                    self.header.join(",")
                ),
            ));
        }
        let head_len = r.position().byte() as usize;
        let at = |name: &str| got.iter().position(|h| h == name);
        let (sha_col, in_col) = (at("model_sha256"), at("input_sha256"));
        let cal_cols = (
            at("logit"),
            at("calibrated_probability"),
            at("decision"),
            at("operating_point"),
        );
        let mut rows = Vec::new();
        let mut rec = csv::StringRecord::new();
        loop {
            let start = r.position().byte() as usize;
            let line = r.position().line() as usize;
            match r.read_record(&mut rec) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => return Err(self.damaged(line, &e)),
            }
            let end = r.position().byte() as usize;
            if let (Some(cal), (Some(l), Some(p), Some(d), Some(o))) = (self.cal, cal_cols) {
                let num = |c: usize| rec.get(c).and_then(|v| v.parse::<f64>().ok());
                if !same_calibration(cal, num(l), num(p), num(d), rec.get(o)) {
                    return Err(self.other_calibration(line));
                }
            }
            if sha_col.is_some_and(|c| rec.get(c) != Some(self.model_sha256)) {
                return Err(self.other_model(line));
            }
            rows.push((
                line,
                Row {
                    name: rec.get(0).unwrap_or("").to_string(),
                    digest: in_col.and_then(|c| rec.get(c)).unwrap_or("").to_string(),
                    bytes: start..end,
                },
            ));
        }
        Ok((head_len, rows))
    }

    /// A JSONL output's rows (with their lines).
    fn jsonl_rows(&self, bytes: &[u8]) -> Result<Vec<(usize, Row)>, InferError> {
        let (path, header) = (self.path, self.header);
        let first = header.first().copied().unwrap_or("patch_file");
        let mut rows = Vec::new();
        let mut start = 0;
        for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
            let n = i + 1;
            let range = start..start + line.len();
            start = range.end;
            let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| self.damaged(n, &e))?;
            let name = v[first]
                .as_str()
                .ok_or_else(|| crate::bad_input(path, format!("line {n}: no {first}")))?;
            if v["model_sha256"].as_str() != Some(self.model_sha256) {
                return Err(self.other_model(n));
            }
            let keys: Vec<&str> = v
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if keys.len() != header.len() || header.iter().any(|h| !keys.contains(h)) {
                return Err(crate::bad_input(
                    path,
                    format!("--resume: line {n} has other fields than this run writes"),
                ));
            }
            if let Some(cal) = self.cal {
                let (l, p, d) = (
                    v["logit"].as_f64(),
                    v["calibrated_probability"].as_f64(),
                    v["decision"].as_f64(),
                );
                if !same_calibration(cal, l, p, d, v["operating_point"].as_str()) {
                    return Err(self.other_calibration(n));
                }
            }
            if !line.ends_with(b"\n") {
                return Err(self.damaged(n, &"the last line is cut short"));
            }
            rows.push((
                n,
                Row {
                    name: name.to_string(),
                    digest: v["input_sha256"].as_str().unwrap_or("").to_string(),
                    bytes: range,
                },
            ));
        }
        Ok(rows)
    }
}

/// Reads an existing output for `--resume`: checks every row (model, columns, calibration)
/// and keeps those of patches still among the inputs (`wanted`) whose input is unchanged
/// (`same_input(name, recorded digest)`).
pub(crate) fn read_previous(
    path: &Path,
    format: Format,
    header: &[&str],
    model_sha256: &str,
    cal: Option<&Cal>,
    wanted: &(dyn Fn(&str) -> bool + Sync),
    same_input: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Result<Previous, InferError> {
    let bytes = files::read_regular(path)?;
    let check = Check {
        path,
        header,
        model_sha256,
        cal,
    };
    let (head_len, rows) = match format {
        Format::Luna16 => {
            return Err(crate::bad_input(
                path,
                "--resume needs an output that names its patches (csv or jsonl, not luna16)",
            ))
        }
        Format::Csv => check.csv_rows(&bytes)?,
        Format::Jsonl => (0, check.jsonl_rows(&bytes)?),
    };
    let mut prev = Previous {
        text: bytes[..head_len].to_vec(),
        done: HashSet::new(),
        dropped: 0,
        changed: 0,
    };
    let mut seen = HashSet::new();
    for (line, r) in &rows {
        if !seen.insert(r.name.as_str()) {
            return Err(check.damaged(
                *line,
                &format!("{} is already scored on an earlier line", r.name),
            ));
        }
    }
    // Whether each wanted row's input is unchanged: read in parallel (the crops only).
    let same: Vec<Option<bool>> = rows
        .par_iter()
        .map(|(_, r)| wanted(&r.name).then(|| same_input(&r.name, &r.digest)))
        .collect();
    for ((_, r), same) in rows.iter().zip(same) {
        match same {
            None => prev.dropped += 1,
            Some(false) => prev.changed += 1,
            Some(true) => {
                prev.text.extend_from_slice(&bytes[r.bytes.clone()]);
                prev.done.insert(r.name.clone());
            }
        }
    }
    Ok(prev)
}
