//! Regression tests, round 2, for scans other tools wrote, through the real `scans
//! prepare` and `scans inspect`: each named after the failure it fixes, each standing for
//! its class (see docs/failure-behaviour.md). The scans come from
//! `scans/tests/reference/make_cases.py` (pydicom and nibabel, from scripts/setup), the
//! 12-bit JPEG series from DCMTK (`scans/tests/fixtures/`).
use std::path::{Path, PathBuf};

use chain_tests::{read_csv, run, run_err, run_ok, s, workspace};

/// The binary Cargo built for this package's tests.
const SCANS: &str = env!("CARGO_BIN_EXE_scans");

/// The cases of make_cases.py, written once into a temporary folder.
fn cases(dir: &Path) -> PathBuf {
    let out = dir.join("cases");
    std::fs::create_dir_all(&out).expect("mkdir");
    let o = std::process::Command::new(chain_tests::python())
        .arg(workspace().join("scans/tests/reference/make_cases.py"))
        .arg(&out)
        .output()
        .expect("python (scripts/setup)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// LUNA16-style CSVs: no nodules, one candidate at world `centre` of series `uid`.
fn csvs(dir: &Path, uid: &str, centre: [f64; 3]) -> (PathBuf, PathBuf) {
    let ann = dir.join("annotations.csv");
    std::fs::write(&ann, "seriesuid,coordX,coordY,coordZ,diameter_mm\n").expect("w");
    let cand = dir.join("candidates.csv");
    std::fs::write(
        &cand,
        format!(
            "seriesuid,coordX,coordY,coordZ,class\n{uid},{},{},{},0\n",
            centre[0], centre[1], centre[2]
        ),
    )
    .expect("w");
    (ann, cand)
}

/// The series make_cases.py writes, and the centre of its 20 × 16 × 5 volume.
const UID: &str = "1.2.826.0.1.3680043.8.498.61";
const CENTRE: [f64; 3] = [-6.8, 24.6, -75.0];

fn prepare(scans: &Path, out: &Path, extra: &[&str]) -> chain_tests::Run {
    let (ann, cand) = csvs(out.parent().expect("parent"), UID, CENTRE);
    let mut a = vec![
        "prepare",
        "--scans",
        s(scans),
        "--annotations",
        s(&ann),
        "--candidates",
        s(&cand),
        "--out",
        s(out),
        "--min-negatives",
        "1",
        "--size-mm",
        "16",
        "--dtype",
        "float32",
        "-q",
    ];
    a.extend_from_slice(extra);
    run(SCANS, &a)
}

/// The one cube prepare wrote.
fn cube(out: &Path) -> Vec<f32> {
    let (h, rows) = read_csv(&out.join("patch_index.csv"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let f = &rows[0][chain_tests::col(&h, "patch_file")];
    models::patch::read_npy_hu(&out.join(f))
        .expect("cube")
        .iter()
        .copied()
        .collect()
}

#[test]
fn dicom_rescale_stored_as_un_was_read_as_garbage() {
    let d = tempfile::tempdir().expect("tmp");
    let c = cases(d.path());
    // RescaleSlope 2, RescaleIntercept −1000 stored as UN (as anonymisers write them): the
    // stored values 20..380 are −960..−240 HU; read as the code of '2' (50) they were
    // −49 000 or clipped at 32767.
    let out = d.path().join("un");
    let r = prepare(&c.join("dicom/un_rescale"), &out, &[]);
    assert!(r.ok, "{}", r.stderr);
    let v = cube(&out);
    let inside: Vec<f32> = v.iter().copied().filter(|&x| x != -1000.0).collect();
    assert!(!inside.is_empty());
    assert!(
        inside.iter().all(|&x| (-1100.0..=-100.0).contains(&x)),
        "{:?}",
        &inside[..8]
    );
    // With the whole geometry (position, orientation, spacing, rows, columns) stored as UN:
    // the same geometry as the same series written with its VRs.
    let geometry = |case: &str| -> Vec<String> {
        let r = run_ok(SCANS, &["inspect", s(&c.join("dicom").join(case))]);
        r.stdout
            .lines()
            .filter(|l| {
                ["size:", "spacing:", "origin:", "direction"]
                    .iter()
                    .any(|k| l.trim_start().starts_with(k))
            })
            .map(str::to_string)
            .collect()
    };
    let plain = geometry("explicit_le");
    assert!(plain.len() >= 3, "{plain:?}");
    assert_eq!(geometry("un_geometry"), plain);
}

#[test]
fn a_file_with_its_series_uid_stored_as_un_failed_every_series() {
    let d = tempfile::tempdir().expect("tmp");
    let c = cases(d.path());
    let out = d.path().join("out");
    let r = prepare(&c.join("dicom/un_series_uid"), &out, &[]);
    assert!(r.ok, "{}", r.stderr);
    let (h, rows) = read_csv(&out.join("patch_index.csv"));
    assert_eq!(rows[0][chain_tests::col(&h, "seriesuid")], UID);
}

#[test]
fn rescale_slope_zero_made_an_all_air_positive() {
    let d = tempfile::tempdir().expect("tmp");
    let c = cases(d.path());
    let out = d.path().join("out");
    let r = prepare(&c.join("dicom/slope_zero"), &out, &[]);
    assert!(!r.ok, "{}", r.stderr);
    let errors = std::fs::read_to_string(out.join("prepare_errors.csv")).expect("errors file");
    assert!(
        errors.contains("RescaleSlope is 0") && errors.contains(".dcm"),
        "{errors}"
    );
}

#[test]
fn two_patients_under_one_series_uid_were_interleaved_into_one_volume() {
    let d = tempfile::tempdir().expect("tmp");
    let c = cases(d.path());
    let out = d.path().join("out");
    let r = prepare(&c.join("dicom/two_patients"), &out, &[]);
    assert!(!r.ok, "{}", r.stderr);
    let errors = std::fs::read_to_string(out.join("prepare_errors.csv")).expect("errors file");
    assert!(
        errors.contains("PatientID") && errors.contains("ANON1") && errors.contains("ANON2"),
        "{errors}"
    );
    assert!(!out.join("patches").join(UID).join("neg_00001.npy").exists());
}

#[test]
fn a_deflated_series_counted_as_no_scan_with_exit_0() {
    let d = tempfile::tempdir().expect("tmp");
    let c = cases(d.path());
    for case in [
        "deflated",
        "implicit_le",
        "explicit_be",
        "no_meta",
        "no_preamble",
        "rle",
    ] {
        let out = d.path().join(case);
        let r = prepare(&c.join("dicom").join(case), &out, &[]);
        assert!(r.ok, "{case}: {}", r.stderr);
        assert_eq!(cube(&out).len(), 16 * 16 * 16, "{case}");
    }
}

#[test]
fn twelve_bit_jpeg_extended_slices_failed_to_decode() {
    let d = tempfile::tempdir().expect("tmp");
    let fx = workspace().join("scans/tests/fixtures/jpeg_extended");
    let (ann, cand) = csvs(d.path(), "1.2.826.0.1.3680043.8.498.78", [-0.8, 2.0, -57.0]);
    let mut cubes = Vec::new();
    for which in ["jpeg", "decoded"] {
        let out = d.path().join(which);
        let r = run_ok(
            SCANS,
            &[
                "prepare",
                "--scans",
                s(&fx.join(which)),
                "--annotations",
                s(&ann),
                "--candidates",
                s(&cand),
                "--out",
                s(&out),
                "--size-mm",
                "16",
                "--dtype",
                "float32",
                "-q",
            ],
        );
        assert!(r.stderr.is_empty() || !r.stderr.contains("error"), "{}", r.stderr);
        cubes.push(cube(&out));
    }
    // The JPEG series cuts the very cube DCMTK's decoding of it does.
    assert_eq!(cubes[0], cubes[1]);
}

#[test]
fn files_of_other_formats_were_named_no_dicom_signature_or_skipped() {
    let d = tempfile::tempdir().expect("tmp");
    let c = cases(d.path());
    let scans = d.path().join("scans");
    std::fs::create_dir(&scans).expect("mkdir");
    for e in std::fs::read_dir(c.join("dicom/explicit_le")).expect("ls").flatten() {
        std::fs::copy(e.path(), scans.join(e.file_name())).expect("copy");
    }
    std::fs::write(scans.join("volume.nrrd"), "NRRD0004\ntype: short\ndimension: 3\n").expect("w");
    // An NRRD file named like a DICOM slice, and an Analyze header.
    std::fs::write(scans.join("slice.dcm"), "NRRD0004\ntype: short\n").expect("w");
    let mut hdr = vec![0u8; 348];
    hdr[..4].copy_from_slice(&348i32.to_le_bytes());
    std::fs::write(scans.join("brain.hdr"), &hdr).expect("w");
    std::fs::write(scans.join("brain.img"), [0u8; 64]).expect("w");
    let out = d.path().join("out");
    let r = prepare(&scans, &out, &[]);
    assert!(!r.ok, "{}", r.stderr);
    let errors = std::fs::read_to_string(out.join("prepare_errors.csv")).expect("errors file");
    for want in ["volume.nrrd", "slice.dcm", "brain.hdr", "NRRD", "Analyze"] {
        assert!(errors.contains(want), "{want} in {errors}");
    }
    assert!(!errors.contains("no DICOM signature"), "{errors}");
    // The good series was still cut.
    assert_eq!(cube(&out).len(), 16 * 16 * 16);
}

#[test]
fn nifti_quaternion_of_norm_two_gave_4_mm_spacing() {
    let d = tempfile::tempdir().expect("tmp");
    let c = cases(d.path());
    let r = run_ok(SCANS, &["inspect", s(&c.join("nifti/quaternion_norm_2.nii"))]);
    assert!(
        r.stdout.contains("spacing: 0.800000 × 0.700000 × 2.500000 mm"),
        "{}",
        r.stdout
    );
}

#[test]
fn nifti_geometry_the_standard_readers_disagree_on_was_picked_silently() {
    let d = tempfile::tempdir().expect("tmp");
    let c = cases(d.path());
    for (case, want) in [
        ("negative_pixdim", "readers disagree"),
        ("qfac_half", "qfac"),
        ("forms_disagree", "readers disagree"),
        ("sheared_sform", "sheared"),
        ("units_metres", "metres"),
        ("slope_zero_intercept", "scl_slope"),
        ("spacing_1e30", "spacing"),
    ] {
        let p = c.join(format!("nifti/{case}.nii"));
        let r = run_err(SCANS, &["inspect", s(&p)]);
        assert!(
            r.stderr.contains(want) && r.stderr.contains(case),
            "{case}: {}",
            r.stderr
        );
    }
}

#[test]
fn a_small_nii_gz_claiming_1024_cubed_voxels_was_inflated_whole() {
    let d = tempfile::tempdir().expect("tmp");
    let c = cases(d.path());
    let t0 = std::time::Instant::now();
    let r = run_err(SCANS, &["inspect", s(&c.join("nifti/huge_claim.nii.gz"))]);
    assert!(r.stderr.contains("truncated"), "{}", r.stderr);
    // Refused as the data run out, not after filling gigabytes.
    assert!(t0.elapsed().as_secs() < 20, "{:?}", t0.elapsed());
}
