//! A scoring run: inputs → output plan → bounded decode pipeline → session → streamed,
//! atomic output.
//!
//! Before any work the run collects its inputs ([`crate::inputs`]), checks its outputs
//! against them and against each other, and takes the output's lock
//! ([`files::RunIo`], [`files::Lock`]; [`crate::sink`]). A producer thread then decodes and
//! preprocesses the next batch (in parallel, rayon) straight into a batch buffer laid out
//! as the model's input, while the session scores the current one ([`crate::pipeline`]). A
//! channel of capacity one and three recycled batch buffers bound what is in flight, so
//! peak memory does not depend on the folder size. Output rows are streamed to a temporary
//! file beside the output and renamed into place at the end; the order is the input order.
//! What a run is asked and what it reports: [`crate::settings`].
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use files::Target;
use scorer::Scorer;

use crate::calib::{self, Cal};
use crate::inputs::{collect_index, collect_inputs, Inputs, Item};
use crate::output::csv_header;
use crate::pipeline::{input_digest, score_all, Scoring, Tally};
use crate::settings::{check_batch_memory, check_settings, Settings, Summary};
use crate::sink::{open_output, plan_outputs, write_errors};
use crate::InferError;

/// A model with tabular features: reads them for every item from the index (or
/// `--features-csv` by series); an item whose values are missing or not finite is reported
/// as that item's error, not scored (with `--fail-fast`, the run stops). `None` for a
/// cube-only model; a model with features scored without `--index` is refused.
fn read_features(
    s: &Settings,
    scorer: &Scorer,
    inputs: &mut Inputs,
) -> Result<Option<HashMap<String, Vec<f32>>>, InferError> {
    let Some(columns) = &scorer.features else {
        if s.features_csv.is_some() {
            return Err(InferError::Usage(format!(
                "--features-csv is given but {} takes no tabular features",
                s.model.display()
            )));
        }
        return Ok(None);
    };
    let keys: Vec<(&str, &str)> = inputs
        .items
        .iter()
        .map(|it| (it.name.as_str(), it.row.as_ref().map_or("", |r| r.seriesuid.as_str())))
        .collect();
    let values = match &inputs.scans {
        Some(set) => crate::from_scans::features(set, s.features_csv.as_deref(), &keys, columns)?,
        None => {
            let Some(index) = &inputs.index else {
                return Err(InferError::Usage(format!(
                    "{} takes tabular features ({}) beside each cube: score with --index INDEX, whose rows hold them \
                     (or --features-csv FILE for per-series values)",
                    s.model.display(),
                    columns.join(", ")
                )));
            };
            let src = models::features::FeatureSource {
                columns: columns.clone(),
                join: s.features_csv.clone(),
            };
            models::features::read(index, &keys, &src)?
        }
    };
    let mut map = HashMap::with_capacity(values.len());
    let mut kept = Vec::with_capacity(inputs.items.len());
    for (it, v) in std::mem::take(&mut inputs.items).into_iter().zip(values) {
        match v {
            Ok(v) => {
                map.insert(it.name.clone(), v);
                kept.push(it);
            }
            Err(why) if s.fail_fast => return Err(crate::bad_input(&it.path, why)),
            Err(why) => inputs.refused.push((it.name.clone(), why)),
        }
    }
    inputs.items = kept;
    Ok(Some(map))
}

/// What a finished run says about itself.
#[allow(clippy::too_many_arguments)]
fn summarize(
    s: &Settings,
    scorer: &Scorer,
    tally: &Tally,
    previous: Option<&crate::resume::Previous>,
    cal: Option<&Cal>,
    errors_file: Option<PathBuf>,
    notes: Vec<String>,
    t0: Instant,
) -> Summary {
    Summary {
        scored: tally.scored,
        resume_dropped: previous.map_or(0, |p| p.dropped),
        resume_changed: previous.map_or(0, |p| p.changed),
        resumed: previous.map_or(0, |p| p.done.len()),
        failed: tally.errors.len(),
        errors_file,
        predicted_positive: cal.map(|_| tally.positives),
        calibration: cal.map(|c| c.describe(s.calibration.as_deref())),
        provider: scorer.provider,
        provider_note: scorer.provider_note.clone(),
        all_nodes_on_provider: scorer.all_nodes_on_provider,
        ort_version: scorer.runtime.version.clone(),
        ort_library: scorer.runtime.library.clone(),
        seconds: t0.elapsed().as_secs_f64(),
        pipeline_seconds: tally.pipeline_seconds,
        first_batch_seconds: tally.first_batch_seconds.unwrap_or(0.0),
        model_seconds: tally.model_seconds,
        peak_rss_kib: host::peak_rss_kib(),
        notes,
    }
}

