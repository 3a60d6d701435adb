//! `infer gallery`: a review page of scored patches, one HTML file that opens offline in any
//! browser (inline CSS and JavaScript, no network; thumbnails in a folder beside it or
//! embedded).
//!
//! Each patch is shown as its three orthogonal mid-slices ([`thumbs`]) with its logit,
//! probability, decision, label, series and world centre. Sections answer the questions of
//! error analysis, at the operating point: false positives (label 0, called positive;
//! highest logit first), false negatives (label 1, called negative; lowest first), the
//! borderline cases (the `borderline` called-negative patches with the highest logits and
//! the `borderline` called-positive ones with the lowest, highest first) and the highest
//! scores (`top`, highest first); without labels only the last two; without an operating
//! point only the last. Patches that could not be shown (a missing or unreadable file, a
//! score that is not a number) are listed in a section of their own and named on stderr.
//! Every patch is also in a table that sorts and filters in the browser. Ties in a section's
//! order are broken by name.
//!
//! Inputs: the scores `infer` writes (CSV or JSONL), a trainer's `val_scores.csv`, or a run
//! folder (its validation patches, its calibration's operating point and its charts).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::InferError;

mod from_scans;
mod inputs;
mod page;
pub mod thumbs;

/// Where the thumbnails go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr, strum::EnumMessage)]
#[strum(serialize_all = "kebab-case")]
pub enum Thumbnails {
    /// In a folder beside the page (`NAME_thumbs/`): the page stays small for any number
    /// of patches; move the two together.
    #[default]
    Folder,
    /// Inside the page as data: URIs: one file to send, for a few hundred patches.
    Embed,
}

/// What to show and where.
#[derive(Debug, Clone)]
pub struct GallerySettings {
    /// Scores (`infer`'s CSV or JSONL, a `val_scores.csv`) or a run folder.
    pub scores: PathBuf,
    /// The folder the patch names are relative to (default: the index's folder; for a run
    /// folder, its config's `data`).
    pub patches: Option<PathBuf>,
    /// An index giving series, centres and labels the scores lack (default: the patch
    /// folder's `patch_index.csv` when the scores lack them).
    pub index: Option<PathBuf>,
    /// A calibration: calibrated probabilities and its operating point's decisions.
    pub calibration: Option<PathBuf>,
    /// Which of the calibration's operating points (default: its default).
    pub operating_point: Option<String>,
    /// Call positive at probability >= this (the probability shown).
    pub threshold: Option<f64>,
    pub out: PathBuf,
    pub thumbnails: Thumbnails,
    /// Patches in the highest-scores section.
    pub top: usize,
    /// Patches on each side of the threshold in the borderline section.
    pub borderline: usize,
    /// Voxel size of the patches in mm, for the scale bar (default: the patch folder's
    /// `prepare.yaml`; with `scans`, the cut's voxel size, default 1 mm).
    pub spacing_mm: Option<f64>,
    /// Cut each candidate from the scans under this folder (scores of `infer --scans`).
    pub scans: Option<PathBuf>,
    pub scan_format: Option<scans::Format>,
    /// The cube's edge in mm when cutting from scans (default 64).
    pub size_mm: Option<f64>,
}

/// One scored patch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Item {
    pub name: String,
    pub path: Option<PathBuf>,
    pub series: Option<String>,
    pub centre: Option<[f64; 3]>,
    pub label: Option<u8>,
    pub logit: f64,
    /// The probability shown (calibrated when there is a calibration).
    pub p: f64,
    pub decision: Option<u8>,
    /// Why the patch cannot be shown fully (missing file, score not a number).
    pub problem: Option<String>,
}

/// A section: its id, title, a line on what it holds, and its patches (indices into the
/// items) in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub id: &'static str,
    pub title: String,
    pub note: String,
    pub items: Vec<usize>,
}

/// What the page was made of and where it went.
#[derive(Debug, Clone)]
pub struct GallerySummary {
    pub patches: usize,
    pub sections: Vec<(String, usize)>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub html_bytes: u64,
    pub thumbs_dir: Option<PathBuf>,
    pub thumbs_bytes: u64,
    pub seconds: f64,
}

/// The most patches a page takes (each needs a thumbnail; a page of more is no review).
pub const MAX_PATCHES: usize = 1_000_000;

