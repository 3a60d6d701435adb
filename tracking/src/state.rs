//! `mlflow.yaml`: what a folder is to MLflow, and what of it has been sent.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::{Settings, STATE_FILE};

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

/// A tracking URI without any `user:password@` in it (for what is written down or shown).
/// Everything up to the last `@` is taken for credentials, with or without a scheme and
/// even where a password holds a raw `/`, `?` or `#`: a path with an `@` in it loses its
/// start (hidden), a password is never shown.
pub(crate) fn without_credentials(uri: &str) -> String {
    let (scheme, rest) = match uri.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, uri),
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    match scheme {
        Some(s) => format!("{s}://{rest}"),
        None => rest.to_string(),
    }
}

/// A tracking server's address. Requests use it whole ([`ServerUri::as_str`]); it is shown
/// (`Display`, `Debug`) without any `user:password@`, so no message, line or log prints a
/// password. Written to `mlflow.yaml` whole, as a plain string.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerUri(String);

impl ServerUri {
    pub fn new(uri: impl Into<String>) -> Self {
        ServerUri(uri.into())
    }

    /// The address with its credentials, for requests only.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ServerUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&without_credentials(&self.0))
    }
}

impl std::fmt::Debug for ServerUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerUri({:?})", without_credentials(&self.0))
    }
}

/// What has been sent (`mlflow.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub uri: ServerUri,
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

pub(crate) fn now_ms() -> u64 {
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
pub fn load_or_new(dir: &Path, s: &Settings) -> Result<State> {
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
pub(crate) fn afresh(st: State, uri: &ServerUri, experiment: &str) -> State {
    State {
        uri: uri.clone(),
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
pub fn read_state(dir: &Path) -> Result<State> {
    let p = dir.join(STATE_FILE);
    let text = files::read_regular_to_string(&p)?;
    Ok(yaml_serde::from_str(&text).map_err(|e| files::Error::parse(&p, "not a tracking state", e))?)
}

pub(crate) fn save(dir: &Path, st: &State) -> Result<()> {
    let p = dir.join(STATE_FILE);
    // A State always serialises (strings, numbers, maps of them); kept as an error all the same.
    let text = yaml_serde::to_string(st).map_err(|e| files::Error::parse(&p, "the tracking state as YAML", e))?;
    Ok(files::write_atomic(&p, text.as_bytes())?)
}
