//! `infer import`: foreign ONNX classifiers (written with the `onnx` Python package as other
//! tools write them) made into models infer scores, calibrate calibrates and bundle packs;
//! their scores checked against Python onnxruntime on the source file; and every model it
//! cannot score refused naming the input or output at fault.
use std::path::{Path, PathBuf};

use chain_tests::{col, python, read_csv, run_err, run_ok, s, workspace};

use crate::fixture::fixture;

/// The foreign models of `tests/reference/foreign_models.py`, in `dir`.
fn foreign_models(dir: &Path) -> PathBuf {
    let out = dir.join("foreign");
    let o = std::process::Command::new(python())
        .arg(workspace().join("tests/reference/foreign_models.py"))
        .arg(&out)
        .output()
        .expect("python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Python onnxruntime's logits of `model` (output `output` of `kind`) on the fixture's
/// patches, with numpy windowing, by file name.
fn reference(model: &Path, output: &str, kind: &str, window: [&str; 4], patches: &[PathBuf]) -> Vec<(String, f64)> {
    let o = std::process::Command::new(python())
        .arg(workspace().join("tests/reference/import_reference.py"))
        .args([s(model), output, kind])
        .args(window)
        .args(patches)
        .output()
        .expect("python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let (p, v) = l.rsplit_once(',').expect("file,logit");
            (file_name(Path::new(p)), v.parse().expect("float"))
        })
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name().expect("name").to_string_lossy().into_owned()
}

fn npy_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    v.sort();
    v
}

fn metadata(p: &Path) -> std::collections::BTreeMap<String, String> {
    models::onnx::metadata(&models::onnx::read_model(p).expect("model"))
}

fn sha256(p: &Path) -> String {
    files::sha256_file(p).expect("sha256")
}

