//! What the steps after training add to a tracked run: the calibration, a sweep's
//! summary, an evaluation (`froc --model`); and a sweep's parent run, opened before its tasks.
use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::state::{load_or_new, read_state, save, Kind, State};
use crate::sync::{sync, wait_lock, End};
use crate::{Settings, STATE_FILE};

/// After `calibrate RUN`: sends the calibration of a run that is tracked (its folder holds
/// `mlflow.yaml`) to its MLflow run; `None` for a run that is not. Never an error: the line
/// says what was sent, or that `trainer mlflow-sync RUN` sends it later.
pub fn after_calibration(dir: &Path) -> Option<String> {
    send_tracked(dir, "calibration added to run")
}

/// After a sweep's summary is written: sends it to the sweep's MLflow run (metrics per
/// configuration, the summary files) and ends that run; `None` for a sweep not tracked.
pub fn after_collect(dir: &Path) -> Option<String> {
    send_tracked(dir, "sweep summary added to parent run")
}

fn send_tracked(dir: &Path, what: &str) -> Option<String> {
    if !dir.join(STATE_FILE).is_file() {
        return None;
    }
    let mut st = match read_state(dir) {
        Ok(st) => st,
        // A state file that cannot be read is said, not taken for an untracked run.
        Err(e) => return Some(format!("MLflow: nothing sent ({e})")),
    };
    Some(match sync(dir, &mut st, End::Finished) {
        Ok(()) => format!("MLflow: {what} {} at {}", st.run_id.as_deref().unwrap_or("?"), st.uri),
        Err(e) => format!(
            "MLflow: not everything reached {} ({e}); `trainer mlflow-sync {}` sends it",
            st.uri,
            dir.display()
        ),
    })
}

/// Starts (or takes up again) a sweep's tracking in its folder, without the network: its
/// MLflow run is created by the first fold run that is sent, and its fold runs are created
/// under it. `params` are the sweep's (its configurations, folds, base config).
pub fn open_sweep(dir: &Path, s: &Settings, params: BTreeMap<String, String>) -> Result<()> {
    let _lock = wait_lock(dir)?;
    let mut st = load_or_new(dir, s)?;
    if dir.join(STATE_FILE).exists() && st.kind != Kind::Sweep {
        return Err(Error::Folder {
            path: dir.join(STATE_FILE),
            msg: "tracks a run, not a sweep".into(),
        });
    }
    st.kind = Kind::Sweep;
    if st.params != params {
        st.params = params;
        st.params_sent = false;
    }
    save(dir, &st)
}

/// What an evaluation adds to the MLflow run that made its model.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The model's `training.mlflow_run_key`.
    pub key: String,
    /// Its metrics, by MLflow name (`froc.cpm`).
    pub metrics: BTreeMap<String, f64>,
    /// Where its files go among the run's artifacts (`froc`).
    pub artifact_dir: String,
    /// Its files, in its output folder.
    pub files: Vec<String>,
}

/// Adds an evaluation written in `out` to the MLflow run that made the model (found by
/// its key on `s`'s server); `out/mlflow.yaml` records what was sent (`trainer mlflow-sync
/// OUT` sends the rest). Never an error: the line says what was sent or kept.
pub fn add_evaluation(out: &Path, s: &Settings, e: Evaluation) -> String {
    let mut st = State {
        uri: s.uri.clone(),
        experiment: s.experiment.clone(),
        key: e.key,
        kind: Kind::Evaluation,
        metrics: e.metrics,
        artifact_dir: Some(e.artifact_dir),
        files: e.files,
        ..State::default()
    };
    if let Err(e) = save(out, &st) {
        return format!("MLflow: not sent ({e})");
    }
    match sync(out, &mut st, End::Finished) {
        Ok(()) => format!(
            "MLflow: {} metrics and {} files added to run {} at {}",
            st.metrics.len(),
            st.artifacts_sent.len(),
            st.run_id.as_deref().unwrap_or("?"),
            st.uri
        ),
        Err(err) => format!(
            "MLflow: not everything reached {} ({err}); it is kept in {}: `trainer mlflow-sync {}` sends it",
            st.uri,
            out.display(),
            out.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracked run whose `mlflow.yaml` is damaged says so after calibrating, instead of
    /// passing for a run that is not tracked.
    #[test]
    fn a_damaged_state_file_is_said_not_taken_for_no_tracking() {
        let d = tempfile::tempdir().expect("tmp");
        assert_eq!(
            after_calibration(d.path()),
            None,
            "a folder without mlflow.yaml is not tracked"
        );
        std::fs::write(d.path().join(STATE_FILE), "uri: [unclosed\n").expect("write");
        let line = after_calibration(d.path()).expect("a line");
        assert!(line.starts_with("MLflow: nothing sent ("), "{line}");
        assert!(line.contains(STATE_FILE), "{line}");
    }
}
