//! MLflow tracking of a training run (`MLFLOW_TRACKING_URI`, MLflow's own convention, or
//! `--mlflow URI`), through MLflow's REST API; `calibrate RUN` adds its calibration to the
//! same MLflow run. Its own crate, below the trainer and `calibrate` (no libtorch, no ONNX
//! Runtime), so both send through one client.
//!
//! The run folder is the outbox: what MLflow should show is what the folder holds
//! (`config.yaml` as params, each row of `metrics.csv` as that epoch's metrics, the files a
//! finished run writes as artifacts), and `mlflow.yaml` beside them records what has been
//! sent. A background thread mirrors the folder to the server about once a second while the
//! run trains, and once more at the end (for at most [`FINAL_WAIT`]); each request has short
//! timeouts and runs off the training thread, so a tracking server that is down, slow or
//! refusing never fails or slows the run and loses nothing: what could not be sent stays in
//! the folder, is retried, is reported at the end, and `trainer mlflow-sync RUN` sends it
//! later. Sending is idempotent (the MLflow run is found again by the `nodule.run_key` tag
//! the folder's key gives it; rows and files are sent once, in order), so a resumed run
//! continues the same MLflow run. The key is in the exported model's metadata
//! (`training.mlflow_run_key`). Written here because no kept crate speaks MLflow's API; the
//! HTTP is `ureq`'s.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The tracking state file in a run folder.
pub const STATE_FILE: &str = "mlflow.yaml";
/// How long the end of a run waits for the last sends.
pub const FINAL_WAIT: Duration = Duration::from_secs(5);
/// The files of a finished run sent as artifacts (those that exist).
pub const ARTIFACTS: &[&str] = &[
    "model.onnx",
    "summary.yaml",
    "metrics.csv",
    "config.yaml",
    "split.csv",
    "parity.yaml",
    "val_scores.csv",
    "curves.png",
    "calibration.yaml",
    "calibration_report.md",
    "model.calibrated.onnx",
];

/// Where to track, and what this run is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `http://host:port` of an MLflow tracking server.
    pub uri: String,
    pub experiment: String,
    /// A sweep folder whose MLflow run is this run's parent (see [`open_sweep`]).
    pub parent: Option<PathBuf>,
    /// The MLflow run's name (default: the folder's name).
    pub name: Option<String>,
    /// Tags the MLflow run is created with, beside ours.
    pub tags: BTreeMap<String, String>,
}

impl Settings {
    /// `--mlflow URI`, else `MLFLOW_TRACKING_URI`; the experiment from
    /// `MLFLOW_EXPERIMENT_NAME` (MLflow's convention), else `nodule`. `None`: no tracking.
    pub fn from_env(flag: Option<&str>) -> Result<Option<Self>, String> {
        let Some(uri) = flag
            .map(str::to_string)
            .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok())
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        let uri = uri.trim_end_matches('/').to_string();
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(format!(
                "MLflow tracking URI {uri:?}: an http:// or https:// tracking server is needed (a file store is MLflow's \
                 own folder: point MLflow at the run folder instead)"
            ));
        }
        if uri.starts_with("https://") {
            return Err(format!(
                "MLflow tracking URI {uri}: https is not built in yet; use the server's http address (or a local proxy)"
            ));
        }
        let experiment = std::env::var("MLFLOW_EXPERIMENT_NAME")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "nodule".into());
        Ok(Some(Settings {
            uri,
            experiment,
            ..Settings::default()
        }))
    }
}

/// What a folder mirrored to MLflow is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A training run folder: its own MLflow run.
    #[default]
    Run,
    /// A sweep folder: the parent MLflow run of its fold runs.
    Sweep,
    /// An evaluation's output folder (`froc --model`): its metrics and files are added to
    /// the MLflow run that made the model, which it never creates.
    Evaluation,
}

/// A tracking URI without any `user:password@` in it (for what is written down).
pub fn without_credentials(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').map_or((rest, None), |(h, p)| (h, Some(p)));
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            match path {
                Some(p) => format!("{scheme}://{host}/{p}"),
                None => format!("{scheme}://{host}"),
            }
        }
        None => uri.to_string(),
    }
}

