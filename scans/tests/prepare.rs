//! `scans prepare`: synthetic LUNA16-style scans (subset folders, .mhd/.raw, .mha,
//! compressed, flipped directions) with nodules at known world positions → a patch folder.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
use std::path::Path;

use chain_tests::{col, read_csv, run, run_err, run_ok, s};
use scans::metaimage::{self, ElementType, Geometry, WriteOptions};

/// The binary Cargo built for this package's tests.
const SCANS: &str = env!("CARGO_BIN_EXE_scans");

const ID: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// The test scans' grid: 48 × 48 × 24 voxels of 0.75 × 0.75 × 2 mm.
fn geom(direction: [[f64; 3]; 3], offset: [f64; 3]) -> Geometry {
    Geometry::new([48, 48, 24], [0.75, 0.75, 2.0], offset, direction).unwrap()
}

/// A scan on `g` of −800 HU with a Gaussian blob (σ 2.5 mm, +1000 HU) at each of `blobs`
/// (world mm).
fn scan(path: &Path, g: &Geometry, blobs: &[[f64; 3]], o: WriteOptions) {
    let mut v = Vec::new();
    for z in 0..24 {
        for y in 0..48 {
            for x in 0..48 {
                let w = g.voxel_to_world([x as f64, y as f64, z as f64]);
                let mut hu = -800.0;
                for b in blobs {
                    let d2: f64 = (0..3).map(|k| (w[k] - b[k]).powi(2)).sum();
                    hu += 1000.0 * (-d2 / (2.0 * 2.5 * 2.5)).exp();
                }
                v.push(hu as f32);
            }
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    metaimage::write(path, g, &v, o).unwrap();
}

/// World point of voxel index `idx` in `g`.
fn at(g: &Geometry, idx: [f64; 3]) -> [f64; 3] {
    g.voxel_to_world(idx)
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn scans_to_patch_folder_resumable_with_per_scan_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let scans = root.join("scans");
    // Series A: identity direction; B: x and y flipped, compressed; C: .mha with z flipped
    // and no nodule; D: its raw file truncated (fails until fixed).
    let ga = geom(ID, [-18.0, -18.0, -24.0]);
    let pa = at(&ga, [24.3, 20.6, 11.2]);
    scan(&scans.join("subset0/A.mhd"), &ga, &[pa], WriteOptions::default());
    let flip_xy = [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]];
    let gb = geom(flip_xy, [18.0, 18.0, -24.0]);
    let pb = at(&gb, [20.0, 26.5, 12.7]);
    let compressed = WriteOptions {
        compressed: true,
        ..Default::default()
    };
    scan(&scans.join("subset0/B.mhd"), &gb, &[pb], compressed);
    let flip_z = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]];
    let gc = geom(flip_z, [-18.0, -18.0, 24.0]);
    let mha = WriteOptions {
        local: true,
        msb: true,
        element_type: ElementType::Float,
        ..Default::default()
    };
    scan(&scans.join("subset1/C.mha"), &gc, &[], mha);
    let gd = geom(ID, [-18.0, -18.0, -24.0]);
    let pd = at(&gd, [24.0, 24.0, 12.0]);
    scan(&scans.join("subset1/D.mhd"), &gd, &[pd], WriteOptions::default());
    let d_raw = scans.join("subset1/D.raw");
    let good_d = std::fs::read(&d_raw).unwrap();
    std::fs::write(&d_raw, &good_d[..good_d.len() / 3]).unwrap();

    let ann = root.join("annotations.csv");
    let line = |uid: &str, p: [f64; 3], v: &str| format!("{uid},{},{},{},{v}\n", p[0], p[1], p[2]);
    let mut a = String::from("seriesuid,coordX,coordY,coordZ,diameter_mm\n");
    a += &line("A", pa, "8.0");
    a += &line("B", pb, "6.0");
    a += &line("D", pd, "7.0");
    a += &line("Z-not-here", [0.0, 0.0, 0.0], "5.0");
    std::fs::write(&ann, a).unwrap();
    let cand = root.join("candidates.csv");
    let mut c = String::from("seriesuid,coordX,coordY,coordZ,class\n");
    c += &line("A", [pa[0] + 1.0, pa[1], pa[2]], "1");
    c += &line("A", [pa[0], pa[1] + 2.0, pa[2]], "0"); // inside A's nodule: never a negative
    let mut a_negs = Vec::new();
    for k in 0..8 {
        let p = at(&ga, [6.0 + 4.0 * k as f64, 40.0, 4.0 + 2.0 * (k % 4) as f64]);
        a_negs.push(p);
        c += &line("A", p, "0");
    }
    for k in 0..5 {
        c += &line("B", at(&gb, [8.0 + 6.0 * k as f64, 6.0, 6.0]), "0");
    }
    for k in 0..3 {
        c += &line("C", at(&gc, [10.0 + 10.0 * k as f64, 30.0, 10.0]), "0");
    }
    for k in 0..2 {
        c += &line("D", at(&gd, [8.0 + 10.0 * k as f64, 8.0, 5.0]), "0");
    }
    std::fs::write(&cand, c).unwrap();

    let out = root.join("patches");
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "prepare",
            "--scans",
            s(&scans),
            "--annotations",
            s(&ann),
            "--candidates",
            s(&cand),
            "--out",
            s(&out),
            "--size-mm",
            "16",
            "--spacing-mm",
            "1",
            "--neg-ratio",
            "2",
            "--min-negatives",
            "2",
            "--jobs",
            "2",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let call = |extra: &[&'static str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run(SCANS, &refs)
    };

    // First run: D fails (named, with what is wrong); A, B, C are done.
    let r = call(&[]);
    assert!(!r.ok && !r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(r.stderr.contains("D.raw") && r.stderr.contains("holds"), "{}", r.stderr);
    assert!(
        r.stdout.contains("prepared 3 scan(s) now (0 done before, 1 failed)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("1 annotated series have no scan"), "{}", r.stdout);
    let (_, errs) = read_csv(&out.join("prepare_errors.csv"));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0][0], "D");

    let (h, rows) = read_csv(&out.join("patch_index.csv"));
    assert_eq!(h, tables::index::COLUMNS.map(String::from).to_vec());
    let (uid, lab, file) = (col(&h, "seriesuid"), col(&h, "label"), col(&h, "patch_file"));
    let count = |u: &str, l: &str| rows.iter().filter(|r| r[uid] == u && r[lab] == l).count();
    // A: the annotation and the candidate labelled 1; negatives 2 × 2 of the 8 outside.
    assert_eq!((count("A", "1"), count("A", "0")), (2, 4));
    // B: one nodule, max(2 × 1, 2) negatives; C: no nodule, the minimum of 2.
    assert_eq!((count("B", "1"), count("B", "0")), (1, 2));
    assert_eq!((count("C", "1"), count("C", "0")), (0, 2));
    assert_eq!(rows.iter().filter(|r| r[uid] == "D").count(), 0);
    let pos = |r: &Vec<String>| {
        [
            r[col(&h, "center_x")].parse::<f64>().unwrap(),
            r[col(&h, "center_y")].parse::<f64>().unwrap(),
            r[col(&h, "center_z")].parse::<f64>().unwrap(),
        ]
    };
    for r in &rows {
        let p = pos(r);
        if r[lab] == "0" {
            // Never within a nodule's radius; A's negatives are drawn from its real candidates.
            assert!(dist(p, pa) > 4.0 && dist(p, pb) > 3.0, "negative at {p:?}");
            if r[uid] == "A" {
                assert!(a_negs.iter().any(|q| dist(*q, p) < 1e-6));
            }
        }
        // Every cube is int16 16³ and has its blob (if any) at the centre.
        let cube = models::patch::read_npy_hu(&out.join(&r[file]))
            .unwrap()
            .into_dimensionality::<ndarray::Ix3>()
            .unwrap();
        assert_eq!(cube.dim(), (16, 16, 16));
        let is_annotation = (r[uid] == "A" && dist(p, pa) < 1e-6) || (r[uid] == "B" && dist(p, pb) < 1e-6);
        if is_annotation {
            let (mut w, mut m) = (0.0, [0.0f64; 3]);
            for ((z, y, x), &v) in cube.indexed_iter() {
                let wt = f64::from(v + 700.0).max(0.0);
                w += wt;
                m[0] += wt * z as f64;
                m[1] += wt * y as f64;
                m[2] += wt * x as f64;
            }
            for k in 0..3 {
                assert!(
                    (m[k] / w - 7.5).abs() < 0.5,
                    "{}: blob centroid {:?}",
                    r[file],
                    m.map(|v| v / w)
                );
            }
            assert!(cube[[8, 8, 8]] > 0.0 && cube[[0, 0, 0]] < -700.0);
        }
    }
    let a_files: Vec<(String, Vec<u8>)> = rows
        .iter()
        .filter(|r| r[uid] == "A")
        .map(|r| (r[file].clone(), std::fs::read(out.join(&r[file])).unwrap()))
        .collect();

    // A second run while one works on the folder is refused (the lock is the OS's: held
    // here by this test, as a running prepare would hold it).
    let held = std::fs::File::open(out.join("prepare.lock")).unwrap();
    held.lock().unwrap();
    let r = call(&[]);
    assert!(
        !r.ok && r.stderr.contains("another `scans prepare` is working"),
        "{}",
        r.stderr
    );
    held.unlock().unwrap();
    drop(held);

    // Other settings into the same folder: refused, nothing touched.
    let r = call(&["--seed", "5"]);
    assert!(!r.ok && r.stderr.contains("other settings"), "{}", r.stderr);

    // D fixed: the rerun does only D, the errors file goes, and the index holds all four.
    std::fs::write(&d_raw, &good_d).unwrap();
    let a = args(&[]);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = run_ok(SCANS, &refs);
    assert!(
        r.stdout.contains("prepared 1 scan(s) now (3 done before, 0 failed)"),
        "{}",
        r.stdout
    );
    assert!(!out.join("prepare_errors.csv").exists());
    let (_, rows2) = read_csv(&out.join("patch_index.csv"));
    assert_eq!(rows2.len(), rows.len() + 3, "D adds its nodule and 2 negatives");
    for (f, bytes) in &a_files {
        assert_eq!(&std::fs::read(out.join(f)).unwrap(), bytes, "{f} was rewritten");
    }
    // No temporary or half-written file is left anywhere.
    let leftovers: Vec<_> = walk(&out)
        .into_iter()
        .filter(|p| s(p.strip_prefix(&out).unwrap()).contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_prepare_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let scans = root.join("scans");
    std::fs::create_dir_all(&scans).unwrap();
    let ann = root.join("annotations.csv");
    std::fs::write(&ann, "seriesuid,coordX,coordY,coordZ,diameter_mm\nA,1,2,3,5\n").unwrap();
    let cand = root.join("candidates.csv");
    std::fs::write(&cand, "seriesuid,coordX,coordY,coordZ,class\nA,1,2,3,0\n").unwrap();
    let out = root.join("out");
    let base = |scans: &Path, ann: &Path, cand: &Path| {
        vec![
            "prepare".to_string(),
            "--scans".into(),
            s(scans).into(),
            "--annotations".into(),
            s(ann).into(),
            "--candidates".into(),
            s(cand).into(),
            "--out".into(),
            s(&out).into(),
        ]
    };
    let go = |v: Vec<String>| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        run_err(SCANS, &refs)
    };
    // No scans in the folder.
    let r = go(base(&scans, &ann, &cand));
    assert!(r.stderr.contains("no .mhd or .mha scans"), "{}", r.stderr);
    scan(&scans.join("A.mhd"), &geom(ID, [0.0; 3]), &[], WriteOptions::default());
    // A candidates file without its class column.
    let bad = root.join("bad_candidates.csv");
    std::fs::write(&bad, "seriesuid,coordX,coordY,coordZ,probability\nA,1,2,3,0.5\n").unwrap();
    let r = go(base(&scans, &ann, &bad));
    assert!(
        r.stderr.contains("bad_candidates.csv") && r.stderr.contains("class"),
        "{}",
        r.stderr
    );
    // A class other than 0/1.
    std::fs::write(&bad, "seriesuid,coordX,coordY,coordZ,class\nA,1,2,3,2\n").unwrap();
    let r = go(base(&scans, &ann, &bad));
    assert!(r.stderr.contains("class must be 0 or 1"), "{}", r.stderr);
    // An annotation with a non-numeric coordinate.
    let bad_ann = root.join("bad_annotations.csv");
    std::fs::write(&bad_ann, "seriesuid,coordX,coordY,coordZ,diameter_mm\nA,x,2,3,5\n").unwrap();
    let r = go(base(&scans, &bad_ann, &cand));
    assert!(
        r.stderr.contains("bad_annotations.csv") && r.stderr.contains("line 2"),
        "{}",
        r.stderr
    );
    // A folder whose only scan fails: the index is written empty, with its header, so the
    // next step says "no patches" rather than "missing columns".
    let only_bad = root.join("only_bad");
    std::fs::create_dir_all(&only_bad).unwrap();
    std::fs::write(only_bad.join("A.mhd"), "this is not a header\n").unwrap();
    let r = go(base(&only_bad, &ann, &cand));
    assert!(
        r.stdout.contains("0 failed") || r.stdout.contains("1 failed"),
        "{}",
        r.stdout
    );
    let (h, rows) = read_csv(&out.join("patch_index.csv"));
    assert_eq!(h, tables::index::COLUMNS.map(String::from).to_vec());
    assert!(rows.is_empty());
    std::fs::remove_dir_all(&out).unwrap();
    // A header that is not MetaImage: the scan fails with its name, the run says so. (A
    // scan with nothing to cut is not even read, so B gets a candidate.)
    std::fs::write(scans.join("B.mhd"), "this is not a header\n").unwrap();
    std::fs::write(&cand, "seriesuid,coordX,coordY,coordZ,class\nA,1,2,3,0\nB,1,2,3,0\n").unwrap();
    let r = go(base(&scans, &ann, &cand));
    assert!(
        r.stderr.contains("B.mhd") && r.stderr.contains("MetaImage"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("prepared 1 scan(s) now (0 done before, 1 failed)"),
        "{}",
        r.stdout
    );
}

/// Scans that are not what their header says, or not scans at all: a float scan with a NaN
/// voxel (was cut into cubes), compressed data inflating beyond the header, a FIFO named
/// like a scan (was skipped silently) and a folder so named: each a failed scan with its
/// reason, the good one prepared. An output that names an input is refused first.
#[test]
fn scans_with_nan_voxels_overlong_data_or_special_files_were_cut_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let scans = root.join("scans");
    let g = geom(ID, [0.0; 3]);
    let c = at(&g, [24.0, 24.0, 12.0]);
    scan(&scans.join("A.mhd"), &g, &[c], WriteOptions::default());
    let float = WriteOptions {
        element_type: ElementType::Float,
        ..Default::default()
    };
    scan(&scans.join("N.mhd"), &g, &[c], float);
    let raw = scans.join("N.raw");
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[400..404].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&raw, bytes).unwrap();
    let compressed = WriteOptions {
        compressed: true,
        ..Default::default()
    };
    scan(&scans.join("Z.mhd"), &g, &[c], compressed);
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &vec![0u8; 48 * 48 * 24 * 2 + 100]).unwrap();
    std::fs::write(scans.join("Z.zraw"), enc.finish().unwrap()).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(scans.join("F.mhd"))
        .status()
        .unwrap()
        .success());
    std::fs::create_dir(scans.join("D.mha")).unwrap();
    let ann = root.join("annotations.csv");
    let cand = root.join("candidates.csv");
    let mut a = String::from(
        "seriesuid,coordX,coordY,coordZ,diameter_mm
",
    );
    let mut k = String::from(
        "seriesuid,coordX,coordY,coordZ,class
",
    );
    for uid in ["A", "N", "Z", "F", "D"] {
        a += &format!(
            "{uid},{},{},{},6
",
            c[0], c[1], c[2]
        );
        k += &format!(
            "{uid},{},{},{},0
",
            c[0] + 12.0,
            c[1],
            c[2]
        );
    }
    std::fs::write(&ann, a).unwrap();
    std::fs::write(&cand, k).unwrap();
    let out = root.join("out");
    let go = |cand: &Path| {
        run(
            SCANS,
            &[
                "prepare",
                "--scans",
                s(&scans),
                "--annotations",
                s(&ann),
                "--candidates",
                s(cand),
                "--out",
                s(&out),
                "-q",
            ],
        )
    };
    // The candidates file inside the output under a name prepare writes: refused.
    std::fs::create_dir(&out).unwrap();
    let inside = out.join("prepare_errors.csv");
    std::fs::copy(&cand, &inside).unwrap();
    let r = go(&inside);
    assert!(!r.ok && r.stderr.contains("an input of this run"), "{}", r.stderr);
    assert_eq!(std::fs::read(&inside).unwrap(), std::fs::read(&cand).unwrap());
    std::fs::remove_dir_all(&out).unwrap();
    let r = go(&cand);
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stdout.contains("(0 done before, 4 failed)"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    for (name, why) in [
        ("N.mhd", "NaN or Inf"),
        ("Z.zraw", "inflate beyond"),
        ("F.mhd", "FIFO"),
        ("D.mha", "a folder"),
    ] {
        assert!(
            r.stderr.lines().any(|l| l.contains(name) && l.contains(why)),
            "no `{name}: …{why}…` in:\n{}",
            r.stderr
        );
    }
    let (_, rows) = read_csv(&out.join("patch_index.csv"));
    assert!(!rows.is_empty() && rows.iter().all(|r| r[1] == "A"), "{rows:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Subsets prepared one at a time into one folder (as LUNA16 users do) join one index.
/// (That such a folder trains: tests/tests/it/chain.rs.)
#[test]
fn subsets_prepared_one_at_a_time_join_one_index() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut ann = String::from("seriesuid,coordX,coordY,coordZ,diameter_mm\n");
    let mut cand = String::from("seriesuid,coordX,coordY,coordZ,class\n");
    for k in 0..8 {
        let uid = format!("1.2.3.{k}");
        let g = geom(ID, [-18.0, -18.0, -24.0]);
        let p = at(&g, [20.0 + k as f64, 24.0, 12.0]);
        scan(
            &root.join(format!("scans/subset{}/{uid}.mhd", k % 2)),
            &g,
            &[p],
            WriteOptions::default(),
        );
        ann += &format!("{uid},{},{},{},6\n", p[0], p[1], p[2]);
        for j in 0..3 {
            let q = at(&g, [8.0 + 12.0 * j as f64, 8.0, 6.0]);
            cand += &format!("{uid},{},{},{},0\n", q[0], q[1], q[2]);
        }
    }
    std::fs::write(root.join("annotations.csv"), ann).unwrap();
    std::fs::write(root.join("candidates.csv"), cand).unwrap();
    let out = root.join("patches");
    // LUNA16 users may prepare one subset at a time into the same folder: the index keeps
    // what earlier runs finished.
    for subset in ["subset0", "subset1"] {
        run_ok(
            SCANS,
            &[
                "prepare",
                "--scans",
                s(&root.join("scans").join(subset)),
                "--annotations",
                s(&root.join("annotations.csv")),
                "--candidates",
                s(&root.join("candidates.csv")),
                "--out",
                s(&out),
                "--size-mm",
                "16",
                "--all-negatives",
                "-q",
            ],
        );
    }
    let (h, rows) = read_csv(&out.join("patch_index.csv"));
    let series: std::collections::BTreeSet<&String> = rows.iter().map(|r| &r[col(&h, "seriesuid")]).collect();
    assert_eq!(series.len(), 8, "both subsets are in the index");
    assert_eq!(rows.len(), 8 * 4);
}

/// `scans prepare` on the real LIDC-IDRI slab in `../shared/data/` (read in place): the
/// cubes hold real CT values where the slab is and air beyond its 15 mm.
#[test]
fn prepare_reads_the_real_slab() {
    let slab = chain_tests::workspace().join("../shared/data/lidc-idri-0002");
    assert!(
        slab.is_dir(),
        "{}: the shared test data sits beside the repository",
        slab.display()
    );
    let uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919";
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // No nodule in this slab: three negatives at world points inside it (offset −175.5,
    // −174.5, −94.5 mm; 512 × 0.681641 mm in x and y; 12 × 1.25 mm in z).
    std::fs::write(
        root.join("annotations.csv"),
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n",
    )
    .unwrap();
    let mut c = String::from("seriesuid,coordX,coordY,coordZ,class\n");
    for (x, y) in [(-60.0, -20.0), (0.0, 0.0), (60.0, 30.0)] {
        c += &format!("{uid},{x},{y},-87.0,0\n");
    }
    std::fs::write(root.join("candidates.csv"), c).unwrap();
    let (ann, cand) = (root.join("annotations.csv"), root.join("candidates.csv"));
    let prepare = |format: Option<&str>, out: &Path| {
        let mut a = vec![
            "prepare",
            "--scans",
            s(&slab),
            "--annotations",
            s(&ann),
            "--candidates",
            s(&cand),
            "--out",
            s(out),
            "--min-negatives",
            "3",
            "-q",
        ];
        if let Some(f) = format {
            a.extend(["--format", f]);
        }
        chain_tests::run(SCANS, &a)
    };
    // The folder holds the series twice, as MetaImage and as its DICOM slices: that series
    // is refused (listed in the errors file, non-zero exit) until a format is chosen.
    let r = prepare(None, &root.join("both"));
    assert!(
        !r.ok && r.stderr.contains(&format!("series {uid} appears 2 times")) && r.stderr.contains("--format"),
        "{}",
        r.stderr
    );
    let errors = std::fs::read_to_string(root.join("both/prepare_errors.csv")).unwrap();
    assert!(errors.contains("appears 2 times"), "{errors}");
    let out = root.join("out");
    let r = prepare(Some("metaimage"), &out);
    assert!(r.ok, "{}", r.stderr);
    // The DICOM slices (shuffled by nothing but their names, which sort by descending z)
    // give the same cubes as the MetaImage of the same voxels (the spacing differs only by
    // the MetaImage's rounding, 0.681641 against PixelSpacing 0.681640625 mm, which moves no
    // sample enough to change an int16 cube).
    let out_dicom = root.join("out_dicom");
    let r = prepare(Some("dicom"), &out_dicom);
    assert!(r.ok, "{}", r.stderr);
    let (_, rows_d) = read_csv(&out_dicom.join("patch_index.csv"));
    assert_eq!(rows_d.len(), 3);
    let mut worst = 0.0f32;
    for r in &rows_d {
        let f = &r[0];
        let a = models::patch::read_npy_hu(&out.join(f)).unwrap();
        let b = models::patch::read_npy_hu(&out_dicom.join(f)).unwrap();
        assert_eq!(a.shape(), b.shape());
        for (x, y) in a.iter().zip(b.iter()) {
            worst = worst.max((x - y).abs());
        }
    }
    assert_eq!(worst, 0.0, "DICOM and MetaImage cubes differ by up to {worst} HU");
    let (h, rows) = read_csv(&out.join("patch_index.csv"));
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let cube = models::patch::read_npy_hu(&out.join(&r[col(&h, "patch_file")]))
            .unwrap()
            .into_dimensionality::<ndarray::Ix3>()
            .unwrap();
        assert_eq!(cube.dim(), (64, 64, 64));
        // z = −87 mm is 7.5 mm into the slab: planes more than ~8 mm below or ~7.5 mm above
        // the centre are outside it (air); the centre plane is real CT.
        assert!(cube.slice(ndarray::s![0, .., ..]).iter().all(|&v| v == -1000.0));
        assert!(cube.slice(ndarray::s![63, .., ..]).iter().all(|&v| v == -1000.0));
        let mid = cube.slice(ndarray::s![32, .., ..]);
        let (lo, hi) = mid.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(
            hi - lo > 300.0,
            "{}: a flat centre plane [{lo}, {hi}] is not CT",
            r[col(&h, "patch_file")]
        );
    }
}

