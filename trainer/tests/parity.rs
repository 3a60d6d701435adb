//! The keystone: a randomly initialised network with non-default BatchNorm statistics,
//! exported by our own ONNX writer, gives the same logits under ONNX Runtime as under
//! libtorch, at batch sizes 1 and 3, within the trainer's parity tolerance.
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use models::preprocess::Preprocess;
use models::spec::ArchSpec;
use trainer::export::{self, PARITY_TOLERANCE};
use trainer::net::{self, Net};

/// Random weights, and running statistics far from the (0, 1) defaults, so a writer that
/// dropped them or used training-mode BN would fail.
fn randomise(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let r = Tensor::rand(t.size(), (Kind::Float, Device::Cpu));
            if name.ends_with("running_mean") {
                t.copy_(&(r * 0.4 - 0.2));
            } else if name.ends_with("running_var") {
                t.copy_(&(r * 1.5 + 0.5));
            } else if name.ends_with(".weight") && t.dim() == 1 {
                t.copy_(&(r * 0.5 + 0.75));
            } else if name.ends_with(".bias") {
                t.copy_(&(r * 0.2 - 0.1));
            }
        }
    });
}

/// Exports `vs` to `model.onnx` in a fresh temporary folder (kept alive by the guard).
fn export_to_tmp(spec: &ArchSpec, vs: &nn::VarStore, cube: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let pre = Preprocess {
        cube_size: cube,
        ..Default::default()
    };
    let mut md = export::metadata(spec, &pre, &[]).expect("metadata");
    if spec.feature_count() > 0 {
        let w = net::weights(vs).expect("weights");
        md.extend(
            models::features::FeatureStats {
                columns: (0..spec.feature_count()).map(|c| format!("f{c}")).collect(),
                mean: w["tabular.mean"].data.clone(),
                std: w["tabular.std"].data.clone(),
            }
            .to_metadata(),
        );
    }
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("model.onnx");
    export::export_onnx(spec, vs, &pre, &md, &path).expect("export");
    (dir, path)
}

fn check(spec: ArchSpec, cube: usize) {
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Net::new(&vs.root(), &spec).expect("build");
    randomise(&vs);
    net::check_names(&vs, &spec).expect("names");
    let nf = spec.feature_count();
    if nf > 0 {
        let mean: Vec<f32> = (0..nf).map(|c| 90.0 + c as f32).collect();
        let std: Vec<f32> = (0..nf).map(|c| 20.0 + 5.0 * c as f32).collect();
        model.set_feature_stats(&mean, &std).expect("stats");
    }
    let (_dir, path) = export_to_tmp(&spec, &vs, cube);
    // Inputs in the preprocessed range [0, 1].
    // Three patches: one batch of 3, and three of 1.
    let n = 3;
    let x = Tensor::rand(
        [n, 1, cube as i64, cube as i64, cube as i64],
        (Kind::Float, Device::Cpu),
    );
    let data = Vec::<f32>::try_from(&x.flatten(0, -1)).expect("data");
    // Tabular features, raw values far from standardised, with statistics to match.
    let feats: Vec<f32> = (0..n as usize * nf)
        .map(|i| 50.0 + 10.0 * ((i * 7) % 11) as f32)
        .collect();
    let f = (nf > 0).then(|| Tensor::from_slice(&feats).view([n, nf as i64]));
    let direct = Vec::<f32>::try_from(
        &tch::no_grad(|| model.forward_with(&x, f.as_ref(), false))
            .expect("forward")
            .flatten(0, -1),
    )
    .expect("logits");
    let spread =
        direct.iter().cloned().fold(f32::NEG_INFINITY, f32::max) - direct.iter().cloned().fold(f32::INFINITY, f32::min);
    assert!(
        spread > 1e-3,
        "{}: logits must differ between inputs for the test to mean anything: {direct:?}",
        spec.name
    );
    for batch in [1, 3] {
        let nv = cube * cube * cube;
        let fetch = |r: std::ops::Range<usize>| {
            Ok((
                data[r.start * nv..r.end * nv].to_vec(),
                feats[r.start * nf..r.end * nf].to_vec(),
            ))
        };
        let (p, ort) = export::parity(
            &spec,
            &model,
            &vs,
            &path,
            n as usize,
            &fetch,
            cube,
            batch,
            None,
            tch::Device::Cpu,
        )
        .expect("parity");
        assert_eq!(p.patches, n as usize);
        assert!(
            p.passed && p.max_abs_diff_logit <= PARITY_TOLERANCE,
            "{} batch {batch}: {p:?}",
            spec.name
        );
        for (a, b) in direct.iter().zip(&ort) {
            assert!(
                (a - b).abs() as f64 <= PARITY_TOLERANCE,
                "{} batch {batch}: {a} vs {b}",
                spec.name
            );
        }
        eprintln!(
            "{} at {cube}³, batch {batch}: max |Δlogit| = {:.3e}",
            spec.name, p.max_abs_diff_logit
        );
    }
    // The file passes the official checker with full shape inference, when the venv has it.
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True); print('ok')",
        ])
        .arg(&path)
        .output()
        .expect("run the venv python (scripts/setup installs onnx)");
    assert!(
        out.status.success(),
        "onnx.checker rejected {}: {}",
        spec.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn baseline_cnn_parity_batches_1_and_3() {
    check(ArchSpec::baseline_cnn(8), 16);
}

/// The notebook's network at the notebook's size.
#[test]
fn r3d_18_parity_at_64_batches_1_and_3() {
    check(ArchSpec::r3d_18(), 64);
}

/// Tabular features joined before the head: the graph's second input, standardised in the
/// graph with the statistics the network holds.
#[test]
fn baseline_with_features_parity_batches_1_and_3() {
    check(ArchSpec::baseline_cnn(8).with_features(3).expect("features"), 16);
}

/// torchvision's other video ResNets: anisotropic kernels, strides and paddings (1×3×3,
/// 3×1×1, (2+1)D stems) in both the libtorch build and the ONNX writer.
#[test]
fn mc3_18_parity_at_32_batches_1_and_3() {
    check(ArchSpec::mc3_18(), 32);
}

#[test]
fn r2plus1d_18_parity_at_32_batches_1_and_3() {
    check(ArchSpec::r2plus1d_18(), 32);
}

/// An architecture as data: the documented example spec file, read as a user's would be.
#[test]
fn spec_file_parity_batches_1_and_3() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/specs/small_res2plus1d.yaml");
    let text = std::fs::read_to_string(&path).expect("example spec");
    let spec = ArchSpec::from_yaml(&text, &path.display().to_string()).expect("valid");
    spec.check_input(24).expect("fits 24³");
    check(spec, 24);
}

