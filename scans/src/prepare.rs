//! `scans prepare`: from CT scans (MetaImage, DICOM series, NIfTI-1: [`scans`]) to a
//! training-ready patch folder.
//!
//! Positives are the nodules of `annotations.csv` and the candidates labelled 1; negatives
//! are the real candidates labelled 0 (never noise), none within a nodule's radius,
//! subsampled per scan to a ratio with a seed (or all of them). Each patch is a cube of
//! `size_mm` at `spacing_mm` in HU, cut around its centre only (see
//! [`crate::resample`]), written as `.npy` (z, y, x).
//!
//! Resumable and safe to interrupt: every patch file is written atomically, and a scan
//! counts as done only once its list of patches (`.prepare/<seriesuid>.csv`) is written,
//! after all its patches; a rerun with the same settings skips the scans that are done and
//! redoes the rest. `patch_index.csv` is rebuilt from those lists at the end of each run. A
//! scan that fails (unreadable, truncated…) is reported on stderr and in
//! `prepare_errors.csv` while the others go on; the exit status is then non-zero.
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::error::{Result, ScanError};
use ndarray::Array3;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::resample::{extract, PatchGrid};
use tables::index::{IndexRow, INDEX_FILE};
use luna16::Finding;

/// Folder (inside the output) holding each finished scan's patch list.
pub const DONE_DIR: &str = ".prepare";
/// Settings of the run, checked on resume.
pub const SETTINGS_FILE: &str = "prepare.yaml";
pub const ERRORS_FILE: &str = "prepare_errors.csv";
/// Locked while a run works on the folder.
pub const LOCK_FILE: &str = "prepare.lock";

/// Storage type of the written cubes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CubeDtype {
    /// HU rounded to int16 (half the space; CT is integer HU anyway).
    Int16,
    Float32,
}

impl std::str::FromStr for CubeDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "int16" => Ok(CubeDtype::Int16),
            "float32" => Ok(CubeDtype::Float32),
            other => Err(format!("cube dtype {other:?}: int16 or float32")),
        }
    }
}

/// How patches are cut and sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub grid: PatchGrid,
    /// Negatives per positive, per scan (after excluding those inside a nodule).
    pub neg_ratio: f64,
    /// Negatives per scan at least (scans without nodules get this many).
    pub min_negatives: usize,
    /// Keep every negative candidate (ignores the two settings above).
    pub all_negatives: bool,
    pub seed: u64,
    pub dtype: CubeDtype,
}

/// What a run makes; stored in `prepare.yaml` so a resumed run makes the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareSettings {
    pub sampling: Sampling,
    pub annotations_sha256: String,
    pub candidates_sha256: String,
}

