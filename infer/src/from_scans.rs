//! Scoring straight from scans: `infer --scans DIR --candidates FILE`.
//!
//! The candidates ([`scans::candidates`]: LUNA16's format or a patch index) are matched to
//! the scans found under the folder ([`scans::find`]: MetaImage, DICOM series, NIfTI-1) by
//! seriesuid, and scored scan by scan in seriesuid order (each scan's candidates in the
//! file's order). Cubes are cut in memory by the code `scans prepare` uses
//! ([`scans::resample::extract_into`]) and given to the model as a patch file of that cube
//! would be ([`models::patch::cube_into_hashed`]): the same logit and the same
//! `input_sha256` as `scans prepare --dtype float32` then `infer --index`.
//!
//! The pipeline: `--scan-jobs` reader threads read the next scans (in order, never more than
//! that many ahead of the one being cut, so at most that many scans are in memory); the
//! producer cuts the current scan's cubes in parallel (rayon) straight into the batch
//! buffers, which go to the scoring thread through the same bounded channel as decoded
//! files. A scan that cannot be read is the error of each of its candidates (printed once);
//! a centre outside its scan is that candidate's error (a cube of air scores nothing
//! real); the other scans go on.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Condvar, Mutex};

use rayon::prelude::*;

use models::preprocess::Preprocess;
use scans::candidates::CandidateFormat;
use scans::resample::PatchGrid;

pub use crate::inputs::ScanSet;
use crate::inputs::{scan_groups, Decoded, Inputs, Item};
use crate::InferError;

/// What to do with candidates whose series has no scan under the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::VariantArray, strum::IntoStaticStr, strum::EnumMessage)]
#[strum(serialize_all = "kebab-case")]
pub enum MissingScans {
    /// Each is an error of the run (listed in the errors file; exit non-zero): a FROC over
    /// a candidate list with holes would be quietly low.
    #[default]
    Error,
    /// Leave them out and say how many (scoring one LUNA16 subset with the whole list).
    Skip,
}

/// Reads the candidates, finds the scans, and lists the items in scan order. Files under
/// the folder that cannot be read as a scan are refused entries (each an error of the run).
pub fn collect(
    dir: &Path,
    candidates: &Path,
    only: Option<scans::Format>,
    missing: MissingScans,
    held_out: Option<&crate::folds::HeldOut>,
) -> Result<Inputs, InferError> {
    let list = scans::candidates::read(candidates)?;
    let found = scans::find(dir, only)?;
    let mut out = Inputs {
        has_label: list.has_label,
        index: Some(list.path.clone()),
        refused: list.refused,
        ..Inputs::default()
    };
    for (p, why) in found.unreadable {
        out.refused.push((p.display().to_string(), why));
    }
    let mut rows = list.rows;
    if let Some(h) = held_out {
        // Only the series this fold held out; the others are other folds' to score.
        let before = rows.len();
        rows.retain(|c| h.series.contains(&c.seriesuid));
        out.notes.push(format!(
            "fold {} of {}: {} candidate(s) of its {} held-out series scored; {} of the other folds' series left to them",
            h.fold,
            h.folds,
            rows.len(),
            h.series.len(),
            before - rows.len()
        ));
    }
    // Scan order (seriesuid), the file's order within a scan.
    rows.sort_by(|a, b| a.seriesuid.cmp(&b.seriesuid));
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    for c in rows {
        let Some(src) = found.scans.get(&c.seriesuid) else {
            match missing {
                MissingScans::Error => out.refused.push((
                    c.name,
                    format!(
                        "no scan of series {} under {} (--missing-scans skip leaves such candidates out)",
                        c.seriesuid,
                        dir.display()
                    ),
                )),
                MissingScans::Skip => *skipped.entry(c.seriesuid).or_default() += 1,
            }
            continue;
        };
        out.items.push(Item {
            path: src.path().to_path_buf(),
            name: c.name.clone(),
            row: Some(tables::index::ScoringRow {
                patch_file: c.name,
                seriesuid: c.seriesuid,
                diam_mm: c.diam_mm,
                center_x: c.center[0],
                center_y: c.center[1],
                center_z: c.center[2],
                label: c.label,
            }),
        });
    }
    if !skipped.is_empty() {
        out.notes.push(format!(
            "left out {} candidate(s) of {} series with no scan under {} (--missing-scans skip)",
            skipped.values().sum::<usize>(),
            skipped.len(),
            dir.display()
        ));
    }
    let used: HashSet<&str> = out
        .items
        .iter()
        .filter_map(|it| it.row.as_ref().map(|r| r.seriesuid.as_str()))
        .collect();
    let idle = found.scans.keys().filter(|u| !used.contains(u.as_str())).count();
    if idle > 0 {
        out.notes.push(format!(
            "{idle} scan(s) under {} have no candidates in {}: not read",
            dir.display(),
            candidates.display()
        ));
    }
    let sources = found
        .scans
        .into_iter()
        .filter(|(u, _)| used.contains(u.as_str()))
        .collect();
    out.scans = Some(std::sync::Arc::new(ScanSet {
        dir: dir.to_path_buf(),
        candidates: candidates.to_path_buf(),
        format: list.format,
        sources,
    }));
    Ok(out)
}