/// The sections of `items` (see the module's documentation).
pub fn sections(items: &[Item], top: usize, borderline: usize, op: &str) -> Vec<Section> {
    let scored: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].logit.is_finite() && items[i].p.is_finite())
        .collect();
    let by_logit = |v: &mut Vec<usize>, desc: bool| {
        v.sort_by(|&a, &b| {
            let o = items[a].logit.total_cmp(&items[b].logit);
            let o = if desc { o.reverse() } else { o };
            o.then_with(|| items[a].name.cmp(&items[b].name))
        });
    };
    let pick = |f: &dyn Fn(&Item) -> bool, desc: bool| {
        let mut v: Vec<usize> = scored.iter().copied().filter(|&i| f(&items[i])).collect();
        by_logit(&mut v, desc);
        v
    };
    let labelled = items.iter().any(|i| i.label.is_some());
    let decided = items.iter().any(|i| i.decision.is_some());
    let mut out = Vec::new();
    if labelled && decided {
        out.push(Section {
            id: "fp",
            title: "False positives".into(),
            note: format!("label 0, called positive at {op}; highest score first"),
            items: pick(&|i| i.label == Some(0) && i.decision == Some(1), true),
        });
        out.push(Section {
            id: "fn",
            title: "False negatives".into(),
            note: format!("label 1, called negative at {op}; lowest score first"),
            items: pick(&|i| i.label == Some(1) && i.decision == Some(0), false),
        });
    }
    if decided {
        let mut below = pick(&|i| i.decision == Some(0), true);
        below.truncate(borderline);
        let mut above = pick(&|i| i.decision == Some(1), false);
        above.truncate(borderline);
        let mut v: Vec<usize> = above.into_iter().chain(below).collect();
        by_logit(&mut v, true);
        out.push(Section {
            id: "borderline",
            title: "Borderline".into(),
            note: format!(
                "the {borderline} called positive with the lowest scores and the {borderline} called negative with the highest, around {op}; highest first"
            ),
            items: v,
        });
    }
    let mut t = pick(&|_| true, true);
    t.truncate(top);
    out.push(Section {
        id: "top",
        title: "Highest scores".into(),
        note: format!("the {top} highest; highest first"),
        items: t,
    });
    out.push(Section {
        id: "problems",
        title: "Not shown in full".into(),
        note: "a patch file missing or unreadable, or a score that is not a number".into(),
        items: (0..items.len()).filter(|&i| items[i].problem.is_some()).collect(),
    });
    out
}

