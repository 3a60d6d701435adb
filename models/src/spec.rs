//! Architecture specs: one description of a network that both the libtorch builder
//! (`trainer::net`) and the ONNX writer ([`crate::onnx::export`]) walk.
//!
//! Parameter names are PyTorch-style dotted paths (`features.0.weight`,
//! `features.1.running_mean`, `head.3.bias`) and are the contract between the two:
//! [`ArchSpec::params`] lists them with their shapes, the trainer asserts that its
//! VarStore holds exactly these names, and the ONNX writer looks weights up by them.
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

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

/// The torchvision video-ResNet convolution builders (`Conv3DSimple`, `Conv3DNoTemporal`,
/// `Conv2Plus1D`), as the sequence of layers one builder call makes.
#[derive(Clone, Copy, PartialEq)]
enum ConvBuilder {
    Simple,
    NoTemporal,
    TwoPlusOne,
}

impl ConvBuilder {
    /// The layers of `builder(cin, cout, mid, stride)` under `name` (torchvision's padding 1).
    fn layers(self, name: &str, cin: usize, cout: usize, mid: usize, s: usize) -> Vec<Layer> {
        match self {
            ConvBuilder::Simple => vec![conv(name, cin, cout, 3, s, 1, false)],
            ConvBuilder::NoTemporal => vec![conv(name, cin, cout, [1, 3, 3], [1, s, s], [0, 1, 1], false)],
            ConvBuilder::TwoPlusOne => vec![
                conv(&format!("{name}.0"), cin, mid, [1, 3, 3], [1, s, s], [0, 1, 1], false),
                bn(&format!("{name}.1"), mid),
                Layer::Relu {},
                conv(&format!("{name}.3"), mid, cout, [3, 1, 1], [s, 1, 1], [1, 0, 0], false),
            ],
        }
    }

    /// `get_downsample_stride`: the 1×1×1 shortcut convolution's stride.
    fn downsample_stride(self, s: usize) -> Dims3 {
        match self {
            ConvBuilder::NoTemporal => Dims3([1, s, s]),
            ConvBuilder::Simple | ConvBuilder::TwoPlusOne => Dims3::all(s),
        }
    }
}

impl ArchSpec {
    /// Looks an architecture up by its registered name.
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "baseline_cnn" => Ok(Self::baseline_cnn(16)),
            "r3d_18" => Ok(Self::r3d_18()),
            "mc3_18" => Ok(Self::mc3_18()),
            "r2plus1d_18" => Ok(Self::r2plus1d_18()),
            other => Err(Error::Spec(format!(
                "unknown architecture `{other}` (known: {}; or a spec file as model.spec)",
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
                Layer::Relu {},
            ]
        };
        let pool = || Layer::MaxPool3d {
            kernel: Dims3::all(2),
            stride: Dims3::all(2),
        };
        let mut layers = Vec::new();
        layers.extend(cbr(0, 1, w1));
        layers.push(pool());
        layers.extend(cbr(4, w1, w2));
        layers.push(pool());
        layers.extend(cbr(8, w2, w3));
        layers.push(Layer::GlobalAvgPool {});
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
        let stem = vec![conv("stem.0", 1, 64, 7, 2, 3, false), bn("stem.1", 64), Layer::Relu {}];
        video_resnet("r3d_18", stem, [ConvBuilder::Simple; 4])
    }

    /// torchvision `mc3_18` (mixed convolutions: 3×3×3 in `layer1`, 1×3×3 after it) with the
    /// notebook's stem and head as [`ArchSpec::r3d_18`] has them (torchvision's `BasicStem`
    /// is the one r3d_18 has, so the notebook's `model.stem[0] = Conv3d(1, 64, 7, 2, 3)`
    /// applies unchanged).
    pub fn mc3_18() -> Self {
        let stem = vec![conv("stem.0", 1, 64, 7, 2, 3, false), bn("stem.1", 64), Layer::Relu {}];
        let b = [
            ConvBuilder::Simple,
            ConvBuilder::NoTemporal,
            ConvBuilder::NoTemporal,
            ConvBuilder::NoTemporal,
        ];
        video_resnet("mc3_18", stem, b)
    }