/// The run's inputs: candidates from scans, an index's patches, or the files and folders
/// given.
fn collect(s: &Settings, held_out: Option<&crate::folds::HeldOut>) -> Result<Inputs, InferError> {
    match (&s.scans, &s.candidates, &s.index) {
        (Some(dir), Some(cands), _) => crate::from_scans::collect(dir, cands, s.scan_format, s.missing_scans, held_out),
        (_, _, Some(idx)) => collect_index(idx),
        _ => collect_inputs(&s.inputs, s.recursive),
    }
}

/// Scans read at once from `--scan-jobs` (0: as many as there are CPUs, at most 4).
fn scan_jobs(asked: usize) -> usize {
    match asked {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()).min(4),
        j => j,
    }
}

/// Scores every input and writes the output atomically (streamed through a temporary
/// file). Bad files are reported on stderr as `path: reason`, listed in the errors file, and
/// skipped; the good rows are still written and [`Summary::failed`] counts the bad ones
/// (the binary then exits non-zero). `fail_fast` stops at the first bad file, writing no
/// output.
pub fn run(s: &Settings) -> Result<Summary, InferError> {
    let t0 = Instant::now();
    check_settings(s)?;
    let held_out = s.held_out.as_deref().map(crate::folds::HeldOut::read).transpose()?;
    let mut inputs = collect(s, held_out.as_ref())?;
    let part = s.shard.map(|sh| (sh, crate::shard::select(&mut inputs, sh)));
    let plan = plan_outputs(s, &inputs)?;
    if s.fail_fast {
        if let Some((name, why)) = inputs.refused.first() {
            return Err(crate::bad_input(Path::new(name), why.clone()));
        }
    }
    let mut scorer = Scorer::open(&s.model, &s.scorer)?;
    if let Some(h) = &held_out {
        h.check_model(&s.model, &scorer.model_sha256)?;
    }
    check_batch_memory(s, scorer.preprocess.cube_size)?;
    let feats = read_features(s, &scorer, &mut inputs)?;
    let cal = calib::choose(
        s.calibration.as_deref(),
        &s.model,
        &scorer.model_sha256,
        &scorer.metadata,
        s.force_calibration,
    )?;
    let name_col = inputs.scans.as_ref().map_or("patch_file", |set| set.name_column());
    let header = csv_header(
        s.format,
        name_col,
        crate::output::Columns {
            index: inputs.index.is_some(),
            label: inputs.has_label,
            calibrated: cal.is_some(),
        },
    );
    let grid = inputs
        .scans
        .as_ref()
        .map(|_| crate::from_scans::grid(s.size_mm, s.spacing_mm, scorer.preprocess.cube_size))
        .transpose()?;
    // --resume: keep the earlier rows of patches still among the inputs, skip those patches.
    let previous = match &plan.out {
        Some(Target::File(p)) if s.resume && p.is_file() => Some(previous_rows(
            s,
            p,
            &inputs,
            &scorer,
            &header,
            cal.as_ref(),
            feats.as_ref(),
            grid.as_ref(),
        )?),
        _ => None,
    };
    let done = previous.as_ref().map(|p| &p.done);
    let todo: Vec<&Item> = inputs
        .items
        .iter()
        .filter(|it| done.is_none_or(|d| !d.contains(&it.name)))
        .collect();
    let mut out = open_output(s, plan.out.as_ref(), previous.as_ref(), &header)?;
    let mut tally = Tally::default();
    for (name, why) in &inputs.refused {
        tally.fail(name, Path::new(name), why.clone());
    }
    let pb = progress_bar(s.progress, todo.len());
    let sha = scorer.model_sha256.clone();
    let scoring = Scoring {
        feed: inputs.scans.as_ref().zip(grid).map(|(set, grid)| crate::from_scans::Feed {
            set,
            grid,
            pre: scorer.preprocess.clone(),
            batch: s.batch_size,
            jobs: scan_jobs(s.scan_jobs),
            preload: s.preload,
        }),
        s,
        feats: feats.as_ref(),
        cal: cal.as_ref(),
        has_label: inputs.has_label,
        sha: &sha,
        pb: &pb,
    };
    let result = score_all(&todo, &mut scorer, &scoring, &mut out, &mut tally);
    pb.finish_and_clear();
    // On an error the output is dropped: nothing half-written replaces anything.
    result?;
    out.commit()?;
    let errors_file = write_errors(&tally.errors, name_col, plan.errors.as_ref())?;
    let rows = tally.scored + previous.as_ref().map_or(0, |p| p.done.len());
    let done = Done {
        rows,
        failed: tally.errors.len(),
        header: &header,
        sha: &sha,
        cal: cal.is_some(),
    };
    write_records(s, held_out.as_ref(), part, &done)?;
    Ok(summarize(s, &scorer, &tally, previous.as_ref(), cal.as_ref(), errors_file, inputs.notes.clone(), t0))
}