/// The patch grid of a run: `--size-mm` (default: the model's cube at `--spacing-mm`) and
/// `--spacing-mm`, checked as `scans prepare` checks them.
pub fn grid(size_mm: Option<f64>, spacing_mm: f64, cube_size: usize) -> Result<PatchGrid, InferError> {
    let g = PatchGrid {
        size_mm: size_mm.unwrap_or(cube_size as f64 * spacing_mm),
        spacing_mm,
    };
    g.validate()
        .map_err(|e| InferError::Usage(format!("--size-mm/--spacing-mm: {e}")))?;
    Ok(g)
}

/// The seriesuid of an item scored from a scan.
fn uid(it: &Item) -> &str {
    it.row.as_ref().map_or("", |r| r.seriesuid.as_str())
}

/// Why a centre cannot be scored in this scan, if it cannot: outside the volume (by more
/// than half a voxel), most likely coordinates in another frame.
fn outside(scan: &scans::Scan, it: &Item) -> Option<String> {
    let r = it.row.as_ref()?;
    (!scan.geometry.contains_world([r.center_x, r.center_y, r.center_z])).then(|| {
        "the centre lies outside the scan (world mm in the scan's frame expected, as LUNA16's CSVs; \
             `scans inspect SCAN --world X,Y,Z` shows where a point lands): not scored"
            .to_string()
    })
}

thread_local! {
    /// One cube in HU, per cutting thread.
    static HU: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Cuts one candidate's cube into `slot` (the model's input) and returns its digest.
fn cut_one(
    scan: &scans::Scan,
    it: &Item,
    grid: &PatchGrid,
    pre: &Preprocess,
    slot: &mut [f32],
) -> Result<String, String> {
    if let Some(why) = outside(scan, it) {
        return Err(why);
    }
    let r = it.row.as_ref().ok_or("internal: a scan candidate without its row")?;
    let n = grid.voxels();
    HU.with_borrow_mut(|hu| {
        hu.resize(n * n * n, 0.0);
        scans::resample::extract_into(scan, [r.center_x, r.center_y, r.center_z], grid, hu);
        models::patch::cube_into_hashed(hu, n, pre, slot)
    })
}

fn item_err(it: &Item, msg: String) -> models::Error {
    models::Error::from(files::Error::BadInput {
        path: it.path.clone(),
        msg,
    })
}

/// Reads scans ahead of the cutting, in order, never more than `jobs` scans alive (read or
/// being read, the one being cut included).
struct ReadAhead<'s> {
    sources: Vec<Option<&'s scans::Source>>,
    next: AtomicUsize,
    /// Scans finished with by the cutting.
    done: Mutex<usize>,
    cv: Condvar,
    stop: AtomicBool,
    jobs: usize,
}