    /// torchvision `r2plus1d_18` ((2+1)D convolutions: 1×3×3 spatial, then 3×1×1 along z)
    /// with the notebook's head and its 1-channel stem made the (2+1)D way: torchvision's
    /// `R2Plus1dStem` with one input channel, `stem.0 = Conv3d(1, 45, (1,7,7), s=(1,2,2),
    /// p=(0,3,3))`, and `stem.3 = Conv3d(45, 64, (3,1,1), p=(1,0,0))` given stride 2 along z,
    /// so that the stem halves every axis as the notebook's 7³ stride-2 stem does. Every
    /// parameter keeps torchvision's name and shape (bar stem.0's one input channel), so a
    /// Kinetics state dict loads with its stem summed to one channel.
    pub fn r2plus1d_18() -> Self {
        let stem = vec![
            conv("stem.0", 1, 45, [1, 7, 7], [1, 2, 2], [0, 3, 3], false),
            bn("stem.1", 45),
            Layer::Relu {},
            conv("stem.3", 45, 64, [3, 1, 1], [2, 1, 1], [1, 0, 0], false),
            bn("stem.4", 64),
            Layer::Relu {},
        ];
        video_resnet("r2plus1d_18", stem, [ConvBuilder::TwoPlusOne; 4])
    }

    /// Reads a spec file (YAML, or JSON as its subset): the fields of [`ArchSpec`], layer
    /// names optional. Unknown keys, out-of-range values and a network that does not chain
    /// are refused, naming the layer at fault; `origin` names the file in messages.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let v: yaml_serde::Value =
            yaml_serde::from_str(text).map_err(|e| Error::Spec(format!("{origin}: not an architecture spec: {e}")))?;
        Self::from_value(v, origin)
    }

    /// As [`ArchSpec::from_yaml`], from a parsed YAML value (a spec inline in a config).
    pub fn from_value(v: yaml_serde::Value, origin: &str) -> Result<Self> {
        let mut spec: ArchSpec =
            yaml_serde::from_value(v).map_err(|e| Error::Spec(format!("{origin}: not an architecture spec: {e}")))?;
        if ARCHITECTURES.contains(&spec.name.as_str()) {
            return Err(Error::Spec(format!(
                "{origin}: name `{}` is a built-in architecture's; give the spec a name of its own",
                spec.name
            )));
        }
        fill_names(&mut spec.layers, "layers");
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

    /// Checks the spec's internal consistency: every value in range, channel counts chain,
    /// names are unique and well formed, the network ends in one logit. Reports every
    /// problem in one error, each naming its layer.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.in_channels != 1 {
            problems.push(format!("in_channels must be 1 (a CT cube), got {}", self.in_channels));
        }
        let mut count = 0;
        check_values(&self.layers, "layers", 0, &mut count, &mut problems);
        if count > MAX_LAYERS {
            problems.push(format!("{count} layers, at most {MAX_LAYERS}"));
        }
        if self.layers.is_empty() {
            problems.push("no layers".into());
        }
        if self
            .layers
            .iter()
            .filter(|l| matches!(l, Layer::Features { .. }))
            .count()
            > 1
        {
            problems.push("more than one features layer".into());
        }
        let mut ch = Some(self.in_channels);
        let mut flat = false;
        check_chain(&self.layers, "layers", &mut ch, &mut flat, &mut problems);
        if ch != Some(1) || !flat {
            let ends = ch.map_or_else(|| "an unknown number of".to_string(), |c| c.to_string());
            let shape = if flat { "flattened" } else { "not flattened" };
            problems.push(format!(
                "network must end in one logit per sample, flattened; it ends in {ends} features, {shape}"
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
        // Layer names name the graph's values too (`NAME.out`): two layers may not share one
        // even where their parameters differ (a features layer beside a convolution).
        let mut layer_names = Vec::new();
        collect_layer_names(&self.layers, &mut layer_names);
        layer_names.sort_unstable();
        for pair in layer_names.windows(2) {
            if pair[0] == pair[1] {
                problems.push(format!("two layers are named `{}`", pair[0]));
            }
        }
        if problems.is_empty() && self.num_trainable() > MAX_TRAINABLE {
            problems.push(format!(
                "{} trainable parameters, at most {MAX_TRAINABLE}",
                self.num_trainable()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Spec(format!("`{}`: {}", self.name, problems.join("; "))))
        }
    }

    /// The spatial size after every layer for a `cube`-voxel input, checked: each window
    /// fits (a convolution or pooling never gets an input smaller than its window) and both
    /// branches of a residual block agree. Returns the size before the global pooling.
    pub fn check_input(&self, cube: usize) -> Result<Dims3> {
        let mut problems = Vec::new();
        let mut size = Some(Dims3::all(cube));
        walk_sizes(&self.layers, "layers", &mut size, &mut problems);
        match (problems.is_empty(), size) {
            (true, Some(s)) => Ok(s),
            _ => Err(Error::Spec(format!(
                "`{}` does not fit a {cube}³ cube: {}",
                self.name,
                problems.join("; ")
            ))),
        }
    }
}

/// torchvision's `VideoResNet(BasicBlock, conv_makers, [2, 2, 2, 2])` after `stem`, with the
/// notebook's head (`fc`).
fn video_resnet(name: &str, stem: Vec<Layer>, builders: [ConvBuilder; 4]) -> ArchSpec {
    let mut layers = stem;
    let widths = [64, 128, 256, 512];
    let mut cin = 64;
    for (li, (&w, &cb)) in widths.iter().zip(&builders).enumerate() {
        for bi in 0..2 {
            let stride = if li > 0 && bi == 0 { 2 } else { 1 };
            let p = format!("layer{}.{bi}", li + 1);
            // BasicBlock computes one `midplanes` from its input and output widths and
            // gives it to both of its convolutions (only Conv2Plus1D uses it).
            let mid = (cin * w * 27) / (cin * 9 + 3 * w);
            let mut body = cb.layers(&format!("{p}.conv1.0"), cin, w, mid, stride);
            body.extend([bn(&format!("{p}.conv1.1"), w), Layer::Relu {}]);
            body.extend(cb.layers(&format!("{p}.conv2.0"), w, w, mid, 1));
            body.push(bn(&format!("{p}.conv2.1"), w));
            let shortcut = if stride != 1 || cin != w {
                vec![
                    conv(
                        &format!("{p}.downsample.0"),
                        cin,
                        w,
                        1,
                        cb.downsample_stride(stride),
                        0,
                        false,
                    ),
                    bn(&format!("{p}.downsample.1"), w),
                ]
            } else {
                vec![]
            };
            layers.push(Layer::Residual { body, shortcut });
            cin = w;
        }
    }
    layers.push(Layer::GlobalAvgPool {});
    layers.extend(head("fc", 512, 128));
    ArchSpec {
        name: name.into(),
        in_channels: 1,
        layers,
    }
}

fn collect_layer_names<'a>(layers: &'a [Layer], out: &mut Vec<&'a str>) {
    for l in layers {
        if let Some(n) = l.name() {
            out.push(n);
        }
        if let Layer::Residual { body, shortcut } = l {
            collect_layer_names(body, out);
            collect_layer_names(shortcut, out);
        }
    }
}

/// Gives each unnamed parameterised layer its position name (`layers.3`, `layers.3.body.0`).
fn fill_names(layers: &mut [Layer], prefix: &str) {
    for (i, l) in layers.iter_mut().enumerate() {
        let at = format!("{prefix}.{i}");
        match l {
            Layer::Conv3d { name, .. }
            | Layer::BatchNorm3d { name, .. }
            | Layer::Linear { name, .. }
            | Layer::Features { name, .. }
                if name.is_empty() =>
            {
                *name = at;
            }
            Layer::Residual { body, shortcut } => {
                fill_names(body, &format!("{at}.body"));
                fill_names(shortcut, &format!("{at}.shortcut"));
            }
            _ => {}
        }
    }
}

/// How a problem names layer `i` of `prefix`: its parameter name, else its position and op.
fn label(l: &Layer, at: &str) -> String {
    match l.name() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("{at} ({})", l.op()),
    }
}

