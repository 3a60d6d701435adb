//! A training run folder's commit point: `summary.yaml`, written last, names the sha256 of
//! the files a later stage reads together (`model.onnx`, `val_scores.csv`, `parity.yaml`).
//! A run killed while it exported leaves either no summary (the run is not finished) or
//! the previous run's summary, whose digests then no longer match: a reader refuses both
//! rather than calibrate one run's scores against another run's model.
use std::collections::BTreeMap;
use std::path::Path;

use crate::{Error, Result};

/// The summary's name in a run folder.
pub const SUMMARY_FILE: &str = "summary.yaml";

/// The files of a finished run a reader takes together, checked against `summary.yaml`:
/// each of `names` that the summary lists must have the listed digest. A folder without a
/// summary is an unfinished run; a summary without digests (written before they were
/// recorded) is taken as it is.
pub fn check_outputs(dir: &Path, names: &[&str]) -> Result<()> {
    let p = dir.join(SUMMARY_FILE);
    if std::fs::symlink_metadata(&p).is_err() {
        return Err(Error::from(files::Error::BadInput {
            path: dir.to_path_buf(),
            msg: format!(
                "no {SUMMARY_FILE}: the training run did not finish (killed or failed while exporting?); \
                 resume it (`trainer train --resume`) before using its files"
            ),
        }));
    }
    #[derive(serde::Deserialize)]
    struct Outputs {
        #[serde(default)]
        outputs: BTreeMap<String, String>,
    }
    let text = files::read_regular_to_string(&p)?;
    let o: Outputs = yaml_serde::from_str(&text).map_err(|e| files::Error::parse(&p, "not a run summary", e))?;
    for name in names {
        if let Some(want) = o.outputs.get(*name) {
            let got = files::sha256_file(&dir.join(name))?;
            if &got != want {
                return Err(Error::from(files::Error::BadInput {
                    path: dir.join(name),
                    msg: format!(
                        "not the file {} records (sha256 {}…, recorded {}…): the run folder mixes two runs \
                         (one killed while it exported?); resume or rerun the training",
                        p.display(),
                        &got[..12],
                        want.chars().take(12).collect::<String>()
                    ),
                }));
            }
        }
    }
    Ok(())
}
