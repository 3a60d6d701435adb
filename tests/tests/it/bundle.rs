//! The shipped scorer: build a bundle, unpack it into an empty folder, run it with a cleared
//! environment, and get exactly the workspace's scores; damaged bundles are refused.
use std::path::{Path, PathBuf};
use std::process::Command;

use chain_tests::{run_ok, s, Run};

use crate::fixture::fixture;

fn unpack(archive: &Path, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).expect("mkdir");
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .expect("tar");
    assert!(st.success());
    into.join("nodule-scorer")
}

/// Runs the bundle's entry point with nothing in the environment but a PATH holding the
/// bundle itself.
fn run_bundle(dir: &Path, args: &[&str]) -> Run {
    Command::new("env")
        .arg("-i")
        .arg(format!("PATH={}", dir.display()))
        .arg(dir.join("run"))
        .args(args)
        .output()
        .expect("run bundle")
        .into()
}

fn resum(dir: &Path) {
    let mut text = String::new();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    names.sort();
    for n in names {
        let bytes = std::fs::read(dir.join(&n)).expect("read");
        let sum: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        text += &format!("{sum}  {n}\n");
    }
    std::fs::write(dir.join("SHA256SUMS"), text).expect("w");
}

use sha2::Digest;

#[test]
fn bundle_scores_like_the_workspace_in_a_cleared_environment() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let cal = d.path().join("cal/calibration.yaml");
    run_ok(
        "calibrate",
        &[s(&f.run), "-o", s(&cal), "--bootstrap", "0", "--no-report", "--no-bake"],
    );
    let model = f.run.join("model.onnx");
    let archive = d.path().join("scorer.tar.gz");
    let r = run_ok(
        "infer",
        &[
            "bundle",
            "--model",
            s(&model),
            "--calibration",
            s(&cal),
            "-o",
            s(&archive),
        ],
    );
    assert!(r.stdout.contains("MiB"), "{}", r.stdout);
    // Reference scores from the workspace.
    let reference = d.path().join("reference.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&model),
            "-c",
            s(&cal),
            s(&f.patches),
            "-o",
            s(&reference),
            "-q",
            "--device",
            "cpu",
        ],
    );

    let dir = unpack(&archive, &d.path().join("target-host"));
    for name in [
        "infer",
        "libonnxruntime.so.1.31.1",
        "model.onnx",
        "calibration.yaml",
        "BUNDLE.yaml",
        "README.txt",
        "run",
        "SHA256SUMS",
    ] {
        assert!(dir.join(name).is_file(), "bundle lacks {name}");
    }
    let out = d.path().join("bundle_scores.csv");
    let r = run_bundle(&dir, &[s(&f.patches), "-o", s(&out), "-q", "--device", "cpu"]);
    assert!(r.ok, "bundle run failed:\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read_to_string(&out).expect("out"),
        std::fs::read_to_string(&reference).expect("ref")
    );
    // It used the bundled library, not the venv.
    let r = run_bundle(&dir, &["doctor"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout
            .contains(&format!("at {}", dir.join("libonnxruntime.so.1.31.1").display())),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("glibc: needs >= ") && r.stdout.contains(": ok"),
        "{}",
        r.stdout
    );
    let readme = std::fs::read_to_string(dir.join("README.txt")).expect("readme");
    assert!(
        readme.contains("./nodule-scorer/run PATCH_FOLDER -o scores.csv"),
        "{readme}"
    );
    assert!(readme.contains("--scans SCAN_FOLDER --candidates"), "{readme}");
    // The bundle reads DICOM with nothing else installed: the real slab's DICOM series
    // scored from the bundle in a cleared environment equals the workspace's scores.
    let dicom = chain_tests::workspace().join("../shared/data/lidc-idri-0002/dicom");
    let cand = d.path().join("candidates.csv");
    std::fs::write(
        &cand,
        "seriesuid,coordX,coordY,coordZ,class\n\
         1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919,-60,-20,-87,0\n\
         1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919,10.5,30,-90,1\n",
    )
    .expect("w");
    let from_bundle = d.path().join("bundle_dicom.csv");
    let r = run_bundle(
        &dir,
        &[
            "--scans",
            s(&dicom),
            "--candidates",
            s(&cand),
            "-o",
            s(&from_bundle),
            "-q",
            "--device",
            "cpu",
        ],
    );
    assert!(r.ok, "bundle --scans failed:\n{}\n{}", r.stdout, r.stderr);
    let from_workspace = d.path().join("workspace_dicom.csv");
    run_ok(
        "infer",
        &[
            "--scans",
            s(&dicom),
            "--candidates",
            s(&cand),
            "-m",
            s(&model),
            "-c",
            s(&cal),
            "-o",
            s(&from_workspace),
            "-q",
            "--device",
            "cpu",
        ],
    );
    let text = std::fs::read_to_string(&from_bundle).expect("out");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert_eq!(text, std::fs::read_to_string(&from_workspace).expect("ref"));
}

#[test]
fn damaged_bundles_are_refused() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let cal = d.path().join("cal/calibration.yaml");
    run_ok(
        "calibrate",
        &[s(&f.run), "-o", s(&cal), "--bootstrap", "0", "--no-report", "--no-bake"],
    );
    let archive = d.path().join("scorer.tar.gz");
    run_ok(
        "infer",
        &[
            "bundle",
            "--model",
            s(&f.run.join("model.onnx")),
            "--calibration",
            s(&cal),
            "-o",
            s(&archive),
        ],
    );
    let out = d.path().join("x.csv");

    // A modified model.
    let dir = unpack(&archive, &d.path().join("modified"));
    let mut m = std::fs::read(dir.join("model.onnx")).expect("read");
    m.push(0);
    std::fs::write(dir.join("model.onnx"), m).expect("w");
    let r = run_bundle(&dir, &[s(&f.patches), "-o", s(&out)]);
    assert!(
        !r.ok && r.stderr.contains("damaged") && r.stderr.contains("model.onnx was modified"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());

    // A missing file, and a calibration declared but gone.
    let dir = unpack(&archive, &d.path().join("missing"));
    std::fs::remove_file(dir.join("calibration.yaml")).expect("rm");
    let r = run_bundle(&dir, &[s(&f.patches), "-o", s(&out)]);
    assert!(
        !r.ok && r.stderr.contains("calibration.yaml is missing"),
        "{}",
        r.stderr
    );
    let dir = unpack(&archive, &d.path().join("unlisted"));
    std::fs::remove_file(dir.join("calibration.yaml")).expect("rm");
    resum(&dir);
    let r = run_bundle(&dir, &[s(&f.patches), "-o", s(&out)]);
    assert!(
        !r.ok && r.stderr.contains("built with calibration.yaml"),
        "{}",
        r.stderr
    );

    // A host older than the glibc the bundle declares.
    let dir = unpack(&archive, &d.path().join("glibc"));
    let desc = std::fs::read_to_string(dir.join("BUNDLE.yaml")).expect("desc");
    let line = desc
        .lines()
        .find(|l| l.starts_with("  min_glibc:"))
        .expect("min_glibc")
        .to_string();
    std::fs::write(dir.join("BUNDLE.yaml"), desc.replace(&line, "  min_glibc: '9.99'")).expect("w");
    resum(&dir);
    let r = run_bundle(&dir, &[s(&f.patches), "-o", s(&out)]);
    assert!(
        !r.ok && r.stderr.contains("needs glibc >= 9.99; this host has glibc"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}
