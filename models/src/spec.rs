//! Architecture specs: one description of a network that both the libtorch builder
//! (`trainer::net`) and the ONNX writer ([`crate::onnx::export`]) walk.
//!
//! Parameter names are PyTorch-style dotted paths (`features.0.weight`,
//! `features.1.running_mean`, `head.3.bias`) and are the contract between the two:
//! [`ArchSpec::params`] lists them with their shapes, the trainer asserts that its
//! VarStore holds exactly these names, and the ONNX writer looks weights up by them.
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One layer. Layers with parameters carry their full dotted name prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Layer {
    /// `Conv3d(in, out, kernel, stride, padding)`; cubic kernel, zero padding.
    Conv3d {
        name: String,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    },
    /// `BatchNorm3d(channels)`: parameters `weight`, `bias`, buffers `running_mean`,
    /// `running_var` and the counter `num_batches_tracked` (as PyTorch names them).
    BatchNorm3d {
        name: String,
        channels: usize,
        eps: f64,
    },
    Relu,
    /// Max pooling with a cubic window and no padding.
    MaxPool3d {
        kernel: usize,
        stride: usize,
    },
    /// Adaptive average pooling to 1³ followed by flatten: `[N, C, D, H, W] → [N, C]`.
    GlobalAvgPool,
    Linear {
        name: String,
        in_features: usize,
        out_features: usize,
    },
    /// Identity at inference; only active while training.
    Dropout {
        p: f64,
    },
    /// `relu(body(x) + shortcut(x))`; an empty shortcut is the identity.
    Residual {
        body: Vec<Layer>,
        shortcut: Vec<Layer>,
    },
}

/// What kind of tensor a named parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParamKind {
    /// Trained by the optimiser.
    Trainable,
    /// Running statistic (BatchNorm), updated in training mode, not by the optimiser.
    Buffer,
    /// An int64 scalar counter (BatchNorm's `num_batches_tracked`): part of a PyTorch state
    /// dict, not of the inference graph.
    Counter,
}

/// A named parameter with its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

/// A whole network: `[N, 1, D, D, D]` cube in, `[N, 1]` logit out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchSpec {
    /// Registered architecture name (`baseline_cnn`, `r3d_18`).
    pub name: String,
    pub in_channels: usize,
    pub layers: Vec<Layer>,
}

/// Names of the architectures [`ArchSpec::by_name`] knows.
pub const ARCHITECTURES: &[&str] = &["baseline_cnn", "r3d_18"];

