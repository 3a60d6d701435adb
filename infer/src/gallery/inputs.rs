//! The review page's inputs: the scores (CSV or JSONL of `infer`, a `val_scores.csv`, or a
//! run folder's), joined with an index for what they lack, and the operating point.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{GallerySettings, Item};
use crate::InferError;

/// Everything the page shows besides the thumbnails.
pub(super) struct Source {
    pub items: Vec<Item>,
    pub warnings: Vec<String>,
    pub title: String,
    pub source: String,
    pub model_sha256: Option<String>,
    /// The operating point, in a sentence and in a word.
    pub op_text: String,
    pub op_short: String,
    pub score_name: String,
    /// Charts of a run folder: (title, PNG bytes).
    pub charts: Vec<(String, Vec<u8>)>,
    pub spacing_mm: Option<f64>,
    pub patches: Option<PathBuf>,
}

/// One row of the scores, by column name.
type Row = HashMap<String, String>;

/// The rows of a CSV or JSONL scores file (JSONL by its extension or a first `{`).
fn read_rows(path: &Path) -> Result<Vec<(usize, Row)>, InferError> {
    let text = files::read_regular_to_string(path)?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl") || text.trim_start().starts_with('{');
    let mut out = Vec::new();
    if jsonl {
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
                .map_err(|e| files::Error::parse(path, format!("line {}: not a JSON object", i + 1), e))?;
            let row = v
                .into_iter()
                .map(|(k, v)| {
                    let s = match v {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Null => String::new(),
                        o => o.to_string(),
                    };
                    (k, s)
                })
                .collect();
            out.push((i + 1, row));
        }
        return Ok(out);
    }
    let mut r = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let h: Vec<String> = r
        .headers()
        .map_err(|e| files::Error::parse(path, "header", e))?
        .iter()
        .map(str::to_string)
        .collect();
    for (line, rec) in tables::csvio::rows(&mut r) {
        let rec = rec.map_err(|e| tables::Error::row(path, line, e))?;
        out.push((line, h.iter().cloned().zip(rec.iter().map(str::to_string)).collect()));
    }
    Ok(out)
}

fn num(path: &Path, line: usize, col: &str, v: &str) -> Result<f64, InferError> {
    v.trim()
        .parse::<f64>()
        .map_err(|_| crate::bad_input(path, format!("line {line}: {col} {v:?} is not a number")))
}

fn flag01(path: &Path, line: usize, col: &str, v: &str) -> Result<Option<u8>, InferError> {
    match v.trim() {
        "" => Ok(None),
        "0" | "0.0" => Ok(Some(0)),
        "1" | "1.0" => Ok(Some(1)),
        o => Err(crate::bad_input(
            path,
            format!("line {line}: {col} {o:?} is not 0 or 1"),
        )),
    }
}

/// One item from a row (its patch path not resolved yet).
fn item_of(path: &Path, line: usize, r: &Row, name_col: &str) -> Result<Item, InferError> {
    let get = |c: &str| r.get(c).map(String::as_str).filter(|v| !v.is_empty());
    let name = get(name_col).ok_or_else(|| crate::bad_input(path, format!("line {line}: empty {name_col}")))?;
    let logit = num(path, line, "logit", get("logit").unwrap_or("nan"))?;
    let p = match get("calibrated_probability").or(get("probability")) {
        Some(v) => num(path, line, "probability", v)?,
        None => 1.0 / (1.0 + (-logit).exp()),
    };
    let centre = match (get("center_x"), get("center_y"), get("center_z")) {
        (Some(x), Some(y), Some(z)) => Some([
            num(path, line, "center_x", x)?,
            num(path, line, "center_y", y)?,
            num(path, line, "center_z", z)?,
        ]),
        _ => None,
    };
    let problem = (!logit.is_finite() || !p.is_finite())
        .then(|| format!("score is not a number (logit {logit}, probability {p})"));
    Ok(Item {
        name: name.to_string(),
        path: None,
        series: get("seriesuid").map(str::to_string),
        centre,
        label: flag01(path, line, "label", get("label").unwrap_or(""))?,
        logit,
        p,
        decision: flag01(path, line, "decision", get("decision").unwrap_or(""))?,
        problem,
    })
}

