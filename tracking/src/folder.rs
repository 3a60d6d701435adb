//! What a tracked folder holds for MLflow: a training run's params (its `config.yaml`) and
//! metric rows (its `metrics.csv`), a sweep's summary metrics, and the files each kind sends.
use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::state::{Kind, State};
use crate::ARTIFACTS;

/// `config.yaml` flattened to dotted params (`train.epochs` = `10`).
pub(crate) fn params_of(dir: &Path) -> Result<Vec<(String, String)>> {
    let p = dir.join("config.yaml");
    let text = files::read_regular_to_string(&p)?;
    let v: yaml_serde::Value = yaml_serde::from_str(&text).map_err(|e| files::Error::parse(&p, "not YAML", e))?;
    Ok(flatten(&v))
}

/// A YAML value flattened to dotted params, MLflow's limits kept (values cut at 6,000
/// characters); a list is one value.
pub fn flatten(v: &yaml_serde::Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &yaml_serde::Value, out: &mut Vec<(String, String)>) {
        match v {
            yaml_serde::Value::Mapping(m) => {
                for (k, v) in m {
                    let k = k.as_str().map_or_else(
                        || yaml_serde::to_string(k).unwrap_or_default().trim().to_string(),
                        str::to_string,
                    );
                    let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            yaml_serde::Value::Null => out.push((prefix.to_string(), "null".into())),
            other => {
                let text = match other {
                    yaml_serde::Value::String(s) => s.clone(),
                    o => yaml_serde::to_string(o).unwrap_or_default().trim().to_string(),
                };
                out.push((prefix.to_string(), text.chars().take(6000).collect()));
            }
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

/// One row of `metrics.csv`: its epoch, and each metric's name and value.
pub(crate) type MetricRow = (u64, Vec<(String, f64)>);

/// The metric rows of `metrics.csv`.
pub(crate) fn metric_rows(dir: &Path) -> Result<Vec<MetricRow>> {
    let p = dir.join("metrics.csv");
    if !p.exists() {
        return Ok(Vec::new());
    }
    let text = files::read_regular_to_string(&p)?;
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers = r
        .headers()
        .map_err(|e| files::Error::parse(&p, "its header", e))?
        .clone();
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| files::Error::parse(&p, "a row", e))?;
        let mut epoch = 0u64;
        let mut values = Vec::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            if h == "epoch" {
                epoch = v.parse().unwrap_or(0);
            } else if h != "best" {
                if let Ok(x) = v.parse::<f64>() {
                    if x.is_finite() {
                        values.push((h.to_string(), x));
                    }
                }
            }
        }
        out.push((epoch, values));
    }
    Ok(out)
}

/// The files of a sweep's summary sent as the parent run's artifacts (with every
/// configuration's `cell_NN/oof_scores.csv`).
pub const SWEEP_ARTIFACTS: &[&str] = &["sweep_summary.csv", "sweep_summary.md", "forest.png", "sweep_plan.yaml"];

/// The columns of `sweep_summary.csv` sent as the parent run's metrics, per configuration.
const SWEEP_METRICS: &[&str] = &[
    "mean_val_auroc",
    "pooled_oof_auroc",
    "pooled_oof_auroc_lo",
    "pooled_oof_auroc_hi",
    "diff_vs_base",
    "diff_vs_base_p",
];

/// `cell_NN.<column>` of every configuration's row of `sweep_summary.csv`.
pub(crate) fn sweep_metrics(p: &Path, bytes: &[u8]) -> Result<BTreeMap<String, f64>> {
    let mut r = csv::Reader::from_reader(bytes);
    let h = r
        .headers()
        .map_err(|e| files::Error::parse(p, "its header", e))?
        .clone();
    let index = h
        .iter()
        .position(|x| x == "index")
        .ok_or_else(|| Error::from(files::Error::bad_input(p, "no index column")))?;
    let mut out = BTreeMap::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| files::Error::parse(p, "a row", e))?;
        let i: usize = rec
            .get(index)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::from(files::Error::bad_input(p, "a row without its index")))?;
        for (col, v) in h.iter().zip(rec.iter()) {
            if let (true, Ok(x)) = (SWEEP_METRICS.contains(&col), v.parse::<f64>()) {
                out.insert(format!("cell_{i:02}.{col}"), x);
            }
        }
    }
    Ok(out)
}

/// (file in the folder, artifact path) of what a finished folder sends.
pub(crate) fn artifacts_of(dir: &Path, st: &State) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = match st.kind {
        Kind::Run => ARTIFACTS.iter().map(|n| ((*n).to_string(), (*n).to_string())).collect(),
        Kind::Sweep => SWEEP_ARTIFACTS
            .iter()
            .map(|n| ((*n).to_string(), (*n).to_string()))
            .collect(),
        Kind::Evaluation => {
            let prefix = st.artifact_dir.as_deref().unwrap_or("evaluation");
            st.files.iter().map(|n| (n.clone(), format!("{prefix}/{n}"))).collect()
        }
    };
    if st.kind == Kind::Sweep {
        // files-exempt: listing the sweep's own folder for its cell_NN folders.
        let mut cells: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("cell_"))
                    .collect()
            })
            .unwrap_or_default();
        cells.sort();
        out.extend(cells.into_iter().map(|c| {
            let f = format!("{c}/oof_scores.csv");
            (f.clone(), f)
        }));
    }
    out.retain(|(local, _)| dir.join(local).is_file());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    /// A config that is not YAML, or a metrics file that is not CSV, is the file's parse
    /// error naming it, with the parser's error as the source.
    #[test]
    fn a_folder_file_that_does_not_parse_is_named_with_its_cause() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.yaml"), "data: [unclosed\n").unwrap();
        let e = params_of(d.path()).unwrap_err();
        assert!(
            matches!(&e, Error::Files(files::Error::Parse { path, .. }) if path.ends_with("config.yaml")),
            "{e:?}"
        );
        assert!(std::error::Error::source(&e).is_some());
        std::fs::write(d.path().join("metrics.csv"), "epoch,lr\n1,0.1,extra\n").unwrap();
        let e = metric_rows(d.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}: a row: ", d.path().join("metrics.csv").display())),
            "{e}"
        );
        let e = sweep_metrics(Path::new("sweep_summary.csv"), b"a,b\n1,2\n").unwrap_err();
        assert_eq!(e.to_string(), "sweep_summary.csv: no index column");
    }

    #[test]
    fn config_flattens_to_dotted_params_and_metrics_rows_to_steps() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("config.yaml"),
            "data: /p\nmodel:\n  arch: baseline_cnn\n  width: 16\n  features: []\ntrain:\n  lr: 0.001\n  init: null\n",
        )
        .unwrap();
        let p: BTreeMap<String, String> = params_of(d.path()).unwrap().into_iter().collect();
        assert_eq!(p["data"], "/p");
        assert_eq!(p["model.arch"], "baseline_cnn");
        assert_eq!(p["model.width"], "16");
        assert_eq!(p["model.features"], "[]");
        assert_eq!(p["train.lr"], "0.001");
        assert_eq!(p["train.init"], "null");
        std::fs::write(
            d.path().join("metrics.csv"),
            "epoch,lr,train_loss,val_auroc,best\n1,0.001,0.9,0.5,true\n2,0.0005,0.7,NaN,false\n",
        )
        .unwrap();
        let rows = metric_rows(d.path()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            (
                1,
                vec![
                    ("lr".into(), 0.001),
                    ("train_loss".into(), 0.9),
                    ("val_auroc".into(), 0.5)
                ]
            )
        );
        assert_eq!(rows[1].1.len(), 2, "a NaN is not sent");
    }
}
