//! PyTorch state dicts saved as safetensors, matched to an architecture spec.
//!
//! A state dict with torchvision's names (`stem.0.weight`, `layer1.0.conv1.1.running_mean`,
//! `fc.3.bias`): a run folder's `best.safetensors`, or one saved from PyTorch with
//! `safetensors.torch.save_file(model.state_dict(), "w.safetensors")`. Floating tensors of
//! any precision (float32, float64, float16, bfloat16) become float32; the integer
//! `num_batches_tracked` counters are not weights and are passed over. The match is strict:
//! every name the spec declares with its exact shape, nothing else, every problem listed at
//! once. The exceptions, each said in a note:
//! * a 3-channel first convolution of the spec's kernel is summed over its input channels to
//!   the spec's one (the same output as the 3-channel network on a grey cube copied to three
//!   channels);
//! * with [`Reinit::stem`] the file's first convolution (any shape, or none) is left out for
//!   the caller to initialise afresh: torchvision's Kinetics-400 `r3d_18` has a 3×7×7 stem of
//!   stride (1, 2, 2) where the notebook's has 7³ of stride 2, and the notebook replaced it
//!   by a fresh one — the same recipe;
//! * with [`Reinit::head`] the file's head (`fc.*` / `head.*`, any shape, or none) is left
//!   out likewise (Kinetics' 400 classes).
use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::onnx::{WeightTensor, Weights};
use crate::spec::{ArchSpec, ParamKind};
use crate::{Error, Result};

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::from(files::Error::BadInput {
        path: path.to_path_buf(),
        msg: msg.into(),
    })
}

/// The floating tensors of a safetensors file as float32, by name; integer counters
/// (`num_batches_tracked`) passed over. A non-finite value is an error naming its tensor.
pub fn read(path: &Path) -> Result<Weights> {
    let bytes = files::read_regular(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| files::Error::parse(path, "not a safetensors file", e))?;
    let mut out = Weights::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ if name.ends_with("num_batches_tracked") => continue,
            other => {
                return Err(bad(
                    path,
                    format!("tensor `{name}` is {other:?}: weights are floating point"),
                ))
            }
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(bad(
                path,
                format!("tensor `{name}` holds a non-finite value (NaN or Inf, or beyond float32) at flat index {i}"),
            ));
        }
        out.insert(
            name,
            WeightTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    if out.is_empty() {
        return Err(bad(path, "no floating-point tensors: not a state dict"));
    }
    Ok(out)
}

/// Weights matched to a spec, with what was done to make them fit.
#[derive(Debug, Clone)]
pub struct Matched {
    /// The spec's parameters (without the head when it is re-initialised).
    pub weights: Weights,
    /// Said to the user: a summed stem, a head left out.
    pub notes: Vec<String>,
}

/// What of the file to leave out, for the caller to initialise afresh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reinit {
    /// The first convolution's weight (and bias, if any).
    pub stem: bool,
    /// The head: every parameter under [`ArchSpec::head_prefix`].
    pub head: bool,
    /// The tabular features' standardisation buffers, when the file lacks them (a training
    /// run sets them from its own training split; an export needs them from the file).
    pub features: bool,
    /// The caller trains from the weights (`train.init`), so a refusal may point at
    /// `--reinit-head` / `--reinit-stem`; an export cannot leave anything out, and its
    /// hints say what to do instead.
    pub training: bool,
}

