//! `infer gallery`: the review page opened offline in a real headless Chromium (Debian's
//! `chromium`; `scripts/install-chromium`), its DOM read back after the page's script ran
//! (`--dump-dom`). Each section's patches, in order, equal an independent computation from
//! the scores CSV; the table's filters and sort equal one too; hostile names and series are
//! shown as text and nothing in them runs; missing patches and NaN scores are reported.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use chain_tests::{col, read_csv, run, run_ok, s};

use crate::fixture::fixture;

/// The page's DOM after its script ran, in headless Chromium, offline (a throwaway profile;
/// the page's CSP forbids any fetch).
fn dom(page: &Path, hash: &str) -> String {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect(
            "headless Chromium is needed for the review page's tests: scripts/install-chromium (Debian's chromium)",
        );
    let profile = tempfile::tempdir().expect("tmp");
    let url = format!("file://{}#{hash}", std::fs::canonicalize(page).expect("page").display());
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .output()
        .expect("chromium");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.contains("data-ready=\"1\""),
        "the page's script did not finish in Chromium: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The value of `attr` in an opening tag's text.
fn attr(tag: &str, attr: &str) -> Option<String> {
    let k = format!(" {attr}=\"");
    let at = tag.find(&k)? + k.len();
    let end = tag[at..].find('"')? + at;
    Some(unescape(&tag[at..end]))
}

/// Every opening tag `<NAME ...>` of the DOM that has `needle` in it.
fn tags<'a>(dom: &'a str, name: &str, needle: &str) -> Vec<&'a str> {
    let open = format!("<{name} ");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find(&open) {
        let end = rest[i..].find('>').map_or(rest.len(), |e| i + e + 1);
        let t = &rest[i..end];
        if t.contains(needle) {
            out.push(t);
        }
        rest = &rest[end..];
    }
    out
}

/// The names of the cards each section shows, in order.
fn sections_shown(dom: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for t in tags(dom, "figure", "class=\"card\"") {
        let sec = attr(t, "data-section").expect("section");
        out.entry(sec).or_default().push(attr(t, "data-name").expect("name"));
    }
    out
}

/// The section's total (`data-count`).
fn section_count(dom: &str, id: &str) -> usize {
    tags(dom, "section", &format!("id=\"{id}\""))
        .first()
        .and_then(|t| attr(t, "data-count"))
        .unwrap_or_else(|| panic!("no section {id}"))
        .parse()
        .expect("count")
}

fn table_rows(dom: &str) -> Vec<String> {
    tags(dom, "tr", "data-name=")
        .iter()
        .map(|t| attr(t, "data-name").expect("name"))
        .collect()
}

/// One scored patch as the CSV says.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    series: String,
    label: Option<u8>,
    logit: f64,
    p: f64,
    decision: Option<u8>,
}

