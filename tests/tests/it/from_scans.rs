//! `infer --scans DIR --candidates FILE`: scoring straight from scans, through the real
//! binaries. The numbers equal the two-step path (`scans prepare --dtype float32`, then
//! `infer --index`) byte for byte, for MetaImage, DICOM and NIfTI scans other tools wrote and
//! for the real LIDC-IDRI slab; a scan that fails is its candidates' error while the others
//! go on; shards are whole scans and merge to one run; `--resume` rescores a changed scan.
use std::path::{Path, PathBuf};

use chain_tests::{col, read_csv, run, run_ok, s, workspace};
use scans::metaimage::{self, ElementType, Geometry, WriteOptions};
use std::process::Command;

use crate::fixture::fixture;

/// The fixture's model (16³ cubes).
fn model() -> PathBuf {
    fixture().run.join("model.onnx")
}

/// A 40 × 36 × 20 scan of 0.8 × 0.8 × 2 mm at `offset` along `direction`, −800 HU with a
/// blob (σ 2.5 mm, +1000 HU) at each world point of `blobs`; voxels vary with `seed`.
pub(crate) fn scan(path: &Path, direction: [[f64; 3]; 3], offset: [f64; 3], blobs: &[[f64; 3]], o: WriteOptions, seed: u32) {
    let g = Geometry::new([40, 36, 20], [0.8, 0.8, 2.0], offset, direction).expect("geometry");
    let mut v = Vec::new();
    for z in 0..20 {
        for y in 0..36 {
            for x in 0..40 {
                let w = g.voxel_to_world([f64::from(x), f64::from(y), f64::from(z)]);
                let mut hu = -800.0 + f64::from((x * 7 + y * 13 + z * 29 + seed) % 50);
                for b in blobs {
                    let d2: f64 = (0..3).map(|k| (w[k] - b[k]).powi(2)).sum();
                    hu += 1000.0 * (-d2 / (2.0 * 2.5 * 2.5)).exp();
                }
                v.push(hu as f32);
            }
        }
    }
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    metaimage::write(path, &g, &v, o).expect("write");
}

pub(crate) const ID: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// Three MetaImage scans (A: identity; B: compressed, z flipped; C: .mha, float, x and y
/// flipped) and the world points to score in each (inside the scan, near its border, on a
/// blob).
fn three_scans(dir: &Path) -> Vec<(String, [f64; 3])> {
    let mut pts = Vec::new();
    scan(
        &dir.join("A.mhd"),
        ID,
        [-16.0, -14.0, -20.0],
        &[[0.0, 0.0, 0.0]],
        WriteOptions::default(),
        1,
    );
    pts.extend([[0.0, 0.0, 0.0], [10.0, -5.0, 6.0], [-15.0, 13.0, -19.0]].map(|p| ("A".to_string(), p)));
    let compressed = WriteOptions {
        compressed: true,
        ..Default::default()
    };
    let flip_z = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]];
    scan(
        &dir.join("B.mhd"),
        flip_z,
        [-16.0, -14.0, 20.0],
        &[[3.0, 2.0, 1.0]],
        compressed,
        2,
    );
    pts.extend([[3.0, 2.0, 1.0], [-8.0, 8.0, 10.0]].map(|p| ("B".to_string(), p)));
    let mha = WriteOptions {
        local: true,
        element_type: ElementType::Float,
        ..Default::default()
    };
    let flip_xy = [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]];
    scan(&dir.join("sub/C.mha"), flip_xy, [16.0, 14.0, -20.0], &[], mha, 3);
    pts.extend([[0.5, 0.25, -3.0], [12.0, 10.0, 15.0], [-14.0, -12.0, -18.5]].map(|p| ("C".to_string(), p)));
    pts
}