impl ReadAhead<'_> {
    /// One reader thread: takes the next scan once it is within `jobs` of the cutting.
    fn read_loop(&self, tx: &std::sync::mpsc::Sender<(usize, models::Result<scans::Scan>)>) {
        loop {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            if i >= self.sources.len() {
                return;
            }
            {
                let mut done = self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                while i >= *done + self.jobs && !self.stop.load(Ordering::SeqCst) {
                    done = self.cv.wait(done).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let r = match self.sources[i] {
                Some(src) => src.read(),
                None => Err(models::Error::from(files::Error::BadInput {
                    path: PathBuf::new(),
                    msg: "internal: no scan for these candidates".into(),
                })),
            };
            if tx.send((i, r)).is_err() {
                return;
            }
        }
    }

    fn finished(&self) {
        *self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        self.cv.notify_all();
    }

    fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cv.notify_all();
    }
}

/// What the producer needs: the scans, the grid, the model's preprocessing and batch size.
pub(crate) struct Feed<'s> {
    pub set: &'s ScanSet,
    pub grid: PatchGrid,
    pub pre: Preprocess,
    pub batch: usize,
    /// Scans read at once (each in memory while read and cut).
    pub jobs: usize,
    /// Cut every cube before sending the first batch (benchmarks: the ceiling).
    pub preload: bool,
}

/// An empty batch around a recycled buffer.
fn empty_batch<'a>(mut data: Vec<f32>) -> Decoded<'a> {
    data.clear();
    Decoded {
        good: Vec::new(),
        digests: Vec::new(),
        bad: Vec::new(),
        data,
    }
}

/// The producer: reads the scans of `todo` (grouped by scan, in order) ahead on `jobs`
/// threads, cuts each scan's cubes in parallel into batches, and sends full batches (and
/// the last one) to the scoring thread. Returns when done or when the consumer stops.
pub(crate) fn produce<'a>(todo: &[&'a Item], f: &Feed, tx: &SyncSender<Decoded<'a>>, back: &Receiver<Vec<f32>>) {
    if f.preload {
        // Every batch cut first, then sent: what the model does on cubes in memory.
        let all = std::sync::Mutex::new(Vec::new());
        let (_keep, none) = std::sync::mpsc::channel();
        cut_all(
            todo,
            f,
            &|d| {
                all.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(d);
                true
            },
            &none,
        );
        for dec in all.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            if tx.send(dec).is_err() {
                return;
            }
        }
        return;
    }
    cut_all(todo, f, &|d| tx.send(d).is_ok(), back);
}

/// [`produce`]'s work: read ahead, cut, send.
fn cut_all<'a>(todo: &[&'a Item], f: &Feed, out: &dyn Fn(Decoded<'a>) -> bool, back: &Receiver<Vec<f32>>) {
    let per = f.pre.cube_size.pow(3);
    let groups = scan_groups(todo);
    let ahead = ReadAhead {
        sources: groups.iter().map(|g| f.set.sources.get(uid(g[0]))).collect(),
        next: AtomicUsize::new(0),
        done: Mutex::new(0),
        cv: Condvar::new(),
        stop: AtomicBool::new(false),
        jobs: f.jobs.max(1),
    };
    std::thread::scope(|sc| {
        let (stx, srx) = std::sync::mpsc::channel();
        for _ in 0..ahead.jobs.min(groups.len()) {
            let stx = stx.clone();
            let ahead = &ahead;
            sc.spawn(move || ahead.read_loop(&stx));
        }
        drop(stx);
        let mut pending: BTreeMap<usize, models::Result<scans::Scan>> = BTreeMap::new();
        let mut cur = empty_batch(back.try_recv().unwrap_or_default());
        let send = |cur: &mut Decoded<'a>, force: bool| -> bool {
            if cur.good.len() < f.batch && !force {
                return true;
            }
            if cur.good.is_empty() && cur.bad.is_empty() {
                return true;
            }
            let next = empty_batch(back.try_recv().unwrap_or_default());
            out(std::mem::replace(cur, next))
        };
        'scans: for (gi, items) in groups.iter().enumerate() {
            let scan = loop {
                if let Some(r) = pending.remove(&gi) {
                    break r;
                }
                match srx.recv() {
                    Ok((i, r)) => {
                        pending.insert(i, r);
                    }
                    Err(_) => {
                        break Err(models::Error::from(files::Error::BadInput {
                            path: items[0].path.clone(),
                            msg: "internal: the scan readers stopped".into(),
                        }))
                    }
                }
            };
            match scan {
                Err(e) => {
                    let msg = e.to_string();
                    for it in items.iter() {
                        let shown = it.path.display().to_string();
                        let why = msg.strip_prefix(&format!("{shown}: ")).unwrap_or(&msg);
                        cur.bad.push((*it, item_err(it, why.to_string())));
                    }
                    if !send(&mut cur, true) {
                        break 'scans;
                    }
                }
                Ok(scan) => {
                    let mut rest: &[&'a Item] = items;
                    while !rest.is_empty() {
                        let room = f.batch - cur.good.len();
                        let (now, later) = rest.split_at(room.min(rest.len()));
                        rest = later;
                        let start = cur.good.len();
                        cur.data.resize((start + now.len()) * per, 0.0);
                        let results: Vec<Result<String, String>> = cur.data[start * per..]
                            .par_chunks_mut(per)
                            .zip(now.par_iter())
                            .map(|(slot, it)| cut_one(&scan, it, &f.grid, &f.pre, slot))
                            .collect();
                        for (k, (it, r)) in now.iter().zip(results).enumerate() {
                            match r {
                                Ok(d) => {
                                    let at = cur.good.len();
                                    if at != start + k {
                                        cur.data.copy_within((start + k) * per..(start + k + 1) * per, at * per);
                                    }
                                    cur.good.push(*it);
                                    cur.digests.push(d);
                                }
                                Err(why) => cur.bad.push((*it, item_err(it, why))),
                            }
                        }
                        let good = cur.good.len();
                        cur.data.truncate(good * per);
                        if !send(&mut cur, false) {
                            break 'scans;
                        }
                    }
                }
            }
            ahead.finished();
        }
        let _ = send(&mut cur, true);
        ahead.halt();
    });
}