fn rows_of(scores: &Path) -> Vec<Row> {
    let (h, rows) = read_csv(scores);
    let get = |r: &[String], c: &str| h.iter().position(|x| x == c).map(|i| r[i].clone());
    let flag = |v: Option<String>| v.and_then(|v| v.parse::<f64>().ok()).map(|x| x as u8);
    rows.iter()
        .map(|r| Row {
            name: r[col(&h, "patch_file")].clone(),
            series: get(r, "seriesuid").unwrap_or_default(),
            label: flag(get(r, "label")),
            logit: r[col(&h, "logit")].parse().unwrap_or(f64::NAN),
            p: get(r, "calibrated_probability")
                .or_else(|| get(r, "probability"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN),
            decision: flag(get(r, "decision")),
        })
        .collect()
}

/// The sections as the module documentation defines them, computed here from the rows.
fn expected(rows: &[Row], top: usize, borderline: usize) -> HashMap<String, Vec<String>> {
    let ok: Vec<&Row> = rows.iter().filter(|r| r.logit.is_finite() && r.p.is_finite()).collect();
    let order = |mut v: Vec<&Row>, desc: bool| -> Vec<String> {
        v.sort_by(|a, b| {
            let o = a.logit.partial_cmp(&b.logit).expect("finite");
            (if desc { o.reverse() } else { o }).then(a.name.cmp(&b.name))
        });
        v.iter().map(|r| r.name.clone()).collect()
    };
    let pick = |f: &dyn Fn(&Row) -> bool| ok.iter().copied().filter(|r| f(r)).collect::<Vec<_>>();
    let mut m = HashMap::new();
    m.insert(
        "fp".into(),
        order(pick(&|r| r.label == Some(0) && r.decision == Some(1)), true),
    );
    m.insert(
        "fn".into(),
        order(pick(&|r| r.label == Some(1) && r.decision == Some(0)), false),
    );
    let mut below = order(pick(&|r| r.decision == Some(0)), true);
    below.truncate(borderline);
    let mut above = order(pick(&|r| r.decision == Some(1)), false);
    above.truncate(borderline);
    let chosen: Vec<&Row> = ok
        .iter()
        .copied()
        .filter(|r| below.contains(&r.name) || above.contains(&r.name))
        .collect();
    m.insert("borderline".into(), order(chosen, true));
    let mut t = order(ok.clone(), true);
    t.truncate(top);
    m.insert("top".into(), t);
    m
}

/// A calibrated scoring of the fixture's patches (its own calibration, not the shared run's).
fn calibrated_scores(w: &Path) -> PathBuf {
    let f = fixture();
    let cal = w.join("cal/calibration.yaml");
    run_ok(
        "calibrate",
        &[
            s(&f.run),
            "--bootstrap",
            "0",
            "--method",
            "platt",
            "--no-report",
            "--no-bake",
            "-o",
            s(&cal),
        ],
    );
    score_fixture(w, &cal, "csv", "scores.csv")
}

/// The fixture's patches scored with the calibration `cal`, into `w/NAME` in `format`.
fn score_fixture(w: &Path, cal: &Path, format: &str, name: &str) -> PathBuf {
    let f = fixture();
    let scores = w.join(name);
    run_ok(
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
            "--calibration",
            s(cal),
            "--index",
            s(&f.patches),
            "--format",
            format,
            "-o",
            s(&scores),
            "-q",
        ],
    );
    scores
}