/// LUNA16's files for `points` (all class 0, no nodules) in `dir`.
fn luna16_csvs(dir: &Path, points: &[(String, [f64; 3])]) -> (PathBuf, PathBuf) {
    let ann = dir.join("annotations.csv");
    std::fs::write(&ann, "seriesuid,coordX,coordY,coordZ,diameter_mm\n").expect("w");
    let cand = dir.join("candidates.csv");
    let mut text = String::from("seriesuid,coordX,coordY,coordZ,class\n");
    for (uid, p) in points {
        text += &format!("{uid},{},{},{},0\n", p[0], p[1], p[2]);
    }
    std::fs::write(&cand, text).expect("w");
    (ann, cand)
}

/// Scores `points` of the scans under `scans` both ways and checks that the outputs are the
/// same bytes (`extra`: flags for both infer runs; `format`: --format for prepare and the
/// scans run). Returns the two-step output's text.
fn both_ways(scans: &Path, points: &[(String, [f64; 3])], format: Option<&str>, extra: &[&str], tag: &str) -> String {
    let work = tempfile::tempdir().expect("tmp");
    let w = work.path();
    let (ann, cand) = luna16_csvs(w, points);
    let prep = w.join("prep");
    let mut a = vec![
        "prepare",
        "--scans",
        s(scans),
        "--annotations",
        s(&ann),
        "--candidates",
        s(&cand),
        "--out",
        s(&prep),
        "--all-negatives",
        "--min-negatives",
        "0",
        "--size-mm",
        "16",
        "--dtype",
        "float32",
        "-q",
    ];
    if let Some(f) = format {
        a.extend(["--format", f]);
    }
    run_ok("scans", &a);
    let m = model();
    let two = w.join("two.csv");
    let mut a = vec!["--index", s(&prep), "-m", s(&m), "-o", s(&two), "-q"];
    a.extend_from_slice(extra);
    run_ok("infer", &a);
    let one = w.join("one.csv");
    let idx = prep.join("patch_index.csv");
    let mut a = vec![
        "--scans",
        s(scans),
        "--candidates",
        s(&idx),
        "-m",
        s(&m),
        "-o",
        s(&one),
        "-q",
    ];
    if let Some(f) = format {
        a.extend(["--scan-format", f]);
    }
    a.extend_from_slice(extra);
    run_ok("infer", &a);
    let (t2, t1) = (
        std::fs::read_to_string(&two).expect("two"),
        std::fs::read_to_string(&one).expect("one"),
    );
    assert_eq!(t2.lines().count(), points.len() + 1, "{tag}: {t2}");
    assert!(t1 == t2, "{tag}: from scans\n{t1}\ntwo steps\n{t2}");
    // LUNA16's candidates file gives the same logits, named by series and point.
    let luna = w.join("luna.csv");
    let mut a = vec![
        "--scans",
        s(scans),
        "--candidates",
        s(&cand),
        "-m",
        s(&m),
        "-o",
        s(&luna),
        "-q",
    ];
    if let Some(f) = format {
        a.extend(["--scan-format", f]);
    }
    a.extend_from_slice(extra);
    run_ok("infer", &a);
    let (h2, r2) = read_csv(&two);
    let (hl, rl) = read_csv(&luna);
    assert_eq!(hl[0], "candidate");
    let key = |h: &[String], r: &[String]| {
        (
            r[col(h, "seriesuid")].clone(),
            ["center_x", "center_y", "center_z"].map(|c| r[col(h, c)].parse::<f64>().expect("centre").to_bits()),
            r[col(h, "logit")].clone(),
        )
    };
    let mut k2: Vec<_> = r2.iter().map(|r| key(&h2, r)).collect();
    let mut kl: Vec<_> = rl.iter().map(|r| key(&hl, r)).collect();
    k2.sort();
    kl.sort();
    assert_eq!(k2, kl, "{tag}: LUNA16 candidates against the prepared index");
    for r in &rl {
        let c = &r[col(&hl, "candidate")];
        assert!(c.starts_with(&format!("{}@", r[col(&hl, "seriesuid")])), "{tag}: {c}");
    }
    t2
}