/// What a scores file holds besides its items: the model's sha256 (one model only), the
/// operating point its decision column was made at, and what its probability is.
struct Scores {
    items: Vec<Item>,
    model_sha256: Option<String>,
    operating_point: Option<String>,
    score_name: &'static str,
}

fn read_scores(path: &Path, from_scans: bool) -> Result<Scores, InferError> {
    let rows = read_rows(path)?;
    let Some((_, first)) = rows.first() else {
        return Err(crate::bad_input(path, "no rows"));
    };
    let name_col = ["patch_file", "candidate"]
        .into_iter()
        .find(|c| first.contains_key(*c))
        .ok_or_else(|| {
            crate::bad_input(
                path,
                "no patch_file column (LUNA16's submission format names no patches: give infer's csv output)",
            )
        })?;
    if name_col == "candidate" && !from_scans {
        return Err(crate::bad_input(
            path,
            "scores of candidates cut from scans name no patch files: give --scans DIR (the scans they were cut from)",
        ));
    }
    if !first.contains_key("logit") {
        return Err(crate::bad_input(path, "no logit column"));
    }
    let mut items = Vec::with_capacity(rows.len());
    let mut seen = HashMap::new();
    let (mut sha, mut op) = (None::<String>, None::<String>);
    for (line, r) in &rows {
        let it = item_of(path, *line, r, name_col)?;
        if let Some(first) = seen.insert(it.name.clone(), *line) {
            return Err(crate::bad_input(
                path,
                format!("line {line}: {} listed again (first on line {first})", it.name),
            ));
        }
        if let Some(s) = r.get("model_sha256").filter(|s| !s.is_empty()) {
            match &sha {
                Some(x) if x != s => {
                    return Err(crate::bad_input(
                        path,
                        format!("line {line}: scores of two models ({x} and {s})"),
                    ));
                }
                _ => sha = Some(s.clone()),
            }
        }
        if op.is_none() {
            op = r.get("operating_point").filter(|s| !s.is_empty()).cloned();
        }
        items.push(it);
        if items.len() > super::MAX_PATCHES {
            return Err(crate::bad_input(
                path,
                format!("more than {} patches", super::MAX_PATCHES),
            ));
        }
    }
    let score_name = if first.contains_key("calibrated_probability") {
        "calibrated probability (the scores')"
    } else if first.contains_key("probability") {
        "probability"
    } else {
        "probability (sigmoid of the logit)"
    };
    Ok(Scores {
        items,
        model_sha256: sha,
        operating_point: op,
        score_name,
    })
}

/// A run folder's parts: its scores, calibration, patch folder and charts.
struct RunFolder {
    scores: PathBuf,
    calibration: Option<PathBuf>,
    patches: Option<PathBuf>,
    charts: Vec<(String, Vec<u8>)>,
    model_sha256: Option<String>,
}

fn run_folder(dir: &Path) -> Result<RunFolder, InferError> {
    let scores = dir.join("val_scores.csv");
    if !scores.is_file() {
        return Err(crate::bad_input(dir, "not a finished run folder (no val_scores.csv)"));
    }
    let cal = dir.join("calibration.yaml");
    let data = files::read_regular_to_string(&dir.join("config.yaml"))
        .ok()
        .and_then(|t| yaml_serde::from_str::<yaml_serde::Value>(&t).ok())
        .and_then(|v| v["data"].as_str().map(PathBuf::from));
    let mut charts = Vec::new();
    for (title, f) in [
        ("Training curves", "curves.png".to_string()),
        ("Reliability (calibration)", "calibration_plots/reliability.png".into()),
        ("ROC with the operating points", "calibration_plots/roc.png".into()),
        ("Precision–recall", "calibration_plots/precision_recall.png".into()),
        ("Decision curve", "calibration_plots/decision_curve.png".into()),
    ] {
        if let Ok(b) = files::read_regular(&dir.join(&f)) {
            charts.push((title.to_string(), b));
        }
    }
    let model = dir.join("model.onnx");
    Ok(RunFolder {
        scores,
        calibration: cal.is_file().then_some(cal),
        patches: data,
        charts,
        model_sha256: model
            .is_file()
            .then(|| files::sha256_file(&model))
            .transpose()?,
    })
}