/// Range checks of every value (each problem naming its layer).
fn check_values(layers: &[Layer], prefix: &str, depth: usize, count: &mut usize, problems: &mut Vec<String>) {
    if depth > MAX_NESTING {
        problems.push(format!("{prefix}: residual blocks nested deeper than {MAX_NESTING}"));
        return;
    }
    for (i, l) in layers.iter().enumerate() {
        *count += 1;
        let at = format!("{prefix}.{i}");
        let who = label(l, &at);
        let mut bad = |what: String| problems.push(format!("{who}: {what}"));
        if let Some(n) = l.name() {
            let ok = !n.is_empty()
                && n.len() <= 200
                && n.split('.')
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            if !ok {
                bad(format!(
                    "name `{n}` must be dot-separated parts of letters, digits and `_` (200 characters at most)"
                ));
            }
        }
        let window = |what: &str, d: &Dims3, min: usize, bad: &mut dyn FnMut(String)| {
            if d.0.iter().any(|&v| v < min || v > MAX_WINDOW) {
                bad(format!("{what} {d} must be from {min} to {MAX_WINDOW} on every axis"));
            }
        };
        let channels = |what: &str, n: usize, bad: &mut dyn FnMut(String)| {
            if !(1..=MAX_CHANNELS).contains(&n) {
                bad(format!("{what} {n} must be from 1 to {MAX_CHANNELS}"));
            }
        };
        match l {
            Layer::Conv3d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                ..
            } => {
                channels("in_channels", *in_channels, &mut bad);
                channels("out_channels", *out_channels, &mut bad);
                window("kernel", kernel, 1, &mut bad);
                window("stride", stride, 1, &mut bad);
                window("padding", padding, 0, &mut bad);
            }
            Layer::BatchNorm3d { channels: c, eps, .. } => {
                channels("channels", *c, &mut bad);
                if !(eps.is_finite() && *eps > 0.0 && *eps < 1.0) {
                    bad(format!("eps {eps} must be in (0, 1)"));
                }
            }
            Layer::MaxPool3d { kernel, stride } => {
                window("kernel", kernel, 1, &mut bad);
                window("stride", stride, 1, &mut bad);
            }
            Layer::Linear {
                in_features,
                out_features,
                ..
            } => {
                channels("in_features", *in_features, &mut bad);
                channels("out_features", *out_features, &mut bad);
            }
            Layer::Dropout { p } => {
                if !(p.is_finite() && (0.0..1.0).contains(p)) {
                    bad(format!("p {p} must be in [0, 1)"));
                }
            }
            Layer::Features { count, .. } => {
                if !(1..=MAX_FEATURES).contains(count) {
                    bad(format!("count {count} must be from 1 to {MAX_FEATURES}"));
                }
                if depth > 0 {
                    bad("tabular features join at the top level, not inside a residual block".into());
                }
            }
            Layer::Residual { body, shortcut } => {
                if body.is_empty() {
                    bad("a residual block needs a body".into());
                }
                check_values(body, &format!("{at}.body"), depth + 1, count, problems);
                check_values(shortcut, &format!("{at}.shortcut"), depth + 1, count, problems);
            }
            Layer::Relu {} | Layer::GlobalAvgPool {} => {}
        }
    }
}

