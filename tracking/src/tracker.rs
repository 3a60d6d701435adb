//! A run's tracker: mirrors the folder in the background while the run trains.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::state::{load_or_new, save, State};
use crate::sync::{sync, End};
use crate::{Settings, FINAL_WAIT};

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
    pub fn start(dir: &Path, s: &Settings) -> Result<Self> {
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
            .map_err(Error::Thread)?;
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
                    );
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
