//! The libtorch side of an [`ArchSpec`]: builds the layers in a tch `VarStore` under the
//! spec's dotted names and runs them.
use crate::{Result, TrainError};
use tch::{nn, Tensor};

use models::onnx::{WeightTensor, Weights};
use models::spec::{ArchSpec, Layer};

#[derive(Debug)]
enum Built {
    Conv(nn::Conv3D),
    Bn(nn::BatchNorm),
    Relu,
    MaxPool([i64; 3], [i64; 3]),
    Gap,
    Linear(nn::Linear),
    Dropout(f64),
    /// Tabular features joined after the pooling: their standardisation buffers.
    Features(Tensor, Tensor),
    Residual(Vec<Built>, Vec<Built>),
}

/// A network built from a spec.
#[derive(Debug)]
pub struct Net {
    layers: Vec<Built>,
    /// BatchNorm `num_batches_tracked` counters (int64 scalars, as PyTorch keeps them).
    counters: Vec<Tensor>,
    /// Tabular features the network takes (0: none).
    features: usize,
}

/// `root / "a" / "b" / "c"` for the name `a.b.c`.
fn path<'a>(root: &nn::Path<'a>, name: &str) -> nn::Path<'a> {
    name.split('.')
        .filter(|part| !part.is_empty())
        .fold(root.clone(), |p, part| p / part)
}

fn build(root: &nn::Path, layers: &[Layer], counters: &mut Vec<Tensor>) -> Vec<Built> {
    layers
        .iter()
        .map(|l| match l {
            Layer::Conv3d {
                name,
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                bias,
            } => {
                // tch's `nn::conv3d` takes one kernel size for every axis; the generic
                // `nn::conv` takes one per axis (with stride and padding likewise).
                let cfg = nn::ConvConfigND::<[i64; 3]> {
                    stride: stride.i64s(),
                    padding: padding.i64s(),
                    dilation: [1; 3],
                    groups: 1,
                    bias: *bias,
                    ws_init: nn::ConvConfig::default().ws_init,
                    bs_init: nn::ConvConfig::default().bs_init,
                    padding_mode: nn::PaddingMode::Zeros,
                };
                Built::Conv(nn::conv(
                    path(root, name),
                    *in_channels as i64,
                    *out_channels as i64,
                    kernel.i64s(),
                    cfg,
                ))
            }
            Layer::BatchNorm3d { name, channels, eps } => {
                // PyTorch initialises the BN scale to 1 (tch's default is uniform [0, 1]).
                let cfg = nn::BatchNormConfig {
                    eps: *eps,
                    ws_init: nn::Init::Const(1.0),
                    ..Default::default()
                };
                let p = path(root, name);
                let bn = nn::batch_norm3d(&p, *channels as i64, cfg);
                let zero = Tensor::zeros([], (tch::Kind::Int64, p.device()));
                counters.push(p.add("num_batches_tracked", zero, false));
                Built::Bn(bn)
            }
            Layer::Relu {} => Built::Relu,
            Layer::MaxPool3d { kernel, stride } => Built::MaxPool(kernel.i64s(), stride.i64s()),
            Layer::GlobalAvgPool {} => Built::Gap,
            Layer::Linear {
                name,
                in_features,
                out_features,
            } => Built::Linear(nn::linear(
                path(root, name),
                *in_features as i64,
                *out_features as i64,
                Default::default(),
            )),
            Layer::Dropout { p } => Built::Dropout(*p),
            Layer::Features { name, count } => {
                // Buffers, not trained: set from the training split's statistics.
                let p = path(root, name);
                let mean = p.add(
                    "mean",
                    Tensor::zeros([*count as i64], (tch::Kind::Float, p.device())),
                    false,
                );
                let std = p.add(
                    "std",
                    Tensor::ones([*count as i64], (tch::Kind::Float, p.device())),
                    false,
                );
                Built::Features(mean, std)
            }
            Layer::Residual { body, shortcut } => {
                Built::Residual(build(root, body, counters), build(root, shortcut, counters))
            }
        })
        .collect()
}

