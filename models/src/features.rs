//! Tabular (clinical) features: numeric columns of the patch index, or of a CSV joined on
//! `seriesuid`, fed to a model beside the cube (its second input, `features`).
//!
//! The trainer reads them for every patch (a missing or non-finite value stops the run,
//! every bad row counted and the first few named), standardises them with the training
//! split's mean and standard deviation, and writes those statistics into the model twice: as
//! the graph's own `NAME.mean` / `NAME.std` buffers (the graph takes raw values) and in the
//! metadata (`features.columns`, `features.mean`, `features.std`) for people and tools. A
//! scorer reads the same columns by name; there a bad value is an error for that row only.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Index columns that may not be features: identifiers, the label, and `diam_mm`, which is
/// known for annotated nodules only (0 for other candidates), so it gives the label away.
pub const REFUSED: &[&str] = &["patch_file", "seriesuid", "label", "diam_mm"];

/// Where the feature values come from.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSource {
    /// Column names, in the model's input order.
    pub columns: Vec<String>,
    /// A CSV with a `seriesuid` column and per-series values (one row per series), for the
    /// columns the index lacks.
    pub join: Option<PathBuf>,
}

/// Checks the column list: names non-empty, distinct, not identifiers nor the label, at most
/// [`crate::spec::MAX_FEATURES`].
pub fn check_columns(columns: &[String]) -> std::result::Result<(), String> {
    let mut problems = Vec::new();
    if columns.len() > crate::spec::MAX_FEATURES {
        problems.push(format!(
            "{} feature columns, at most {}",
            columns.len(),
            crate::spec::MAX_FEATURES
        ));
    }
    for (i, c) in columns.iter().enumerate() {
        if c.trim().is_empty() {
            problems.push(format!("feature {} has an empty column name", i + 1));
        } else if REFUSED.contains(&c.as_str()) {
            problems.push(format!(
                "`{c}` cannot be a feature ({})",
                if c == "diam_mm" {
                    "known only for annotated nodules, 0 for other candidates: it gives the label away"
                } else {
                    "an identifier or the label"
                }
            ));
        } else if columns[..i].contains(c) {
            problems.push(format!("feature column `{c}` is listed twice"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The values of `columns` for every row of a table, keyed by `key` (rows whose key is
/// repeated are refused when `unique`): per row its line and, per column, the value or what
/// is wrong with it. Columns the header lacks are `None` in the second result.
type Table = (
    HashMap<String, (usize, Vec<std::result::Result<f64, String>>)>,
    Vec<Option<usize>>,
);

fn read_table(path: &Path, key: &str, columns: &[String], unique: bool) -> Result<Table> {
    let (mut rdr, headers) = tables::csvio::open(path, true)?;
    let bad = |msg: String| tables::Error::BadCsv {
        path: path.to_path_buf(),
        msg,
    };
    let Some(k) = headers.iter().position(|h| h == key) else {
        return Err(bad(format!("no `{key}` column")).into());
    };
    let idx: Vec<Option<usize>> = columns.iter().map(|c| headers.iter().position(|h| h == c)).collect();
    let mut out = HashMap::new();
    for (line, rec) in tables::csvio::rows(&mut rdr) {
        let rec = rec.map_err(|e| tables::Error::row(path, line, e))?;
        let id = rec.get(k).unwrap_or("").to_string();
        let values = columns
            .iter()
            .zip(&idx)
            .map(|(c, i)| match i {
                None => Err(format!("no column `{c}`")),
                Some(i) => {
                    let s = rec.get(*i).unwrap_or("");
                    match s.parse::<f64>() {
                        Ok(v) if v.is_finite() => Ok(v),
                        Ok(_) => Err(format!("line {line}: {c} is not finite ({s})")),
                        Err(_) if s.is_empty() => Err(format!("line {line}: {c} is missing")),
                        Err(_) => Err(format!("line {line}: {c} is not a number: {s:?}")),
                    }
                }
            })
            .collect();
        // A key listed again: an error where keys must be unique (the per-series CSV); in an
        // index the first row counts, as the index readers keep it (the repeat is reported
        // there as that entry's error).
        match out.get(&id) {
            Some((first, _)) if unique => {
                return Err(bad(format!("line {line}: {key} {id} is already on line {first}")).into());
            }
            Some(_) => {}
            None => {
                out.insert(id, (line, values));
            }
        }
    }
    Ok((out, idx))
}

/// The feature values of each `(patch_file, seriesuid)` row of the index at `index`: from
/// the index's own columns, else from `source.join` by series. Per row the values in column
/// order, or what is wrong (naming the file, line and column). Errors only for files that
/// cannot be read, a join CSV without `seriesuid` or with a series twice, and a column
/// found in neither file.
pub fn read(
    index: &Path,
    rows: &[(&str, &str)],
    source: &FeatureSource,
) -> Result<Vec<std::result::Result<Vec<f32>, String>>> {
    let (by_patch, idx) = read_table(index, "patch_file", &source.columns, false)?;
    let in_index: Vec<bool> = idx.iter().map(Option::is_some).collect();
    let joined = match &source.join {
        Some(j) if in_index.iter().any(|x| !x) => Some(read_table(j, "seriesuid", &source.columns, true)?),
        _ => None,
    };
    let absent: Vec<&str> = source
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !in_index[*i] && joined.as_ref().is_none_or(|(_, jidx)| jidx[*i].is_none()))
        .map(|(_, c)| c.as_str())
        .collect();
    if !absent.is_empty() {
        return Err(tables::Error::BadCsv {
            path: index.to_path_buf(),
            msg: format!(
                "feature column(s) {} in neither the index{}",
                absent.join(", "),
                source.join.as_ref().map_or_else(
                    || " (no features CSV given)".to_string(),
                    |j| format!(" nor {}", j.display())
                )
            ),
        }.into());
    }
    let at = |file: &Path, e: &str| format!("{}: {e}", file.display());
    Ok(rows
        .iter()
        .map(|(patch, series)| {
            let mut v = Vec::with_capacity(source.columns.len());
            for (c, own) in in_index.iter().enumerate() {
                let file = if *own {
                    index
                } else {
                    source.join.as_deref().unwrap_or(index)
                };
                let value = if *own {
                    match by_patch.get(*patch) {
                        Some((_, vals)) => vals[c].clone().map_err(|e| at(index, &e)),
                        None => Err(at(index, &format!("patch {patch} is not listed"))),
                    }
                } else {
                    // A column the index lacks was found in the joined CSV (checked above).
                    match joined.as_ref().map(|(table, _)| table.get(*series)) {
                        Some(Some((_, vals))) => vals[c].clone().map_err(|e| at(file, &e)),
                        Some(None) => Err(at(file, &format!("series {series} is not listed"))),
                        None => Err(at(index, &format!("no column `{}`", source.columns[c]))),
                    }
                };
                match value {
                    Ok(x) if x.abs() <= f64::from(f32::MAX) => v.push(x as f32),
                    Ok(x) => return Err(at(file, &format!("{}: {x} is beyond float32", source.columns[c]))),
                    Err(e) => return Err(e),
                }
            }
            Ok(v)
        })
        .collect())
}

/// The feature values of each `(name, seriesuid)` row from a per-series CSV alone (rows
/// whose own file has no feature columns: LUNA16's candidates scored from scans). As
/// [`read`] for the columns it takes from `join`.
pub fn read_by_series(
    join: &Path,
    rows: &[(&str, &str)],
    columns: &[String],
) -> Result<Vec<std::result::Result<Vec<f32>, String>>> {
    let (table, idx) = read_table(join, "seriesuid", columns, true)?;
    let absent: Vec<&str> = columns
        .iter()
        .zip(&idx)
        .filter(|(_, i)| i.is_none())
        .map(|(c, _)| c.as_str())
        .collect();
    if !absent.is_empty() {
        return Err(tables::Error::BadCsv {
            path: join.to_path_buf(),
            msg: format!("no feature column(s) {}", absent.join(", ")),
        }.into());
    }
    let at = |e: &str| format!("{}: {e}", join.display());
    Ok(rows
        .iter()
        .map(|(_, series)| {
            let (_, vals) = table
                .get(*series)
                .ok_or_else(|| at(&format!("series {series} is not listed")))?;
            vals.iter()
                .zip(columns)
                .map(|(v, c)| match v {
                    Ok(x) if x.abs() <= f64::from(f32::MAX) => Ok(*x as f32),
                    Ok(x) => Err(at(&format!("{c}: {x} is beyond float32"))),
                    Err(e) => Err(at(e)),
                })
                .collect()
        })
        .collect())
}

/// Standardisation statistics of the features (training split).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub columns: Vec<String>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl FeatureStats {
    /// Mean and standard deviation (n − 1) of each column of `rows` (`n × F`, row-major).
    /// A column with no spread on the training split is an error: it cannot inform a model,
    /// and standardising it would divide by zero.
    pub fn fit(columns: &[String], values: &[f32]) -> std::result::Result<Self, String> {
        let f = columns.len();
        let n = values.len().checked_div(f).unwrap_or(0);
        if n < 2 {
            return Err(format!("feature statistics need two training patches or more, got {n}"));
        }
        let (mut mean, mut std) = (vec![0f32; f], vec![0f32; f]);
        for c in 0..f {
            let col = values.iter().skip(c).step_by(f).map(|&v| f64::from(v));
            let m = col.clone().sum::<f64>() / n as f64;
            let var = col.map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            let s = var.sqrt();
            let varies = s > 1e-12 * m.abs().max(1.0);
            if !varies || !s.is_finite() {
                return Err(format!(
                    "feature `{}` does not vary on the training split (all {m}): it cannot inform the model",
                    columns[c]
                ));
            }
            (mean[c], std[c]) = (m as f32, s as f32);
        }
        Ok(FeatureStats {
            columns: columns.to_vec(),
            mean,
            std,
        })
    }

    /// `features.columns`, `features.mean`, `features.std` (JSON arrays).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        // Lists of strings and finite floats always serialise.
        let nums = |v: &[f32]| serde_json::to_string(v).unwrap_or_default();
        BTreeMap::from([
            (
                "features.columns".to_string(),
                serde_json::to_string(&self.columns).unwrap_or_default(),
            ),
            ("features.mean".to_string(), nums(&self.mean)),
            ("features.std".to_string(), nums(&self.std)),
            (
                "features.meaning".to_string(),
                format!(
                    "second input `{}` [batch, {}]: raw values of these columns in this order; the graph standardises them with this mean and std (training split)",
                    crate::onnx::FEATURES_NAME,
                    self.columns.len()
                ),
            ),
        ])
    }

    /// The statistics a model's metadata holds (`None`: a model without features, or one
    /// whose metadata names only the columns, as an ensemble's does).
    pub fn from_metadata(md: &BTreeMap<String, String>) -> Result<Option<Self>> {
        let Some(columns) = Self::columns_from_metadata(md)? else {
            return Ok(None);
        };
        let nums = |k: &str| -> Result<Option<Vec<f32>>> {
            md.get(k)
                .map(|v| serde_json::from_str::<Vec<f32>>(v).map_err(|e| Error::Metadata(format!("{k}: {e}"))))
                .transpose()
        };
        match (nums("features.mean")?, nums("features.std")?) {
            (Some(mean), Some(std)) if mean.len() == columns.len() && std.len() == columns.len() => {
                Ok(Some(FeatureStats { columns, mean, std }))
            }
            (None, None) => Ok(None),
            _ => Err(Error::Metadata(
                "features.mean and features.std must list one value per feature column".into(),
            )),
        }
    }

    /// The columns a model's metadata names (`None`: a model without features).
    pub fn columns_from_metadata(md: &BTreeMap<String, String>) -> Result<Option<Vec<String>>> {
        match md.get("features.columns") {
            None => Ok(None),
            Some(v) => serde_json::from_str::<Vec<String>>(v)
                .map(Some)
                .map_err(|e| Error::Metadata(format!("features.columns is not a list of names: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn columns_are_checked() {
        assert!(check_columns(&cols(&["age", "suv_max"])).is_ok());
        for (bad, want) in [
            (vec!["label"], "identifier or the label"),
            (vec!["diam_mm"], "gives the label away"),
            (vec!["age", "age"], "listed twice"),
            (vec![""], "empty column name"),
        ] {
            let e = check_columns(&cols(&bad)).expect_err(want);
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn values_come_from_the_index_or_the_join_and_bad_ones_are_per_row() {
        let d = tempfile::tempdir().expect("tmp");
        let index = d.path().join("index.csv");
        std::fs::write(
            &index,
            "patch_file,seriesuid,suv\na.npy,S1,2.5\nb.npy,S2,\nc.npy,S3,inf\nd.npy,S4,1\n",
        )
        .expect("index");
        let join = d.path().join("clinical.csv");
        std::fs::write(&join, "seriesuid,age\nS1,61\nS2,70\nS3,55\n").expect("join");
        let rows = [("a.npy", "S1"), ("b.npy", "S2"), ("c.npy", "S3"), ("d.npy", "S4")];
        let src = FeatureSource {
            columns: cols(&["suv", "age"]),
            join: Some(join.clone()),
        };
        let v = read(&index, &rows, &src).expect("read");
        assert_eq!(v[0], Ok(vec![2.5, 61.0]));
        assert!(v[1].as_ref().expect_err("missing").contains("line 3: suv is missing"));
        assert!(v[2].as_ref().expect_err("inf").contains("line 4: suv is not finite"));
        let e = v[3].as_ref().expect_err("no series");
        assert!(
            e.contains("clinical.csv") && e.contains("series S4 is not listed"),
            "{e}"
        );
        // A column in neither file; a join CSV with a series twice.
        let src = FeatureSource {
            columns: cols(&["bmi"]),
            join: Some(join.clone()),
        };
        let e = read(&index, &rows, &src).expect_err("absent").to_string();
        // A patch listed twice in an index: its first row's values, as the index readers keep.
        let twice = d.path().join("twice.csv");
        std::fs::write(&twice, "patch_file,seriesuid,suv\na.npy,S1,2.5\na.npy,S1,9\n").expect("twice");
        let src1 = FeatureSource {
            columns: cols(&["suv"]),
            join: None,
        };
        assert_eq!(read(&twice, &[("a.npy", "S1")], &src1).expect("read")[0], Ok(vec![2.5]));
        assert!(e.contains("bmi in neither the index nor"), "{e}");
        std::fs::write(&join, "seriesuid,age\nS1,61\nS1,62\n").expect("join");
        let src = FeatureSource {
            columns: cols(&["age"]),
            join: Some(join),
        };
        let e = read(&index, &rows, &src).expect_err("twice").to_string();
        assert!(e.contains("line 3: seriesuid S1 is already on line 2"), "{e}");
    }

    #[test]
    fn statistics_are_the_sample_mean_and_std_and_a_constant_is_refused() {
        let s = FeatureStats::fit(&cols(&["a", "b"]), &[1.0, 10.0, 2.0, 20.0, 3.0, 30.0]).expect("fit");
        assert_eq!(s.mean, vec![2.0, 20.0]);
        assert_eq!(s.std, vec![1.0, 10.0]);
        let md = s.to_metadata();
        assert_eq!(md["features.columns"], r#"["a","b"]"#);
        assert_eq!(md["features.mean"], "[2.0,20.0]");
        assert_eq!(
            FeatureStats::columns_from_metadata(&md).expect("md"),
            Some(cols(&["a", "b"]))
        );
        let e = FeatureStats::fit(&cols(&["a"]), &[5.0, 5.0, 5.0]).expect_err("constant");
        assert!(e.contains("`a` does not vary"), "{e}");
    }
}
