//! The run folder: who may write it, what it already holds, and how a run starts in it.
//!
//! [`open`] runs before any patch is read: the output policy (no run file may be an input
//! of the run: the index, a patch, the config file), the folder's lock (a second `trainer`
//! writing there is refused, naming the first one's PID), and what to do with what the
//! folder holds:
//! * nothing: a new run;
//! * a run that never finished an epoch (only `config.yaml`, `split.csv` and a
//!   `train_state.yaml` with no epoch done, as a run killed in its first epoch leaves):
//!   started again, no `--force` needed;
//! * anything else: refused unless `--force` (which removes the run files first) or
//!   `--resume`, which continues only if `config.yaml`, `split.csv`, `metrics.csv` and the
//!   checkpoints are exactly what the run wrote (their sha256 are in `train_state.yaml`).
use std::path::{Path, PathBuf};

use crate::{Result, TrainError};

use files::{Lock, RunIo, DIR_LOCK, TEMP_PREFIX};

use crate::config::TrainConfig;
use crate::train::inputs::{Data, Found};
use crate::train::{yaml, RunOptions, TrainState, RUN_FILES};

/// The files a run holds before its first epoch ends.
const UNSTARTED: [&str; 3] = ["config.yaml", "split.csv", "train_state.yaml"];

/// What a run does with its folder.
#[derive(Debug)]
enum Plan {
    /// Write a new run (the folder is empty, or holds a run that never finished an epoch).
    Start,
    /// `--force`: a new run, the previous run's files removed once the inputs have loaded
    /// (a run that fails before that leaves them as they were).
    Replace,
    /// Continue from this state (`None`: the run had not finished an epoch).
    Resume(Option<Box<TrainState>>),
}

/// The locked folder, before the patches are loaded.
pub struct Opened {
    dir: PathBuf,
    lock: Lock,
    /// The folder did not exist before this run.
    created: bool,
    plan: Plan,
}

/// The folder a run writes, locked for as long as this lives.
pub struct RunFolder {
    pub dir: PathBuf,
    _lock: Lock,
    /// The state a resumed run continues from.
    pub resumed: Option<TrainState>,
    pub config_sha256: String,
    pub split_sha256: String,
}

/// Removes the previous run's files (and the calibrate outputs made from it), so the folder
/// never mixes two runs.
fn remove_run_files(dir: &Path) -> Result<()> {
    let plots = dir.join(CALIBRATION_PLOTS);
    let plot_files: Vec<PathBuf> = [
        "reliability.png",
        "roc.png",
        "precision_recall.png",
        "decision_curve.png",
    ]
    .iter()
    .map(|n| plots.join(n))
    .collect();
    for p in RUN_FILES.iter().map(|n| dir.join(n)).chain(plot_files) {
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| TrainError::file(format!("{}: cannot remove", p.display()), e))?;
        }
    }
    // Only if nothing else is in it.
    let _ = std::fs::remove_dir(&plots);
    Ok(())
}

/// The folder calibrate writes its plots into, beside `calibration.yaml`.
const CALIBRATION_PLOTS: &str = "calibration_plots";

/// The folder's entries other than its lock and temporary files.
fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| TrainError::file(format!("{}: cannot read", dir.display()), e))? {
        let name = e
            .map_err(|e| TrainError::file(format!("{}: cannot read", dir.display()), e))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name != DIR_LOCK && !name.starts_with(TEMP_PREFIX) {
            out.push(name);
        }
    }
    Ok(out)
}

/// The state file of a folder, if it has one.
fn read_state(dir: &Path) -> Result<Option<TrainState>> {
    let p = dir.join("train_state.yaml");
    if !p.exists() {
        return Ok(None);
    }
    let text = files::read_regular_to_string(&p)?;
    Ok(Some(
        yaml_serde::from_str(&text).map_err(TrainError::format(format!("{}: unreadable", p.display())))?,
    ))
}

/// Whether the folder holds only a run that never finished an epoch.
fn unstarted(dir: &Path, names: &[String]) -> Result<bool> {
    if !names.iter().all(|n| UNSTARTED.contains(&n.as_str())) {
        return Ok(false);
    }
    Ok(read_state(dir).ok().flatten().is_none_or(|s| s.epochs_done == 0))
}

