//! Architecture specs: one description of a network that both the libtorch builder
//! (`trainer::net`) and the ONNX writer ([`crate::onnx::export`]) walk.
//!
//! Parameter names are PyTorch-style dotted paths (`features.0.weight`,
//! `features.1.running_mean`, `head.3.bias`) and are the contract between the two:
//! [`ArchSpec::params`] lists them with their shapes, the trainer asserts that its
//! VarStore holds exactly these names, and the ONNX writer looks weights up by them.
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

mod builtin;
mod check;

/// A size per axis, `[z, y, x]` (PyTorch's `(D, H, W)` tuples). In YAML or JSON one number
/// stands for all three axes (`kernel: 3`), a list of three gives each (`kernel: [1, 3, 3]`);
/// it is written back as one number when the three are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims3(pub [usize; 3]);

impl Dims3 {
    /// The same size on every axis.
    pub const fn all(n: usize) -> Self {
        Dims3([n; 3])
    }

    /// The sizes as i64 (for libtorch and ONNX attributes).
    pub fn i64s(&self) -> [i64; 3] {
        self.0.map(|d| d as i64)
    }

    fn isotropic(&self) -> Option<usize> {
        (self.0[0] == self.0[1] && self.0[1] == self.0[2]).then_some(self.0[0])
    }
}

impl std::fmt::Display for Dims3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.isotropic() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "[{}, {}, {}]", self.0[0], self.0[1], self.0[2]),
        }
    }
}

impl From<usize> for Dims3 {
    fn from(n: usize) -> Self {
        Dims3::all(n)
    }
}

impl From<[usize; 3]> for Dims3 {
    fn from(d: [usize; 3]) -> Self {
        Dims3(d)
    }
}

impl Serialize for Dims3 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.isotropic() {
            Some(n) => s.serialize_u64(n as u64),
            None => self.0.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Dims3 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Dims3;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size (one whole number for all three axes) or a list [z, y, x] of three")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<Dims3, E> {
                usize::try_from(n).map(Dims3::all).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<Dims3, E> {
                usize::try_from(n)
                    .map(Dims3::all)
                    .map_err(|_| E::custom(format!("a size must not be negative, got {n}")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Dims3, A::Error> {
                let mut out = [0usize; 3];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = a
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(4, &self));
                }
                Ok(Dims3(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn one() -> Dims3 {
    Dims3::all(1)
}

fn zero() -> Dims3 {
    Dims3::all(0)
}

fn bn_eps() -> f64 {
    1e-5
}

/// One layer. Layers with parameters carry their full dotted name prefix; in a spec file
/// the name may be left out and is then `layers.I` (`layers.I.body.J`, `layers.I.shortcut.J`
/// inside a residual block), as PyTorch names the members of an `nn.Sequential`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// `Conv3d(in, out, kernel, stride, padding)`, zero padding; `stride` defaults to 1,
    /// `padding` to 0, `bias` to false.
    Conv3d {
        #[serde(default)]
        name: String,
        in_channels: usize,
        out_channels: usize,
        kernel: Dims3,
        #[serde(default = "one")]
        stride: Dims3,
        #[serde(default = "zero")]
        padding: Dims3,
        #[serde(default)]
        bias: bool,
    },
    /// `BatchNorm3d(channels)`: parameters `weight`, `bias`, buffers `running_mean`,
    /// `running_var` and the counter `num_batches_tracked` (as PyTorch names them).
    BatchNorm3d {
        #[serde(default)]
        name: String,
        channels: usize,
        #[serde(default = "bn_eps")]
        eps: f64,
    },
    /// (A struct variant, empty, so that an unknown key is refused as for the others.)
    Relu {},
    /// Max pooling, no padding.
    MaxPool3d { kernel: Dims3, stride: Dims3 },
    /// Adaptive average pooling to 1³ followed by flatten: `[N, C, D, H, W] → [N, C]`.
    GlobalAvgPool {},
    Linear {
        #[serde(default)]
        name: String,
        in_features: usize,
        out_features: usize,
    },
    /// Identity at inference; only active while training.
    Dropout { p: f64 },
    /// Joins `count` tabular features (the model's second input, `features`, raw values) to
    /// the flattened image embedding: `[N, C] → [N, C + count]`, each feature standardised
    /// first with the training split's statistics, held as the buffers `NAME.mean` and
    /// `NAME.std` (`[count]` each). At most one, at the top level, after `global_avg_pool`.
    Features {
        #[serde(default)]
        name: String,
        count: usize,
    },
    /// `relu(body(x) + shortcut(x))`; an empty shortcut is the identity.
    Residual {
        body: Vec<Layer>,
        #[serde(default)]
        shortcut: Vec<Layer>,
    },
}

impl Layer {
    /// The op name as a spec file writes it.
    fn op(&self) -> &'static str {
        match self {
            Layer::Conv3d { .. } => "conv3d",
            Layer::BatchNorm3d { .. } => "batch_norm3d",
            Layer::Relu {} => "relu",
            Layer::MaxPool3d { .. } => "max_pool3d",
            Layer::GlobalAvgPool {} => "global_avg_pool",
            Layer::Linear { .. } => "linear",
            Layer::Dropout { .. } => "dropout",
            Layer::Features { .. } => "features",
            Layer::Residual { .. } => "residual",
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Layer::Conv3d { name, .. }
            | Layer::BatchNorm3d { name, .. }
            | Layer::Linear { name, .. }
            | Layer::Features { name, .. } => Some(name),
            _ => None,
        }
    }
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

/// A whole network: `[N, 1, D, H, W]` cube in, `[N, 1]` logit out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSpec {
    /// Architecture name (`baseline_cnn`, `r3d_18`, or a spec file's own).
    pub name: String,
    #[serde(default = "one_channel")]
    pub in_channels: usize,
    pub layers: Vec<Layer>,
}

fn one_channel() -> usize {
    1
}

/// Names of the architectures [`ArchSpec::by_name`] knows.
pub const ARCHITECTURES: &[&str] = &["baseline_cnn", "r3d_18", "mc3_18", "r2plus1d_18"];

/// Largest number of trainable scalars a spec may declare (2 GB of float32 weights, about
/// 60× r3d_18): a typo such as `out_channels: 640000` is refused here rather than by the
/// allocator.
pub const MAX_TRAINABLE: usize = 500_000_000;
/// Largest channel or feature count of one layer.
pub const MAX_CHANNELS: usize = 65_536;
/// Largest kernel, stride or padding on one axis.
pub const MAX_WINDOW: usize = 64;
/// Most tabular features a model takes.
pub const MAX_FEATURES: usize = 256;
/// Most layers in a spec, residual members included, and deepest residual nesting.
pub const MAX_LAYERS: usize = 10_000;
pub const MAX_NESTING: usize = 16;

impl ArchSpec {
    /// Reads a spec file (YAML, or JSON as its subset): the fields of [`ArchSpec`], layer
    /// names optional. Unknown keys, out-of-range values and a network that does not chain
    /// are refused, naming the layer at fault; `origin` names the file in messages.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let v: yaml_serde::Value = yaml_serde::from_str(text).map_err(|source| Error::SpecParse {
            origin: origin.to_string(),
            source,
        })?;
        Self::from_value(v, origin)
    }