impl ArchSpec {
    /// Looks an architecture up by its registered name.
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "baseline_cnn" => Ok(Self::baseline_cnn(16)),
            "r3d_18" => Ok(Self::r3d_18()),
            other => Err(Error::Spec(format!(
                "unknown architecture `{other}` (known: {})",
                ARCHITECTURES.join(", ")
            ))),
        }
    }

    /// The small baseline: three conv–BN–ReLU stages (widths `w`, `2w`, `4w`), max pooling
    /// between them, global average pooling, head `4w → 2w → ReLU → Dropout(0.3) → 1`.
    /// PyTorch equivalent: `features = nn.Sequential(...)`, `head = nn.Sequential(...)`.
    pub fn baseline_cnn(width: usize) -> Self {
        let (w1, w2, w3) = (width, 2 * width, 4 * width);
        let cbr = |i: usize, cin: usize, cout: usize| {
            vec![
                conv(&format!("features.{i}"), cin, cout, 3, 1, 1, false),
                bn(&format!("features.{}", i + 1), cout),
                Layer::Relu,
            ]
        };
        let mut layers = Vec::new();
        layers.extend(cbr(0, 1, w1));
        layers.push(Layer::MaxPool3d { kernel: 2, stride: 2 });
        layers.extend(cbr(4, w1, w2));
        layers.push(Layer::MaxPool3d { kernel: 2, stride: 2 });
        layers.extend(cbr(8, w2, w3));
        layers.push(Layer::GlobalAvgPool);
        layers.extend(head("head", w3, 2 * width));
        ArchSpec {
            name: "baseline_cnn".into(),
            in_channels: 1,
            layers,
        }
    }

    /// torchvision `r3d_18` with the source notebook's changes: a 1-channel
    /// `Conv3d(1, 64, k=7, s=2, p=3, bias=False)` stem and the head
    /// `Linear(512, 128) → ReLU → Dropout(0.3) → Linear(128, 1)`. Names follow torchvision.
    pub fn r3d_18() -> Self {
        let mut layers = vec![conv("stem.0", 1, 64, 7, 2, 3, false), bn("stem.1", 64), Layer::Relu];
        let widths = [64, 128, 256, 512];
        let mut cin = 64;
        for (li, &w) in widths.iter().enumerate() {
            for bi in 0..2 {
                let stride = if li > 0 && bi == 0 { 2 } else { 1 };
                let p = format!("layer{}.{bi}", li + 1);
                let body = vec![
                    conv(&format!("{p}.conv1.0"), cin, w, 3, stride, 1, false),
                    bn(&format!("{p}.conv1.1"), w),
                    Layer::Relu,
                    conv(&format!("{p}.conv2.0"), w, w, 3, 1, 1, false),
                    bn(&format!("{p}.conv2.1"), w),
                ];
                let shortcut = if stride != 1 || cin != w {
                    vec![
                        conv(&format!("{p}.downsample.0"), cin, w, 1, stride, 0, false),
                        bn(&format!("{p}.downsample.1"), w),
                    ]
                } else {
                    vec![]
                };
                layers.push(Layer::Residual { body, shortcut });
                cin = w;
            }
        }
        layers.push(Layer::GlobalAvgPool);
        layers.extend(head("fc", 512, 128));
        ArchSpec {
            name: "r3d_18".into(),
            in_channels: 1,
            layers,
        }
    }

    /// Every parameter and buffer, in a deterministic (depth-first) order.
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        collect_params(&self.layers, &mut out);
        out
    }

    /// The name prefix of the head's parameters (`fc.` for r3d_18, `head.` for the
    /// baseline): the first part of the last parameter's name.
    pub fn head_prefix(&self) -> String {
        self.params()
            .last()
            .and_then(|p| p.name.split('.').next().map(|s| format!("{s}.")))
            .unwrap_or_default()
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.params()
            .iter()
            .filter(|p| p.kind == ParamKind::Trainable)
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Checks the spec's internal consistency: channel counts chain, names are unique, the
    /// network ends in one logit. Reports every problem in one error.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let mut ch = Some(self.in_channels);
        let mut flat = false;
        check_chain(&self.layers, &mut ch, &mut flat, &mut problems);
        if ch != Some(1) || !flat {
            problems.push(format!(
                "network must end in one logit per sample, ends in {ch:?} features (flattened: {flat})"
            ));
        }
        let params = self.params();
        let mut names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        for pair in names.windows(2) {
            if pair[0] == pair[1] {
                problems.push(format!("duplicate parameter name `{}`", pair[0]));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Spec(format!("`{}`: {}", self.name, problems.join("; "))))
        }
    }
}

fn conv(name: &str, cin: usize, cout: usize, k: usize, s: usize, p: usize, bias: bool) -> Layer {
    Layer::Conv3d {
        name: name.into(),
        in_channels: cin,
        out_channels: cout,
        kernel: k,
        stride: s,
        padding: p,
        bias,
    }
}

fn bn(name: &str, c: usize) -> Layer {
    Layer::BatchNorm3d {
        name: name.into(),
        channels: c,
        eps: 1e-5,
    }
}

/// `prefix.0 = Linear(cin, hidden)`, ReLU, Dropout(0.3), `prefix.3 = Linear(hidden, 1)`.
fn head(prefix: &str, cin: usize, hidden: usize) -> Vec<Layer> {
    vec![
        Layer::Linear {
            name: format!("{prefix}.0"),
            in_features: cin,
            out_features: hidden,
        },
        Layer::Relu,
        Layer::Dropout { p: 0.3 },
        Layer::Linear {
            name: format!("{prefix}.3"),
            in_features: hidden,
            out_features: 1,
        },
    ]
}

fn collect_params(layers: &[Layer], out: &mut Vec<ParamSpec>) {
    let t = |name: String, shape: Vec<usize>| ParamSpec {
        name,
        shape,
        kind: ParamKind::Trainable,
    };
    let b = |name: String, shape: Vec<usize>| ParamSpec {
        name,
        shape,
        kind: ParamKind::Buffer,
    };
    for l in layers {
        match l {
            Layer::Conv3d {
                name,
                in_channels,
                out_channels,
                kernel,
                bias,
                ..
            } => {
                let k = *kernel;
                out.push(t(format!("{name}.weight"), vec![*out_channels, *in_channels, k, k, k]));
                if *bias {
                    out.push(t(format!("{name}.bias"), vec![*out_channels]));
                }
            }
            Layer::BatchNorm3d { name, channels, .. } => {
                out.push(t(format!("{name}.weight"), vec![*channels]));
                out.push(t(format!("{name}.bias"), vec![*channels]));
                out.push(b(format!("{name}.running_mean"), vec![*channels]));
                out.push(b(format!("{name}.running_var"), vec![*channels]));
                out.push(ParamSpec {
                    name: format!("{name}.num_batches_tracked"),
                    shape: vec![],
                    kind: ParamKind::Counter,
                });
            }
            Layer::Linear {
                name,
                in_features,
                out_features,
            } => {
                out.push(t(format!("{name}.weight"), vec![*out_features, *in_features]));
                out.push(t(format!("{name}.bias"), vec![*out_features]));
            }
            Layer::Residual { body, shortcut } => {
                collect_params(body, out);
                collect_params(shortcut, out);
            }
            Layer::Relu | Layer::MaxPool3d { .. } | Layer::GlobalAvgPool | Layer::Dropout { .. } => {}
        }
    }
}