#[test]
fn foreign_models_score_as_their_own_runtime_scores_them() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let src = foreign_models(d.path());
    let patches = npy_files(&f.patches);
    let like = f.run.join("model.onnx");
    let like_md = metadata(&like);
    let default_window = ["-1000", "400", "0", "1"];
    // (source, its output, declared kind, extra flags, the window the reference applies)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<&'a str>, [&'a str; 4]);
    let cases: Vec<Case> = vec![
        (
            "named",
            "output",
            "logit",
            vec![
                "--hu-min",
                "-1200",
                "--hu-max",
                "600",
                "--out-min",
                "-1",
                "--out-max",
                "1",
            ],
            ["-1200", "600", "-1", "1"],
        ),
        ("sigmoid", "probability", "probability", vec![], default_window),
        ("symbolic", "score", "logit", vec!["--like", s(&like)], default_window),
        ("logit_prob", "logit", "probability", vec![], default_window),
        // Weights in a `.onnx.data` file beside the model, as torch.onnx.export writes them.
        ("external", "output", "logit", vec![], default_window),
        // torch.onnx.export without dynamic_axes: a fixed batch (1, or 3) scored in runs of it.
        ("fixed1", "output", "logit", vec![], default_window),
        ("fixed3", "output", "logit", vec![], default_window),
        // Two-class heads (MONAI's classifiers default to two outputs).
        ("two_class", "logits", "two-class-logits", vec![], default_window),
        ("softmax", "prob", "softmax", vec![], default_window),
    ];
    for (name, output, kind, extra, window) in cases {
        let source = src.join(format!("{name}.onnx"));
        let out = d.path().join(format!("imported_{name}.onnx"));
        let mut args = vec!["import", s(&source), "-o", s(&out), "--output-kind", kind];
        args.extend(&extra);
        let r = run_ok("infer", &args);
        assert!(r.stdout.contains("checked with ONNX Runtime"), "{name}: {}", r.stdout);
        // The metadata: the source's sha256, what was declared, our preprocessing.
        let md = metadata(&out);
        assert_eq!(md["import.source_sha256"], sha256(&source), "{name}");
        assert_eq!(md["import.output_kind"], kind, "{name}");
        assert_eq!(md["import.source_output"], output, "{name}");
        assert_eq!(
            md["author"], "someone else",
            "{name}: the source's own metadata is kept"
        );
        assert_eq!(md["preprocess.cube_size"], "16", "{name}");
        if name == "symbolic" {
            for k in [
                "preprocess.hu_min",
                "preprocess.hu_max",
                "preprocess.out_min",
                "preprocess.out_max",
            ] {
                assert_eq!(md[k], like_md[k], "{name}: {k} copied from --like");
            }
        }
        if name == "logit_prob" {
            assert!(r.stdout.contains("`logit` to `source.logit`"), "{}", r.stdout);
        }
        if name.starts_with("fixed") {
            assert!(r.stdout.contains("batch size is fixed"), "{}", r.stdout);
        }
        if name == "external" {
            // One file: the weights inline, the data file's sha256 in the metadata.
            let data = src.join("external.onnx.data");
            assert!(md["import.source_external_data"].contains(&sha256(&data)), "{md:?}");
            assert!(out.metadata().expect("out").len() > data.metadata().expect("data").len());
        }
        // infer's scores of the imported model equal the source's in Python onnxruntime.
        let scores = d.path().join(format!("{name}.csv"));
        run_ok("infer", &[s(&f.patches), "--model", s(&out), "-o", s(&scores)]);
        let (h, rows) = read_csv(&scores);
        let (pc, lc) = (col(&h, "patch_file"), col(&h, "logit"));
        let want = reference(&source, output, kind, window, &patches);
        assert_eq!(rows.len(), want.len(), "{name}");
        for (file, w) in &want {
            let row = rows
                .iter()
                .find(|r| file_name(Path::new(&r[pc])) == *file)
                .unwrap_or_else(|| panic!("{name}: {file} not scored"));
            let got: f64 = row[lc].parse().expect("logit");
            assert!(
                (got - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{name} {file}: infer {got}, onnxruntime {w}"
            );
        }
    }
    // The imported files pass ONNX's own full check.
    let o = std::process::Command::new(python())
        .args([
            "-c",
            "import onnx, sys\nfor p in sys.argv[1:]: onnx.checker.check_model(onnx.load(p), full_check=True)",
        ])
        .args(["named", "sigmoid", "symbolic", "logit_prob"].map(|n| d.path().join(format!("imported_{n}.onnx"))))
        .output()
        .expect("python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn an_imported_model_calibrates_and_bundles() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let src = foreign_models(d.path());
    // Into a folder that does not exist yet, as the docs' `-o site/model.onnx`: made.
    let model = d.path().join("site/model.onnx");
    run_ok(
        "infer",
        &[
            "import",
            s(&src.join("sigmoid.onnx")),
            "-o",
            s(&model),
            "--output-kind",
            "probability",
        ],
    );
    let cal = d.path().join("site/calibration.yaml");
    run_ok(
        "calibrate",
        &[
            "--model",
            s(&model),
            "--patches",
            s(&f.patches.join("patch_index.csv")),
            "-o",
            s(&cal),
            "--bootstrap",
            "0",
            "--no-report",
        ],
    );
    let baked = d.path().join("site/model.calibrated.onnx");
    assert!(baked.exists());
    // The calibrated model (which carries its calibration) and infer --calibration agree.
    let (a, b) = (d.path().join("a.csv"), d.path().join("b.csv"));
    run_ok(
        "infer",
        &[
            s(&f.patches),
            "--model",
            s(&model),
            "--calibration",
            s(&cal),
            "-o",
            s(&a),
        ],
    );
    run_ok("infer", &[s(&f.patches), "--model", s(&baked), "-o", s(&b)]);
    let ((ha, ra), (hb, rb)) = (read_csv(&a), read_csv(&b));
    let (pa, pb) = (col(&ha, "calibrated_probability"), col(&hb, "calibrated_probability"));
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        let (x, y): (f64, f64) = (x[pa].parse().expect("p"), y[pb].parse().expect("p"));
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    let archive = d.path().join("scorer.tar.gz");
    run_ok(
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
    assert!(archive.metadata().expect("archive").len() > 0);
}

#[test]
fn models_it_cannot_score_are_refused_naming_the_fault() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let src = foreign_models(d.path());
    let out = d.path().join("out.onnx");
    let import = |source: &Path, kind: &str, extra: &[&str]| {
        let mut a = vec!["import", s(source), "-o", s(&out), "--output-kind", kind];
        a.extend_from_slice(extra);
        run_err("infer", &a).stderr
    };
    let m = |n: &str| src.join(format!("{n}.onnx"));
    for (e, want) in [
        (
            import(&m("two_outputs"), "logit", &[]),
            &["2 outputs (score, features)", "--output"][..],
        ),
        (
            import(&m("two_outputs"), "logit", &["--output", "nope"]),
            &["--output nope", "score, features"][..],
        ),
        (import(&m("rank4"), "logit", &[]), &["input `image`", "rank 5"][..]),
        (import(&m("multi_input"), "logit", &[]), &["2 inputs (a, b)"][..]),
        (import(&m("symbolic"), "logit", &[]), &["symbolic", "--cube-size"][..]),
        (
            import(&m("named"), "probability", &[]),
            &["output `output`", "declared a probability", "--output-kind logit"][..],
        ),
        (
            import(&m("named"), "logit", &["--cube-size", "24"]),
            &["--cube-size 24", "fixed size 16"][..],
        ),
        (
            import(&m("named"), "logit", &["--hu-min", "NaN"]),
            &["preprocessing flags", "HU window [NaN, 400]"][..],
        ),
        (
            import(&m("named"), "logit", &["--hu-min", "500", "--hu-max", "400"]),
            &["HU window [500, 400]"][..],
        ),
        (
            import(&f.patches.join("s001_p001.npy"), "logit", &[]),
            &["s001_p001.npy"][..],
        ),
        (
            import(&m("escape"), "logit", &[]),
            &["escape.onnx", "\"../outside.data\"", "inside the model's folder"][..],
        ),
        (
            import(&m("short"), "logit", &[]),
            &["short.onnx.data", "beyond its"][..],
        ),
        // A two-class output declared one logit: refused with the way forward.
        (
            import(&m("two_class"), "logit", &[]),
            &["[?, 2]", "two-class-logits", "--positive-class"][..],
        ),
        (
            import(&m("two_class"), "softmax", &[]),
            &["declared softmax", "--output-kind two-class-logits"][..],
        ),
        (
            import(&m("two_class"), "two-class-logits", &["--positive-class", "2"]),
            &["--positive-class 2"][..],
        ),
        // 3,000 nested If subgraphs: a clear refusal, not a stack overflow.
        (import(&m("nested_if"), "logit", &[]), &["nested more than"][..]),
        // External data through a symbolic link out of the model's folder: not read.
        (
            import(&m("linked"), "logit", &[]),
            &["linked.onnx.data", "leads outside the model's folder", "secret.data"][..],
        ),
    ] {
        for w in want {
            assert!(e.contains(w), "expected {w:?} in: {e}");
        }
        assert!(!out.exists(), "a refused import wrote {}", out.display());
    }
    // With the output chosen, the two-output model imports; its other output is dropped.
    run_ok(
        "infer",
        &[
            "import",
            s(&m("two_outputs")),
            "-o",
            s(&out),
            "--output-kind",
            "logit",
            "--output",
            "score",
        ],
    );
    let g = models::onnx::read_model(&out).expect("model").graph.expect("graph");
    let outputs: Vec<&str> = g.output.iter().filter_map(|v| v.name.as_deref()).collect();
    assert_eq!(outputs, ["logit"]);
    // An output that names the source: refused, the source untouched.
    let named = m("named");
    let before = std::fs::read(&named).expect("read");
    let r = run_err(
        "infer",
        &["import", s(&named), "-o", s(&named), "--output-kind", "logit"],
    );
    assert!(r.stderr.contains("named.onnx"), "{}", r.stderr);
    assert_eq!(std::fs::read(&named).expect("read"), before);
    // An output naming the source's external data file: refused, the weights untouched.
    let data = src.join("external.onnx.data");
    let before = std::fs::read(&data).expect("read");
    let r = run_err(
        "infer",
        &["import", s(&m("external")), "-o", s(&data), "--output-kind", "logit"],
    );
    assert!(r.stderr.contains("external data file of the source"), "{}", r.stderr);
    assert_eq!(std::fs::read(&data).expect("read"), before);
    // A logit declared on a Sigmoid's output: imported as declared, with a warning.
    let r = run_ok(
        "infer",
        &["import", s(&m("sigmoid")), "-o", s(&out), "--output-kind", "logit"],
    );
    assert!(r.stderr.contains("computed by a Sigmoid"), "{}", r.stderr);
    // A FIFO as the source: refused at once, not waited on.
    let fifo = d.path().join("fifo.onnx");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(ok.success());
    let r = run_err("infer", &["import", s(&fifo), "-o", s(&out), "--output-kind", "logit"]);
    assert!(
        r.stderr.contains("fifo.onnx") && r.stderr.contains("FIFO"),
        "{}",
        r.stderr
    );
}