/// Whether `l` returns a tensor of its own: every layer but dropout, which in eval mode
/// returns its input.
fn makes_new(l: &Built) -> bool {
    !matches!(l, Built::Dropout(_))
}

fn run(layers: &[Built], xs: &Tensor, feats: Option<&Tensor>, train: bool, inplace: bool) -> Tensor {
    let mut x = xs.shallow_clone();
    // Whether `x` is a tensor this sequence made (no other holder). ReLU and the residual
    // sum may then overwrite it in place, as torchvision's `ReLU(inplace=True)` and
    // `out += identity` do, which saves an activation-sized tensor per ReLU. None of the
    // layers that make one (convolution, BatchNorm, linear, pooling, ReLU, a residual sum)
    // keeps its output for backward; autograd's version check would stop a run if one did.
    // The sequence's input may be shared (the network input; a block input that the
    // shortcut reads after the body), and dropout returns its input unchanged in eval mode,
    // so neither makes `x` fresh.
    let mut fresh = false;
    for l in layers {
        let own = inplace && fresh;
        fresh = fresh || makes_new(l);
        x = match l {
            Built::Conv(c) => x.apply(c),
            Built::Bn(b) => x.apply_t(b, train),
            Built::Relu if own => x.relu_(),
            Built::Relu => x.relu(),
            Built::MaxPool(k, s) => x.max_pool3d(k, s, [0; 3], [1; 3], false),
            Built::Gap => x.adaptive_avg_pool3d([1, 1, 1]).flatten(1, -1),
            Built::Linear(lin) => x.apply(lin),
            Built::Dropout(p) => x.dropout(*p, train),
            Built::Features(mean, std) => match feats {
                // Standardised in float32, then in the embedding's kind (fp16 under autocast).
                Some(f) => Tensor::cat(&[x.shallow_clone(), ((f - mean) / std).to_kind(x.kind())], 1),
                None => x,
            },
            Built::Residual(body, short) => {
                let main = run(body, &x, feats, train, inplace);
                let side = if short.is_empty() {
                    x.shallow_clone()
                } else {
                    run(short, &x, feats, train, inplace)
                };
                if inplace && body.iter().any(makes_new) {
                    // The body made `main`.
                    let mut sum = main;
                    sum += side;
                    sum.relu_()
                } else {
                    (main + side).relu()
                }
            }
        };
    }
    x
}

impl Net {
    /// Builds `spec` under `root`.
    pub fn new(root: &nn::Path, spec: &ArchSpec) -> Result<Self> {
        spec.validate()?;
        let mut counters = Vec::new();
        let layers = build(root, &spec.layers, &mut counters);
        Ok(Net {
            layers,
            counters,
            features: spec.feature_count(),
        })
    }

    /// Tabular features the network takes (0: none).
    pub fn feature_count(&self) -> usize {
        self.features
    }

    /// The forward pass with the tabular features (`[N, F]`, raw values) a network with a
    /// `features` layer needs; `[N, 1, D, H, W]` → `[N, 1]` logits.
    pub fn forward_with(&self, xs: &Tensor, feats: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let got = feats.map_or(0, |f| f.size().get(1).copied().unwrap_or(0) as usize);
        if got != self.features || feats.is_some_and(|f| f.size().first() != xs.size().first()) {
            return Err(TrainError::Internal(format!(
                "the network takes {} tabular feature(s) per patch, given {} for a batch of {}",
                self.features,
                feats.map_or_else(|| "none".to_string(), |f| format!("a tensor of shape {:?}", f.size())),
                xs.size().first().copied().unwrap_or(0)
            )));
        }
        Ok(run(&self.layers, xs, feats, train, true))
    }