fn check_chain(layers: &[Layer], ch: &mut Option<usize>, flat: &mut bool, problems: &mut Vec<String>) {
    for l in layers {
        match l {
            Layer::Conv3d {
                name,
                in_channels,
                out_channels,
                ..
            } => {
                if *flat || *ch != Some(*in_channels) {
                    problems.push(format!(
                        "{name}: expects {in_channels} channels, gets {ch:?} (flattened: {flat})"
                    ));
                }
                *ch = Some(*out_channels);
            }
            Layer::BatchNorm3d { name, channels, .. } => {
                if *flat || *ch != Some(*channels) {
                    problems.push(format!("{name}: expects {channels} channels, gets {ch:?}"));
                }
            }
            Layer::Linear {
                name,
                in_features,
                out_features,
            } => {
                if !*flat || *ch != Some(*in_features) {
                    problems.push(format!(
                        "{name}: expects {in_features} flattened features, gets {ch:?} (flattened: {flat})"
                    ));
                }
                *ch = Some(*out_features);
            }
            Layer::GlobalAvgPool => *flat = true,
            Layer::Residual { body, shortcut } => {
                let (mut cb, mut fb) = (*ch, *flat);
                check_chain(body, &mut cb, &mut fb, problems);
                let (mut cs, mut fs) = (*ch, *flat);
                check_chain(shortcut, &mut cs, &mut fs, problems);
                if cb != cs {
                    problems.push(format!(
                        "residual branches disagree: body gives {cb:?} channels, shortcut {cs:?}"
                    ));
                }
                *ch = cb;
            }
            Layer::Relu | Layer::MaxPool3d { .. } | Layer::Dropout { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_specs_are_valid() {
        for name in ARCHITECTURES {
            ArchSpec::by_name(name).expect("known").validate().expect("valid");
        }
    }

    #[test]
    fn baseline_names_follow_pytorch_sequential() {
        let names: Vec<String> = ArchSpec::baseline_cnn(16)
            .params()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names[0], "features.0.weight");
        assert!(names.contains(&"features.1.running_var".to_string()));
        assert!(names.contains(&"head.3.bias".to_string()));
    }

    #[test]
    fn r3d_18_matches_torchvision_layout() {
        let spec = ArchSpec::r3d_18();
        let p = spec.params();
        let has = |n: &str| p.iter().any(|x| x.name == n);
        assert!(has("stem.0.weight"));
        assert!(has("layer1.0.conv1.0.weight"));
        assert!(has("layer2.0.downsample.0.weight"));
        assert!(!has("layer1.0.downsample.0.weight"));
        assert!(has("fc.3.bias"));
        // Independent count from torchvision's BasicBlock layout: 3³ convs, BN = 2C
        // trainable, 1³ downsample on the first block of layers 2–4.
        let mut expected = 64 * 7 * 7 * 7 + 2 * 64;
        let mut cin = 64;
        for (i, w) in [64usize, 128, 256, 512].into_iter().enumerate() {
            for b in 0..2 {
                expected += cin * w * 27 + w * w * 27 + 4 * w;
                if i > 0 && b == 0 {
                    expected += cin * w + 2 * w;
                }
                cin = w;
            }
        }
        expected += 512 * 128 + 128 + 128 + 1;
        assert_eq!(spec.num_trainable(), expected);
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut spec = ArchSpec::baseline_cnn(8);
        if let Layer::Conv3d { in_channels, .. } = &mut spec.layers[0] {
            *in_channels = 3;
        }
        spec.layers.push(Layer::Linear {
            name: "head.0".into(),
            in_features: 1,
            out_features: 1,
        });
        let msg = spec.validate().expect_err("invalid").to_string();
        assert!(msg.contains("features.0: expects 3 channels"), "{msg}");
        assert!(msg.contains("duplicate parameter name `head.0.weight`"), "{msg}");
    }
}
