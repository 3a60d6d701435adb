//! Sending a folder to MLflow: what it holds and its state lacks, step by step, the state
//! saved after each (so a sync cut short resumes where it stopped).
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{urlencode, Client};
use crate::error::{Error, Result};
use crate::folder::{artifacts_of, metric_rows, params_of, sweep_metrics};
use crate::state::{afresh, now_ms, read_state, save, Kind, State};
use crate::STATE_FILE;

/// What the end of a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Still training: send what there is.
    Running,
    Finished,
    Failed,
}

impl End {
    fn status(self) -> Option<&'static str> {
        match self {
            End::Running => None,
            End::Finished => Some("FINISHED"),
            End::Failed => Some("FAILED"),
        }
    }
}

/// Sends what the folder holds and the state lacks; saves the state after each step. `Err`
/// says what could not be sent (the rest is kept for the next try). A sweep folder is sent
/// under its lock, from its `mlflow.yaml` as it is now (its fold runs, in other processes,
/// create its MLflow run when they need it): `st` gives its server and comes back updated.
pub fn sync(dir: &Path, st: &mut State, end: End) -> Result<()> {
    if st.kind != Kind::Sweep {
        return sync_folder(dir, st, end);
    }
    let _lock = wait_lock(dir)?;
    let mut cur = read_state(dir)?;
    if cur.kind != Kind::Sweep {
        return Err(Error::Folder {
            path: dir.join(STATE_FILE),
            msg: "not a sweep's tracking state".into(),
        });
    }
    if cur.uri != st.uri || cur.experiment != st.experiment {
        cur = afresh(cur, &st.uri, &st.experiment);
    }
    let r = sync_folder(dir, &mut cur, end);
    *st = cur;
    r
}

/// The lock of a sweep folder's tracking state, waited for (fold runs of one sweep in other
/// processes take it for a moment each).
pub(crate) fn wait_lock(dir: &Path) -> Result<files::Lock> {
    files::Lock::beside_waiting(
        &dir.join(STATE_FILE),
        "the sweep's MLflow state",
        Duration::from_secs(30),
    )
    .map_err(Error::from)
}

fn sync_folder(dir: &Path, st: &mut State, end: End) -> Result<()> {
    let c = Client::new(st.uri.as_str());
    if st.run_id.is_none() {
        open_run(dir, st, &c)?;
        save(dir, st)?;
    }
    let run_id = st.run_id.clone().unwrap_or_default();
    send_params(dir, st, &c, &run_id)?;
    if st.kind == Kind::Run {
        send_metric_rows(dir, st, &c, &run_id)?;
    }
    let Some(status) = end.status() else {
        return Ok(());
    };
    if status == "FINISHED" {
        send_end_metrics(dir, st, &c, &run_id)?;
        for (local, remote) in artifacts_of(dir, st) {
            send_artifact(dir, st, &c, &run_id, &local, &remote)?;
        }
    }
    if st.kind == Kind::Run {
        send_calibration(dir, st, &c, &run_id)?;
    }
    // An evaluation adds to a run it did not make: that run's status is not its to set.
    if st.kind != Kind::Evaluation && st.ended.as_deref() != Some(status) {
        c.call(
            "POST",
            "/api/2.0/mlflow/runs/update",
            Some(&json!({"run_id": run_id, "status": status, "end_time": now_ms()})),
        )?;
        st.ended = Some(status.to_string());
        save(dir, st)?;
    }
    Ok(())
}