    /// Sets the tabular features' standardisation (training split statistics).
    pub fn set_feature_stats(&self, mean: &[f32], std: &[f32]) -> Result<()> {
        for l in &self.layers {
            if let Built::Features(m, s) = l {
                if m.size() != [mean.len() as i64] || s.size() != [std.len() as i64] {
                    return Err(TrainError::Internal("feature statistics of another length".into()));
                }
                tch::no_grad(|| {
                    m.shallow_clone().copy_(&Tensor::from_slice(mean).to_device(m.device()));
                    s.shallow_clone().copy_(&Tensor::from_slice(std).to_device(s.device()));
                });
            }
        }
        Ok(())
    }

    /// Counts one training batch in every BatchNorm's `num_batches_tracked`, as PyTorch does
    /// on each forward in training mode.
    pub fn count_batch(&self) {
        tch::no_grad(|| {
            for c in &self.counters {
                let mut c = c.shallow_clone();
                let _ = c.g_add_scalar_(1);
            }
        });
    }
}

impl nn::ModuleT for Net {
    /// # Shapes
    /// `[N, 1, D, D, D]` → `[N, 1]` logits. For a network without tabular features (one
    /// with them takes [`Net::forward_with`]).
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        run(&self.layers, xs, None, train, true)
    }
}

/// Checks that the VarStore holds exactly the spec's names and shapes (tch silently
/// renames a duplicate to `name__N`, which would break the export contract).
pub fn check_names(vs: &nn::VarStore, spec: &ArchSpec) -> Result<()> {
    let vars = vs.variables();
    let mut problems = Vec::new();
    for p in spec.params() {
        match vars.get(&p.name) {
            None => problems.push(format!("spec declares `{}` but the VarStore lacks it", p.name)),
            Some(t) => {
                let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
                if shape != p.shape {
                    problems.push(format!(
                        "`{}`: spec shape {:?}, VarStore shape {:?}",
                        p.name, p.shape, shape
                    ));
                }
            }
        }
    }
    let declared: Vec<String> = spec.params().into_iter().map(|p| p.name).collect();
    for k in vars.keys() {
        if !declared.contains(k) {
            problems.push(format!("VarStore holds `{k}` which the spec does not declare"));
        }
    }
    if !problems.is_empty() {
        return Err(TrainError::Internal(format!(
            "architecture `{}` and its libtorch build disagree:\n  {}",
            spec.name,
            problems.join("\n  ")
        )));
    }
    Ok(())
}

/// Copies `weights` into the VarStore's variables of the same names and shapes (in their
/// kind and on their device); variables `weights` lacks keep their values.
pub fn load_weights(vs: &nn::VarStore, weights: &Weights) -> Result<()> {
    let vars = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, w) in weights {
            let v = vars
                .get(name)
                .ok_or_else(|| TrainError::Internal(format!("no variable `{name}` to load into")))?;
            let shape: Vec<i64> = w.shape.iter().map(|&d| d as i64).collect();
            if v.size() != shape {
                return Err(TrainError::Internal(format!(
                    "`{name}`: variable shape {:?}, weights {:?}",
                    v.size(),
                    shape
                )));
            }
            let t = Tensor::from_slice(&w.data)
                .reshape(&shape)
                .to_kind(v.kind())
                .to_device(v.device());
            v.shallow_clone().copy_(&t);
        }
        Ok(())
    })
}

/// Loads the initial weights of `train.init` (or `trainer export --weights`) into `vs`:
/// read, matched strictly to `spec` ([`models::state_dict`]), copied. Returns the notes to
/// print (a summed 3-channel stem, a head left out).
pub fn init_from(
    vs: &nn::VarStore,
    spec: &ArchSpec,
    path: &std::path::Path,
    reinit: models::state_dict::Reinit,
) -> Result<Vec<String>> {
    let sd = models::state_dict::read(path)?;
    let m = models::state_dict::match_spec(spec, sd, path, reinit)?;
    load_weights(vs, &m.weights)?;
    Ok(m.notes)
}