/// Matches a state dict read from `path` to `spec` (see the module documentation).
pub fn match_spec(spec: &ArchSpec, mut sd: Weights, path: &Path, reinit: Reinit) -> Result<Matched> {
    let mut notes = Vec::new();
    let params: Vec<_> = spec
        .params()
        .into_iter()
        .filter(|p| p.kind != ParamKind::Counter)
        .collect();
    let head = spec.head_prefix();
    let reinit_head = reinit.head;
    // The head is told apart by its name prefix: a spec whose head shares it with the first
    // layer (unnamed layers are all `layers.N`) would have every weight left out.
    if reinit_head && params.first().is_some_and(|p| p.name.starts_with(&head)) {
        return Err(Error::Spec(format!(
            "`{}`: cannot tell its head from the rest (the first and the last layer are both under `{head}`): \
             give the head's layers names of their own (such as `name: fc.0`) to initialise it afresh",
            spec.name
        )));
    }
    let feature_buffers: Vec<String> = spec
        .layers
        .iter()
        .filter_map(|l| match l {
            crate::spec::Layer::Features { name, .. } => Some([format!("{name}.mean"), format!("{name}.std")]),
            _ => None,
        })
        .flatten()
        .collect();
    // The first convolution: its weight and (if it has one) bias.
    let stem: Vec<String> = params
        .first()
        .map(|p| {
            let base = p.name.trim_end_matches(".weight").to_string();
            vec![p.name.clone(), format!("{base}.bias")]
        })
        .unwrap_or_default();
    if reinit.stem {
        let gone: Vec<String> = stem.iter().filter(|k| sd.remove(*k).is_some()).cloned().collect();
        notes.push(format!(
            "the first convolution ({}) is initialised afresh{}",
            stem[0],
            if gone.is_empty() {
                String::new()
            } else {
                format!("; the file's {} left out", gone.join(", "))
            }
        ));
    }
    if reinit_head {
        let before = sd.len();
        sd.retain(|k, _| !k.starts_with(&head));
        notes.push(format!(
            "the head ({head}*) is initialised afresh; {} of the file's tensors left out",
            before - sd.len()
        ));
    }
    // A 3-channel first convolution summed to the spec's one input channel.
    if let Some(first) = params.first().filter(|_| !reinit.stem) {
        notes.extend(sum_rgb_stem(first, &mut sd));
    }
    let expected: Vec<_> = params
        .iter()
        .filter(|p| {
            let fresh = (reinit_head && p.name.starts_with(&head)) || (reinit.stem && stem.contains(&p.name));
            let set_by_run = reinit.features && feature_buffers.contains(&p.name) && !sd.contains_key(&p.name);
            !fresh && !set_by_run
        })
        .collect();
    if reinit.features && feature_buffers.iter().any(|b| !sd.contains_key(b)) {
        notes.push("the tabular features' statistics come from this run's training split".into());
    }
    let mut problems = Vec::new();
    for p in &expected {
        match sd.get(&p.name) {
            None => problems.push(format!("missing `{}` (expected shape {:?})", p.name, p.shape)),
            Some(w) if w.shape != p.shape => problems.push(format!(
                "`{}`: expected shape {:?}, the file has {:?}",
                p.name, p.shape, w.shape
            )),
            Some(_) => {}
        }
    }
    let unexpected: Vec<&String> = sd.keys().filter(|k| !expected.iter().any(|p| &p.name == *k)).collect();
    for k in &unexpected {
        problems.push(format!("unexpected tensor `{k}`"));
    }
    if !problems.is_empty() {
        let hint = mismatch_hint(&unexpected, &problems, &head, &stem, reinit);
        return Err(bad(
            path,
            format!(
                "the state dict does not match architecture `{}`{hint}:\n  {}",
                spec.name,
                problems.join("\n  ")
            ),
        ));
    }
    Ok(Matched { weights: sd, notes })
}