/// Output size of a window of `k`, stride `s`, padding `p` over `n` voxels, or `None` when
/// the (padded) input is smaller than the window.
fn out_size(n: usize, k: usize, s: usize, p: usize) -> Option<usize> {
    let padded = n.checked_add(p.checked_mul(2)?)?;
    (padded >= k && s >= 1).then(|| (padded - k) / s + 1)
}

fn walk_sizes(layers: &[Layer], prefix: &str, size: &mut Option<Dims3>, problems: &mut Vec<String>) {
    for (i, l) in layers.iter().enumerate() {
        let at = format!("{prefix}.{i}");
        let Some(now) = *size else { return };
        let window = |k: &Dims3, s: &Dims3, p: &Dims3, problems: &mut Vec<String>| {
            let mut out = [0; 3];
            for (a, o) in out.iter_mut().enumerate() {
                match out_size(now.0[a], k.0[a], s.0[a], p.0[a]) {
                    Some(v) => *o = v,
                    None => {
                        problems.push(format!(
                            "{}: gets {now} voxels (z, y, x), smaller than its window {k} with padding {p}",
                            label(l, &at)
                        ));
                        return None;
                    }
                }
            }
            Some(Dims3(out))
        };
        *size = match l {
            Layer::Conv3d {
                kernel,
                stride,
                padding,
                ..
            } => window(kernel, stride, padding, problems),
            Layer::MaxPool3d { kernel, stride } => window(kernel, stride, &Dims3::all(0), problems),
            Layer::Residual { body, shortcut } => {
                let mut b = Some(now);
                walk_sizes(body, &format!("{at}.body"), &mut b, problems);
                let mut s = Some(now);
                walk_sizes(shortcut, &format!("{at}.shortcut"), &mut s, problems);
                match (b, s) {
                    (Some(b), Some(s)) if b == s => Some(b),
                    (Some(b), Some(s)) => {
                        problems.push(format!(
                            "{at} (residual): body gives {b} voxels, shortcut {s}; they are added, so they must agree"
                        ));
                        None
                    }
                    _ => None,
                }
            }
            Layer::GlobalAvgPool {} => return,
            Layer::BatchNorm3d { .. }
            | Layer::Relu {}
            | Layer::Linear { .. }
            | Layer::Dropout { .. }
            | Layer::Features { .. } => Some(now),
        };
    }
}