/// Makes the page.
pub fn run(s: &GallerySettings) -> Result<GallerySummary, InferError> {
    let t0 = Instant::now();
    check_settings(s)?;
    let src = inputs::read(s)?;
    // One run at a time writes a page and its thumbnails' folder.
    let _lock = files::Lock::beside(&s.out, &format!("review page {}", s.out.display()))?;
    let mut items = src.items;
    let mut warnings = src.warnings;
    let thumbs_dir = (s.thumbnails == Thumbnails::Folder).then(|| thumbs_dir_of(&s.out));
    if let (Some(d), Some(p)) = (&thumbs_dir, &src.patches) {
        if same_dir(d, p) {
            return Err(InferError::Usage(format!(
                "the thumbnails' folder {} is the patch folder: choose another -o",
                d.display()
            )));
        }
    }
    let made = match &s.scans {
        Some(dir) => {
            let grid = crate::from_scans::grid(Some(s.size_mm.unwrap_or(64.0)), src.spacing_mm.unwrap_or(1.0), 64)?;
            let made = from_scans::thumbnails(&items, dir, s.scan_format, &grid)?;
            note_problems(&mut items, &made);
            made
        }
        None => make_thumbnails(&mut items, src.spacing_mm),
    };
    // After the thumbnails: a patch that could not be read is one of the problems.
    let secs = sections(&items, s.top, s.borderline, &src.op_short);
    let (urls, thumbs_bytes) = match &thumbs_dir {
        Some(d) => page::write_thumbs(d, &made)?,
        None => (page::embed_thumbs(&made), 0),
    };
    let bar_mm = made.iter().find_map(|m| m.as_ref().ok().and_then(|t| t.1));
    if src.spacing_mm.is_none() {
        warnings
            .push("voxel size unknown (no prepare.yaml in the patch folder): no scale bar; give --spacing-mm".into());
    }
    let problems: Vec<String> = items
        .iter()
        .filter_map(|i| i.problem.as_ref().map(|p| format!("{}: {p}", i.name)))
        .collect();
    let html = page::render(&page::Page {
        title: &src.title,
        source: &src.source,
        model_sha256: src.model_sha256.as_deref(),
        operating_point: &src.op_text,
        score_name: &src.score_name,
        bar_mm,
        spacing_mm: src.spacing_mm,
        warnings: &warnings,
        charts: &src.charts,
        items: &items,
        thumbs: &urls,
        sections: &secs,
    });
    files::write_atomic(&s.out, html.as_bytes())?;
    if let Some(d) = &thumbs_dir {
        page::remove_unused_thumbs(d, &urls);
    }
    Ok(GallerySummary {
        patches: items.len(),
        sections: secs.iter().map(|x| (x.title.clone(), x.items.len())).collect(),
        problems,
        warnings,
        html_bytes: html.len() as u64,
        thumbs_dir,
        thumbs_bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn check_settings(s: &GallerySettings) -> Result<(), InferError> {
    let mut bad = Vec::new();
    if let Some(t) = s.threshold {
        if !(t.is_finite() && (0.0..=1.0).contains(&t)) {
            bad.push(format!("--threshold {t}: a probability in [0, 1]"));
        }
    }
    if let Some(v) = s.spacing_mm {
        if !(v.is_finite() && v > 0.0 && v <= 100.0) {
            bad.push(format!("--spacing-mm {v}: a voxel size in (0, 100] mm"));
        }
    }
    for (flag, n) in [("--top", s.top), ("--borderline", s.borderline)] {
        if n > MAX_PATCHES {
            bad.push(format!("{flag} {n}: at most {MAX_PATCHES}"));
        }
    }
    if s.operating_point.is_some() && s.calibration.is_none() && !s.scores.is_dir() {
        bad.push("--operating-point needs --calibration (or a run folder with calibration.yaml)".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(InferError::Usage(bad.join("; ")))
    }
}

/// `review.html` → `review_thumbs/` beside it.
pub fn thumbs_dir_of(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "review".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}_thumbs"))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A thumbnail's PNG and its scale bar, or why there is none.
type Made = Result<(Vec<u8>, Option<f64>), String>;

/// Every item's thumbnail, in parallel; a patch that cannot be read becomes its item's
/// problem.
fn make_thumbnails(items: &mut [Item], spacing: Option<f64>) -> Vec<Made> {
    use rayon::prelude::*;
    let made: Vec<Made> = items
        .par_iter()
        .map(|i| {
            let p = i.path.as_ref().ok_or("no patch file (give --patches)")?;
            let cube = models::patch::read_npy_hu(p).map_err(|e| e.to_string())?;
            thumbs::thumbnail(&cube, spacing).map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect();
    note_problems(items, &made);
    made
}

/// A thumbnail that could not be made is its item's problem.
fn note_problems(items: &mut [Item], made: &[Made]) {
    for (i, m) in items.iter_mut().zip(made) {
        if let Err(e) = m {
            i.problem = Some(match i.problem.take() {
                Some(p) => format!("{p}; {e}"),
                None => e.clone(),
            });
        }
    }
}

/// Items by name (for joining an index).
pub(crate) fn by_name(items: &[Item]) -> HashMap<&str, usize> {
    items.iter().enumerate().map(|(i, x)| (x.name.as_str(), i)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn item(name: &str, logit: f64, label: Option<u8>, decision: Option<u8>) -> Item {
        Item {
            name: name.into(),
            logit,
            p: 1.0 / (1.0 + (-logit).exp()),
            label,
            decision,
            ..Item::default()
        }
    }

    #[test]
    fn sections_follow_their_definitions() {
        let items = vec![
            item("a", 3.0, Some(0), Some(1)),
            item("b", 2.0, Some(1), Some(1)),
            item("c", 0.5, Some(0), Some(1)),
            item("d", -0.1, Some(1), Some(0)),
            item("e", -2.0, Some(1), Some(0)),
            item("f", -3.0, Some(0), Some(0)),
            item("g", f64::NAN, Some(0), Some(1)),
            item("h", 0.5, Some(0), Some(1)),
        ];
        let s = sections(&items, 2, 1, "youden_j");
        let ids: Vec<&str> = s.iter().map(|x| x.id).collect();
        assert_eq!(ids, ["fp", "fn", "borderline", "top", "problems"]);
        let names = |k: usize| -> Vec<&str> { s[k].items.iter().map(|&i| items[i].name.as_str()).collect() };
        assert_eq!(
            names(0),
            ["a", "c", "h"],
            "FP: highest first, ties by name, NaN left out"
        );
        assert_eq!(names(1), ["e", "d"], "FN: lowest first");
        assert_eq!(
            names(2),
            ["c", "d"],
            "borderline: lowest called positive, highest called negative"
        );
        assert_eq!(names(3), ["a", "b"]);
        assert!(names(4).is_empty(), "problems come from the items' problem");
        // Without labels: borderline and top; without decisions: top only.
        let unl: Vec<Item> = items
            .iter()
            .map(|i| Item {
                label: None,
                ..i.clone()
            })
            .collect();
        let ids: Vec<&str> = sections(&unl, 2, 1, "x").iter().map(|x| x.id).collect();
        assert_eq!(ids, ["borderline", "top", "problems"]);
        let und: Vec<Item> = items
            .iter()
            .map(|i| Item {
                decision: None,
                ..i.clone()
            })
            .collect();
        let ids: Vec<&str> = sections(&und, 2, 1, "x").iter().map(|x| x.id).collect();
        assert_eq!(ids, ["top", "problems"]);
    }

    #[test]
    fn thumbnails_go_beside_the_page() {
        assert_eq!(thumbs_dir_of(Path::new("a/review.html")), Path::new("a/review_thumbs"));
        assert_eq!(thumbs_dir_of(Path::new("r")), Path::new("r_thumbs"));
    }
}