/// Copies every floating-point variable to CPU float32, sorted by name (the int64
/// `num_batches_tracked` counters are not part of the inference graph).
pub fn weights(vs: &nn::VarStore) -> Result<Weights> {
    let mut out = Weights::new();
    for (name, t) in vs.variables() {
        if t.kind() == tch::Kind::Int64 {
            continue;
        }
        let t = t
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(tch::Kind::Float)
            .contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let data = Vec::<f32>::try_from(&t.flatten(0, -1))?;
        out.insert(name, WeightTensor { shape, data });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::ModuleT;

    /// Weights saved from one network (a state dict as PyTorch's `save_file` writes it, its
    /// counters included) load into another: every variable equal; with `reinit_head`, the
    /// head keeps its own initial values and the file's head of another shape is passed over.
    #[test]
    fn initial_weights_load_every_variable_or_all_but_the_head() {
        let spec = ArchSpec::baseline_cnn(2);
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("w.safetensors");
        tch::manual_seed(1);
        let src = nn::VarStore::new(tch::Device::Cpu);
        let _a = Net::new(&src.root(), &spec).expect("build");
        src.save(&path).expect("save");
        let values = |vs: &nn::VarStore| -> std::collections::BTreeMap<String, Vec<f32>> {
            weights(vs)
                .expect("weights")
                .into_iter()
                .map(|(k, w)| (k, w.data))
                .collect()
        };
        tch::manual_seed(2);
        let dst = nn::VarStore::new(tch::Device::Cpu);
        let _b = Net::new(&dst.root(), &spec).expect("build");
        let fresh = values(&dst);
        assert_ne!(fresh, values(&src));
        let notes = init_from(&dst, &spec, &path, Default::default()).expect("load");
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(values(&dst), values(&src));
        // Another head in the file: refused without reinit_head, passed over with it.
        let mut w = models::state_dict::read(&path).expect("read");
        let head = spec.head_prefix();
        w.retain(|k, _| !k.starts_with(&head));
        w.insert(
            format!("{head}weight"),
            WeightTensor {
                shape: vec![400, 8],
                data: vec![0.5; 3200],
            },
        );
        let other = d.path().join("other_head.safetensors");
        models::state_dict::write(&other, &w).expect("write");
        tch::manual_seed(3);
        let third = nn::VarStore::new(tch::Device::Cpu);
        let _c = Net::new(&third.root(), &spec).expect("build");
        let own = values(&third);
        let e = init_from(&third, &spec, &other, Default::default())
            .expect_err("head")
            .to_string();
        assert!(
            e.contains("other_head.safetensors") && e.contains(&format!("`{head}weight`")),
            "{e}"
        );
        assert_eq!(values(&third), own, "a refused file changed nothing");
        let head_only = models::state_dict::Reinit {
            head: true,
            ..Default::default()
        };
        init_from(&third, &spec, &other, head_only).expect("reinit head");
        for (k, v) in values(&third) {
            let want = if k.starts_with(&head) {
                &own[&k]
            } else {
                &values(&src)[&k]
            };
            assert_eq!(&v, want, "{k}");
        }
    }

    #[test]
    fn spec_names_equal_varstore_names() {
        for spec in [ArchSpec::baseline_cnn(4), ArchSpec::r3d_18()] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let _net = Net::new(&vs.root(), &spec).expect("build");
            check_names(&vs, &spec).expect("names match");
        }
    }

    #[test]
    fn a_renamed_duplicate_is_caught() {
        let spec = ArchSpec::baseline_cnn(4);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _net = Net::new(&vs.root(), &spec).expect("build");
        // A second layer under an existing name: tch renames it `features.0.weight__1`.
        let _dup = nn::conv3d(&vs.root() / "features" / "0", 1, 4, 3, Default::default());
        let msg = format!("{:#}", check_names(&vs, &spec).expect_err("dup"));
        assert!(msg.contains("__"), "{msg}");
    }

    #[test]
    fn in_place_relu_and_sums_change_nothing() {
        // r3d_18 (ReLU after BatchNorm and after every residual sum) and the baseline, in
        // training mode: logits, every gradient and the input equal those of a run that
        // writes every intermediate anew, and autograd accepts the in-place writes.
        for mut spec in [ArchSpec::r3d_18(), ArchSpec::baseline_cnn(4)] {
            // No dropout: its masks come from the global generator, which tests running
            // beside this one draw from too.
            for l in &mut spec.layers {
                if let models::spec::Layer::Dropout { p } = l {
                    *p = 0.0;
                }
            }
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let net = Net::new(&vs.root(), &spec).expect("build");
            let x = Tensor::rand([2, 1, 16, 16, 16], (tch::Kind::Float, tch::Device::Cpu));
            let x0 = x.copy();
            let mut grads = Vec::new();
            let mut outs = Vec::new();
            for inplace in [true, false] {
                let y = run(&net.layers, &x, None, true, inplace);
                y.sum(tch::Kind::Float).backward();
                let mut vars: Vec<_> = vs.trainable_variables().into_iter().collect();
                grads.push(vars.iter().map(|v| v.grad().copy()).collect::<Vec<_>>());
                for v in &mut vars {
                    v.zero_grad();
                }
                outs.push(y.detach());
            }
            assert!(x.equal(&x0), "{}: the input was overwritten", spec.name);
            assert!(outs[0].equal(&outs[1]), "{}: logits differ", spec.name);
            assert!(outs[0].abs().sum(tch::Kind::Float).double_value(&[]) > 0.0);
            for (a, b) in grads[0].iter().zip(&grads[1]) {
                assert!(a.defined() && a.equal(b), "{}: a gradient differs", spec.name);
            }
        }
    }

    /// Dropout returns its input in eval mode, so a ReLU after it, or a residual sum after a
    /// body of dropout alone, must not write in place: here that would overwrite the
    /// network input or the block input that the shortcut reads after the body.
    #[test]
    fn in_place_writes_never_reach_a_shared_tensor() {
        use models::spec::Layer;
        let conv = |name: &str, cin| Layer::Conv3d {
            name: name.into(),
            in_channels: cin,
            out_channels: 4,
            kernel: 3.into(),
            stride: 1.into(),
            padding: 1.into(),
            bias: true,
        };
        let spec = ArchSpec {
            name: "aliasing".into(),
            in_channels: 1,
            layers: vec![
                Layer::Residual {
                    body: vec![Layer::Dropout { p: 0.5 }],
                    shortcut: vec![],
                },
                Layer::Relu {},
                conv("c0", 1),
                Layer::Residual {
                    body: vec![Layer::Dropout { p: 0.5 }, Layer::Relu {}, conv("c1", 4)],
                    shortcut: vec![],
                },
                Layer::GlobalAvgPool {},
                Layer::Linear {
                    name: "fc".into(),
                    in_features: 4,
                    out_features: 1,
                },
            ],
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = Net::new(&vs.root(), &spec).expect("build");
        // Half the voxels negative, so that a ReLU written into the input shows.
        let x = Tensor::rand([2, 1, 8, 8, 8], (tch::Kind::Float, tch::Device::Cpu)) - 0.5;
        let x0 = x.copy();
        let (a, b) = tch::no_grad(|| {
            (
                run(&net.layers, &x, None, false, true),
                run(&net.layers, &x, None, false, false),
            )
        });
        assert!(x.equal(&x0), "the input was overwritten");
        assert!(a.equal(&b), "in place {a} vs anew {b}");
    }

    #[test]
    fn forward_shape() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = Net::new(&vs.root(), &ArchSpec::baseline_cnn(4)).expect("build");
        let y = net.forward_t(
            &Tensor::zeros([3, 1, 16, 16, 16], (tch::Kind::Float, tch::Device::Cpu)),
            false,
        );
        assert_eq!(y.size(), [3, 1]);
    }
}
