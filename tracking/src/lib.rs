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
use std::path::PathBuf;
use std::time::Duration;

mod add;
mod client;
mod error;
mod folder;
mod state;
mod sync;
mod tracker;

pub use add::{add_evaluation, after_calibration, after_collect, open_sweep, Evaluation};
pub use error::{Error, Result};
pub use folder::{flatten, SWEEP_ARTIFACTS};
use state::without_credentials;
pub use state::{load_or_new, read_state, Kind, ServerUri, State};
pub use sync::{sync, End};
pub use tracker::Tracker;

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
    pub uri: ServerUri,
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
    pub fn from_env(flag: Option<&str>) -> Result<Option<Self>> {
        let Some(uri) = flag
            .map(str::to_string)
            .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok())
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        let uri = uri.trim_end_matches('/').to_string();
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(Error::Uri {
                uri: without_credentials(&uri),
                why: "an http:// or https:// tracking server is needed (a file store is MLflow's own folder: point \
                      MLflow at the run folder instead)",
            });
        }
        if uri.starts_with("https://") {
            return Err(Error::Uri {
                uri: without_credentials(&uri),
                why: "https is not built in yet; use the server's http address (or a local proxy)",
            });
        }
        let experiment = std::env::var("MLFLOW_EXPERIMENT_NAME")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "nodule".into());
        Ok(Some(Settings {
            uri: ServerUri::new(uri),
            experiment,
            ..Settings::default()
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    /// A server's address is shown without its password everywhere (Display, Debug of the
    /// settings and state), used whole for requests, and kept whole in `mlflow.yaml`.
    #[test]
    fn a_server_address_never_shows_its_password() {
        let s = Settings::from_env(Some("http://user:secret@127.0.0.1:5000")).unwrap().unwrap();
        assert_eq!(s.uri.as_str(), "http://user:secret@127.0.0.1:5000");
        assert_eq!(s.uri.to_string(), "http://127.0.0.1:5000");
        assert!(!format!("{s:?}").contains("secret"), "{s:?}");
        let st = State {
            uri: s.uri.clone(),
            ..State::default()
        };
        assert!(!format!("{st:?}").contains("secret"));
        let yaml = yaml_serde::to_string(&st).unwrap();
        assert!(yaml.contains("uri: http://user:secret@127.0.0.1:5000"), "{yaml}");
        let back: State = yaml_serde::from_str(&yaml).unwrap();
        assert_eq!(back.uri, s.uri);
    }

    #[test]
    fn only_http_servers_are_taken() {
        assert!(Settings::from_env(Some("file:///tmp/mlruns")).is_err());
        assert!(Settings::from_env(Some("https://mlflow.example")).is_err());
        let e = Settings::from_env(Some("https://user:secret@mlflow.example")).unwrap_err();
        assert!(
            matches!(&e, Error::Uri { uri, .. } if uri == "https://mlflow.example"),
            "{e:?}"
        );
        let s = Settings::from_env(Some("http://127.0.0.1:5000/")).unwrap().unwrap();
        assert_eq!(s.uri.as_str(), "http://127.0.0.1:5000");
        assert_eq!(without_credentials("http://u:p@h:5000/x"), "http://h:5000/x");
        assert_eq!(without_credentials("http://h:5000"), "http://h:5000");
        // A password with a raw '/' or '#', and a URI without a scheme, show no password.
        assert_eq!(without_credentials("http://u:pa/ss@h:5000/x"), "http://h:5000/x");
        assert_eq!(without_credentials("http://u:pa#ss@h:5000"), "http://h:5000");
        let e = Settings::from_env(Some("user:secret@h:5000")).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