/// Refuses a resume unless `file`'s sha256 is `want` (when the state recorded one).
fn unchanged(dir: &Path, file: &str, want: &str, what: &str) -> Result<()> {
    if want.is_empty() {
        return Ok(());
    }
    let p = dir.join(file);
    let got = files::sha256_file(&p)?;
    if got != want {
        return Err(TrainError::run_folder(
            &p,
            format!(
                "changed since the run wrote it (sha256 {} ≠ {} in train_state.yaml); {what}",
                &got[..12],
                // `want` is read from the folder's train_state.yaml: not always hex.
                want.chars().take(12).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Checks that the folder holds this run, unchanged, and returns the state to continue
/// from.
fn verify_resume(cfg: &TrainConfig, found: &Found, dir: &Path) -> Result<Option<TrainState>> {
    // The same job or nothing: config and split must be the ones the folder holds.
    let saved = files::read_regular_to_string(&dir.join("config.yaml"))
        .map_err(|e| TrainError::run_folder(dir, format!("no run to resume here ({e})")))?;
    let st = read_state(dir)?;
    let fix = "restore it, or start a new run (another --out, or --force)";
    if let Some(st) = &st {
        unchanged(dir, "config.yaml", &st.config_sha256, fix)?;
        unchanged(dir, "split.csv", &st.split_sha256, fix)?;
    }
    // The cache budget only decides what sits in memory, the thread count how fast it goes
    // (a run begun on a workstation may go on on a smaller host): a resume may change
    // either. With another thread count libtorch may sum in another order, so the weights
    // need not equal an uninterrupted run's bit for bit.
    let comparable = |text: &str| -> Result<String> {
        let mut c: TrainConfig = yaml_serde::from_str(text)
            .map_err(TrainError::format(format!("{}: unreadable config.yaml", dir.display())))?;
        c.train.cache_mb = cfg.train.cache_mb;
        c.train.threads = cfg.train.threads;
        // The folder being resumed is the run, wherever it has been moved or copied to.
        c.out = cfg.out.clone();
        Ok(yaml_serde::to_string(&c)?)
    };
    let saved = comparable(&saved)?;
    let ours = yaml_serde::to_string(cfg)?;
    if saved != ours {
        let diff = saved
            .lines()
            .zip(ours.lines())
            .find(|(a, b)| a != b)
            .map_or_else(String::new, |(a, b)| format!(": `{a}` there, `{b}` now"));
        return Err(TrainError::run_folder(
            dir,
            format!("this run was made with another config or architecture{diff}; resume with the same settings"),
        ));
    }
    if files::read_regular(&dir.join("split.csv")).ok().as_deref() != Some(found.manifest.as_slice()) {
        return Err(TrainError::run_folder(
            dir,
            "the split differs from the one this run used (has the index changed?)",
        ));
    }
    let Some(st) = st.filter(|s| s.epochs_done > 0) else {
        return Ok(None);
    };
    unchanged(dir, "metrics.csv", &st.metrics_sha256, fix)?;
    for (file, want) in [
        ("last.safetensors", &st.last_sha256),
        ("best.safetensors", &st.best_sha256),
        ("optimizer.safetensors", &st.optimizer_sha256),
    ] {
        let p = dir.join(file);
        if !p.is_file() || files::sha256_file(&p)? != *want {
            return Err(TrainError::run_folder(
                &p,
                format!(
                    "does not match train_state.yaml (the run was stopped while saving epoch {}, or the file was \
                 changed); it cannot resume safely: start it again",
                    st.epochs_done + 1
                ),
            ));
        }
    }
    // `auto` resolves by host: a run begun in fp32 on a CPU must not go on in fp16 on a GPU
    // (or back) and still claim to be the same run.
    let now = precision_name(found.amp);
    if let Some(was) = st.precision.as_deref() {
        if was != now {
            return Err(TrainError::run_folder(
                dir,
                format!(
                    "this run trained in {was}, here it would go on in {now} on {} (device and precision are `auto`?); \
                 resume it on the same kind of device (NODULE_NO_CUDA=1 keeps `auto` on the CPU)",
                    crate::device_name(found.device)
                ),
            ));
        }
    }
    Ok(Some(st))
}

/// Checks the outputs against the inputs, creates and locks the folder, and decides how
/// the run starts in it (see the module documentation). Writes nothing else.
pub fn open(cfg: &TrainConfig, opts: &RunOptions, found: &Found) -> Result<Opened> {
    let dir = &cfg.out;
    let mut io = RunIo::new();
    if let Some(c) = &opts.config {
        io.input("config file", c);
    }
    io.input("index", &found.index.path);
    if let Some(w) = &cfg.train.init {
        io.input("initial weights (train.init)", w);
    }
    if let Some(f) = &cfg.model.features_csv {
        io.input("features CSV (model.features_csv)", f);
    }
    let patches: Vec<PathBuf> = found.index.rows.iter().map(|r| found.index.patch_path(r)).collect();
    io.inputs("patch", patches.iter().map(PathBuf::as_path));
    if dir.exists() && !dir.is_dir() {
        return Err(TrainError::run_folder(dir, "the run folder is not a folder"));
    }
    io.outputs_in("run file", dir, RUN_FILES)?;
    let created = !dir.exists();
    std::fs::create_dir_all(dir)
        .map_err(|e| TrainError::file(format!("{}: cannot create run folder", dir.display()), e))?;
    let lock = Lock::within(dir, &format!("run folder {}", dir.display()))?;
    let opened = |plan| Opened {
        dir: dir.clone(),
        lock,
        created,
        plan,
    };
    match decide(cfg, opts, found) {
        Ok(plan) => Ok(opened(plan)),
        Err(e) => {
            opened(Plan::Start).abandon();
            Err(e)
        }
    }
}

/// What to do with what the folder holds (see the module documentation).
fn decide(cfg: &TrainConfig, opts: &RunOptions, found: &Found) -> Result<Plan> {
    let dir = &cfg.out;
    Ok(if opts.resume {
        Plan::Resume(verify_resume(cfg, found, dir)?.map(Box::new))
    } else {
        let names = entries(dir)?;
        if names.is_empty() || unstarted(dir, &names)? {
            Plan::Start
        } else if opts.force {
            Plan::Replace
        } else {
            return Err(TrainError::run_folder(
                dir,
                "run folder exists and is not empty; choose another --out, pass --force, or --resume to continue it",
            ));
        }
    })
}

impl Opened {
    /// Gives the folder up after a failure before anything was written: the lock goes, and
    /// so does the folder if this run created it.
    pub fn abandon(self) {
        let Opened { dir, lock, created, .. } = self;
        drop(lock);
        if created {
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// Starts the run in the folder: a new run writes `config.yaml`, `split.csv` and a
    /// `train_state.yaml` with no epoch done (so a run killed in its first epoch can be
    /// started again, and a resume can tell whether they changed).
    pub fn begin(self, cfg: &TrainConfig, data: &Data) -> Result<RunFolder> {
        let dir = self.dir;
        let config_text = yaml_serde::to_string(cfg)?;
        let (resumed, fresh) = match self.plan {
            Plan::Start => (None, true),
            Plan::Replace => {
                remove_run_files(&dir)?;
                (None, true)
            }
            Plan::Resume(st) => (st.map(|b| *b), false),
        };
        if fresh {
            files::write_atomic(&dir.join("config.yaml"), config_text.as_bytes())?;
            files::write_atomic(&dir.join("split.csv"), &data.found.manifest)?;
        }
        let config_sha256 = files::sha256_file(&dir.join("config.yaml"))?;
        let split_sha256 = files::sha256_file(&dir.join("split.csv"))?;
        if resumed.is_none() {
            let st = TrainState {
                epochs_done: 0,
                step: 0,
                best_epoch: 0,
                best_val_auroc: f64::NAN,
                best_val_loss: f64::NAN,
                stopped_early: None,
                last_sha256: String::new(),
                best_sha256: String::new(),
                optimizer_sha256: String::new(),
                grad_scaler: None,
                precision: Some(precision_name(data.found.amp).to_string()),
                config_sha256: config_sha256.clone(),
                split_sha256: split_sha256.clone(),
                metrics_sha256: String::new(),
            };
            yaml(&dir.join("train_state.yaml"), &st)?;
        }
        Ok(RunFolder {
            dir,
            _lock: self.lock,
            resumed,
            config_sha256,
            split_sha256,
        })
    }
}

/// What `precision` resolved to, as `train_state.yaml` records it.
pub(crate) fn precision_name(amp: bool) -> &'static str {
    if amp {
        "fp16"
    } else {
        "fp32"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded sha256 that is not hex (train_state.yaml edited by hand) is refused with
    /// its first characters, not a panic on a byte boundary.
    #[test]
    fn a_recorded_hash_that_is_not_hex_is_refused_without_a_panic() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("config.yaml"), "x").expect("write");
        let want = format!("a{}", "é".repeat(40)); // byte 12 falls inside an 'é'
        let e = unchanged(d.path(), "config.yaml", &want, "resume elsewhere").expect_err("refused");
        assert!(
            matches!(&e, TrainError::RunFolder { path, .. } if path.ends_with("config.yaml")),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains(&format!("≠ a{} in train_state.yaml", "é".repeat(11))),
            "{e}"
        );
    }
}
