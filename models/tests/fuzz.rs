//! Property tests over the parsers that read what users hand us: the `.npy` header and the
//! crop decoder, the MetaImage header and reader, the index CSVs, `calibration.yaml`, and
//! an ONNX file's metadata. Thousands of generated inputs each (random bytes, and valid
//! files mutated: bytes flipped, cut short, header text rewritten); every one must end in
//! `Ok` or an error, never a panic, and no call may allocate more than [`BOUND`] bytes at
//! once (a counting allocator measures the peak of each call).
//!
//! `PROPTEST_CASES` sets the number of inputs per target (default [`CASES`]); failures are
//! kept in `tests/fuzz.proptest-regressions` and replayed first on later runs (commit them).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ndarray::Array3;
use proptest::prelude::*;

use models::preprocess::Preprocess;

/// The most memory any one parse may hold at once beyond what it started with.
const BOUND: usize = 64 << 20;
/// Inputs per target unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 1500;

/// Counts live bytes and their peak (all threads: the targets run one at a time, under
/// [`SERIAL`]).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// plain atomics and allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as GlobalAlloc::alloc, with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        // SAFETY: as GlobalAlloc::realloc, with the caller's pointer and layout.
        let p = unsafe { System.realloc(ptr, layout, new) };
        if !p.is_null() {
            if new >= layout.size() {
                let now = LIVE.fetch_add(new - layout.size(), Ordering::Relaxed) + new - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One target at a time, so the peak belongs to the call measured.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f`, returning how far memory rose above where it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs beside them: keep failures in a named file.
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            "tests/fuzz.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// A scratch folder per target.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Writes `bytes` to `dir/name`, returning the path.
fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A mutation of a valid file: bytes overwritten at random places, cut short, or grown.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Vec<(usize, u8)>),
    Cut(usize),
    Grow(Vec<u8>),
    Splice(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(Mutation::Flip),
        any::<usize>().prop_map(Mutation::Cut),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Grow),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..32)).prop_map(|(a, b)| Mutation::Splice(a, b)),
    ]
}

fn mutate(mut v: Vec<u8>, m: &Mutation) -> Vec<u8> {
    if v.is_empty() {
        return v;
    }
    match m {
        Mutation::Flip(at) => {
            for &(i, b) in at {
                let n = v.len();
                v[i % n] = b;
            }
        }
        Mutation::Cut(n) => v.truncate(n % v.len()),
        Mutation::Grow(more) => v.extend_from_slice(more),
        Mutation::Splice(at, bytes) => {
            let at = at % v.len();
            v.splice(at..at, bytes.iter().copied());
        }
    }
    v
}

/// A `.npy` file: the header with the given dictionary text, then `data`.
fn npy_with_header(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = models::patch::npy_header_bytes(dict);
    out.extend_from_slice(data);
    out
}

fn npy_valid(shape: (usize, usize, usize), kind: u8) -> Vec<u8> {
    use ndarray_npy::WriteNpyExt;
    let a = Array3::from_shape_fn(shape, |(z, y, x)| (z * 7 + y * 3 + x) as f32 - 900.0);
    let mut b = Vec::new();
    match kind % 3 {
        0 => a.write_npy(&mut b).unwrap(),
        1 => a.mapv(f64::from).write_npy(&mut b).unwrap(),
        _ => a.mapv(|v| v as i16).write_npy(&mut b).unwrap(),
    }
    b
}

fn npy_input() -> impl Strategy<Value = Vec<u8>> {
    let shape = (1usize..20, 1usize..20, 1usize..20);
    prop_oneof![
        // Random bytes, with and without the magic.
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| {
            let mut v = b"\x93NUMPY\x01\x00".to_vec();
            v.extend(b);
            v
        }),
        // A valid file, mutated.
        (shape.clone(), any::<u8>(), mutation()).prop_map(|(s, k, m)| mutate(npy_valid(s, k), &m)),
        // Headers that claim any shape, type and order over a little data.
        (
            prop::collection::vec(0u64..u64::MAX, 0..5),
            prop::sample::select(vec!["<f4", ">f4", "<f8", "<i2", ">i2", "|u1", "<c8", "=f4", "O", "<U3"]),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..512),
        )
            .prop_map(|(shape, descr, fortran, data)| {
                let dims: Vec<String> = shape.iter().map(|d| (d % 5000).to_string()).collect();
                let shape = match dims.len() {
                    1 => format!("({},)", dims[0]),
                    _ => format!("({})", dims.join(", ")),
                };
                let f = if fortran { "True" } else { "False" };
                npy_with_header(
                    &format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}"),
                    &data,
                )
            }),
        // Arbitrary text where the dictionary goes.
        ("[ -~]{0,120}", prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(t, d)| npy_with_header(&t, &d)),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// The header parser and the crop decoder: every input ends in a cube or an error,
    /// within the bound; the whole-array reader too.
    #[test]
    fn npy_header_and_decoder(bytes in npy_input(), cube in prop::sample::select(vec![8usize, 16])) {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let d = scratch();
        let p = put(d.path(), "x.npy", &bytes);
        let pre = Preprocess { cube_size: cube, ..Preprocess::default() };
        let mut out = vec![0.0f32; cube * cube * cube];
        let (r, peak) = peak_of(|| models::patch::load_patch_into(&p, &pre, &mut out));
        prop_assert!(peak <= BOUND, "load_patch_into held {peak} bytes");
        if r.is_ok() {
            prop_assert!(out.iter().all(|v| v.is_finite()));
        }
        let (_, peak) = peak_of(|| models::patch::npy_header(&p));
        prop_assert!(peak <= BOUND, "npy_header held {peak} bytes");
        let (_, peak) = peak_of(|| models::patch::read_npy_hu(&p));
        prop_assert!(peak <= BOUND, "read_npy_hu held {peak} bytes");
    }
}

fn csv_field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_./]{0,12}",
        "-?[0-9]{1,4}(\\.[0-9]{1,3})?",
        prop::sample::select(vec![
            "NaN", "inf", "-inf", "1e308", "0", "1", "1.0", "2", "", "\"\"", "\"a,b\"", "\u{feff}"
        ])
        .prop_map(str::to_string),
    ]
}

fn index_csv() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        Just("patch_file,seriesuid,diam_mm,center_x,center_y,center_z,label".to_string()),
        Just("patch_file,seriesuid,center_x,center_y,center_z".to_string()),
        Just("label,center_z,center_y,center_x,diam_mm,seriesuid,patch_file".to_string()),
        "[a-z_,]{0,60}",
    ];
    let row = prop::collection::vec(csv_field(), 0..9).prop_map(|f| f.join(","));
    (header, prop::collection::vec(row, 0..12)).prop_map(|(h, rows)| {
        let mut s = h;
        for r in rows {
            s.push('\n');
            s += &r;
        }
        s
    })
}

proptest! {
    #![proptest_config(config())]

    /// The index CSV readers (training and scoring), over generated headers and rows.
    #[test]
    fn index_csv_readers(text in index_csv(), m in mutation(), mutated in any::<bool>()) {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let d = scratch();
        put(d.path(), "a.npy", b"x");
        let bytes = if mutated { mutate(text.into_bytes(), &m) } else { text.into_bytes() };
        let p = put(d.path(), "patch_index.csv", &bytes);
        let (_, peak) = peak_of(|| tables::index::PatchIndex::read(&p));
        prop_assert!(peak <= BOUND, "PatchIndex::read held {peak} bytes");
        let (r, peak) = peak_of(|| tables::index::read_scoring_index(&p));
        prop_assert!(peak <= BOUND, "read_scoring_index held {peak} bytes");
        if let Ok(idx) = r {
            for row in &idx.rows {
                prop_assert!(row.center_x.is_finite() && row.center_y.is_finite() && row.center_z.is_finite());
            }
        }
    }
}

/// A valid `calibration.yaml`, written by the library's own types.
fn calibration_yaml() -> String {
    use models::calibration::*;
    let prop = Proportion {
        value: Some(0.5),
        ci95: Some([0.2, 0.8]),
        successes: 5,
        trials: 10,
    };
    let point = OperatingPoint {
        name: "youden_j".into(),
        threshold_logit: 0.25,
        threshold_probability: 0.56,
        tp: 5,
        fp: 2,
        tn: 8,
        fn_: 5,
        sensitivity: prop.clone(),
        specificity: prop.clone(),
        ppv: prop.clone(),
        npv: prop,
        f1: 0.6,
        bootstrap: None,
    };
    let cal = CalibrationFile {
        tool_version: "0.1.0".into(),
        model: ModelRef {
            path: "m.onnx".into(),
            sha256: "ab".repeat(32),
        },
        data: DataRef {
            scores: "s.csv".into(),
            n: 20,
            n_positive: 10,
            prevalence: 0.5,
            n_series: 4,
        },
        method: Method::Platt,
        temperature: Temperature { temperature: 1.5 },
        platt: Platt {
            a: 0.8,
            b: -0.1,
            target_smoothing: false,
        },
        isotonic: Isotonic {
            x: vec![-1.0, 0.0, 1.0],
            y: vec![0.1, 0.5, 0.9],
        },
        method_selection: MethodSelection {
            criterion: "c".into(),
            folds_used: 0,
            cv_nll: Default::default(),
            chosen_by: "requested".into(),
        },
        default_operating_point: "youden_j".into(),
        operating_points: vec![point],
        metrics: Default::default(),
        bootstrap_resamples: 0,
        bootstrap_seed: 0,
        warnings: vec![],
        note: String::new(),
        outputs: Default::default(),
    };
    yaml_serde::to_string(&cal).unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// `calibration.yaml`: valid files mutated, values replaced by hostile ones, and
    /// random text. A file that loads has finite, valid parameters.
    #[test]
    fn calibration_yaml_loader(
        m in mutation(),
        kind in 0u8..3,
        text in "[ -~\n]{0,300}",
        swap in prop::sample::select(vec![".nan", ".inf", "-1", "0", "1e308", "[]", "{}", "~", "-.inf", "1e-320"]),
        which in 0usize..40,
    ) {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let d = scratch();
        let valid = calibration_yaml();
        let bytes = match kind {
            0 => mutate(valid.into_bytes(), &m),
            1 => {
                // Replace the value of one `key: number` line.
                let mut lines: Vec<String> = valid.lines().map(str::to_string).collect();
                let numeric: Vec<usize> = (0..lines.len())
                    .filter(|&i| lines[i].split_once(": ").is_some_and(|(_, v)| v.trim().parse::<f64>().is_ok()))
                    .collect();
                if !numeric.is_empty() {
                    let i = numeric[which % numeric.len()];
                    let key = lines[i].split_once(": ").map(|(k, _)| k.to_string()).unwrap_or_default();
                    lines[i] = format!("{key}: {swap}");
                }
                lines.join("\n").into_bytes()
            }
            _ => text.into_bytes(),
        };
        let p = put(d.path(), "calibration.yaml", &bytes);
        let (r, peak) = peak_of(|| models::calibration::CalibrationFile::load(&p));
        prop_assert!(peak <= BOUND, "CalibrationFile::load held {peak} bytes");
        if let Ok(c) = r {
            prop_assert!(c.temperature.temperature.is_finite() && c.temperature.temperature > 0.0);
            prop_assert!(c.platt.a.is_finite() && c.platt.b.is_finite());
            prop_assert!(c.operating_points.iter().all(|p| p.threshold_logit.is_finite()));
            for z in [-1e6, -3.0, 0.0, 2.5, 1e6] {
                let p = c.probability(z);
                prop_assert!((0.0..=1.0).contains(&p), "probability {p} at {z}");
            }
        }
    }
}

/// A small valid model with metadata, as the exporter writes it.
fn model_bytes() -> Vec<u8> {
    let spec = models::spec::ArchSpec::baseline_cnn(1);
    let params = spec.params();
    let weights: models::onnx::Weights = params
        .iter()
        .filter(|p| p.kind != models::spec::ParamKind::Counter)
        .map(|p| {
            (
                p.name.clone(),
                models::onnx::WeightTensor {
                    shape: p.shape.clone(),
                    data: vec![0.01; p.shape.iter().product()],
                },
            )
        })
        .collect();
    let mut md = Preprocess {
        cube_size: 8,
        ..Preprocess::default()
    }
    .to_metadata();
    md.insert("calibration.method".into(), "platt".into());
    md.insert("calibration.platt_a".into(), "0.9".into());
    let m = models::onnx::export(&spec, &weights, 8, &md).unwrap();
    models::onnx::to_bytes(&m)
}

proptest! {
    #![proptest_config(config())]

    /// The ONNX reader and what is read from its metadata (preprocessing, a baked
    /// calibration): valid models mutated, and random bytes.
    #[test]
    fn onnx_metadata_reader(m in mutation(), random in prop::collection::vec(any::<u8>(), 0..512), which in any::<bool>()) {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = if which { mutate(model_bytes(), &m) } else { random };
        let path = Path::new("fuzz.onnx");
        let (r, peak) = peak_of(|| {
            let proto = models::onnx::parse_model(&bytes, path)?;
            let md = models::onnx::metadata(&proto);
            let pre = Preprocess::from_metadata(&md);
            let baked = models::calibration::Baked::from_metadata(&md, path);
            Ok::<_, models::Error>((pre, baked.is_ok()))
        });
        prop_assert!(peak <= BOUND, "the ONNX reader held {peak} bytes");
        if let Ok((Ok(pre), _)) = r {
            prop_assert!(pre.validate().is_ok());
        }
    }
}
