//! Architectures beyond the baseline: torchvision's other video ResNets by name, and
//! architectures as data (`model: { spec: FILE }`, `--spec FILE`) through train, the run
//! folder, export and scoring; a faulty spec refused with the file and layer named.
use std::path::Path;

use chain_tests::{read_csv, run_err, run_ok, s};

use crate::fixture::{fixture, CUBE};

const TINY: &str = r#"name: tiny_res
layers:
  - {op: conv3d, name: stem, in_channels: 1, out_channels: 4, kernel: [1, 3, 3], stride: [1, 2, 2], padding: [0, 1, 1]}
  - {op: batch_norm3d, name: stem_bn, channels: 4}
  - {op: relu}
  - op: residual
    body:
      - {op: conv3d, in_channels: 4, out_channels: 8, kernel: [3, 1, 1], stride: [2, 1, 1], padding: [1, 0, 0]}
      - {op: batch_norm3d, channels: 8}
    shortcut:
      - {op: conv3d, in_channels: 4, out_channels: 8, kernel: 1, stride: [2, 1, 1]}
  - {op: max_pool3d, kernel: 2, stride: 2}
  - {op: global_avg_pool}
  - {op: dropout, p: 0.2}
  - {op: linear, name: fc, in_features: 8, out_features: 1}
"#;

fn metadata(p: &Path) -> std::collections::BTreeMap<String, String> {
    models::onnx::metadata(&models::onnx::read_model(p).expect("model"))
}