/// `--resume` from scans: the digest each named candidate's cube gives now (cut as scoring
/// would), scan by scan; a candidate whose scan cannot be read or whose centre is outside
/// it gets none (its earlier row is then not kept).
pub(crate) fn digests_now(
    names: &HashSet<String>,
    items: &[Item],
    set: &ScanSet,
    grid: &PatchGrid,
    pre: &Preprocess,
) -> HashMap<String, String> {
    let wanted: Vec<&Item> = items.iter().filter(|it| names.contains(&it.name)).collect();
    let mut out = HashMap::new();
    let per = pre.cube_size.pow(3);
    for g in scan_groups(&wanted) {
        let Some(Ok(scan)) = set.sources.get(uid(g[0])).map(scans::Source::read) else {
            continue;
        };
        let got: Vec<(String, Option<String>)> = g
            .par_iter()
            .map_init(
                || vec![0f32; per],
                |slot, it| (it.name.clone(), cut_one(&scan, it, grid, pre, slot).ok()),
            )
            .collect();
        out.extend(got.into_iter().filter_map(|(n, d)| d.map(|d| (n, d))));
    }
    out
}

/// The scans' files, for the output policy (nothing written may be one).
pub(crate) fn scan_files(set: &ScanSet) -> Vec<PathBuf> {
    set.sources.values().flat_map(scans::Source::files).collect()
}

/// Reads the candidates' tabular features for a model with them: from the candidates file's
/// own columns (an index), or by series from `--features-csv`.
pub(crate) fn features(
    set: &ScanSet,
    features_csv: Option<&Path>,
    keys: &[(&str, &str)],
    columns: &[String],
) -> Result<Vec<Result<Vec<f32>, String>>, InferError> {
    match (set.format, features_csv) {
        (CandidateFormat::Luna16, Some(join)) => Ok(models::features::read_by_series(join, keys, columns)?),
        (CandidateFormat::Luna16, None) => Err(crate::bad_input(
            &set.candidates,
            format!(
                "the model takes tabular features ({}) and LUNA16's candidates hold none: give them by series with --features-csv",
                columns.join(", ")
            ),
        )),
        (CandidateFormat::Index, join) => {
            let src = models::features::FeatureSource {
                columns: columns.to_vec(),
                join: join.map(Path::to_path_buf),
            };
            Ok(models::features::read(&set.candidates, keys, &src)?)
        }
    }
}