#[test]
fn metaimage_scans_score_as_their_prepared_cubes_bit_for_bit() {
    let d = tempfile::tempdir().expect("tmp");
    let pts = three_scans(d.path());
    let plain = both_ways(d.path(), &pts, None, &[], "metaimage");
    // Test-time augmentation goes the same way (other logits, the same on both paths).
    let tta = both_ways(d.path(), &pts, None, &["--tta", "flips"], "metaimage, --tta flips");
    assert_ne!(plain, tta);
}

#[test]
fn dicom_and_nifti_scans_other_tools_wrote_score_as_their_prepared_cubes() {
    let d = tempfile::tempdir().expect("tmp");
    // make_cases.py (pydicom, nibabel): one 20 × 16 × 5 volume as a DICOM series and as NIfTI.
    let cases = d.path().join("cases");
    std::fs::create_dir_all(&cases).expect("mkdir");
    let o = std::process::Command::new(chain_tests::python())
        .arg(workspace().join("scans/tests/reference/make_cases.py"))
        .arg(&cases)
        .output()
        .expect("python (scripts/setup)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Points at the volume's centre voxel and off it, in each scan's own world frame.
    let points = |scan: &scans::Scan, uid: &str| -> Vec<(String, [f64; 3])> {
        let g = &scan.geometry;
        let c = g.dims.map(|n| (n as f64 - 1.0) / 2.0);
        [[0.0, 0.0, 0.0], [3.5, -2.0, 1.0], [-5.0, 4.0, -1.5]]
            .iter()
            .map(|o| {
                (
                    uid.to_string(),
                    g.voxel_to_world([c[0] + o[0], c[1] + o[1], c[2] + o[2]]),
                )
            })
            .collect()
    };
    let uid = "1.2.826.0.1.3680043.8.498.61";
    for case in ["explicit_le", "deflated", "implicit_le"] {
        let dir = cases.join("dicom").join(case);
        let found = scans::find(&dir, None).expect("find");
        let scan = found.scans[uid].read().expect("read");
        both_ways(&dir, &points(&scan, uid), None, &[], case);
    }
    // NIfTI: the seriesuid is the file name.
    for name in ["sform_and_qform.nii", "gzipped.nii.gz"] {
        let dir = d.path().join(format!("nifti_{name}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::copy(cases.join("nifti").join(name), dir.join(name)).expect("copy");
        let uid = name.split('.').next().expect("stem");
        let scan = scans::nifti::read(&dir.join(name)).expect("read");
        both_ways(&dir, &points(&scan, uid), None, &[], name);
    }
}

#[test]
fn the_real_lidc_slab_scores_as_its_prepared_cubes_as_metaimage_and_as_dicom() {
    let slab = workspace().join("../shared/data/lidc-idri-0002");
    let uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919";
    let pts: Vec<(String, [f64; 3])> = [
        (-60.0, -20.0, -87.0),
        (0.0, 0.0, -90.0),
        (60.0, 30.0, -85.5),
        (-100.5, 40.25, -88.0),
    ]
    .iter()
    .map(|&(x, y, z)| (uid.to_string(), [x, y, z]))
    .collect();
    let mhd = both_ways(&slab, &pts, Some("metaimage"), &[], "LIDC MetaImage");
    let dcm = both_ways(&slab, &pts, Some("dicom"), &[], "LIDC DICOM");
    // The same voxels in both formats: the same logits.
    let logits = |t: &str| {
        t.lines()
            .skip(1)
            .map(|l| l.split(',').nth(7).unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(logits(&mhd), logits(&dcm));
}

/// Three scans and a candidates file with a missing series, a centre outside its scan and a
/// broken scan; returns (scans folder, candidates file).
fn hostile_setup(dir: &Path) -> (PathBuf, PathBuf) {
    let scans = dir.join("scans");
    let pts = three_scans(&scans);
    let mut extra = pts.clone();
    extra.push(("A".into(), [500.0, 0.0, 0.0]));
    extra.push(("missing".into(), [1.0, 2.0, 3.0]));
    // A fourth scan whose data file is cut short.
    scan(
        &scans.join("D.mhd"),
        ID,
        [-16.0, -14.0, -20.0],
        &[],
        WriteOptions::default(),
        4,
    );
    let raw = scans.join("D.raw");
    let len = std::fs::metadata(&raw).expect("raw").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    extra.extend([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]].map(|p| ("D".to_string(), p)));
    let (_, cand) = luna16_csvs(dir, &extra);
    (scans, cand)
}

#[test]
fn a_scan_that_fails_is_its_candidates_error_and_the_other_scans_are_scored() {
    let d = tempfile::tempdir().expect("tmp");
    let (scans, cand) = hostile_setup(d.path());
    let m = model();
    let out = d.path().join("scores.csv");
    let r = run(
        "infer",
        &[
            "--scans",
            s(&scans),
            "--candidates",
            s(&cand),
            "-m",
            s(&m),
            "-o",
            s(&out),
            "--format",
            "csv",
        ],
    );
    assert!(
        !r.ok,
        "missing, outside and broken candidates fail the run: {}",
        r.stderr
    );
    assert!(r.stderr.contains("5 input(s) could not be scored"), "{}", r.stderr);
    // The broken scan's reason once on stderr, for each of its candidates in the errors file.
    assert_eq!(r.stderr.matches("D.mhd: ").count(), 1, "{}", r.stderr);
    let (h, rows) = read_csv(&out);
    assert_eq!(rows.len(), 8, "the eight good candidates are scored");
    assert!(rows
        .iter()
        .all(|r| ["A", "B", "C"].contains(&r[col(&h, "seriesuid")].as_str())));
    let (eh, errs) = read_csv(&d.path().join("scores.csv.errors.csv"));
    assert_eq!(eh, ["candidate", "error"]);
    let why = |name: &str| {
        errs.iter()
            .find(|e| e[0] == name)
            .map(|e| e[1].clone())
            .unwrap_or_else(|| panic!("{name} not in the errors file: {errs:?}"))
    };
    assert!(why("A@500,0,0").contains("outside the scan"));
    assert!(why("missing@1,2,3").contains("no scan of series missing"));
    for p in ["0,0,0", "1,1,1", "2,2,2"] {
        assert!(why(&format!("D@{p}")).contains("needs 57600"), "{errs:?}");
    }
    // --missing-scans skip: the missing series is left out and counted, not an error.
    let r = run(
        "infer",
        &[
            "--scans",
            s(&scans),
            "--candidates",
            s(&cand),
            "-m",
            s(&m),
            "-o",
            s(&out),
            "--missing-scans",
            "skip",
        ],
    );
    assert!(
        r.stderr.contains("left out 1 candidate(s) of 1 series with no scan"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("4 input(s) could not be scored"), "{}", r.stderr);
    // LUNA16's submission format straight from scans feeds froc.
    let luna = d.path().join("luna.csv");
    let _ = run(
        "infer",
        &[
            "--scans",
            s(&scans),
            "--candidates",
            s(&cand),
            "-m",
            s(&m),
            "-o",
            s(&luna),
            "--format",
            "luna16",
        ],
    );
    let (lh, lrows) = read_csv(&luna);
    assert_eq!(lh, ["seriesuid", "coordX", "coordY", "coordZ", "probability"]);
    assert_eq!(lrows.len(), 8);
}

#[test]
fn shards_are_whole_scans_merge_to_one_run_and_resume_rescores_a_changed_scan() {
    let d = tempfile::tempdir().expect("tmp");
    let scans = d.path().join("scans");
    let pts = three_scans(&scans);
    let (_, cand) = luna16_csvs(d.path(), &pts);
    let m = model();
    let score = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "--scans",
            s(&scans),
            "--candidates",
            s(&cand),
            "-m",
            s(&m),
            "-o",
            s(out),
            "-q",
        ];
        a.extend_from_slice(extra);
        run("infer", &a)
    };
    let whole = d.path().join("whole.csv");
    assert!(score(&whole, &[]).ok);
    let mut parts = Vec::new();
    let mut series_seen: Vec<String> = Vec::new();
    for k in 1..=2 {
        let p = d.path().join(format!("part{k}.csv"));
        let r = score(&p, &["--shard", &format!("{k}/2")]);
        assert!(r.ok, "{}", r.stderr);
        let (h, rows) = read_csv(&p);
        let mut uids: Vec<String> = rows.iter().map(|r| r[col(&h, "seriesuid")].clone()).collect();
        uids.dedup();
        for u in &uids {
            assert!(!series_seen.contains(u), "scan {u} in two shards");
        }
        series_seen.extend(uids);
        parts.push(p);
    }
    assert_eq!(series_seen, ["A", "B", "C"]);
    let merged = d.path().join("merged.csv");
    run_ok("infer", &["merge", s(&parts[0]), s(&parts[1]), "-o", s(&merged)]);
    let text = |p: &Path| std::fs::read_to_string(p).expect("read");
    assert!(
        text(&merged) == text(&whole),
        "merged\n{}\none run\n{}",
        text(&merged),
        text(&whole)
    );
    // Resume: nothing to do, then one scan changed on disk (its blob moved) is scored again
    // and the others kept; the result equals a fresh run.
    let resumed = d.path().join("resumed.csv");
    std::fs::copy(&whole, &resumed).expect("copy");
    let r = run(
        "infer",
        &[
            "--scans",
            s(&scans),
            "--candidates",
            s(&cand),
            "-m",
            s(&m),
            "-o",
            s(&resumed),
            "--resume",
        ],
    );
    assert!(
        r.stderr.contains("scored 0 patch(es) (8 kept from the earlier output)"),
        "{}",
        r.stderr
    );
    scan(
        &scans.join("B.mhd"),
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]],
        [-16.0, -14.0, 20.0],
        &[[-8.0, 8.0, 10.0]],
        WriteOptions {
            compressed: true,
            ..Default::default()
        },
        2,
    );
    let r = run(
        "infer",
        &[
            "--scans",
            s(&scans),
            "--candidates",
            s(&cand),
            "-m",
            s(&m),
            "-o",
            s(&resumed),
            "--resume",
        ],
    );
    assert!(
        r.stderr
            .contains("scored 2 patch(es) (6 kept from the earlier output, 2 scored again: their files changed since)"),
        "{}",
        r.stderr
    );
    // The same rows as a fresh run (the rescored ones after the kept ones).
    let fresh = d.path().join("fresh.csv");
    assert!(score(&fresh, &[]).ok);
    let sorted = |p: &Path| {
        let mut l: Vec<String> = text(p).lines().map(str::to_string).collect();
        l.sort();
        l
    };
    assert_eq!(sorted(&resumed), sorted(&fresh));
    assert_ne!(sorted(&fresh), sorted(&whole), "the changed scan scores otherwise");
}

/// The evaluation loop of LUNA16's false-positive-reduction track on synthetic scans: a
/// 2-fold run trained on prepared patches; each fold's model scores every candidate of the
/// series it held out straight from the scans; `infer merge --folds` joins them; `froc`
/// evaluates all of them. Every candidate is scored exactly once, by the fold that did not
/// train on its series, and the guard against the leak holds.
#[test]
fn a_k_fold_run_scores_its_held_out_scans_and_froc_evaluates_every_candidate() {
    let d = tempfile::tempdir().expect("tmp");
    let w = d.path();
    let scans = w.join("scans");
    let mut ann = String::from("seriesuid,coordX,coordY,coordZ,diameter_mm\n");
    let mut cand = String::from("seriesuid,coordX,coordY,coordZ,class\n");
    let mut uids = Vec::new();
    for k in 0..6u32 {
        let uid = format!("1.2.826.0.9.{k}");
        let nodule = [f64::from(k) - 3.0, 2.0, -1.0];
        scan(
            &scans.join(format!("{uid}.mhd")),
            ID,
            [-16.0, -14.0, -20.0],
            &[nodule],
            WriteOptions::default(),
            k,
        );
        ann += &format!("{uid},{},{},{},6\n", nodule[0], nodule[1], nodule[2]);
        cand += &format!("{uid},{},{},{},1\n", nodule[0], nodule[1], nodule[2]);
        for j in 0..5 {
            let p = [
                -10.0 + 4.0 * f64::from(j),
                -8.0 + f64::from(j * k % 7),
                8.0 - 3.0 * f64::from(j),
            ];
            cand += &format!("{uid},{},{},{},0\n", p[0], p[1], p[2]);
        }
        uids.push(uid);
    }
    let (ann_p, cand_p, series_p) = (
        w.join("annotations.csv"),
        w.join("candidates.csv"),
        w.join("series.csv"),
    );
    std::fs::write(&ann_p, ann).expect("w");
    std::fs::write(&cand_p, &cand).expect("w");
    std::fs::write(&series_p, uids.join("\n") + "\n").expect("w");
    let prep = w.join("prep");
    run_ok(
        "scans",
        &[
            "prepare",
            "--scans",
            s(&scans),
            "--annotations",
            s(&ann_p),
            "--candidates",
            s(&cand_p),
            "--out",
            s(&prep),
            "--size-mm",
            "16",
            "--all-negatives",
            "-q",
        ],
    );
    let cv = w.join("cv");
    run_ok(
        "trainer",
        &[
            "train",
            "--data",
            s(&prep),
            "--out",
            s(&cv),
            "--folds",
            "2",
            "--cube-size",
            "16",
            "--width",
            "4",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "-q",
        ],
    );
    let mut outs = Vec::new();
    for k in 1..=2 {
        let out = w.join(format!("fold_{k}.csv"));
        let fold = cv.join(format!("fold_{k}"));
        let r = run(
            "infer",
            &[
                "--scans",
                s(&scans),
                "--candidates",
                s(&cand_p),
                "--held-out",
                s(&fold),
                "--format",
                "luna16",
                "-o",
                s(&out),
            ],
        );
        assert!(r.ok, "{}", r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "fold {k} of 2: 18 candidate(s) of its 3 held-out series scored"
            )),
            "{}",
            r.stderr
        );
        outs.push(out);
    }
    // Fold 1's series scored with fold 2's model: refused (that model trained on them).
    let r = run(
        "infer",
        &[
            "--scans",
            s(&scans),
            "--candidates",
            s(&cand_p),
            "--held-out",
            s(&cv.join("fold_1")),
            "-m",
            s(&cv.join("fold_2/model.onnx")),
            "-o",
            s(&w.join("leak.csv")),
        ],
    );
    assert!(!r.ok && r.stderr.contains("not the model of fold 1"), "{}", r.stderr);
    let oof = w.join("oof.csv");
    let r = run("infer", &["merge", "--folds", s(&outs[0]), "-o", s(&oof)]);
    assert!(!r.ok && r.stderr.contains("fold 2 of 2 is missing"), "{}", r.stderr);
    run_ok("infer", &["merge", "--folds", s(&outs[1]), s(&outs[0]), "-o", s(&oof)]);
    // Every candidate exactly once.
    let (_, rows) = read_csv(&oof);
    let mut got: Vec<String> = rows
        .iter()
        .map(|r| format!("{},{},{},{}", r[0], r[1], r[2], r[3]))
        .collect();
    let mut want: Vec<String> = cand
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let num = |t: &str| format!("{:?}", t.parse::<f64>().expect("n"));
            format!("{},{},{},{}", f[0], num(f[1]), num(f[2]), num(f[3]))
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // A fold output changed after its record was written: the merge refuses it.
    let mut text = std::fs::read_to_string(&outs[0]).expect("read");
    let row = text.lines().nth(1).expect("a row").to_string();
    text.push_str(&row);
    text.push('\n');
    std::fs::write(&outs[0], text).expect("w");
    let r = run(
        "infer",
        &[
            "merge",
            "--folds",
            s(&outs[0]),
            s(&outs[1]),
            "-o",
            s(&w.join("oof2.csv")),
        ],
    );
    assert!(!r.ok && r.stderr.contains("not the output its record"), "{}", r.stderr);
    assert!(!w.join("oof2.csv").exists());
    let froc_out = w.join("froc");
    run_ok(
        "froc",
        &[
            "--annotations",
            s(&ann_p),
            "--seriesuids",
            s(&series_p),
            "--results",
            s(&oof),
            "--out",
            s(&froc_out),
            "--bootstrap",
            "0",
        ],
    );
    let y: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(froc_out.join("froc_summary.yaml")).expect("read"))
            .expect("yaml");
    let cpm = y["cpm"].as_f64().expect("cpm");
    assert!((0.0..=1.0).contains(&cpm), "{cpm}");
}

