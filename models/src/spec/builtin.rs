//! The architectures the toolchain builds by name (`model.arch`): the baseline CNN and
//! torchvision's video ResNets (`r3d_18`, `mc3_18`, `r2plus1d_18`) with a 1-channel stem and
//! the notebook's head, written in the layer vocabulary of [`super::Layer`].
use super::{ArchSpec, Dims3, Layer, ARCHITECTURES};
use crate::{Error, Result};

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
}

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