    /// As [`ArchSpec::from_yaml`], from a parsed YAML value (a spec inline in a config).
    pub fn from_value(v: yaml_serde::Value, origin: &str) -> Result<Self> {
        let mut spec: ArchSpec = yaml_serde::from_value(v).map_err(|source| Error::SpecParse {
            origin: origin.to_string(),
            source,
        })?;
        if ARCHITECTURES.contains(&spec.name.as_str()) {
            return Err(Error::Spec(format!(
                "{origin}: name `{}` is a built-in architecture's; give the spec a name of its own",
                spec.name
            )));
        }
        check::fill_names(&mut spec.layers, "layers");
        spec.validate().map_err(|e| match e {
            Error::Spec(m) => Error::Spec(format!("{origin}: {m}")),
            other => other,
        })?;
        Ok(spec)
    }

    /// The spec as a spec file writes it (YAML), every layer named.
    pub fn to_yaml(&self) -> Result<String> {
        yaml_serde::to_string(self).map_err(|e| Error::Spec(format!("`{}`: {e}", self.name)))
    }

    /// How many tabular features the network takes (its `features` layer's count; 0: none).
    pub fn feature_count(&self) -> usize {
        self.layers
            .iter()
            .find_map(|l| match l {
                Layer::Features { count, .. } => Some(*count),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The network taking `count` tabular features: a spec that has a `features` layer must
    /// have that count; otherwise one named `tabular` is put right after the global pooling
    /// and the first linear layer after it widened by `count` (its weights change shape).
    pub fn with_features(mut self, count: usize) -> Result<Self> {
        let have = self.feature_count();
        if have > 0 || count == 0 {
            if have != count {
                return Err(Error::Spec(format!(
                    "`{}` takes {have} tabular feature(s), the config names {count}",
                    self.name
                )));
            }
            return Ok(self);
        }
        let Some(gap) = self.layers.iter().position(|l| matches!(l, Layer::GlobalAvgPool {})) else {
            return Err(Error::Spec(format!(
                "`{}` has no global_avg_pool to join features after",
                self.name
            )));
        };
        let Some(Layer::Linear { in_features, .. }) = self.layers[gap..]
            .iter_mut()
            .find(|l| matches!(l, Layer::Linear { .. }))
        else {
            return Err(Error::Spec(format!(
                "`{}` has no linear layer after its global_avg_pool",
                self.name
            )));
        };
        *in_features += count;
        self.layers.insert(
            gap + 1,
            Layer::Features {
                name: "tabular".into(),
                count,
            },
        );
        self.validate()?;
        Ok(self)
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

    /// Number of trainable scalars (saturating: [`ArchSpec::validate`] bounds it).
    pub fn num_trainable(&self) -> usize {
        self.params()
            .iter()
            .filter(|p| p.kind == ParamKind::Trainable)
            .map(|p| p.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d)))
            .fold(0usize, usize::saturating_add)
    }
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
                let [kz, ky, kx] = kernel.0;
                out.push(t(
                    format!("{name}.weight"),
                    vec![*out_channels, *in_channels, kz, ky, kx],
                ));
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
            Layer::Features { name, count } => {
                out.push(b(format!("{name}.mean"), vec![*count]));
                out.push(b(format!("{name}.std"), vec![*count]));
            }
            Layer::Residual { body, shortcut } => {
                collect_params(body, out);
                collect_params(shortcut, out);
            }
            Layer::Relu {} | Layer::MaxPool3d { .. } | Layer::GlobalAvgPool {} | Layer::Dropout { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text that is not YAML of a spec is `Error::SpecParse`, naming where it came from, with
    /// the YAML reader's error as the source.
    #[test]
    fn a_spec_that_is_not_yaml_keeps_the_readers_error() {
        let e = ArchSpec::from_yaml("name: [unclosed", "nets/x.yaml").expect_err("not YAML");
        match &e {
            Error::SpecParse { origin, .. } => assert_eq!(origin, "nets/x.yaml"),
            other => panic!("not SpecParse: {other:?}"),
        }
        let source = std::error::Error::source(&e).expect("the YAML error");
        assert!(e.to_string().ends_with(&source.to_string()), "{e}");
    }

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
    /// One number is every axis; a list is [z, y, x]; an isotropic size is written back as
    /// one number, so the metadata of models exported before sizes had axes is unchanged.
    #[test]
    fn sizes_read_as_one_number_or_three() {
        let d: Dims3 = yaml_serde::from_str("3").expect("scalar");
        assert_eq!(d, Dims3([3, 3, 3]));
        let d: Dims3 = yaml_serde::from_str("[1, 3, 5]").expect("list");
        assert_eq!(d, Dims3([1, 3, 5]));
        for bad in ["[1, 3]", "[1, 2, 3, 4]", "-1", "2.5", "x"] {
            assert!(yaml_serde::from_str::<Dims3>(bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&ArchSpec::r3d_18()).expect("json");
        assert!(
            json.contains(r#""kernel":7,"stride":2,"padding":3"#),
            "{}",
            &json[..200]
        );
        let json = serde_json::to_string(&ArchSpec::r2plus1d_18()).expect("json");
        assert!(json.contains(r#""kernel":[1,7,7],"stride":[1,2,2],"padding":[0,3,3]"#));
    }

    #[test]
    fn video_resnets_have_torchvisions_sizes() {
        // torchvision's parameter counts with the notebook's stem and head (as
        // scripts/torchvision_video.py builds them).
        assert_eq!(ArchSpec::mc3_18().num_trainable(), 11_549_761);
        assert_eq!(ArchSpec::r2plus1d_18().num_trainable(), 31_361_508);
        // Every stage halves the cube: the stem, then layers 2–4 (mc3_18 keeps z after its
        // stem: its 1×3×3 convolutions stride in-plane only).
        assert_eq!(ArchSpec::r3d_18().check_input(64).expect("fits"), Dims3::all(4));
        assert_eq!(ArchSpec::r2plus1d_18().check_input(64).expect("fits"), Dims3::all(4));
        assert_eq!(ArchSpec::mc3_18().check_input(64).expect("fits"), Dims3([32, 4, 4]));
        // A cube too large to add padding to: an error, not an overflow.
        assert!(ArchSpec::r3d_18().check_input(usize::MAX).is_err());
    }

    const SMALL: &str = "name: small\nlayers:\n\
        - {op: conv3d, in_channels: 1, out_channels: 4, kernel: [1, 3, 3], padding: [0, 1, 1]}\n\
        - {op: batch_norm3d, channels: 4}\n\
        - {op: relu}\n\
        - op: residual\n  body:\n\
        \x20   - {op: conv3d, in_channels: 4, out_channels: 4, kernel: 3, padding: 1}\n\
        - {op: global_avg_pool}\n\
        - {op: linear, name: head, in_features: 4, out_features: 1}\n";

    #[test]
    fn a_spec_file_reads_with_position_names() {
        let spec = ArchSpec::from_yaml(SMALL, "small.yaml").expect("valid");
        let names: Vec<String> = spec.params().into_iter().map(|p| p.name).collect();
        assert_eq!(names[0], "layers.0.weight");
        assert!(names.contains(&"layers.1.running_var".to_string()));
        assert!(names.contains(&"layers.3.body.0.weight".to_string()));
        assert_eq!(names.last().map(String::as_str), Some("head.bias"));
        assert_eq!(spec.params()[0].shape, vec![4, 1, 1, 3, 3]);
        assert_eq!(spec.check_input(8).expect("fits"), Dims3::all(8));
        // What to_yaml writes reads back as the same spec.
        let again = ArchSpec::from_yaml(&spec.to_yaml().expect("yaml"), "again").expect("again");
        assert_eq!(again, spec);
    }

    /// Each kind of fault is refused with the file and the layer named.
    #[test]
    fn spec_file_faults_name_the_layer() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "out_channels: 4, kernel: [1, 3, 3]",
                "out_channels: 5, kernel: [1, 3, 3]",
                "layers.1: expects 4 channels, gets 5 channels",
            ),
            ("{op: relu}", "{op: relu, inplace: true}", "unknown field `inplace`"),
            ("{op: relu}", "{op: gelu}", "unknown variant `gelu`"),
            (
                "kernel: [1, 3, 3]",
                "kernel: [1, 0, 3]",
                "layers.0: kernel [1, 0, 3] must be from 1 to 64",
            ),
            ("kernel: [1, 3, 3]", "kernel: [1, 3]", "invalid length"),
            (
                "out_channels: 4, kernel: [1, 3, 3]",
                "out_channels: 4000000, kernel: [1, 3, 3]",
                "layers.0: out_channels 4000000 must be from 1 to 65536",
            ),
            (
                "{op: relu}",
                "{op: dropout, p: 1.5}",
                "layers.2 (dropout): p 1.5 must be in [0, 1)",
            ),
            ("name: head,", "name: \"../x\",", "name `../x` must be dot-separated"),
            ("name: small", "name: r3d_18", "is a built-in architecture's"),
            ("name: head,", "name: layers.1,", "two layers are named `layers.1`"),
            (
                "in_features: 4, out_features: 1",
                "in_features: 4, out_features: 2",
                "must end in one logit",
            ),
            (
                "- {op: global_avg_pool}\n",
                "",
                "head: expects 4 flattened features (after global_avg_pool), gets 4 channels",
            ),
        ];
        for (from, to, want) in cases {
            assert!(SMALL.contains(from), "{from}");
            let text = SMALL.replacen(from, to, 1);
            let msg = ArchSpec::from_yaml(&text, "net.yaml").expect_err(want).to_string();
            assert!(msg.contains("net.yaml") && msg.contains(want), "{want}: {msg}");
        }
        // Too many parameters in all (each layer within its limits): refused before any
        // allocation.
        let wide = "name: wide\nlayers:\n- {op: conv3d, in_channels: 1, out_channels: 65536, kernel: 1}\n\
            - {op: conv3d, in_channels: 65536, out_channels: 65536, kernel: 1}\n- {op: global_avg_pool}\n\
            - {op: linear, in_features: 65536, out_features: 1}\n";
        let msg = ArchSpec::from_yaml(wide, "wide.yaml").expect_err("too big").to_string();
        assert!(msg.contains("trainable parameters, at most"), "{msg}");
    }

    /// Sizes that only fail for a given cube: a window larger than its input, residual
    /// branches of different sizes (libtorch would stop the process on either).
    #[test]
    fn a_spec_is_checked_against_the_cube() {
        let spec = ArchSpec::from_yaml(&SMALL.replace("padding: [0, 1, 1]", "padding: 0"), "s").expect("valid");
        let msg = spec.check_input(2).expect_err("window").to_string();
        assert!(
            msg.contains("layers.0: gets 2 voxels (z, y, x), smaller than its window [1, 3, 3]"),
            "{msg}"
        );
        assert_eq!(spec.check_input(8).expect("fits"), Dims3([8, 6, 6]));
        let strided = SMALL.replace("kernel: 3, padding: 1}", "kernel: 3, stride: 2, padding: 1}");
        let spec = ArchSpec::from_yaml(&strided, "s").expect("channels chain");
        let msg = spec.check_input(8).expect_err("branches").to_string();
        assert!(
            msg.contains("layers.3 (residual): body gives 4 voxels, shortcut 8"),
            "{msg}"
        );
    }
}