/// The operating point: the decisions made, and how they are described.
fn decide(
    s: &GallerySettings,
    items: &mut [Item],
    cal_path: Option<&Path>,
    model_sha: Option<&str>,
    column: (Option<String>, &str),
) -> Result<(String, String, String), InferError> {
    let mut score_name = column.1.to_string();
    let decided = items.iter().any(|i| i.decision.is_some());
    let mut op = decided.then(|| {
        let o = column.0.unwrap_or_else(|| "the scores' operating point".into());
        (format!("the scores' own decisions ({o})"), o)
    });
    if let Some(cp) = cal_path {
        let cal = models::calibration::CalibrationFile::load(cp)?;
        if let Some(m) = model_sha {
            if cal.model.sha256 != m {
                return Err(crate::bad_input(
                    cp,
                    format!("made for model {}, the scores are of model {m}", cal.model.sha256),
                ));
            }
        }
        let name = s
            .operating_point
            .clone()
            .unwrap_or_else(|| cal.default_operating_point.clone());
        let point = cal.operating_points.iter().find(|p| p.name == name).ok_or_else(|| {
            let names: Vec<&str> = cal.operating_points.iter().map(|p| p.name.as_str()).collect();
            crate::bad_input(cp, format!("no operating point {name:?} (it has {})", names.join(", ")))
        })?;
        for i in items.iter_mut() {
            i.p = cal.probability(i.logit);
            i.decision = i
                .logit
                .is_finite()
                .then_some(u8::from(i.logit >= point.threshold_logit));
        }
        score_name = format!("calibrated probability ({})", cal.method.name());
        op = Some((
            format!(
                "{name} of {}: logit ≥ {:.4} (probability ≥ {:.4})",
                cp.display(),
                point.threshold_logit,
                point.threshold_probability
            ),
            name,
        ));
    }
    if let Some(t) = s.threshold {
        for i in items.iter_mut() {
            i.decision = i.p.is_finite().then_some(u8::from(i.p >= t));
        }
        op = Some((format!("{score_name} ≥ {t} (--threshold)"), format!("p ≥ {t}")));
    }
    Ok(match op {
        Some((text, short)) => (text, short, score_name),
        None => {
            for i in items.iter_mut() {
                i.decision = None;
            }
            (
                "none (the scores are not calibrated): give --threshold P or --calibration FILE for the false positives, false negatives and borderline cases".into(),
                "the threshold".into(),
                score_name,
            )
        }
    })
}

/// Series, centres and labels from an index, for the items that lack them; a label the
/// index contradicts is refused.
fn join_index(items: &mut [Item], index: &Path, warnings: &mut Vec<String>) -> Result<(), InferError> {
    let idx = tables::index::read_scoring_index(index)?;
    let at = super::by_name(items);
    let mut hits = vec![false; items.len()];
    let mut fill = Vec::new();
    for r in &idx.rows {
        if let Some(&i) = at.get(r.patch_file.as_str()) {
            fill.push((i, r.clone()));
        }
    }
    for (i, r) in fill {
        hits[i] = true;
        let it = &mut items[i];
        if let (Some(a), Some(b)) = (it.label, r.label) {
            if a != b {
                return Err(crate::bad_input(
                    index,
                    format!(
                        "{}: label {b} here, {a} in the scores (files of two data sets?)",
                        it.name
                    ),
                ));
            }
        }
        it.label = it.label.or(r.label);
        it.series.get_or_insert(r.seriesuid);
        it.centre.get_or_insert([r.center_x, r.center_y, r.center_z]);
    }
    let missing = hits.iter().filter(|h| !**h).count();
    if missing > 0 {
        warnings.push(format!("{missing} patches are not in {}", index.display()));
    }
    Ok(())
}

/// The patch folder's voxel size from its `prepare.yaml`.
fn spacing_of(patches: &Path) -> Option<f64> {
    let t = files::read_regular_to_string(&patches.join("prepare.yaml")).ok()?;
    let v: yaml_serde::Value = yaml_serde::from_str(&t).ok()?;
    v["sampling"]["grid"]["spacing_mm"]
        .as_f64()
        .filter(|x| x.is_finite() && *x > 0.0)
}