/// A first convolution with 3 input channels (RGB-pretrained) where the spec has one: its
/// channels summed, which gives the 3-channel network's output on a grey cube copied to three
/// channels. Returns the note saying so, `None` when the weight is not such a one.
fn sum_rgb_stem(first: &crate::spec::ParamSpec, sd: &mut Weights) -> Option<String> {
    let w = sd.get_mut(&first.name)?;
    let three: Vec<usize> = first
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if i == 1 { 3 } else { d })
        .collect();
    if first.shape.get(1) != Some(&1) || w.shape != three {
        return None;
    }
    let per_out: usize = first.shape[2..].iter().product();
    let mut summed = vec![0.0f32; first.shape.iter().product()];
    for (o, out) in summed.chunks_exact_mut(per_out).enumerate() {
        for c in 0..3 {
            let src = &w.data[(o * 3 + c) * per_out..(o * 3 + c + 1) * per_out];
            for (d, s) in out.iter_mut().zip(src) {
                *d += s;
            }
        }
    }
    *w = WeightTensor {
        shape: first.shape.clone(),
        data: summed,
    };
    Some(format!(
        "`{}` has 3 input channels (RGB-pretrained): summed to 1, which gives the 3-channel \
         network's output on a grey cube copied to three channels",
        first.name
    ))
}

/// What the mismatch most likely is, for the error: weights saved from `nn.DataParallel`,
/// another head, or another stem, with what to do about it (`reinit.training`: the flags of
/// training, else those of an export).
fn mismatch_hint(unexpected: &[&String], problems: &[String], head: &str, stem: &[String], reinit: Reinit) -> String {
    if unexpected.iter().any(|k| k.starts_with("module.")) {
        return " (names start with `module.`: saved from nn.DataParallel? save `model.module.state_dict()`)".into();
    }
    if !reinit.head && problems.iter().any(|p| p.contains(&format!("`{head}"))) {
        return if reinit.training {
            format!(" (a different head? --reinit-head (train.reinit_head) initialises the head afresh, leaving out {head}*)")
        } else {
            format!(
                " (a different head: {head}* of these weights is for another task; export weights trained with this \
                 architecture, or train from them with --reinit-head first)"
            )
        };
    }
    let stem_differs = stem
        .first()
        .is_some_and(|s| problems.iter().any(|p| p.contains(&format!("`{s}`"))));
    if !reinit.stem && stem_differs {
        return if reinit.training {
            " (another stem, such as torchvision's Kinetics 3×7×7 one? --reinit-stem (train.reinit_stem) \
             initialises the first convolution afresh, as the notebook did)"
                .into()
        } else {
            " (another stem, such as torchvision's Kinetics 3×7×7 one: export weights trained with this \
             architecture, or train from them with --reinit-stem first)"
                .into()
        };
    }
    String::new()
}