/// What has been sent (`mlflow.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub uri: String,
    pub experiment: String,
    /// This run's key: the `nodule.run_key` tag that finds its MLflow run again (for an
    /// evaluation, the key of the run that made the model).
    pub key: String,
    #[serde(default)]
    pub kind: Kind,
    /// A sweep folder whose MLflow run is this run's parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tags the run is created with, beside ours.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Params of a sweep (a training run's come from its `config.yaml`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Metrics of an evaluation, sent once (with `metrics_sent`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub metrics_sent: bool,
    /// Where an evaluation's files go among the run's artifacts (`froc/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_dir: Option<String>,
    /// The files of an evaluation to send.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(default)]
    pub experiment_id: Option<String>,
    #[serde(default)]
    pub run_id: Option<String>,
    /// Where the run's artifacts go (`mlflow-artifacts:/…`).
    #[serde(default)]
    pub artifact_uri: Option<String>,
    #[serde(default)]
    pub params_sent: bool,
    /// Rows of `metrics.csv` sent.
    #[serde(default)]
    pub metric_rows_sent: usize,
    /// Artifacts sent, with the sha256 of what was sent.
    #[serde(default)]
    pub artifacts_sent: BTreeMap<String, String>,
    /// `FINISHED` or `FAILED` once the run's end was sent.
    #[serde(default)]
    pub ended: Option<String>,
    /// sha256 of the `calibration.yaml` whose metrics were sent.
    #[serde(default)]
    pub calibration_sent: Option<String>,
    /// sha256 of the `sweep_summary.csv` whose metrics were sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_sent: Option<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh key: 128 random bits, hex.
fn new_key() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads the folder's state, or starts one for `s` (a new key).
pub fn load_or_new(dir: &Path, s: &Settings) -> Result<State, String> {
    let p = dir.join(STATE_FILE);
    let mut st = if p.exists() {
        let st = read_state(dir)?;
        if st.uri != s.uri || st.experiment != s.experiment {
            // Another server or experiment: the run is sent there afresh, under the same key.
            afresh(st, &s.uri, &s.experiment)
        } else {
            st
        }
    } else {
        State {
            uri: s.uri.clone(),
            experiment: s.experiment.clone(),
            key: new_key(),
            ..State::default()
        }
    };
    if s.parent.is_some() {
        st.parent.clone_from(&s.parent);
    }
    if s.name.is_some() {
        st.name.clone_from(&s.name);
    }
    st.tags.extend(s.tags.clone());
    Ok(st)
}

/// `st` to be sent to another server or experiment: what it is kept, what was sent forgotten.
fn afresh(st: State, uri: &str, experiment: &str) -> State {
    State {
        uri: uri.to_string(),
        experiment: experiment.to_string(),
        key: st.key,
        kind: st.kind,
        parent: st.parent,
        name: st.name,
        tags: st.tags,
        params: st.params,
        metrics: st.metrics,
        artifact_dir: st.artifact_dir,
        files: st.files,
        ..State::default()
    }
}

/// The folder's `mlflow.yaml`.
pub fn read_state(dir: &Path) -> Result<State, String> {
    let p = dir.join(STATE_FILE);
    let text = models::fsutil::read_regular_to_string(&p).map_err(|e| e.to_string())?;
    yaml_serde::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

fn save(dir: &Path, st: &State) -> Result<(), String> {
    let text = yaml_serde::to_string(st).map_err(|e| e.to_string())?;
    models::fsutil::write_atomic(&dir.join(STATE_FILE), text.as_bytes()).map_err(|e| e.to_string())
}

/// One MLflow REST client with short timeouts.
struct Client {
    agent: ureq::Agent,
    uri: String,
}

impl Client {
    fn new(uri: &str) -> Self {
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(2))
                .timeout_read(Duration::from_secs(15))
                .timeout_write(Duration::from_secs(30))
                .build(),
            uri: uri.to_string(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.uri);
        let req = self.agent.request(method, &url).set("Content-Type", "application/json");
        let r = match body {
            Some(b) => req.send_string(&b.to_string()),
            None => req.call(),
        };
        match r {
            Ok(resp) => {
                let text = resp.into_string().map_err(|e| format!("{url}: {e}"))?;
                if text.trim().is_empty() {
                    Ok(json!({}))
                } else {
                    serde_json::from_str(&text).map_err(|e| format!("{url}: not JSON ({e})"))
                }
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                Err(format!(
                    "{url}: HTTP {code}: {}",
                    text.chars().take(300).collect::<String>()
                ))
            }
            Err(e) => Err(format!("{url}: {e}")),
        }
    }

    fn put_file(&self, path: &str, bytes: &[u8]) -> Result<(), String> {
        let url = format!("{}{path}", self.uri);
        match self.agent.put(&url).send_bytes(bytes) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, resp)) => Err(format!(
                "{url}: HTTP {code}: {}",
                resp.into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            )),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }
}