/// A model with tabular features scored from scans: LUNA16's candidates take them by series
/// from `--features-csv` (without it: refused, saying so), an index takes them from its own
/// columns, and both give the same logits; a series the CSV lacks is its candidates' error.
#[test]
fn tabular_features_come_from_the_candidates_or_by_series() {
    let d = tempfile::tempdir().expect("tmp");
    let w = d.path();
    let data = w.join("patches");
    run_ok(
        "trainer",
        &[
            "synth",
            "--out",
            s(&data),
            "--series",
            "12",
            "--patches-per-series",
            "4",
            "--cube-size",
            "16",
            "--seed",
            "4",
            "--features",
        ],
    );
    let run_dir = w.join("run");
    let cfg = w.join("run.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data: {}\nout: {}\nmodel: {{ width: 2, features: [suv_max] }}\npreprocess: {{ cube_size: 16 }}\n\
             train: {{ epochs: 1, batch_size: 8, device: cpu, seed: 1 }}\n",
            s(&data),
            s(&run_dir)
        ),
    )
    .expect("config");
    run_ok("trainer", &["train", "--config", s(&cfg), "-q"]);
    let m = run_dir.join("model.onnx");
    let scans = w.join("scans");
    let pts = three_scans(&scans);
    let (_, cand) = luna16_csvs(w, &pts);
    let feats = w.join("suv.csv");
    std::fs::write(&feats, "seriesuid,suv_max\nA,1.5\nB,7.25\nC,0.5\n").expect("w");
    let by_series = w.join("by_series.csv");
    let r = run(
        "infer",
        &[
            "--scans",
            s(&scans),
            "--candidates",
            s(&cand),
            "-m",
            s(&m),
            "-o",
            s(&by_series),
        ],
    );
    assert!(!r.ok && r.stderr.contains("--features-csv"), "{}", r.stderr);
    run_ok(
        "infer",
        &[
            "--scans",
            s(&scans),
            "--candidates",
            s(&cand),
            "-m",
            s(&m),
            "--features-csv",
            s(&feats),
            "-o",
            s(&by_series),
            "-q",
        ],
    );
    // The same points as an index with the values in its rows.
    let index = w.join("index.csv");
    let mut text = String::from("patch_file,seriesuid,center_x,center_y,center_z,suv_max\n");
    for (k, (uid, p)) in pts.iter().enumerate() {
        let v = match uid.as_str() {
            "A" => "1.5",
            "B" => "7.25",
            _ => "0.5",
        };
        text += &format!("p{k}.npy,{uid},{},{},{},{v}\n", p[0], p[1], p[2]);
    }
    std::fs::write(&index, text).expect("w");
    let from_index = w.join("from_index.csv");
    run_ok(
        "infer",
        &[
            "--scans",
            s(&scans),
            "--candidates",
            s(&index),
            "-m",
            s(&m),
            "-o",
            s(&from_index),
            "-q",
        ],
    );
    let logits = |p: &Path| {
        let (h, rows) = read_csv(p);
        let mut v: Vec<(String, String, String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r[col(&h, "center_x")].clone(),
                    r[col(&h, "center_y")].clone(),
                    r[col(&h, "center_z")].clone(),
                    r[col(&h, "logit")].clone(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (a, b) = (logits(&by_series), logits(&from_index));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b);
    // The features move the logits (B's value differs), and a series the CSV lacks is an error.
    std::fs::write(&feats, "seriesuid,suv_max\nA,1.5\nB,0.5\n").expect("w");
    let r = run(
        "infer",
        &[
            "--scans",
            s(&scans),
            "--candidates",
            s(&cand),
            "-m",
            s(&m),
            "--features-csv",
            s(&feats),
            "-o",
            s(&w.join("x.csv")),
        ],
    );
    assert!(!r.ok && r.stderr.contains("series C is not listed"), "{}", r.stderr);
    let (h, rows) = read_csv(&w.join("x.csv"));
    assert_eq!(rows.len(), 5, "A and B scored");
    let b_now: Vec<String> = rows
        .iter()
        .filter(|r| r[col(&h, "seriesuid")] == "B")
        .map(|r| r[col(&h, "logit")].clone())
        .collect();
    let b_before: Vec<String> = {
        let (h, rows) = read_csv(&by_series);
        rows.iter()
            .filter(|r| r[col(&h, "seriesuid")] == "B")
            .map(|r| r[col(&h, "logit")].clone())
            .collect()
    };
    assert_ne!(b_now, b_before);
}

/// Hostile settings and paths for scoring from scans: an output that is a scan's data file,
/// a candidates file that is a FIFO, absurd grids and thread counts, a --held-out folder that
/// is no fold: each a clear error before anything is written, the inputs untouched.
#[test]
fn hostile_paths_and_settings_for_scans_are_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let scans = d.path().join("scans");
    let pts = three_scans(&scans);
    let (_, cand) = luna16_csvs(d.path(), &pts);
    let m = model();
    let raw = scans.join("A.raw");
    let before = std::fs::read(&raw).expect("raw");
    let base = |extra: &[&str]| {
        let mut a = vec!["--scans", s(&scans), "-m", s(&m)];
        a.extend_from_slice(extra);
        run("infer", &a)
    };
    let r = base(&["--candidates", s(&cand), "-o", s(&raw)]);
    assert!(!r.ok && r.stderr.contains("A.raw"), "{}", r.stderr);
    assert_eq!(std::fs::read(&raw).expect("raw"), before, "a scan was overwritten");
    let fifo = d.path().join("fifo.csv");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let out = d.path().join("x.csv");
    let t0 = std::time::Instant::now();
    let r = base(&["--candidates", s(&fifo), "-o", s(&out)]);
    assert!(!r.ok && r.stderr.contains("fifo.csv"), "{}", r.stderr);
    assert!(t0.elapsed().as_secs() < 30, "a FIFO hung the run");
    for (flags, why) in [
        (&["--spacing-mm", "NaN"][..], "--spacing-mm"),
        (&["--size-mm", "1e300"][..], "--size-mm"),
        (&["--spacing-mm", "0.0000001"][..], "--size-mm"),
        (&["--scan-jobs", "100000000"][..], "--scan-jobs"),
        (&["--held-out", s(&scans)][..], "not a training run folder"),
    ] {
        let mut a = vec!["--candidates", s(&cand), "-o", s(&out)];
        a.extend_from_slice(flags);
        let r = base(&a);
        assert!(!r.ok && r.stderr.contains(why), "{flags:?}: {}", r.stderr);
        assert!(!out.exists(), "{flags:?} wrote an output");
    }
}