/// The tolerance scales with the logit beyond 1: a network whose logits are in the
/// thousands (here the baseline's last layer times 10⁴, as an undertrained network's eval-mode
/// BatchNorm can give) passes with the same relative error, while one wrong weight still fails.
#[test]
fn large_logits_pass_and_a_wrong_weight_fails() {
    let (spec, cube) = (ArchSpec::baseline_cnn(8), 16);
    tch::manual_seed(12);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Net::new(&vs.root(), &spec).expect("build");
    randomise(&vs);
    let vars = vs.variables();
    tch::no_grad(|| {
        for name in ["head.3.weight", "head.3.bias"] {
            let mut t = vars[name].shallow_clone();
            let _ = t.g_mul_scalar_(1e4);
        }
    });
    let (_dir, path) = export_to_tmp(&spec, &vs, cube);
    let n = 8usize;
    let x = Tensor::rand(
        [n as i64, 1, cube as i64, cube as i64, cube as i64],
        (Kind::Float, Device::Cpu),
    );
    let data = Vec::<f32>::try_from(&x.flatten(0, -1)).expect("data");
    let logits = Vec::<f32>::try_from(&tch::no_grad(|| model.forward_t(&x, false)).flatten(0, -1)).expect("logits");
    assert!(
        logits.iter().any(|l| l.abs() > 100.0),
        "the logits must be large for the test to mean anything: {logits:?}"
    );
    let nv = cube * cube * cube;
    let fetch = |r: std::ops::Range<usize>| Ok((data[r.start * nv..r.end * nv].to_vec(), Vec::new()));
    let run = || export::parity(&spec, &model, &vs, &path, n, &fetch, cube, 4, None, Device::Cpu).expect("parity");
    let p = run().0;
    assert!(p.passed && p.max_scaled_diff_logit <= PARITY_TOLERANCE, "{p:?}");
    eprintln!(
        "logits up to {:.0}: max |Δlogit| {:.2e}, scaled {:.2e}",
        logits.iter().fold(0f32, |m, l| m.max(l.abs())),
        p.max_abs_diff_logit,
        p.max_scaled_diff_logit
    );
    // The first convolution's kernels flipped along z in libtorch, as a writer with a layout
    // error would leave them: the file no longer matches.
    tch::no_grad(|| {
        let mut w = vars["features.0.weight"].shallow_clone();
        let flipped = w.flip([2]);
        w.copy_(&flipped);
    });
    let p = run().0;
    assert!(!p.passed && p.max_scaled_diff_logit > PARITY_TOLERANCE, "{p:?}");
}

#[test]
fn scaled_diff_is_absolute_up_to_one_and_relative_beyond() {
    use trainer::export::scaled_diff;
    assert!((scaled_diff(&[0.5, -0.25], &[0.5002, -0.25]) - 2e-4).abs() < 1e-7);
    assert_eq!(scaled_diff(&[0.5, -0.25], &[0.5, -0.25]), 0.0);
    assert!((scaled_diff(&[1000.0], &[1000.5]) - 5e-4).abs() < 1e-9);
    // Scaled by the run's largest logit, not each patch's: a logit near 0 among large ones.
    assert!((scaled_diff(&[-200.0, 0.5], &[-200.0, 0.51]) - 5e-5).abs() < 1e-7);
    assert!(scaled_diff(&[f32::NAN], &[0.0]).is_infinite());
    assert!(scaled_diff(&[1.0, 2.0], &[1.0, f32::INFINITY]).is_infinite());
}