/// Writes `weights` as a safetensors file (float32), as PyTorch's `save_file` would: for
/// tests and tools.
pub fn write(path: &Path, weights: &BTreeMap<String, WeightTensor>) -> Result<()> {
    let bytes: BTreeMap<&String, Vec<u8>> = weights
        .iter()
        .map(|(k, w)| (k, w.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(&String, safetensors::tensor::TensorView)> = weights
        .iter()
        .map(|(k, w)| {
            safetensors::tensor::TensorView::new(Dtype::F32, w.shape.clone(), &bytes[k])
                .map(|v| (k, v))
                .map_err(|e| bad(path, format!("tensor `{k}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let out = safetensors::serialize(views, None).map_err(|e| bad(path, e.to_string()))?;
    Ok(files::write_atomic(path, &out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ArchSpec {
        ArchSpec::baseline_cnn(2)
    }

    /// The spec's own weights (values = index).
    fn weights_of(spec: &ArchSpec) -> Weights {
        spec.params()
            .into_iter()
            .filter(|p| p.kind != ParamKind::Counter)
            .map(|p| {
                let n: usize = p.shape.iter().product();
                (
                    p.name,
                    WeightTensor {
                        shape: p.shape,
                        data: (0..n).map(|i| i as f32 * 0.01).collect(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn round_trip_and_every_mismatch_listed() {
        let d = tempfile::tempdir().expect("tmp");
        let spec = tiny();
        let w = weights_of(&spec);
        let p = d.path().join("w.safetensors");
        write(&p, &w).expect("write");
        let back = read(&p).expect("read");
        assert_eq!(back, w);
        let m = match_spec(&spec, back.clone(), &p, Reinit::default()).expect("match");
        assert_eq!(m.weights, w);
        assert!(m.notes.is_empty());
        // One missing, one mis-shaped, one extra: all three named.
        let mut bad = back.clone();
        let names: Vec<String> = bad.keys().cloned().collect();
        bad.remove(&names[0]);
        bad.get_mut(&names[1]).expect("t").shape.push(1);
        bad.insert(
            "extra.weight".into(),
            WeightTensor {
                shape: vec![1],
                data: vec![0.0],
            },
        );
        let e = match_spec(&spec, bad, &p, Reinit::default())
            .expect_err("bad")
            .to_string();
        assert!(
            e.contains(&format!("missing `{}`", names[0]))
                && e.contains(&format!("`{}`: expected shape", names[1]))
                && e.contains("unexpected tensor `extra.weight`")
                && e.contains("w.safetensors"),
            "{e}"
        );
        // DataParallel's prefix gets a hint.
        let prefixed: Weights = w.iter().map(|(k, v)| (format!("module.{k}"), v.clone())).collect();
        let e = match_spec(&spec, prefixed, &p, Reinit::default())
            .expect_err("module")
            .to_string();
        assert!(e.contains("nn.DataParallel"), "{e}");
    }

    #[test]
    fn a_three_channel_stem_is_summed_and_a_head_can_be_left_out() {
        let spec = ArchSpec::r3d_18();
        let mut w = weights_of(&spec);
        let stem = w["stem.0.weight"].clone();
        let per_out: usize = stem.shape[2..].iter().product();
        // Channel c of output o holds (c + 1) × the 1-channel value: the sum is 6 ×.
        let mut rgb = Vec::new();
        for o in 0..stem.shape[0] {
            for c in 0..3 {
                rgb.extend(
                    stem.data[o * per_out..(o + 1) * per_out]
                        .iter()
                        .map(|v| v * (c + 1) as f32),
                );
            }
        }
        let mut shape = stem.shape.clone();
        shape[1] = 3;
        w.insert("stem.0.weight".into(), WeightTensor { shape, data: rgb });
        // A Kinetics head: 400 classes straight from 512 features.
        w.retain(|k, _| !k.starts_with("fc."));
        w.insert(
            "fc.weight".into(),
            WeightTensor {
                shape: vec![400, 512],
                data: vec![0.0; 400 * 512],
            },
        );
        w.insert(
            "fc.bias".into(),
            WeightTensor {
                shape: vec![400],
                data: vec![0.0; 400],
            },
        );
        let p = Path::new("kinetics.safetensors");
        let e = match_spec(&spec, w.clone(), p, Reinit::default())
            .expect_err("head")
            .to_string();
        assert!(
            e.contains("unexpected tensor `fc.weight`") && e.contains("train from them with --reinit-head first"),
            "{e}"
        );
        let training = Reinit {
            training: true,
            ..Reinit::default()
        };
        let e = match_spec(&spec, w.clone(), p, training).expect_err("head").to_string();
        assert!(e.contains("--reinit-head (train.reinit_head) initialises the head afresh"), "{e}");
        let head_only = Reinit {
            head: true,
            ..Reinit::default()
        };
        let m = match_spec(&spec, w.clone(), p, head_only).expect("match");
        let got = &m.weights["stem.0.weight"];
        assert_eq!(got.shape, stem.shape);
        for (g, s) in got.data.iter().zip(&stem.data) {
            assert!((g - 6.0 * s).abs() <= 1e-6 * s.abs().max(1.0), "{g} vs 6 × {s}");
        }
        assert!(!m.weights.keys().any(|k| k.starts_with("fc.")));
        assert_eq!(m.notes.len(), 2, "{:?}", m.notes);
        // torchvision's Kinetics stem (3×7×7 over 3 channels): refused with a hint, or left
        // out with `stem` as the notebook did.
        let mut kinetics = w;
        kinetics.insert(
            "stem.0.weight".into(),
            WeightTensor {
                shape: vec![64, 3, 3, 7, 7],
                data: vec![0.0; 64 * 3 * 3 * 49],
            },
        );
        let e = match_spec(&spec, kinetics.clone(), p, head_only)
            .expect_err("stem")
            .to_string();
        assert!(
            e.contains("`stem.0.weight`: expected shape") && e.contains("Kinetics"),
            "{e}"
        );
        let both = Reinit {
            stem: true,
            head: true,
            features: false,
            training: true,
        };
        let m = match_spec(&spec, kinetics, p, both).expect("match");
        assert!(!m.weights.contains_key("stem.0.weight") && m.weights.contains_key("stem.1.weight"));
        assert!(
            m.notes.iter().any(|n| n.contains("first convolution (stem.0.weight)")),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn other_precisions_read_as_float32_and_bad_files_are_named() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("half.safetensors");
        let h: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let b: Vec<u8> = [0.5f32]
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let c: Vec<u8> = 7i64.to_le_bytes().to_vec();
        let i: Vec<u8> = 7i64.to_le_bytes().to_vec();
        let views = vec![
            (
                "a",
                safetensors::tensor::TensorView::new(Dtype::F16, vec![2], &h).expect("v"),
            ),
            (
                "b",
                safetensors::tensor::TensorView::new(Dtype::BF16, vec![1], &b).expect("v"),
            ),
            (
                "bn.num_batches_tracked",
                safetensors::tensor::TensorView::new(Dtype::I64, vec![], &c).expect("v"),
            ),
        ];
        std::fs::write(&p, safetensors::serialize(views, None).expect("ser")).expect("w");
        let w = read(&p).expect("read");
        assert_eq!(w["a"].data, [1.5, -2.25]);
        assert_eq!(w["b"].data, [0.5]);
        assert!(!w.contains_key("bn.num_batches_tracked"));
        // An integer tensor that is not a counter, a NaN, and not safetensors at all.
        let views = vec![(
            "idx",
            safetensors::tensor::TensorView::new(Dtype::I64, vec![1], &i).expect("v"),
        )];
        std::fs::write(&p, safetensors::serialize(views, None).expect("ser")).expect("w");
        assert!(read(&p).expect_err("int").to_string().contains("`idx` is I64"));
        let nan: Vec<u8> = [1.0f32, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![(
            "w",
            safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &nan).expect("v"),
        )];
        std::fs::write(&p, safetensors::serialize(views, None).expect("ser")).expect("w");
        let e = read(&p).expect_err("nan").to_string();
        assert!(e.contains("`w`") && e.contains("flat index 1"), "{e}");
        std::fs::write(&p, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").expect("w");
        let e = read(&p).expect_err("junk").to_string();
        assert!(
            e.contains("half.safetensors") && e.contains("not a safetensors file"),
            "{e}"
        );
    }

    /// A spec whose layers are all unnamed (`layers.N`): its head cannot be told from the
    /// rest, so initialising the head afresh is refused rather than dropping every weight.
    #[test]
    fn reinit_head_needs_a_head_of_its_own() {
        let spec = ArchSpec::from_yaml(
            "name: plain\nlayers:\n- {op: conv3d, in_channels: 1, out_channels: 2, kernel: 3}\n\
             - {op: global_avg_pool}\n- {op: linear, in_features: 2, out_features: 1}\n",
            "plain.yaml",
        )
        .expect("spec");
        let reinit = Reinit {
            head: true,
            ..Default::default()
        };
        let e = match_spec(&spec, weights_of(&spec), Path::new("w.safetensors"), reinit)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("cannot tell its head from the rest"), "{e}");
        // Without the option, the same file loads.
        match_spec(&spec, weights_of(&spec), Path::new("w.safetensors"), Reinit::default()).expect("loads");
    }
}