/// `config.yaml` flattened to dotted params (`train.epochs` = `10`).
fn params_of(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let text = models::fsutil::read_regular_to_string(&dir.join("config.yaml")).map_err(|e| e.to_string())?;
    let v: yaml_serde::Value = yaml_serde::from_str(&text).map_err(|e| e.to_string())?;
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
type MetricRow = (u64, Vec<(String, f64)>);

/// The metric rows of `metrics.csv`.
fn metric_rows(dir: &Path) -> Result<Vec<MetricRow>, String> {
    let p = dir.join("metrics.csv");
    if !p.exists() {
        return Ok(Vec::new());
    }
    let text = models::fsutil::read_regular_to_string(&p).map_err(|e| e.to_string())?;
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers = r.headers().map_err(|e| e.to_string())?.clone();
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| e.to_string())?;
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

/// Sends what the folder holds and the state lacks; saves the state after each step. `Err`
/// says what could not be sent (the rest is kept for the next try). A sweep folder is sent
/// under its lock, from its `mlflow.yaml` as it is now (its fold runs, in other processes,
/// create its MLflow run when they need it): `st` gives its server and comes back updated.
pub fn sync(dir: &Path, st: &mut State, end: End) -> Result<(), String> {
    if st.kind != Kind::Sweep {
        return sync_folder(dir, st, end);
    }
    let _lock = wait_lock(dir)?;
    let mut cur = read_state(dir)?;
    if cur.kind != Kind::Sweep {
        return Err(format!("{}: not a sweep's tracking state", dir.join(STATE_FILE).display()));
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
fn wait_lock(dir: &Path) -> Result<models::fsutil::Lock, String> {
    models::fsutil::Lock::beside_waiting(
        &dir.join(STATE_FILE),
        "the sweep's MLflow state",
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())
}

fn sync_folder(dir: &Path, st: &mut State, end: End) -> Result<(), String> {
    let c = Client::new(&st.uri);
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
fn experiment_id(c: &Client, name: &str, create: bool) -> Result<String, String> {
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
        return Err(format!("MLflow has no experiment {name:?}"));
    }
    c.call(
        "POST",
        "/api/2.0/mlflow/experiments/create",
        Some(&json!({"name": name})),
    )?["experiment_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "MLflow did not return the experiment's id".to_string())
}

/// Finds the MLflow run of the folder's key, or creates it (never for an evaluation).
fn open_run(dir: &Path, st: &mut State, c: &Client) -> Result<(), String> {
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
            return Err(format!(
                "MLflow at {} has no run with nodule.run_key {} in experiment {:?} (the run that made the model)",
                st.uri, st.key, st.experiment
            ))
        }
        None => create_run(dir, st, c, &exp)?,
    };
    st.run_id = Some(
        run["run_id"]
            .as_str()
            .ok_or("MLflow did not return the run's id")?
            .to_string(),
    );
    st.artifact_uri = run["artifact_uri"].as_str().map(str::to_string);
    st.experiment_id = Some(exp);
    Ok(())
}

/// Creates the folder's MLflow run: its key, folder, tool version, host and the state's
/// tags; a fold run of a sweep under its sweep's run (`mlflow.parentRunId`).
fn create_run(dir: &Path, st: &State, c: &Client, exp: &str) -> Result<Value, String> {
    let name = st.name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned())
    });
    // fsutil-exempt: the kernel's host name, not a user path.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let source = if st.kind == Kind::Sweep { "trainer sweep" } else { "trainer train" };
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
fn parent_run(parent: &Path, child: &State) -> Result<String, String> {
    let mut pst = State {
        uri: child.uri.clone(),
        experiment: child.experiment.clone(),
        kind: Kind::Sweep,
        ..State::default()
    };
    sync(parent, &mut pst, End::Running).map_err(|e| format!("the sweep's run ({}): {e}", parent.display()))?;
    pst.run_id
        .ok_or_else(|| format!("{}: the sweep's MLflow run has no id", parent.display()))
}