/// The experiment's id (created if it does not exist and `create`).
fn experiment_id(c: &Client, name: &str, create: bool) -> Result<String> {
    let path = format!(
        "/api/2.0/mlflow/experiments/get-by-name?experiment_name={}",
        urlencode(name)
    );
    if let Some(e) = c
        .call("GET", &path, None)
        .ok()
        .and_then(|v| v["experiment"]["experiment_id"].as_str().map(str::to_string))
    {
        return Ok(e);
    }
    if !create {
        // Debug quoting: a name from the environment is shown escaped.
        return Err(Error::Server(format!("MLflow has no experiment {name:?}")));
    }
    c.call(
        "POST",
        "/api/2.0/mlflow/experiments/create",
        Some(&json!({"name": name})),
    )?["experiment_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Server("MLflow did not return the experiment's id".into()))
}

/// Finds the MLflow run of the folder's key, or creates it (never for an evaluation).
fn open_run(dir: &Path, st: &mut State, c: &Client) -> Result<()> {
    let exp = experiment_id(c, &st.experiment, st.kind != Kind::Evaluation)?;
    // The run this key made before (a sync that ended before its state was saved).
    let found = c.call(
        "POST",
        "/api/2.0/mlflow/runs/search",
        Some(&json!({"experiment_ids": [exp], "filter": format!("tags.`nodule.run_key` = '{}'", st.key), "max_results": 1})),
    )?;
    let run = match found["runs"].as_array().and_then(|r| r.first()) {
        Some(r) => r["info"].clone(),
        None if st.kind == Kind::Evaluation => {
            return Err(Error::Server(format!(
                "MLflow at {} has no run with nodule.run_key {} in experiment {:?} (the run that made the model)",
                st.uri, st.key, st.experiment
            )));
        }
        None => create_run(dir, st, c, &exp)?,
    };
    st.run_id = Some(
        run["run_id"]
            .as_str()
            .ok_or_else(|| Error::Server("MLflow did not return the run's id".into()))?
            .to_string(),
    );
    st.artifact_uri = run["artifact_uri"].as_str().map(str::to_string);
    st.experiment_id = Some(exp);
    Ok(())
}

/// Creates the folder's MLflow run: its key, folder, tool version, host and the state's
/// tags; a fold run of a sweep under its sweep's run (`mlflow.parentRunId`).
fn create_run(dir: &Path, st: &State, c: &Client, exp: &str) -> Result<Value> {
    let name = st.name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned())
    });
    // files-exempt: the kernel's host name, not a user path.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let source = if st.kind == Kind::Sweep {
        "trainer sweep"
    } else {
        "trainer train"
    };
    let mut tags: BTreeMap<String, String> = [
        ("nodule.run_key", st.key.clone()),
        ("nodule.run_folder", dir.display().to_string()),
        ("nodule.tool_version", env!("CARGO_PKG_VERSION").to_string()),
        ("mlflow.source.name", source.to_string()),
        ("host", host.trim().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    tags.extend(st.tags.clone());
    if let Some(p) = &st.parent {
        tags.insert("mlflow.parentRunId".into(), parent_run(p, st)?);
    }
    let tags: Vec<Value> = tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
    Ok(c.call(
        "POST",
        "/api/2.0/mlflow/runs/create",
        Some(&json!({"experiment_id": exp, "run_name": name, "start_time": now_ms(), "tags": tags})),
    )?["run"]["info"]
        .clone())
}

/// The MLflow run id of the sweep folder `parent` (its run created now if need be, on the
/// child's server and experiment).
fn parent_run(parent: &Path, child: &State) -> Result<String> {
    let mut pst = State {
        uri: child.uri.clone(),
        experiment: child.experiment.clone(),
        kind: Kind::Sweep,
        ..State::default()
    };
    sync(parent, &mut pst, End::Running).map_err(|e| Error::Sweep {
        path: parent.to_path_buf(),
        source: Box::new(e),
    })?;
    pst.run_id.ok_or_else(|| Error::Folder {
        path: parent.to_path_buf(),
        msg: "the sweep's MLflow run has no id".into(),
    })
}

/// A run's params, once: a training run's `config.yaml`, a sweep's own; an evaluation
/// sends none (the run's params are the training's, and MLflow never changes a param).
fn send_params(dir: &Path, st: &mut State, c: &Client, run_id: &str) -> Result<()> {
    if st.params_sent {
        return Ok(());
    }
    let params = match st.kind {
        Kind::Run if dir.join("config.yaml").exists() => params_of(dir)?,
        Kind::Run | Kind::Evaluation => return Ok(()),
        Kind::Sweep => st.params.clone().into_iter().collect(),
    };
    for chunk in params.chunks(100) {
        let params: Vec<Value> = chunk.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        c.call(
            "POST",
            "/api/2.0/mlflow/runs/log-batch",
            Some(&json!({"run_id": run_id, "params": params})),
        )?;
    }
    st.params_sent = true;
    save(dir, st)
}

/// Each new row of a training run's `metrics.csv`, as that epoch's step.
fn send_metric_rows(dir: &Path, st: &mut State, c: &Client, run_id: &str) -> Result<()> {
    let rows = metric_rows(dir)?;
    while st.metric_rows_sent < rows.len() {
        let (epoch, values) = &rows[st.metric_rows_sent];
        let t = now_ms();
        let metrics: Vec<Value> = values
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v, "timestamp": t, "step": epoch}))
            .collect();
        c.call(
            "POST",
            "/api/2.0/mlflow/runs/log-batch",
            Some(&json!({"run_id": run_id, "metrics": metrics})),
        )?;
        st.metric_rows_sent += 1;
        save(dir, st)?;
    }
    Ok(())
}