/// The progress bar of a run over `n` patches (hidden unless `show`).
fn progress_bar(show: bool, n: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(n as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} patches  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// What a finished run wrote, for the records beside its output.
struct Done<'a> {
    /// Rows in the output (scored now and kept by --resume).
    rows: usize,
    failed: usize,
    header: &'a [&'a str],
    sha: &'a str,
    /// Whether the rows are calibrated.
    cal: bool,
}

/// The records beside a finished output: the fold's (`--held-out`) and the shard's
/// (`--shard`), which `infer merge` checks.
fn write_records(
    s: &Settings,
    held_out: Option<&crate::folds::HeldOut>,
    part: Option<(crate::shard::Shard, (usize, usize, usize, String))>,
    d: &Done,
) -> Result<(), InferError> {
    if held_out.is_none() && part.is_none() {
        return Ok(());
    }
    let output_sha256 = files::sha256_file(&s.out)?;
    let calibration = match (&s.calibration, d.cal) {
        (Some(p), _) => files::sha256_file(p)?,
        (None, true) => "model".into(),
        (None, false) => "none".into(),
    };
    let format: &'static str = s.format.into();
    let tta: &'static str = s.tta.into();
    let header: Vec<String> = d.header.iter().map(|h| h.to_string()).collect();
    if let Some(h) = held_out {
        crate::folds::write_record(
            &s.out,
            &crate::folds::Record {
                fold: h.fold,
                folds: h.folds,
                cv_sha256: h.cv_sha256.clone(),
                series: h.series.iter().cloned().collect(),
                candidates_sha256: files::sha256_file(s.candidates.as_deref().unwrap_or(Path::new("")))?,
                rows: d.rows,
                failed: d.failed,
                model_sha256: d.sha.to_string(),
                calibration: calibration.clone(),
                format: format.into(),
                header: header.clone(),
                tta: tta.into(),
                output_sha256: output_sha256.clone(),
            },
        )?;
    }
    if let Some((sh, (first, end, n, inputs_sha256))) = part {
        crate::shard::write_record(
            &s.out,
            &crate::shard::Record {
                shard: sh.k,
                of: sh.n,
                inputs: n,
                inputs_sha256,
                first,
                end,
                rows: d.rows,
                failed: d.failed,
                model_sha256: d.sha.to_string(),
                calibration,
                format: format.into(),
                header,
                output_sha256,
                tta: tta.into(),
            },
        )?;
    }
    Ok(())
}

/// `--resume`: the earlier output's rows to keep. A row is kept only for the same input: its
/// patch file (or, from scans, its cube cut from the scan now) still gives the digest the
/// row records; another file of the same name, or a scan changed since, is scored again.
#[allow(clippy::too_many_arguments)]
fn previous_rows(
    s: &Settings,
    p: &Path,
    inputs: &Inputs,
    scorer: &Scorer,
    header: &[&str],
    cal: Option<&Cal>,
    feats: Option<&HashMap<String, Vec<f32>>>,
    grid: Option<&scans::resample::PatchGrid>,
) -> Result<crate::resume::Previous, InferError> {
    let items: HashMap<&str, &Path> = inputs
        .items
        .iter()
        .map(|it| (it.name.as_str(), it.path.as_path()))
        .collect();
    let pre = scorer.preprocess.clone();
    let wanted = |name: &str| items.contains_key(name);
    let read = |same: &(dyn Fn(&str, &str) -> bool + Sync)| {
        crate::resume::read_previous(p, s.format, header, &scorer.model_sha256, cal, &wanted, same)
    };
    let with_feats = |name: &str, d: &str| input_digest(d, s.tta, feats.and_then(|m| m.get(name)).map(Vec::as_slice));
    if let (Some(set), Some(grid)) = (&inputs.scans, grid) {
        // First the names the output holds, then their cubes cut again, scan by scan.
        let named = std::sync::Mutex::new(std::collections::HashSet::new());
        read(&|name: &str, _: &str| {
            named
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.to_string());
            false
        })?;
        let names = named.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = crate::from_scans::digests_now(&names, &inputs.items, set, grid, &pre);
        return read(&|name: &str, digest: &str| now.get(name).is_some_and(|d| with_feats(name, d) == digest));
    }
    // A kept row must be of the same input: its file still gives the digest the row records
    // (a file of the same name with other contents is scored again).
    read(&|name: &str, digest: &str| {
        let mut scratch = vec![0f32; pre.cube_size.pow(3)];
        items.get(name).is_some_and(|f| {
            models::patch::load_patch_hashed(f, &pre, &mut scratch).is_ok_and(|d| with_feats(name, &d) == digest)
        })
    })
}
