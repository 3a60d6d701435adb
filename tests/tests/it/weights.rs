//! Weights in: `trainer export --weights` (a state dict to a parity-checked model without
//! training) and `train.init` / `--init` (fine-tuning from a state dict), with the strict
//! name and shape checks, the 3-channel stem and the re-initialised head.
use std::path::Path;

use chain_tests::{col, read_csv, run_err, run_ok, s};
use models::onnx::WeightTensor;

use crate::fixture::fixture;

fn logits(scores: &Path) -> Vec<f64> {
    let (h, rows) = read_csv(scores);
    let c = col(&h, "logit");
    rows.iter().map(|r| r[c].parse().expect("logit")).collect()
}

fn metadata(p: &Path) -> std::collections::BTreeMap<String, String> {
    models::onnx::metadata(&models::onnx::read_model(p).expect("model"))
}

#[test]
fn export_from_weights_scores_like_the_runs_model() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let weights = f.run.join("best.safetensors");
    let out = d.path().join("exported.onnx");
    let r = run_ok(
        "trainer",
        &[
            "export",
            "--weights",
            s(&weights),
            "--config",
            s(&f.run.join("config.yaml")),
            "-o",
            s(&out),
        ],
    );
    assert!(r.stdout.contains("parity max |Δlogit|"), "{}", r.stdout);
    let md = metadata(&out);
    assert_eq!(
        md["export.weights_sha256"],
        files::sha256_file(&weights).expect("sha")
    );
    let run_md = metadata(&f.run.join("model.onnx"));
    for k in ["architecture.spec_json", "preprocess.cube_size", "preprocess.hu_min"] {
        assert_eq!(md[k], run_md[k], "{k}");
    }
    let (a, b) = (d.path().join("a.csv"), d.path().join("b.csv"));
    run_ok("infer", &[s(&f.patches), "--model", s(&out), "-o", s(&a)]);
    run_ok(
        "infer",
        &[s(&f.patches), "--model", s(&f.run.join("model.onnx")), "-o", s(&b)],
    );
    let (la, lb) = (logits(&a), logits(&b));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn state_dicts_from_elsewhere_are_matched_strictly() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let sd = models::state_dict::read(&f.run.join("best.safetensors")).expect("read");
    let cfg = f.run.join("config.yaml");
    let out = d.path().join("m.onnx");
    let export = |w: &Path| {
        chain_tests::run(
            "trainer",
            &["export", "--weights", s(w), "--config", s(&cfg), "-o", s(&out)],
        )
    };
    // A renamed tensor, a DataParallel prefix, the wrong architecture: refused, naming the
    // file and the tensors, and nothing written.
    let first = sd.keys().next().expect("a tensor").clone();
    let mut renamed = sd.clone();
    let t = renamed.remove(&first).expect("t");
    renamed.insert(format!("{first}_renamed"), t);
    let prefixed: models::onnx::Weights = sd.iter().map(|(k, v)| (format!("module.{k}"), v.clone())).collect();
    for (name, w, want) in [
        (
            "renamed",
            renamed,
            vec![
                format!("missing `{first}`"),
                format!("unexpected tensor `{first}_renamed`"),
            ],
        ),
        ("prefixed", prefixed, vec!["nn.DataParallel".to_string()]),
    ] {
        let p = d.path().join(format!("{name}.safetensors"));
        models::state_dict::write(&p, &w).expect("write");
        let r = export(&p);
        assert!(!r.ok, "{name}");
        assert!(r.stderr.contains(&format!("{name}.safetensors")), "{}", r.stderr);
        for w in want {
            assert!(r.stderr.contains(&w), "{name}: {w:?} in {}", r.stderr);
        }
        assert!(!out.exists());
    }
    let r = run_err(
        "trainer",
        &[
            "export",
            "--weights",
            s(&f.run.join("best.safetensors")),
            "--arch",
            "r3d_18",
            "-o",
            s(&out),
        ],
    );
    assert!(r.stderr.contains("missing `stem.0.weight`"), "{}", r.stderr);
    // Not a state dict at all; a FIFO.
    let r = export(&f.patches.join("s001_p001.npy"));
    assert!(
        r.stderr.contains("s001_p001.npy") && r.stderr.contains("not a safetensors file"),
        "{}",
        r.stderr
    );
    // The output may not be the weights.
    let w = f.run.join("best.safetensors");
    let before = std::fs::read(&w).expect("read");
    let r = run_err(
        "trainer",
        &["export", "--weights", s(&w), "--config", s(&cfg), "-o", s(&w)],
    );
    assert!(r.stderr.contains("best.safetensors"), "{}", r.stderr);
    assert_eq!(std::fs::read(&w).expect("read"), before);
    // A 3-channel first convolution (RGB-pretrained), each channel a third of ours: summed,
    // with a note, to the same model.
    let stem_name = sd.keys().find(|k| k.ends_with("0.weight")).expect("stem").clone();
    let stem = &sd[&stem_name];
    assert_eq!(stem.shape[1], 1, "{stem_name}: {:?}", stem.shape);
    let per_out: usize = stem.shape[2..].iter().product();
    let mut rgb = Vec::new();
    for o in 0..stem.shape[0] {
        for _ in 0..3 {
            rgb.extend(stem.data[o * per_out..(o + 1) * per_out].iter().map(|v| v / 3.0));
        }
    }
    let mut shape = stem.shape.clone();
    shape[1] = 3;
    let mut three = sd.clone();
    three.insert(stem_name.clone(), WeightTensor { shape, data: rgb });
    let p = d.path().join("rgb.safetensors");
    models::state_dict::write(&p, &three).expect("write");
    let r = export(&p);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("3 input channels") && r.stdout.contains("summed to 1"),
        "{}",
        r.stdout
    );
    let (a, b) = (d.path().join("a.csv"), d.path().join("b.csv"));
    run_ok("infer", &[s(&f.patches), "--model", s(&out), "-o", s(&a)]);
    run_ok(
        "infer",
        &[s(&f.patches), "--model", s(&f.run.join("model.onnx")), "-o", s(&b)],
    );
    for (x, y) in logits(&a).iter().zip(&logits(&b)) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn training_starts_from_given_weights() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let sd = models::state_dict::read(&f.run.join("best.safetensors")).expect("read");
    // A head of another shape (400 classes straight from the features), as a
    // Kinetics-pretrained state dict has.
    let mut other_head: models::onnx::Weights = sd
        .iter()
        .filter(|(k, _)| !k.starts_with("head."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let feats = sd["head.0.weight"].shape[1];
    other_head.insert(
        "head.weight".into(),
        WeightTensor {
            shape: vec![400, feats],
            data: vec![0.01; 400 * feats],
        },
    );
    let init = d.path().join("pretrained.safetensors");
    models::state_dict::write(&init, &other_head).expect("write");
    let run_dir = d.path().join("run");
    let base = [
        "train",
        "--data",
        s(&f.patches),
        "--out",
        s(&run_dir),
        "--cube-size",
        "16",
        "--width",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--init",
        s(&init),
    ];
    // Without --reinit-head the head is refused, before the run folder is made.
    let r = run_err("trainer", &base);
    assert!(
        r.stderr.contains("pretrained.safetensors")
            && r.stderr.contains("unexpected tensor `head.weight`")
            && r.stderr.contains("--reinit-head (train.reinit_head)"),
        "the hint names the option training has: {}",
        r.stderr
    );
    assert!(
        !run_dir.exists(),
        "the run folder was made before the weights were checked"
    );
    let mut args = base.to_vec();
    args.push("--reinit-head");
    let r = run_ok("trainer", &args);
    assert!(
        r.stderr.contains("init: the head (head.*) is initialised afresh"),
        "{}",
        r.stderr
    );
    let md = metadata(&run_dir.join("model.onnx"));
    let sha = files::sha256_file(&init).expect("sha");
    assert_eq!(
        md["training.init"],
        format!("pretrained.safetensors sha256:{sha} (head initialised afresh)")
    );
    let cfg = std::fs::read_to_string(run_dir.join("config.yaml")).expect("config");
    assert!(cfg.contains("init:") && cfg.contains("reinit_head: true"), "{cfg}");
    // --reinit-head alone is a config error.
    let r = run_err(
        "trainer",
        &[
            "train",
            "--data",
            s(&f.patches),
            "--out",
            s(&d.path().join("x")),
            "--reinit-head",
        ],
    );
    assert!(
        r.stderr
            .contains("train.reinit_head and train.reinit_stem need train.init"),
        "{}",
        r.stderr
    );
}
