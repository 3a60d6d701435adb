//! Inputs the tests share, made without any of the workspace's binaries, so that a
//! package's own tests need no other binary: a synthetic patch folder (the `synth` crate,
//! as `trainer synth` writes it), an untrained model with the metadata the trainer writes,
//! a scores CSV and a LUNA16 results file with known signal.
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Writes a synthetic patch folder (`patches_SEED` in `dir`) with 40% nodules: what
/// `trainer synth --positive-fraction 0.4` writes.
pub fn synth(dir: &Path, series: usize, per: usize, cube: usize, seed: u64) -> PathBuf {
    let out = dir.join(format!("patches_{seed}"));
    let cfg = synth::SynthConfig {
        series,
        patches_per_series: per,
        positive_fraction: 0.4,
        cube_size: cube,
        seed,
        features: false,
    };
    if let Err(e) = synth::generate(&cfg, &out) {
        panic!("synthetic patches in {}: {e}", out.display());
    }
    out
}

/// Writes `path`: the baseline CNN of `width` for cubes of `cube` voxels, with seeded
/// weights (He-uniform; BatchNorm as new) and the metadata a trained model carries,
/// preprocessing at its defaults. Its logits differ from patch to patch (infer's
/// `the_untrained_model_tells_patches_apart` checks it) and mean nothing: for tests of how a
/// binary handles files, not of what a model learnt.
pub fn untrained_model(path: &Path, cube: usize, width: usize, seed: u64) {
    use models::onnx::{WeightTensor, Weights};
    use models::spec::{ArchSpec, ParamKind};
    let spec = ArchSpec::baseline_cnn(width);
    let mut rng = StdRng::seed_from_u64(seed);
    let weights: Weights = spec
        .params()
        .into_iter()
        .filter(|p| p.kind != ParamKind::Counter)
        .map(|p| {
            let n: usize = p.shape.iter().product();
            let data = if p.name.ends_with("running_var") || (p.shape.len() == 1 && p.name.ends_with("weight")) {
                vec![1.0; n]
            } else if p.kind == ParamKind::Buffer || p.shape.len() == 1 {
                vec![0.0; n]
            } else {
                // He-uniform (√(6/fan-in)): with BatchNorm at its fresh identity, PyTorch's
                // default (1/√fan-in) shrinks activations about sixfold a layer and leaves
                // logits within 1e-3 of each other; this keeps their scale.
                let fan_in = (n / p.shape[0]).max(1) as f32;
                let b = (6.0 / fan_in).sqrt();
                (0..n).map(|_| rng.random_range(-b..b)).collect()
            };
            (p.name, WeightTensor { shape: p.shape, data })
        })
        .collect();
    let pre = models::preprocess::Preprocess {
        cube_size: cube,
        ..Default::default()
    };
    let md = models::onnx::model_metadata(&spec, &pre, &[("tool.git_commit", "test-fixture".into())])
        .unwrap_or_else(|e| panic!("metadata: {e}"));
    let model = models::onnx::export(&spec, &weights, cube, &md).unwrap_or_else(|e| panic!("export: {e}"));
    std::fs::write(path, models::onnx::to_bytes(&model)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The patch index of a folder [`synth`] wrote: `(patch_file, seriesuid, centre, label)`.
fn index_rows(patches: &Path) -> Vec<(String, String, [f64; 3], u8)> {
    let idx = tables::index::PatchIndex::read(patches).unwrap_or_else(|e| panic!("{e}"));
    idx.rows
        .into_iter()
        .map(|r| (r.patch_file, r.seriesuid, [r.center_x, r.center_y, r.center_z], r.label))
        .collect()
}

/// A seeded logit that separates the classes about as well as a small trained model
/// (nodules centred on +1, the rest on −1, unit noise: an AUROC near 0.92).
fn logit(rng: &mut StdRng, label: u8) -> f64 {
    let noise: f64 = (0..12).map(|_| rng.random_range(0.0..1.0)).sum::<f64>() - 6.0;
    2.0 * f64::from(label) - 1.0 + noise
}

/// Writes a scores CSV for the patches of `patches` as `trainer` writes `val_scores.csv`
/// (`patch_file, seriesuid, label, logit`), logits from [`logit`].
pub fn scores_csv(patches: &Path, path: &Path, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::from("patch_file,seriesuid,label,logit\n");
    for (file, uid, _, label) in index_rows(patches) {
        text += &format!("{file},{uid},{label},{:.6}\n", logit(&mut rng, label));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Writes a LUNA16 results file for the patches of `patches` as `infer --format luna16`
/// writes it (`seriesuid, coordX, coordY, coordZ, probability`), probabilities the sigmoid
/// of [`logit`].
pub fn luna16_results(patches: &Path, path: &Path, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::from("seriesuid,coordX,coordY,coordZ,probability\n");
    for (_, uid, [x, y, z], label) in index_rows(patches) {
        let p = 1.0 / (1.0 + (-logit(&mut rng, label)).exp());
        text += &format!("{uid},{x},{y},{z},{p:.6}\n");
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Makes a FIFO at `p` (coreutils' mkfifo).
pub fn mkfifo(p: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap_or_else(|e| panic!("mkfifo: {e}"))
        .success();
    assert!(ok, "mkfifo {}", p.display());
}

/// Holds the OS lock on `path` as another process running there would, and says who it is.
pub fn hold(path: &Path) -> std::fs::File {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.lock().unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    writeln!(f, "PID 424242: trainer train --out elsewhere").unwrap_or_else(|e| panic!("{e}"));
    f
}

/// Copies the files of the folder `from` (not its subfolders) into a new folder `to`, for a
/// test that changes a patch folder: tests must not change a shared one.
pub fn copy_files(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())).flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
        }
    }
    to.to_path_buf()
}

/// Series, patches per series and cube side of [`shared`]'s patch folder.
pub const SERIES: usize = 20;
pub const PER_SERIES: usize = 4;
pub const CUBE: usize = 16;
/// Patches in [`shared`]'s patch folder.
pub const PATCHES: usize = SERIES * PER_SERIES;

/// What a package's tests share: a patch folder ([`SERIES`] × [`PER_SERIES`] cubes of
/// [`CUBE`]³, seed 5) and an untrained model for it ([`untrained_model`], width 4).
pub struct Shared {
    pub patches: PathBuf,
    pub model: PathBuf,
}

/// [`Shared`], made once per test binary (each is a process of its own) in its
/// [`crate::process_dir`] under `tmp` (the test's `env!("CARGO_TARGET_TMPDIR")`).
pub fn shared(tmp: &str) -> &'static Shared {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let root = crate::process_dir(Path::new(tmp), "shared");
        let patches = synth(&root, SERIES, PER_SERIES, CUBE, 5);
        let model = root.join("model.onnx");
        untrained_model(&model, CUBE, 4, 1);
        Shared { patches, model }
    })
}