fn conv(
    name: &str,
    cin: usize,
    cout: usize,
    k: impl Into<Dims3>,
    s: impl Into<Dims3>,
    p: impl Into<Dims3>,
    bias: bool,
) -> Layer {
    Layer::Conv3d {
        name: name.into(),
        in_channels: cin,
        out_channels: cout,
        kernel: k.into(),
        stride: s.into(),
        padding: p.into(),
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
        Layer::Relu {},
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

/// What flows between layers, for messages: `64 channels` or `512 flattened features`.
fn flow(ch: Option<usize>, flat: bool) -> String {
    match (ch, flat) {
        (None, _) => "an input that could not be worked out".into(),
        (Some(c), false) => format!("{c} channels"),
        (Some(c), true) => format!("{c} flattened features"),
    }
}

/// Checks that channel counts chain and that each layer gets a tensor of its kind (a
/// volume for convolution, BatchNorm and pooling; flattened features for a linear layer).
fn check_chain(layers: &[Layer], prefix: &str, ch: &mut Option<usize>, flat: &mut bool, problems: &mut Vec<String>) {
    for (i, l) in layers.iter().enumerate() {
        let at = format!("{prefix}.{i}");
        let who = label(l, &at);
        let gets = flow(*ch, *flat);
        match l {
            Layer::Conv3d {
                in_channels,
                out_channels,
                ..
            } => {
                if *flat || *ch != Some(*in_channels) {
                    problems.push(format!("{who}: expects {in_channels} channels, gets {gets}"));
                }
                *ch = Some(*out_channels);
            }
            Layer::BatchNorm3d { channels, .. } => {
                if *flat || *ch != Some(*channels) {
                    problems.push(format!("{who}: expects {channels} channels, gets {gets}"));
                }
            }
            Layer::Linear {
                in_features,
                out_features,
                ..
            } => {
                if !*flat || *ch != Some(*in_features) {
                    problems.push(format!(
                        "{who}: expects {in_features} flattened features (after global_avg_pool), gets {gets}"
                    ));
                }
                *ch = Some(*out_features);
            }
            Layer::Features { count, .. } => {
                if !*flat {
                    problems.push(format!(
                        "{who}: joins features to flattened features (after global_avg_pool), gets {gets}"
                    ));
                }
                *ch = ch.map(|c| c + count);
            }
            Layer::MaxPool3d { .. } | Layer::GlobalAvgPool {} if *flat => {
                problems.push(format!("{who}: pools a volume, gets {gets}"));
            }
            Layer::GlobalAvgPool {} => *flat = true,
            Layer::Residual { body, shortcut } => {
                let (mut cb, mut fb) = (*ch, *flat);
                check_chain(body, &format!("{at}.body"), &mut cb, &mut fb, problems);
                let (mut cs, mut fs) = (*ch, *flat);
                check_chain(shortcut, &format!("{at}.shortcut"), &mut cs, &mut fs, problems);
                if (cb, fb) != (cs, fs) {
                    problems.push(format!(
                        "{at} (residual): body gives {}, shortcut {}; they are added, so they must agree",
                        flow(cb, fb),
                        flow(cs, fs)
                    ));
                }
                (*ch, *flat) = (cb, fb);
            }
            Layer::Relu {} | Layer::MaxPool3d { .. } | Layer::Dropout { .. } => {}
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
