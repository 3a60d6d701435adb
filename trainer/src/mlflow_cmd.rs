//! `trainer mlflow-sync`: a run folder sent to its tracking server.

use anyhow::Result;

/// `trainer mlflow-sync`: a run folder, a sweep folder or an evaluation's folder.
pub(crate) fn mlflow_sync(run: &std::path::Path, flag: Option<&str>) -> Result<()> {
    use tracking as track;
    let before = run
        .join(track::STATE_FILE)
        .is_file()
        .then(|| track::read_state(run))
        .transpose()?;
    let settings = match (track::Settings::from_env(flag)?, &before) {
        (Some(s), _) => s,
        (None, Some(st)) => track::Settings {
            uri: st.uri.clone(),
            experiment: st.experiment.clone(),
            ..track::Settings::default()
        },
        (None, None) => anyhow::bail!(
            "{}: never tracked, and no server given (--mlflow URI or MLFLOW_TRACKING_URI)",
            run.display()
        ),
    };
    let kind = before.as_ref().map_or(track::Kind::Run, |b| b.kind);
    if kind == track::Kind::Run && !run.join("config.yaml").is_file() {
        anyhow::bail!("{}: not a run folder (no config.yaml)", run.display());
    }
    let mut st = track::load_or_new(run, &settings)?;
    let finished = match kind {
        track::Kind::Run => run.join("summary.yaml").is_file(),
        track::Kind::Sweep => run.join(trainer::sweep::SUMMARY_MD).is_file(),
        track::Kind::Evaluation => true,
    };
    let end = if finished {
        track::End::Finished
    } else {
        track::End::Running
    };
    track::sync(run, &mut st, end)
        .map_err(|e| {
            anyhow::anyhow!(
                "MLflow at {}: {e}; nothing is lost, run this again",
                settings.uri
            )
        })?;
    println!(
        "MLflow: run {} in experiment {:?} at {}: {} epochs of metrics, {} artifacts{}",
        st.run_id.as_deref().unwrap_or("?"),
        st.experiment,
        st.uri,
        st.metric_rows_sent,
        st.artifacts_sent.len(),
        if end == track::End::Running {
            " (it has not finished)"
        } else {
            ""
        }
    );
    Ok(())
}
