//! infer at full strength: inputs, per-file validation, errors file, resume, TTA, formats.
use std::path::Path;

use chain_tests::{run, run_err, run_ok, s};

use crate::fixture::fixture;

#[test]
fn resume_scores_only_what_is_missing_and_equals_one_run() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let model = f.run.join("model.onnx");
    let full = d.path().join("full.csv");
    run_ok(
        "infer",
        &[
            "--model",
            s(&model),
            s(&f.patches),
            "-o",
            s(&full),
            "-q",
            "--device",
            "cpu",
        ],
    );
    // A partial output: the header and the first 30 rows, as an interrupted run leaves it.
    let text = std::fs::read_to_string(&full).expect("read");
    let partial: String = text.lines().take(31).map(|l| format!("{l}\n")).collect();
    let out = d.path().join("resumed.csv");
    std::fs::write(&out, partial).expect("w");
    let r = run_ok(
        "infer",
        &[
            "--model",
            s(&model),
            s(&f.patches),
            "-o",
            s(&out),
            "--resume",
            "--device",
            "cpu",
        ],
    );
    assert!(r.stderr.contains("(30 kept from the earlier output)"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&out).expect("read"), text);
    // Columns of another kind of run are refused.
    let cal_out = d.path().join("cal");
    run_ok(
        "calibrate",
        &[
            s(&f.run),
            "-o",
            s(&cal_out.join("calibration.yaml")),
            "--bootstrap",
            "0",
            "--no-report",
            "--no-bake",
        ],
    );
    let r = run_err(
        "infer",
        &[
            "--model",
            s(&model),
            "-c",
            s(&cal_out.join("calibration.yaml")),
            s(&f.patches),
            "-o",
            s(&out),
            "--resume",
        ],
    );
    assert!(
        r.stderr.contains("columns") && r.stderr.contains("differ"),
        "{}",
        r.stderr
    );
    // Calibrated, in CSV and JSONL: resuming with the same calibration equals one run; with
    // another one (same columns, same model) it is refused rather than mixing the two.
    let other = d.path().join("other");
    run_ok(
        "calibrate",
        &[
            s(&f.run),
            "-o",
            s(&other.join("calibration.yaml")),
            "--method",
            "isotonic",
            "--operating-point",
            "max_f1",
            "--bootstrap",
            "0",
            "--no-report",
            "--no-bake",
        ],
    );
    for ext in ["csv", "jsonl"] {
        let one = d.path().join(format!("cal-one.{ext}"));
        let cal = |c: &Path, out: &Path, resume: bool| {
            let mut a = vec![
                "--model",
                s(&model),
                "-c",
                s(c),
                s(&f.patches),
                "-o",
                s(out),
                "-q",
                "--format",
                ext,
            ];
            if resume {
                a.push("--resume");
            }
            chain_tests::run("infer", &a)
        };
        assert!(cal(&cal_out.join("calibration.yaml"), &one, false).ok);
        let text = std::fs::read_to_string(&one).expect("read");
        let keep = if ext == "csv" { 31 } else { 30 };
        let partial: String = text.lines().take(keep).map(|l| format!("{l}\n")).collect();
        let out = d.path().join(format!("cal-resumed.{ext}"));
        std::fs::write(&out, &partial).expect("w");
        let r = cal(&other.join("calibration.yaml"), &out, true);
        assert!(
            !r.ok && r.stderr.contains("calibrated otherwise"),
            "{ext}: {}",
            r.stderr
        );
        assert_eq!(
            std::fs::read_to_string(&out).expect("read"),
            partial,
            "{ext}: kept as it was"
        );
        assert!(cal(&cal_out.join("calibration.yaml"), &out, true).ok);
        assert_eq!(std::fs::read_to_string(&out).expect("read"), text, "{ext}");
    }
}

#[test]
fn doctor_reports_runtime_and_model() {
    let f = fixture();
    let r = run_ok("infer", &["doctor", "--model", s(&f.run.join("model.onnx"))]);
    for want in [
        "ONNX Runtime 1.31.1",
        "execution providers: CPUExecutionProvider",
        "libcudart.so.13",
        "driver:",
        "preprocess.cube_size = 16",
        "preprocessing: centre crop/pad to 16³",
        // Provenance of the training run travels in the model.
        "training.precision = fp32",
        "training.cuda_libraries = ",
        "training.libtorch_version = 2.11.0",
        "training.device = cpu",
        "tool.git_commit = ",
    ] {
        assert!(r.stdout.contains(want), "doctor lacks `{want}`:\n{}", r.stdout);
    }
    // A scoring run says where it ran and whether every node landed there.
    let r = run(
        "infer",
        &[
            "--model",
            s(&f.run.join("model.onnx")),
            s(&f.patches),
            "-o",
            "-",
            "--device",
            "cpu",
        ],
    );
    assert!(
        r.stderr.contains("on CPUExecutionProvider (every node on it)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("peak RSS"), "{}", r.stderr);
    // And how much of the scoring time the model was busy (a percentage, at most 100).
    let busy: f64 = r
        .stderr
        .split("model busy ")
        .nth(1)
        .and_then(|t| t.split('%').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `model busy N%` in:\n{}", r.stderr));
    assert!((0.0..=100.0).contains(&busy), "{busy}");
}

/// A reader that goes away (`infer doctor | head -1`) ends the writer quietly, as a Unix
/// tool does: by SIGPIPE, not by a panic on the next write.
#[test]
fn closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let f = fixture();
    for (name, args) in [
        ("infer", vec!["doctor", "--model", s(&f.run.join("model.onnx"))]),
        ("trainer", vec!["doctor"]),
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader); // nobody will read
        let out = std::process::Command::new(chain_tests::bin(name))
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("spawn");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{name} {args:?}: {stderr}");
        // 13: SIGPIPE on Linux.
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{name} {args:?}: {:?} {stderr}",
            out.status
        );
    }
}