/// `scans inspect` on the real slab: the DICOM series from one of its files, the geometry
/// the MetaImage beside it states, and where world points land.
#[test]
fn inspect_prints_the_geometry_and_where_points_land() {
    let slab = chain_tests::workspace().join("../shared/data/lidc-idri-0002");
    let file = slab.join("dicom/-87.000000.dcm");
    let r = run_ok(
        SCANS,
        &["inspect", s(&file), "--world", "-60,-20,-87", "--world", "0,0,10"],
    );
    for want in [
        "DICOM series of 12 files",
        "seriesuid 1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919",
        "size: 512 × 512 × 12 voxels",
        "spacing: 0.681641 × 0.681641 × 1.250000 mm",
        "origin: (-175.5000, -174.5000, -94.5000) mm",
        "z [-94.50, -80.75] mm",
        // (−60 + 175.5) / 0.681640625 = 169.44; (−87 + 94.5) / 1.25 = 6.
        "world (-60.00, -20.00, -87.00) mm -> voxel (169.44, 226.66, 6.00) (inside)",
        "(outside the scan)",
    ] {
        assert!(r.stdout.contains(want), "{want:?} in:\n{}", r.stdout);
    }
    // The folder holds the series twice: named, with the way out.
    let r = run_err(SCANS, &["inspect", s(&slab)]);
    assert!(
        r.stderr.contains("appears 2 times") && r.stderr.contains("--format"),
        "{}",
        r.stderr
    );
    let r = run_ok(SCANS, &["inspect", s(&slab), "--format", "metaimage"]);
    assert!(r.stdout.contains("(MetaImage)"), "{}", r.stdout);
    let r = run_err(SCANS, &["inspect", s(&file), "--world", "1,2"]);
    assert!(r.stderr.contains("--world 1,2"), "{}", r.stderr);
}