#[test]
fn each_section_shows_what_the_scores_say_and_the_table_sorts_and_filters() {
    let d = tempfile::tempdir().expect("tmp");
    let w = d.path();
    let f = fixture();
    let scores = calibrated_scores(w);
    // A page into a folder that does not exist yet: made.
    let page = w.join("site/review.html");
    let r = run_ok(
        "infer",
        &[
            "gallery",
            s(&scores),
            "--patches",
            s(&f.patches),
            "-o",
            s(&page),
            "--top",
            "10",
            "--borderline",
            "4",
        ],
    );
    assert!(
        r.stdout.contains("wrote") && r.stdout.contains("80 patches"),
        "{}",
        r.stdout
    );
    let rows = rows_of(&scores);
    let want = expected(&rows, 10, 4);
    assert!(
        !want["fp"].is_empty() || !want["fn"].is_empty(),
        "a fixture with errors to show"
    );

    // Every card of every section (#all: no paging), in order.
    let full = dom(&page, "all");
    let shown = sections_shown(&full);
    for id in ["fp", "fn", "borderline", "top"] {
        assert_eq!(shown.get(id).cloned().unwrap_or_default(), want[id], "section {id}");
        assert_eq!(section_count(&full, id), want[id].len(), "section {id} count");
    }
    assert_eq!(section_count(&full, "problems"), 0);
    // Every thumbnail is a file beside the page, loaded from there (no data: URI, no network).
    let imgs = tags(&full, "img", "mid-slices");
    assert!(imgs.len() >= 80, "{} images", imgs.len());
    for t in &imgs {
        let src = attr(t, "src").expect("src");
        assert!(src.starts_with("review_thumbs/t_"), "{src}");
        assert!(page.with_file_name(&src).is_file(), "{src}");
    }
    let html = std::fs::read_to_string(&page).expect("page");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page names no network address"
    );

    // Paged: the first page of a section only, the count still the whole.
    let paged = dom(&page, "");
    let first = sections_shown(&paged);
    assert_eq!(first.get("top").map(Vec::len), Some(want["top"].len().min(60)));
    assert_eq!(table_rows(&paged).len(), 80);

    // The table: a series filter and a sort by logit, descending, against the same rule here.
    let uid = rows[0].series.clone();
    let table = table_rows(&dom(&page, &format!("all&series={uid}&sort=z&desc")));
    let mut mine: Vec<&Row> = rows.iter().filter(|r| r.series.contains(&uid)).collect();
    mine.sort_by(|a, b| b.logit.partial_cmp(&a.logit).expect("finite").then(a.name.cmp(&b.name)));
    assert_eq!(table, mine.iter().map(|r| r.name.clone()).collect::<Vec<_>>());
    // Label 1 with p in [0.5, 1], by name.
    let table = table_rows(&dom(&page, "all&label=1&min=0.5&max=1&sort=n"));
    let mut mine: Vec<String> = rows
        .iter()
        .filter(|r| r.label == Some(1) && r.p >= 0.5)
        .map(|r| r.name.clone())
        .collect();
    mine.sort();
    assert_eq!(table, mine);

    // The same scores as JSONL: the same sections.
    let jsonl = score_fixture(w, &w.join("cal/calibration.yaml"), "jsonl", "scores.jsonl");
    let pj = w.join("j/review.html");
    run_ok(
        "infer",
        &[
            "gallery",
            s(&jsonl),
            "--patches",
            s(&f.patches),
            "-o",
            s(&pj),
            "--top",
            "10",
            "--borderline",
            "4",
        ],
    );
    let shown_j = sections_shown(&dom(&pj, "all"));
    for id in ["fp", "fn", "borderline", "top"] {
        assert_eq!(
            shown_j.get(id).cloned().unwrap_or_default(),
            want[id],
            "jsonl: section {id}"
        );
    }

    // --threshold instead of the scores' decisions: the sections follow it.
    let page2 = w.join("t.html");
    run_ok(
        "infer",
        &[
            "gallery",
            s(&scores),
            "--patches",
            s(&f.patches),
            "-o",
            s(&page2),
            "--threshold",
            "0.6",
            "--thumbnails",
            "embed",
        ],
    );
    assert!(!w.join("t_thumbs").exists(), "embedded: no folder");
    let rows2: Vec<Row> = rows
        .iter()
        .map(|r| Row {
            decision: Some(u8::from(r.p >= 0.6)),
            ..r.clone()
        })
        .collect();
    let want2 = expected(&rows2, 50, 25);
    let dom2 = dom(&page2, "all");
    let shown2 = sections_shown(&dom2);
    for id in ["fp", "fn", "borderline", "top"] {
        assert_eq!(
            shown2.get(id).cloned().unwrap_or_default(),
            want2[id],
            "threshold: section {id}"
        );
    }
    assert!(tags(&dom2, "img", "mid-slices")
        .iter()
        .all(|t| attr(t, "src").is_some_and(|s| s.starts_with("data:image/png;base64,"))));

    // A rerun over fewer patches: its page names only files that exist; the others go.
    let few = w.join("few.csv");
    let text = std::fs::read_to_string(&scores).expect("scores");
    std::fs::write(&few, text.lines().take(6).collect::<Vec<_>>().join("\n") + "\n").expect("w");
    run_ok(
        "infer",
        &["gallery", s(&few), "--patches", s(&f.patches), "-o", s(&page)],
    );
    let left = std::fs::read_dir(w.join("site/review_thumbs")).expect("thumbs").count();
    assert!(left <= 5, "{left} thumbnails left for 5 patches");
    for t in tags(&dom(&page, "all"), "img", "mid-slices") {
        assert!(page.with_file_name(attr(t, "src").expect("src")).is_file());
    }
}