/// A run's params, once: a training run's `config.yaml`, a sweep's own; an evaluation
/// sends none (the run's params are the training's, and MLflow never changes a param).
fn send_params(dir: &Path, st: &mut State, c: &Client, run_id: &str) -> Result<(), String> {
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
fn send_metric_rows(dir: &Path, st: &mut State, c: &Client, run_id: &str) -> Result<(), String> {
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
fn send_end_metrics(dir: &Path, st: &mut State, c: &Client, run_id: &str) -> Result<(), String> {
    let (metrics, digest) = match st.kind {
        Kind::Run => return Ok(()),
        Kind::Evaluation if st.metrics_sent => return Ok(()),
        Kind::Evaluation => (st.metrics.clone(), None),
        Kind::Sweep => {
            let p = dir.join("sweep_summary.csv");
            if !p.is_file() {
                return Ok(());
            }
            let bytes = models::fsutil::read_regular(&p).map_err(|e| e.to_string())?;
            let sha = models::fsutil::sha256_bytes(&bytes);
            if st.summary_sent.as_deref() == Some(sha.as_str()) {
                return Ok(());
            }
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

/// `cell_NN.<column>` of every configuration's row of `sweep_summary.csv`.
fn sweep_metrics(p: &Path, bytes: &[u8]) -> Result<BTreeMap<String, f64>, String> {
    let mut r = csv::Reader::from_reader(bytes);
    let h = r.headers().map_err(|e| format!("{}: {e}", p.display()))?.clone();
    let index = h.iter().position(|x| x == "index").ok_or(format!("{}: no index column", p.display()))?;
    let mut out = BTreeMap::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| format!("{}: {e}", p.display()))?;
        let i: usize = rec
            .get(index)
            .and_then(|v| v.parse().ok())
            .ok_or(format!("{}: a row without its index", p.display()))?;
        for (col, v) in h.iter().zip(rec.iter()) {
            if let (true, Ok(x)) = (SWEEP_METRICS.contains(&col), v.parse::<f64>()) {
                out.insert(format!("cell_{i:02}.{col}"), x);
            }
        }
    }
    Ok(out)
}

/// (file in the folder, artifact path) of what a finished folder sends.
fn artifacts_of(dir: &Path, st: &State) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = match st.kind {
        Kind::Run => ARTIFACTS.iter().map(|n| ((*n).to_string(), (*n).to_string())).collect(),
        Kind::Sweep => SWEEP_ARTIFACTS.iter().map(|n| ((*n).to_string(), (*n).to_string())).collect(),
        Kind::Evaluation => {
            let prefix = st.artifact_dir.as_deref().unwrap_or("evaluation");
            st.files.iter().map(|n| (n.clone(), format!("{prefix}/{n}"))).collect()
        }
    };
    if st.kind == Kind::Sweep {
        // fsutil-exempt: listing the sweep's own folder for its cell_NN folders.
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

/// One artifact, unless the same bytes were sent under that path before.
fn send_artifact(dir: &Path, st: &mut State, c: &Client, run_id: &str, local: &str, remote: &str) -> Result<(), String> {
    let bytes = models::fsutil::read_regular(&dir.join(local)).map_err(|e| e.to_string())?;
    let sha = models::fsutil::sha256_bytes(&bytes);
    if st.artifacts_sent.get(remote) == Some(&sha) {
        return Ok(());
    }
    let base = st
        .artifact_uri
        .as_deref()
        .and_then(|u| u.strip_prefix("mlflow-artifacts:"))
        .ok_or("the run's artifacts are not served by this MLflow server (start it with --serve-artifacts)")?;
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

/// The calibration's metrics (`calibration.yaml`, of the method it chose: AUROC, Brier, NLL,
/// ECE, slope…) as `calibration.*` metrics and its method as a tag, once per calibration.
fn send_calibration(dir: &Path, st: &mut State, c: &Client, run_id: &str) -> Result<(), String> {
    let p = dir.join("calibration.yaml");
    if !p.is_file() {
        return Ok(());
    }
    let bytes = models::fsutil::read_regular(&p).map_err(|e| e.to_string())?;
    let sha = models::fsutil::sha256_bytes(&bytes);
    if st.calibration_sent.as_deref() == Some(sha.as_str()) {
        return Ok(());
    }
    let v: yaml_serde::Value = yaml_serde::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
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
    let mut st = read_state(dir).ok()?;
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
pub fn open_sweep(dir: &Path, s: &Settings, params: BTreeMap<String, String>) -> Result<(), String> {
    let _lock = wait_lock(dir)?;
    let mut st = load_or_new(dir, s)?;
    if dir.join(STATE_FILE).exists() && st.kind != Kind::Sweep {
        return Err(format!("{}: tracks a run, not a sweep", dir.join(STATE_FILE).display()));
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

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A run's tracker: mirrors the folder in the background while the run trains.
pub struct Tracker {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").field("dir", &self.dir).finish()
    }
}

impl Tracker {
    /// Starts mirroring `dir` (a run folder that exists) to the server; its key is saved at
    /// once so the exported model can name it.
    pub fn start(dir: &Path, s: &Settings) -> Result<Self, String> {
        let st = load_or_new(dir, s)?;
        save(dir, &st)?;
        let state = Arc::new(Mutex::new(st));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, sta, sto) = (dir.to_path_buf(), state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("mlflow".into())
            .spawn(move || {
                let mut wait = Duration::from_secs(1);
                while !sto.load(Ordering::SeqCst) {
                    let r = {
                        let mut st = sta.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        sync(&d, &mut st, End::Running)
                    };
                    // Back off while the server is away (up to 10 s), at once again when it is back.
                    wait = if r.is_ok() {
                        Duration::from_secs(1)
                    } else {
                        (wait * 2).min(Duration::from_secs(10))
                    };
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !sto.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .map_err(|e| format!("cannot start the MLflow thread: {e}"))?;
        Ok(Tracker {
            dir: dir.to_path_buf(),
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// The key that finds this run's MLflow run (`nodule.run_key`).
    pub fn key(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .key
            .clone()
    }

    /// Ends the background mirroring and sends the rest, retrying for at most
    /// [`FINAL_WAIT`]; returns one line saying what was sent, or what was kept and why.
    pub fn finish(mut self, end: End) -> String {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let deadline = Instant::now() + FINAL_WAIT;
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let last = loop {
            match sync(&self.dir, &mut st, end) {
                Ok(()) => {
                    return format!(
                        "MLflow: run {} in experiment {:?} at {} ({} epochs of metrics, {} artifacts)",
                        st.run_id.as_deref().unwrap_or("?"),
                        st.experiment,
                        st.uri,
                        st.metric_rows_sent,
                        st.artifacts_sent.len()
                    )
                }
                Err(e) if Instant::now() >= deadline => break e,
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        };
        format!(
            "MLflow: not everything reached {} ({}); it is kept in {}: `trainer mlflow-sync {}` sends it",
            st.uri,
            last,
            self.dir.display(),
            self.dir.display()
        )
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

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
        assert_eq!(urlencode("nodule exp/1"), "nodule%20exp%2F1");
    }

    #[test]
    fn only_http_servers_are_taken() {
        assert!(Settings::from_env(Some("file:///tmp/mlruns")).is_err());
        assert!(Settings::from_env(Some("https://mlflow.example")).is_err());
        let s = Settings::from_env(Some("http://127.0.0.1:5000/")).unwrap().unwrap();
        assert_eq!(s.uri, "http://127.0.0.1:5000");
        assert_eq!(without_credentials("http://u:p@h:5000/x"), "http://h:5000/x");
        assert_eq!(without_credentials("http://h:5000"), "http://h:5000");
    }
}