#[test]
fn a_spec_file_trains_exports_and_scores() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    // The config names the spec relative to itself, wherever the trainer runs from.
    std::fs::create_dir_all(d.path().join("exp/nets")).expect("mkdir");
    std::fs::write(d.path().join("exp/nets/tiny.yaml"), TINY).expect("spec");
    let run = d.path().join("run");
    let cfg = d.path().join("exp/train.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data: {}\nout: {}\nmodel: {{ spec: nets/tiny.yaml }}\npreprocess: {{ cube_size: {CUBE} }}\n\
             train: {{ epochs: 2, batch_size: 8, lr: 0.003, device: cpu }}\n",
            s(&f.patches),
            s(&run)
        ),
    )
    .expect("config");
    run_ok("trainer", &["train", "--config", s(&cfg), "-q"]);
    // The run folder holds the spec itself: the spec file may change or go.
    std::fs::remove_file(d.path().join("exp/nets/tiny.yaml")).expect("rm");
    let saved = std::fs::read_to_string(run.join("config.yaml")).expect("config.yaml");
    assert!(
        saved.contains("arch: tiny_res") && saved.contains("name: stem_bn"),
        "{saved}"
    );
    let md = metadata(&run.join("model.onnx"));
    assert_eq!(md["architecture"], "tiny_res");
    assert!(md["architecture.spec_json"].contains(r#""kernel":[3,1,1]"#));
    // Its config rebuilds the network: export of the best weights, the same model.
    let again = d.path().join("again.onnx");
    run_ok(
        "trainer",
        &[
            "export",
            "--weights",
            s(&run.join("best.safetensors")),
            "--config",
            s(&run.join("config.yaml")),
            "-o",
            s(&again),
        ],
    );
    assert_eq!(metadata(&again)["architecture.spec_json"], md["architecture.spec_json"]);
    let scores = d.path().join("scores.csv");
    run_ok("infer", &[s(&f.patches), "--model", s(&again), "-o", s(&scores)]);
    assert_eq!(read_csv(&scores).1.len(), crate::fixture::PATCHES);
    // `trainer spec` prints it with its size; what it prints is a spec file again.
    let spec_file = d.path().join("tiny.yaml");
    std::fs::write(&spec_file, TINY).expect("spec");
    let r = run_ok("trainer", &["spec", s(&spec_file), "--cube-size", "16"]);
    // 4·1·1·3·3 + 2·4 + 8·4·3·1·1 + 2·8 + 8·4 + 8 + 1
    assert!(r.stdout.contains("tiny_res: 197 trainable parameters"), "{}", r.stdout);
    assert!(r.stdout.contains("name: layers.3.body.0"), "{}", r.stdout);
}

#[test]
fn a_faulty_spec_is_refused_naming_file_and_layer() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let train = |spec: &Path, cube: &str| {
        run_err(
            "trainer",
            &[
                "train",
                "--data",
                s(&f.patches),
                "--out",
                s(&d.path().join("never")),
                "--spec",
                s(spec),
                "--cube-size",
                cube,
                "--epochs",
                "1",
                "--device",
                "cpu",
            ],
        )
    };
    for (name, text, want) in [
        (
            "chain.yaml",
            TINY.replace("out_channels: 8, kernel: 1", "out_channels: 6, kernel: 1"),
            "layers.3 (residual): body gives 8 channels, shortcut 6 channels",
        ),
        (
            "typo.yaml",
            TINY.replace("stride: [1, 2, 2]", "strides: [1, 2, 2]"),
            "unknown field `strides`",
        ),
        (
            "huge.yaml",
            TINY.replace("out_channels: 4, kernel", "out_channels: 40000000, kernel"),
            "stem: out_channels 40000000 must be from 1 to 65536",
        ),
    ] {
        let p = d.path().join(name);
        std::fs::write(&p, text).expect("write");
        let r = train(&p, "16");
        assert!(
            r.stderr.contains(name) && r.stderr.contains(want),
            "{name}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    // A spec that does not fit the cube: refused before training, naming the layer.
    let p = d.path().join("tiny.yaml");
    std::fs::write(
        &p,
        TINY.replace("{op: max_pool3d, kernel: 2", "{op: max_pool3d, kernel: 9"),
    )
    .expect("write");
    let r = train(&p, "16");
    assert!(
        r.stderr.contains("does not fit a 16³ cube") && r.stderr.contains("layers.4 (max_pool3d)"),
        "{}",
        r.stderr
    );
    // A special file as the spec, a folder: refused.
    let r = train(d.path(), "16");
    assert!(r.stderr.contains(s(d.path())), "{}", r.stderr);
    assert!(!d.path().join("never").exists());
}

/// The other torchvision video ResNets train end to end (one epoch) and export with parity.
#[test]
fn mc3_18_and_r2plus1d_18_train_and_export() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    for arch in ["mc3_18", "r2plus1d_18"] {
        let run = d.path().join(arch);
        let r = run_ok(
            "trainer",
            &[
                "train",
                "--data",
                s(&f.patches),
                "--out",
                s(&run),
                "--arch",
                arch,
                "--cube-size",
                "16",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--device",
                "cpu",
            ],
        );
        assert!(r.stdout.contains("parity"), "{}", r.stdout);
        assert_eq!(metadata(&run.join("model.onnx"))["architecture"], arch);
    }
}

/// A sweep over architectures: spec files named relative to the sweep file; a missing one
/// refused when the sweep is planned, naming it.
#[test]
fn a_sweep_takes_spec_files_relative_to_itself() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(d.path().join("nets")).expect("mkdir");
    std::fs::write(d.path().join("nets/tiny.yaml"), TINY).expect("spec");
    let file = d.path().join("sweep.yaml");
    let write = |grid: &str| {
        std::fs::write(
            &file,
            format!(
                "config:\n  data: {}\n  out: unused\n  preprocess: {{ cube_size: 16 }}\n  train: {{ epochs: 1, device: cpu }}\n\
                 out: {}\nfolds: 2\ngrid:\n  {grid}\n",
                s(&f.patches),
                s(&d.path().join("sw"))
            ),
        )
        .expect("sweep file")
    };
    write("model.spec: [nets/tiny.yaml]");
    let r = run_ok("trainer", &["sweep", s(&file), "--list"]);
    assert!(
        r.stdout.contains("2 configurations × 2 folds = 4 tasks") && r.stdout.contains("model.spec=nets/tiny.yaml"),
        "{}",
        r.stdout
    );
    // The sweep file named by a relative path from another folder: the spec is still
    // found beside it (not joined to its folder twice).
    let r = std::process::Command::new(chain_tests::bin("trainer"))
        .current_dir(d.path().parent().expect("tmp root"))
        .args([
            "sweep",
            &format!("{}/sweep.yaml", d.path().file_name().expect("name").to_string_lossy()),
            "--list",
        ])
        .output()
        .expect("run trainer");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    write("model.spec: [nets/gone.yaml]");
    let r = run_err("trainer", &["sweep", s(&file), "--list"]);
    assert!(r.stderr.contains("gone.yaml"), "{}", r.stderr);
}