#[test]
fn hostile_names_are_text_missing_patches_and_nan_scores_are_reported() {
    let d = tempfile::tempdir().expect("tmp");
    let w = d.path();
    let f = fixture();
    let patches = w.join("patches");
    // Names with markup and script in them ('/' cannot be in a file name: the closing tag
    // runs through a folder).
    let hostile = [
        "x<img src=q onerror=\"document.title='PWNED'\">.npy",
        "y<script>document.title='PWNED'<",
        "z\"'&amp;<b>.npy",
    ];
    std::fs::create_dir_all(patches.join(hostile[1])).expect("mkdir");
    let names = [
        hostile[0].to_string(),
        format!("{}/script>.npy", hostile[1]),
        hostile[2].to_string(),
        "ok.npy".to_string(),
    ];
    let src: Vec<PathBuf> = std::fs::read_dir(&f.patches)
        .expect("patches")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .take(4)
        .collect();
    for (n, from) in names.iter().zip(&src) {
        std::fs::copy(from, patches.join(n)).expect("copy");
    }
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["patch_file", "seriesuid", "label", "logit", "probability"])
        .expect("w");
    let series = "s<script>document.title='PWNED'</script>";
    let rows = [
        (names[0].as_str(), series, "0", "2.0", "0.88"),
        (names[1].as_str(), "s2", "1", "-1.0", "0.27"),
        (names[2].as_str(), "s3", "0", "0.5", "0.62"),
        (names[3].as_str(), "s4", "1", "NaN", "NaN"),
        ("gone.npy", "s5", "1", "3.0", "0.95"),
    ];
    for r in rows {
        csv.write_record([r.0, r.1, r.2, r.3, r.4]).expect("w");
    }
    let scores = w.join("scores.csv");
    std::fs::write(&scores, csv.into_inner().expect("csv")).expect("w");
    let page = w.join("review.html");
    let r = run_ok(
        "infer",
        &[
            "gallery",
            s(&scores),
            "--patches",
            s(&patches),
            "-o",
            s(&page),
            "--threshold",
            "0.5",
        ],
    );
    assert!(
        r.stderr.contains("gone.npy") && r.stderr.contains("ok.npy") && r.stderr.contains("not a number"),
        "{}",
        r.stderr
    );
    let dom = dom(&page, "all");
    assert!(
        dom.contains("<title>Review of scores.csv</title>"),
        "the title was changed"
    );
    assert!(!dom.contains("PWNED</title>"));
    assert_eq!(
        dom.matches("<script").count(),
        2,
        "no script element but the page's own two"
    );
    assert!(!dom.contains("<img src=\"q\""), "no element made from a name");
    let shown = sections_shown(&dom);
    // Labelled, threshold 0.5: FP = the two label-0 patches at p >= 0.5 (highest first);
    // FN = none (the label-1 patch at 0.95 has no file but a score, so it counts; 0.27 is FN).
    assert_eq!(shown["fp"], [names[0].clone(), names[2].clone()]);
    assert_eq!(shown["fn"], [names[1].clone()]);
    let mut problems = shown["problems"].clone();
    problems.sort();
    assert_eq!(problems, ["gone.npy", "ok.npy"]);
    assert!(!shown["top"].contains(&names[3]), "a NaN score is in no ranking");
    assert!(
        shown["top"].contains(&"gone.npy".to_string()),
        "a missing file keeps its score"
    );
    // The series is shown as text.
    assert!(
        dom.contains(&series.replace('<', "&lt;").replace('>', "&gt;")),
        "series as text"
    );

    // Outputs that point at inputs, and a file that is not a page of ours, are refused.
    let e = run(
        "infer",
        &["gallery", s(&scores), "--patches", s(&patches), "-o", s(&scores)],
    );
    assert!(!e.ok && e.stderr.contains("input"), "{}", e.stderr);
    let other = w.join("notes.html");
    std::fs::write(&other, "<html>my notes</html>").expect("w");
    let e = run(
        "infer",
        &["gallery", s(&scores), "--patches", s(&patches), "-o", s(&other)],
    );
    assert!(!e.ok && e.stderr.contains("not replaced"), "{}", e.stderr);
    assert_eq!(std::fs::read_to_string(&other).expect("r"), "<html>my notes</html>");
    let e = run("infer", &["gallery", s(&scores), "-o", s(&w.join("r2.html"))]);
    assert!(!e.ok && e.stderr.contains("--patches"), "{}", e.stderr);
    let e = run(
        "infer",
        &[
            "gallery",
            s(&scores),
            "--patches",
            s(&patches),
            "--threshold",
            "2",
            "--spacing-mm=-1",
            "-o",
            s(&w.join("r3.html")),
        ],
    );
    assert!(
        !e.ok && e.stderr.contains("--threshold 2") && e.stderr.contains("--spacing-mm -1"),
        "{}",
        e.stderr
    );
}