/// The page may be written: not an input, a file (not a device), not a file of another
/// kind; its folder made if missing.
fn check_output(s: &GallerySettings, scores: &Path, cal: Option<&Path>) -> Result<(), InferError> {
    let mut io = files::RunIo::new();
    io.input("scores", scores);
    for (role, p) in [("index", s.index.as_deref()), ("calibration", cal)] {
        if let Some(p) = p {
            io.input(role, p);
        }
    }
    files::create_parent(&s.out)?;
    if let files::Target::Stream(_) = io.output("review page", &s.out)? {
        return Err(crate::bad_input(
            &s.out,
            "the review page must be a file (its thumbnails go beside it)",
        ));
    }
    files::check_replaceable(&s.out, "review page", &|head| {
        head.starts_with(super::page::MAGIC.as_bytes())
    })?;
    Ok(())
}

/// The folder the patch names are relative to, which must exist.
fn patch_folder<'a>(patches: Option<&'a Path>, scores: &Path) -> Result<&'a Path, InferError> {
    match patches {
        Some(p) if p.is_dir() => Ok(p),
        Some(p) => Err(crate::bad_input(
            p,
            "the patch folder does not exist (give --patches DIR)",
        )),
        None => Err(InferError::Usage(format!(
            "{}: which folder are the patch names relative to? Give --patches DIR (or --index INDEX; --scans DIR for scores of infer --scans)",
            scores.display()
        ))),
    }
}

/// Reads the inputs and checks the output against them.
pub(super) fn read(s: &GallerySettings) -> Result<Source, InferError> {
    let run = s.scores.is_dir().then(|| run_folder(&s.scores)).transpose()?;
    let scores_path = run.as_ref().map_or_else(|| s.scores.clone(), |r| r.scores.clone());
    let Scores {
        mut items,
        model_sha256: sha,
        operating_point: column_op,
        score_name: column_score,
    } = read_scores(&scores_path, s.scans.is_some())?;
    let model_sha = sha.or_else(|| run.as_ref().and_then(|r| r.model_sha256.clone()));
    let cal = s
        .calibration
        .clone()
        .or_else(|| run.as_ref().and_then(|r| r.calibration.clone()));
    let patches = s
        .patches
        .clone()
        .or_else(|| run.as_ref().and_then(|r| r.patches.clone()))
        .or_else(|| s.index.as_ref().and_then(|i| i.parent().map(Path::to_path_buf)));
    check_output(s, &scores_path, cal.as_deref())?;
    let mut warnings = Vec::new();
    let index = s.index.clone().or_else(|| {
        let lacking = items
            .iter()
            .any(|i| i.series.is_none() || i.centre.is_none() || i.label.is_none());
        patches
            .as_ref()
            .map(|p| p.join("patch_index.csv"))
            .filter(|p| lacking && p.is_file())
    });
    if let Some(ix) = &index {
        join_index(&mut items, ix, &mut warnings)?;
    }
    if s.scans.is_none() {
        let dir = patch_folder(patches.as_deref(), &scores_path)?;
        for i in &mut items {
            i.path = Some(dir.join(&i.name));
        }
    }
    let (op_text, op_short, score_name) = decide(
        s,
        &mut items,
        cal.as_deref(),
        model_sha.as_deref(),
        (column_op, column_score),
    )?;
    if items.iter().all(|i| i.decision.is_none()) {
        warnings.push(format!("operating point: {op_text}"));
    }
    let name = |p: &Path| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    Ok(Source {
        title: match &run {
            Some(_) => format!("Validation patches of run {}", name(&s.scores)),
            None => format!("Review of {}", name(&scores_path)),
        },
        source: scores_path.display().to_string(),
        model_sha256: model_sha,
        op_text,
        op_short,
        score_name,
        charts: run.map(|r| r.charts).unwrap_or_default(),
        spacing_mm: s
            .spacing_mm
            .or_else(|| patches.as_deref().and_then(spacing_of))
            .or(s.scans.as_ref().map(|_| 1.0)),
        patches,
        items,
        warnings,
    })
}