/// The metrics a finished sweep or evaluation has: a sweep's summary (`cell_NN.<column>`,
/// sent again when the summary changes), an evaluation's own (once).
fn send_end_metrics(dir: &Path, st: &mut State, c: &Client, run_id: &str) -> Result<()> {
    let (metrics, digest) = match st.kind {
        Kind::Run => return Ok(()),
        Kind::Evaluation if st.metrics_sent => return Ok(()),
        Kind::Evaluation => (st.metrics.clone(), None),
        Kind::Sweep => {
            let p = dir.join("sweep_summary.csv");
            let Some((bytes, sha)) = unsent(&p, st.summary_sent.as_deref())? else {
                return Ok(());
            };
            (sweep_metrics(&p, &bytes)?, Some(sha))
        }
    };
    let t = now_ms();
    let list: Vec<Value> = metrics
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| json!({"key": k, "value": v, "timestamp": t, "step": 0}))
        .collect();
    for chunk in list.chunks(1000) {
        c.call(
            "POST",
            "/api/2.0/mlflow/runs/log-batch",
            Some(&json!({"run_id": run_id, "metrics": chunk})),
        )?;
    }
    st.metrics_sent = true;
    st.summary_sent = digest;
    save(dir, st)
}

/// One artifact, unless the same bytes were sent under that path before.
fn send_artifact(dir: &Path, st: &mut State, c: &Client, run_id: &str, local: &str, remote: &str) -> Result<()> {
    let bytes = files::read_regular(&dir.join(local))?;
    let sha = files::sha256_bytes(&bytes);
    if st.artifacts_sent.get(remote) == Some(&sha) {
        return Ok(());
    }
    let base = st
        .artifact_uri
        .as_deref()
        .and_then(|u| u.strip_prefix("mlflow-artifacts:"))
        .ok_or_else(|| {
            Error::Server(
                "the run's artifacts are not served by this MLflow server (start it with --serve-artifacts)".into(),
            )
        })?;
    c.put_file(
        &format!(
            "/api/2.0/mlflow-artifacts/artifacts/{}/{remote}",
            base.trim_start_matches('/')
        ),
        &bytes,
    )?;
    if st.kind == Kind::Run && remote == "model.onnx" {
        c.call(
            "POST",
            "/api/2.0/mlflow/runs/set-tag",
            Some(&json!({"run_id": run_id, "key": "nodule.model_sha256", "value": sha})),
        )?;
    }
    st.artifacts_sent.insert(remote.to_string(), sha);
    save(dir, st)
}

/// A file's bytes and sha256 when it exists and is not the one sent before (`sent`: the
/// sha256 of what was).
fn unsent(p: &Path, sent: Option<&str>) -> Result<Option<(Vec<u8>, String)>> {
    if !p.is_file() {
        return Ok(None);
    }
    let bytes = files::read_regular(p)?;
    let sha = files::sha256_bytes(&bytes);
    Ok((sent != Some(sha.as_str())).then_some((bytes, sha)))
}

/// The calibration's metrics (`calibration.yaml`, of the method it chose: AUROC, Brier, NLL,
/// ECE, slope…) as `calibration.*` metrics and its method as a tag, once per calibration.
fn send_calibration(dir: &Path, st: &mut State, c: &Client, run_id: &str) -> Result<()> {
    let p = dir.join("calibration.yaml");
    let Some((bytes, sha)) = unsent(&p, st.calibration_sent.as_deref())? else {
        return Ok(());
    };
    let v: yaml_serde::Value = yaml_serde::from_slice(&bytes).map_err(|e| files::Error::parse(&p, "not YAML", e))?;
    let method = v["method"].as_str().unwrap_or("none").to_string();
    let t = now_ms();
    let mut metrics = Vec::new();
    if let Some(m) = v["metrics"][method.as_str()].as_mapping() {
        for (k, x) in m {
            if let (Some(k), Some(x)) = (k.as_str(), x.as_f64()) {
                if x.is_finite() {
                    metrics.push(json!({"key": format!("calibration.{k}"), "value": x, "timestamp": t, "step": 0}));
                }
            }
        }
    }
    c.call(
        "POST",
        "/api/2.0/mlflow/runs/log-batch",
        Some(&json!({"run_id": run_id, "metrics": metrics, "tags": [{"key": "nodule.calibration_method", "value": method}]})),
    )?;
    st.calibration_sent = Some(sha);
    save(dir, st)
}