/// Inputs and settings of a run.
#[derive(Debug, Clone)]
pub struct PrepareJob {
    pub scans: PathBuf,
    /// Read only scans of this format (all of them when `None`).
    pub format: Option<crate::Format>,
    pub annotations: PathBuf,
    pub candidates: PathBuf,
    pub out: PathBuf,
    pub sampling: Sampling,
    /// Scans processed at once (0: up to 8, by the cores); each holds one scan in memory
    /// (4 bytes per voxel, ~300 MB for a LUNA16 scan).
    pub jobs: usize,
    pub quiet: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrepareSummary {
    pub scans_found: usize,
    pub scans_done_now: usize,
    pub scans_done_before: usize,
    pub scans_failed: usize,
    pub patches_written: usize,
    pub positives_total: usize,
    pub negatives_total: usize,
    pub patches_per_s: f64,
    pub seconds: f64,
    /// Annotated series with no scan under the scan folder (e.g. other LUNA16 subsets).
    pub annotated_series_without_scan: usize,
}

/// A planned patch.
#[derive(Debug, Clone)]
struct Planned {
    center: [f64; 3],
    diam_mm: f64,
    label: u8,
}

/// Positives and negatives of one series, negatives drawn with a generator seeded from the
/// run's seed and the series (so the draw does not depend on the order scans are done in).
fn plan_series(uid: &str, nodules: &[&Finding], candidates: &[&Finding], s: &Sampling) -> Vec<Planned> {
    let mut out: Vec<Planned> = nodules
        .iter()
        .map(|n| Planned {
            center: [n.x, n.y, n.z],
            diam_mm: n.value,
            label: 1,
        })
        .collect();
    let dist = |a: &Finding, n: &Finding| a.dist2(n).sqrt();
    let mut negatives = Vec::new();
    for c in candidates {
        // The nodule this candidate lies in, if any (distance within the radius).
        let inside = nodules.iter().find(|n| dist(c, n) <= n.value / 2.0);
        if c.value == 1.0 {
            // A candidate on an annotated nodule keeps that nodule's diameter; one at the very
            // same point as its annotation adds nothing.
            if inside.is_some_and(|n| dist(c, n) < 1e-6) {
                continue;
            }
            out.push(Planned {
                center: [c.x, c.y, c.z],
                diam_mm: inside.map_or(0.0, |n| n.value),
                label: 1,
            });
        } else if inside.is_none() {
            negatives.push(Planned {
                center: [c.x, c.y, c.z],
                diam_mm: 0.0,
                label: 0,
            });
        }
    }
    if !s.all_negatives {
        let n_pos = out.len();
        let want = ((n_pos as f64 * s.neg_ratio).ceil() as usize).max(s.min_negatives);
        if negatives.len() > want {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for b in uid.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            let mut rng = StdRng::seed_from_u64(s.seed ^ h);
            negatives.shuffle(&mut rng);
            negatives.truncate(want);
        }
    }
    out.extend(negatives);
    out
}

fn npy_bytes(cube: &Array3<f32>, dtype: CubeDtype) -> Result<Vec<u8>> {
    use ndarray_npy::WriteNpyExt;
    let mut buf = Vec::new();
    match dtype {
        CubeDtype::Float32 => cube.write_npy(&mut buf),
        CubeDtype::Int16 => cube
            .mapv(|v| v.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16)
            .write_npy(&mut buf),
    }
    .map_err(ScanError::format("a cube as .npy"))?;
    Ok(buf)
}

/// Cuts and writes one scan's patches; returns its index rows.
fn do_scan(uid: &str, source: &crate::Source, plan: &[Planned], job: &PrepareJob) -> Result<Vec<IndexRow>> {
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    let scan = source.read()?;
    let path = source.path();
    // A centre outside the scan gives an all-air patch: most likely coordinates in another
    // frame (voxel indices, another scan's). Say so; the patch is still written.
    let g = &scan.geometry;
    let outside = plan.iter().filter(|p| !g.contains_world(p.center)).count();
    if outside > 0 {
        eprintln!(
            "prepare: warning: {}: {outside} of {} centres lie outside the scan (world mm expected; check the CSV's coordinates)",
            path.display(),
            plan.len()
        );
    }
    if !scan.geometry.is_orthonormal() {
        eprintln!(
            "prepare: {}: TransformMatrix is not orthonormal; patches follow it as given",
            path.display()
        );
    }
    let dir = job.out.join("patches").join(uid);
    // Not committed yet, so whatever an interrupted attempt left here (patches, temporary
    // files) is not in any index: start clean.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| ScanError::file(format!("{}: cannot clear", dir.display()), e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| ScanError::file(format!("{}: cannot create", dir.display()), e))?;
    let mut rows = Vec::with_capacity(plan.len());
    let (mut np, mut nn) = (0usize, 0usize);
    for p in plan {
        let name = if p.label == 1 {
            np += 1;
            format!("pos_{np:04}.npy")
        } else {
            nn += 1;
            format!("neg_{nn:05}.npy")
        };
        let cube = extract(&scan, p.center, &job.sampling.grid);
        let file = dir.join(&name);
        files::write_atomic(&file, &npy_bytes(&cube, job.sampling.dtype)?)?;
        rows.push(IndexRow {
            patch_file: format!("patches/{uid}/{name}"),
            seriesuid: uid.to_string(),
            diam_mm: p.diam_mm,
            center_x: p.center[0],
            center_y: p.center[1],
            center_z: p.center[2],
            label: p.label,
        });
    }
    Ok(rows)
}

/// What a run reads, checked before the output folder is touched.
struct Inputs {
    annotations: Vec<Finding>,
    candidates: Vec<Finding>,
    scans: BTreeMap<String, crate::Source>,
    /// Files under the scan folder that are not scans read here or cannot be read as one:
    /// each a failure of the run (listed in the errors file), never skipped silently.
    unreadable: Vec<(PathBuf, String)>,
    settings: PrepareSettings,
}

/// Checks the settings, reads the CSVs (diameters positive, classes 0 or 1) and finds the
/// scans.
fn read_inputs(job: &PrepareJob) -> Result<Inputs> {
    // Every bad setting in one error.
    let mut bad = Vec::new();
    if let Err(e) = host::check_threads("--jobs", job.jobs) {
        bad.push(e);
    }
    if let Err(e) = job.sampling.grid.validate() {
        bad.push(format!("patch grid: {e}"));
    }
    if !(job.sampling.neg_ratio.is_finite() && job.sampling.neg_ratio >= 0.0) {
        bad.push(format!("--neg-ratio must be >= 0, got {}", job.sampling.neg_ratio));
    }
    if !bad.is_empty() {
        return Err(ScanError::Config(bad.join("; ")));
    }
    let annotations = luna16::read_findings(&job.annotations, "diameter_mm")?;
    if let Some(a) = annotations
        .iter()
        .find(|a| a.value.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
    {
        return Err(ScanError::from(files::Error::bad_input(
            &job.annotations,
            format!(
                "series {}: diameter_mm must be positive, got {}",
                a.seriesuid,
                a.value
            ),
        )));
    }
    let candidates = luna16::read_findings(&job.candidates, "class")?;
    if let Some(c) = candidates.iter().find(|c| c.value != 0.0 && c.value != 1.0) {
        return Err(ScanError::from(files::Error::bad_input(
            &job.candidates,
            format!(
                "series {}: class must be 0 or 1, got {}",
                c.seriesuid,
                c.value
            ),
        )));
    }
    let found = crate::find(&job.scans, job.format)?;
    for (p, why) in &found.unreadable {
        eprintln!("prepare: error: {}: {why}", p.display());
    }
    if !job.quiet && (found.ignored > 0 || !found.directories.is_empty()) {
        eprintln!(
            "prepare: {} DICOMDIR index file(s) and {} file(s) without an extension that are no scan left aside",
            found.directories.len(),
            found.ignored
        );
    }
    let unreadable = found.unreadable;
    let scans = found.scans;
    let settings = PrepareSettings {
        sampling: job.sampling.clone(),
        annotations_sha256: files::sha256_file(&job.annotations)?,
        candidates_sha256: files::sha256_file(&job.candidates)?,
    };
    Ok(Inputs {
        annotations,
        candidates,
        scans,
        unreadable,
        settings,
    })
}

/// The output policy (nothing prepare writes may be an input), the folder's lock (one run
/// per folder at a time, released however the process ends), and the settings it was made
/// with: the same or a fresh folder, never patches made two ways in one index.
fn open_folder(job: &PrepareJob, inputs: &Inputs) -> Result<files::Lock> {
    let mut io = files::RunIo::new();
    io.input("annotations", &job.annotations)
        .input("candidates", &job.candidates);
    for scan in inputs.scans.values() {
        io.inputs("scan", scan.files().iter().map(PathBuf::as_path));
    }
    io.outputs_in("prepared file", &job.out, &[INDEX_FILE, SETTINGS_FILE, ERRORS_FILE])?;
    std::fs::create_dir_all(&job.out)
        .map_err(|e| ScanError::file(format!("{}: cannot create", job.out.display()), e))?;
    let lock = files::Lock::acquire_kept(
        &job.out.join(LOCK_FILE),
        "another `scans prepare` is working on this folder; wait for it, or use another --out",
    )?;
    let settings_path = job.out.join(SETTINGS_FILE);
    if settings_path.exists() {
        let before: PrepareSettings = yaml_serde::from_str(&files::read_regular_to_string(&settings_path)?)
            .map_err(ScanError::format(format!("{}: unreadable", settings_path.display())))?;
        if before != inputs.settings {
            return Err(ScanError::Data(format!(
                "{}: this folder was prepared with other settings or other CSVs ({}); use another --out, or the same settings to resume",
                job.out.display(),
                settings_path.display()
            )));
        }
    } else if job.out.join(INDEX_FILE).exists() {
        return Err(ScanError::Data(format!(
            "{}: already holds a {INDEX_FILE} not made by `scans prepare`; use another --out",
            job.out.display()
        )));
    }
    let done_dir = job.out.join(DONE_DIR);
    std::fs::create_dir_all(&done_dir)
        .map_err(|e| ScanError::file(format!("{}: cannot create", done_dir.display()), e))?;
    files::write_atomic(&settings_path, yaml_serde::to_string(&inputs.settings)?.as_bytes())?;
    Ok(lock)
}

/// One scan's outcome: (seriesuid, scan, patches written or the error).
type ScanResult = (String, PathBuf, Result<usize>);

/// Cuts the scans in `todo` in parallel (`--jobs`), each committed by its patch list.
fn cut_scans(job: &PrepareJob, inputs: &Inputs, todo: &[(&String, &crate::Source)]) -> Result<Vec<ScanResult>> {
    let mut by_series: HashMap<&str, (Vec<&Finding>, Vec<&Finding>)> = HashMap::new();
    for a in &inputs.annotations {
        by_series.entry(&a.seriesuid).or_default().0.push(a);
    }
    for c in &inputs.candidates {
        by_series.entry(&c.seriesuid).or_default().1.push(c);
    }
    let pb = if job.quiet || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let pb = indicatif::ProgressBar::new(todo.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("scans {bar:30} {pos}/{len}  {msg}  ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    };
    let written = AtomicUsize::new(0);
    let jobs = if job.jobs > 0 {
        job.jobs
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get()).min(8)
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|source| ScanError::Threads { count: jobs, source })?;
    let empty = (Vec::new(), Vec::new());
    let done_dir = job.out.join(DONE_DIR);
    let results = pool.install(|| {
        todo.par_iter()
            .map(|(uid, path)| {
                let (nod, cand) = by_series.get(uid.as_str()).unwrap_or(&empty);
                let plan = plan_series(uid, nod, cand, &inputs.settings.sampling);
                let r = do_scan(uid, path, &plan, job).and_then(|rows| {
                    let mut w = csv::Writer::from_writer(Vec::new());
                    for row in &rows {
                        w.serialize(row)?;
                    }
                    if rows.is_empty() {
                        w.write_record(tables::index::COLUMNS)?;
                    }
                    // The commit point of this scan.
                    files::write_atomic(&done_dir.join(format!("{uid}.csv")), &w.into_inner()?)?;
                    Ok(rows.len())
                });
                match &r {
                    Ok(n) => {
                        let total = written.fetch_add(*n, Ordering::Relaxed) + n;
                        pb.set_message(format!("{total} patches"));
                    }
                    Err(e) => pb.suspend(|| eprintln!("prepare: error: series {uid}: {e:#}")),
                }
                pb.inc(1);
                ((*uid).clone(), path.path().to_path_buf(), r)
            })
            .collect()
    });
    pb.finish_and_clear();
    Ok(results)
}

/// Counts the outcomes, and lists the failed scans in `prepare_errors.csv` (removed when
/// none failed).
fn record_outcomes(
    job: &PrepareJob,
    results: &[ScanResult],
    unreadable: &[(PathBuf, String)],
    summary: &mut PrepareSummary,
) -> Result<()> {
    let mut errors = csv::Writer::from_writer(Vec::new());
    errors.write_record(["seriesuid", "scan", "error"])?;
    for (path, why) in unreadable {
        summary.scans_failed += 1;
        errors.write_record(["", &path.display().to_string(), why.as_str()])?;
    }
    for (uid, path, r) in results {
        match r {
            Ok(n) => {
                summary.scans_done_now += 1;
                summary.patches_written += n;
            }
            Err(e) => {
                summary.scans_failed += 1;
                errors.write_record([uid.as_str(), &path.display().to_string(), &format!("{e:#}")])?;
            }
        }
    }
    let errors_path = job.out.join(ERRORS_FILE);
    if summary.scans_failed > 0 {
        files::write_atomic(&errors_path, &errors.into_inner()?)?;
    } else if errors_path.exists() {
        std::fs::remove_file(&errors_path)
            .map_err(|e| ScanError::file(format!("{}: cannot remove", errors_path.display()), e))?;
    }
    Ok(())
}

/// Rebuilds `patch_index.csv` from every finished scan's list, in series order (also those
/// finished by earlier runs on other scan folders: LUNA16's subsets one at a time into one
/// --out), and counts its classes.
fn rebuild_index(job: &PrepareJob, summary: &mut PrepareSummary) -> Result<()> {
    let done_dir = job.out.join(DONE_DIR);
    let mut lists: Vec<PathBuf> = std::fs::read_dir(&done_dir)
        .map_err(|e| ScanError::file(format!("{}: cannot list", done_dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    lists.sort();
    let mut rows: Vec<IndexRow> = Vec::new();
    for p in lists {
        let mut r = csv::Reader::from_reader(files::open_regular(&p)?);
        for row in r.deserialize() {
            rows.push(row.map_err(ScanError::format(format!("{}: bad row", p.display())))?);
        }
    }
    summary.positives_total = rows.iter().filter(|r| r.label == 1).count();
    summary.negatives_total = rows.len() - summary.positives_total;
    tables::index::PatchIndex::write(&job.out.join(INDEX_FILE), &rows).map_err(ScanError::from)
}

/// Runs a whole preparation; `Ok` with the summary even when some scans failed (see
/// `scans_failed`), `Err` for problems that stop everything (bad CSVs, other settings).
pub fn run(job: &PrepareJob) -> Result<PrepareSummary> {
    let t0 = Instant::now();
    let inputs = read_inputs(job)?;
    let _lock = open_folder(job, &inputs)?;
    let scans = &inputs.scans;
    let mut summary = PrepareSummary {
        scans_found: scans.len(),
        annotated_series_without_scan: inputs
            .annotations
            .iter()
            .map(|a| a.seriesuid.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|u| !scans.contains_key(*u))
            .count(),
        ..Default::default()
    };
    let done_dir = job.out.join(DONE_DIR);
    let todo: Vec<(&String, &crate::Source)> = scans
        .iter()
        .filter(|(uid, _)| !done_dir.join(format!("{uid}.csv")).is_file())
        .collect();
    summary.scans_done_before = scans.len() - todo.len();
    if !job.quiet {
        eprintln!(
            "prepare: {} scans under {} ({} done before, {} to do); {} mm cubes at {} mm ({}³ voxels)",
            scans.len(),
            job.scans.display(),
            summary.scans_done_before,
            todo.len(),
            job.sampling.grid.size_mm,
            job.sampling.grid.spacing_mm,
            job.sampling.grid.voxels()
        );
    }
    let results = cut_scans(job, &inputs, &todo)?;
    record_outcomes(job, &results, &inputs.unreadable, &mut summary)?;
    rebuild_index(job, &mut summary)?;
    summary.seconds = t0.elapsed().as_secs_f64();
    summary.patches_per_s = summary.patches_written as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use luna16::Finding;

    fn f(x: f64, value: f64) -> Finding {
        Finding {
            seriesuid: "s".into(),
            x,
            y: 0.0,
            z: 0.0,
            value,
        }
    }

    fn settings(all: bool) -> Sampling {
        Sampling {
            grid: PatchGrid::default(),
            neg_ratio: 2.0,
            min_negatives: 1,
            all_negatives: all,
            seed: 7,
            dtype: CubeDtype::Int16,
        }
    }

    #[test]
    fn negatives_avoid_nodules_and_follow_the_ratio() {
        let nod = [f(0.0, 10.0)];
        // Candidates: two inside the 5 mm radius (one labelled 1), ten outside.
        let mut cand = vec![f(3.0, 0.0), f(4.0, 1.0)];
        cand.extend((0..10).map(|i| f(20.0 + i as f64, 0.0)));
        let nod_refs: Vec<&Finding> = nod.iter().collect();
        let cand_refs: Vec<&Finding> = cand.iter().collect();
        let all = plan_series("s", &nod_refs, &cand_refs, &settings(true));
        let pos: Vec<&Planned> = all.iter().filter(|p| p.label == 1).collect();
        let neg: Vec<&Planned> = all.iter().filter(|p| p.label == 0).collect();
        assert_eq!(pos.len(), 2, "the annotation and the candidate labelled 1");
        assert_eq!(
            pos[1].diam_mm, 10.0,
            "a positive candidate on a nodule takes its diameter"
        );
        assert_eq!(neg.len(), 10, "the negative inside the nodule is left out");
        assert!(neg.iter().all(|p| p.center[0] >= 20.0));
        let sub = plan_series("s", &nod_refs, &cand_refs, &settings(false));
        assert_eq!(sub.iter().filter(|p| p.label == 0).count(), 4, "ratio 2 × 2 positives");
        // Seeded: the same draw again, another draw for another series.
        let again = plan_series("s", &nod_refs, &cand_refs, &settings(false));
        let xs = |v: &[Planned]| v.iter().map(|p| p.center[0]).collect::<Vec<_>>();
        assert_eq!(xs(&sub), xs(&again));
        let other = plan_series("t", &nod_refs, &cand_refs, &settings(false));
        assert_ne!(xs(&sub), xs(&other));
        // A scan without nodules still gives min_negatives.
        let none = plan_series("s", &[], &cand_refs[2..], &settings(false));
        assert_eq!(none.len(), 1);
    }
}