#[test]
fn a_run_folder_page_shows_its_validation_patches_and_charts() {
    let d = tempfile::tempdir().expect("tmp");
    let f = fixture();
    // A copy of the run, calibrated: its reliability diagram and ROC, and its operating point.
    let run = d.path().join("run");
    std::fs::create_dir_all(&run).expect("mkdir");
    for e in std::fs::read_dir(&f.run).expect("run") {
        let p = e.expect("entry").path();
        if p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            std::fs::copy(&p, run.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    run_ok("calibrate", &[s(&run), "--bootstrap", "0", "--method", "platt"]);
    let page = d.path().join("run.html");
    let r = run_ok("infer", &["gallery", s(&run), "-o", s(&page), "--thumbnails", "embed"]);
    assert!(r.stdout.contains("wrote"), "{}", r.stdout);
    let dom = dom(&page, "all");
    let (h, val) = read_csv(&run.join("val_scores.csv"));
    let mut got = table_rows(&dom);
    let mut want: Vec<String> = val.iter().map(|r| r[col(&h, "patch_file")].clone()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every validation patch in the table");
    assert!(dom.contains("Validation patches of run"), "title");
    for chart in [
        "Training curves",
        "Reliability (calibration)",
        "ROC with the operating points",
    ] {
        assert_eq!(tags(&dom, "img", &format!("alt=\"{chart}\"")).len(), 1, "chart {chart}");
    }
    // The run's calibration decides: FP and FN as its default operating point calls them.
    let cal: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(run.join("calibration.yaml")).expect("cal")).expect("yaml");
    let point = cal["operating_points"]
        .as_sequence()
        .expect("points")
        .iter()
        .find(|p| p["name"] == cal["default_operating_point"])
        .expect("default point")
        .clone();
    let t = point["threshold_logit"].as_f64().expect("threshold");
    let rows: Vec<Row> = val
        .iter()
        .map(|r| {
            let z: f64 = r[col(&h, "logit")].parse().expect("logit");
            Row {
                name: r[col(&h, "patch_file")].clone(),
                series: r[col(&h, "seriesuid")].clone(),
                label: r[col(&h, "label")].parse().ok(),
                logit: z,
                p: 0.5,
                decision: Some(u8::from(z >= t)),
            }
        })
        .collect();
    let want = expected(&rows, 50, 25);
    let shown = sections_shown(&dom);
    for id in ["fp", "fn"] {
        assert_eq!(shown.get(id).cloned().unwrap_or_default(), want[id], "section {id}");
    }
    assert!(
        dom.contains(point["name"].as_str().expect("name")),
        "the operating point named"
    );
    assert_eq!(section_count(&dom, "problems"), 0);
}

/// Scores of `infer --scans` (candidates named `UID@X,Y,Z`, no patch files): `--scans` cuts
/// each thumbnail from its scan at its centre, the very cube `scans prepare --dtype float32`
/// cuts there (the thumbnails, named by their content, are the same files); a candidate
/// whose scan is missing is reported.
#[test]
fn candidates_scored_from_scans_are_cut_from_them() {
    let d = tempfile::tempdir().expect("tmp");
    let w = d.path();
    let f = fixture();
    let slab = chain_tests::workspace().join("../shared/data/lidc-idri-0002");
    let uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919";
    let mut c = String::from("seriesuid,coordX,coordY,coordZ,class\n");
    for (x, y) in [(-60.0, -20.0), (0.0, 0.0), (60.0, 30.0), (-100.0, -50.0)] {
        c += &format!("{uid},{x},{y},-87.0,0\n");
    }
    std::fs::write(w.join("cand.csv"), &c).expect("w");
    let scores = w.join("scores.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
            "--scans",
            s(&slab),
            "--scan-format",
            "metaimage",
            "--candidates",
            s(&w.join("cand.csv")),
            "-o",
            s(&scores),
            "-q",
        ],
    );
    // One candidate of a series with no scan here.
    let mut text = std::fs::read_to_string(&scores).expect("scores");
    let (h, rows) = read_csv(&scores);
    let mut other = rows[0].clone();
    other[col(&h, "candidate")] = "1.2.3@0,0,0".into();
    other[col(&h, "seriesuid")] = "1.2.3".into();
    let mut wr = csv::Writer::from_writer(Vec::new());
    wr.write_record(&other).expect("w");
    text += &String::from_utf8(wr.into_inner().expect("csv")).expect("utf8");
    std::fs::write(&scores, text).expect("w");
    let page = w.join("scans.html");
    let r = run_ok(
        "infer",
        &[
            "gallery",
            s(&scores),
            "--scans",
            s(&slab),
            "--scan-format",
            "metaimage",
            "--threshold",
            "0.5",
            "-o",
            s(&page),
        ],
    );
    assert!(
        r.stderr.contains("1.2.3@0,0,0") && r.stderr.contains("no scan of series 1.2.3"),
        "{}",
        r.stderr
    );
    let dom = dom(&page, "all");
    assert_eq!(table_rows(&dom).len(), 5);
    assert_eq!(sections_shown(&dom)["problems"], ["1.2.3@0,0,0"]);
    // The same cubes from a prepared folder: the same thumbnails.
    std::fs::write(w.join("ann.csv"), "seriesuid,coordX,coordY,coordZ,diameter_mm\n").expect("w");
    run_ok(
        "scans",
        &[
            "prepare",
            "--scans",
            s(&slab),
            "--format",
            "metaimage",
            "--annotations",
            s(&w.join("ann.csv")),
            "--candidates",
            s(&w.join("cand.csv")),
            "--out",
            s(&w.join("prep")),
            "--all-negatives",
            "--dtype",
            "float32",
            "-q",
        ],
    );
    let (ph, prows) = read_csv(&w.join("prep/patch_index.csv"));
    let mut pscores = String::from("patch_file,logit\n");
    for r in &prows {
        pscores += &format!("{},0.0\n", r[col(&ph, "patch_file")]);
    }
    std::fs::write(w.join("prep_scores.csv"), pscores).expect("w");
    let page2 = w.join("prep.html");
    run_ok(
        "infer",
        &[
            "gallery",
            s(&w.join("prep_scores.csv")),
            "--patches",
            s(&w.join("prep")),
            "-o",
            s(&page2),
        ],
    );
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("thumbs")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&w.join("prep_thumbs")), names(&w.join("scans_thumbs")));
    assert_eq!(names(&w.join("prep_thumbs")).len(), 4);
}
