//! Checking a spec before anything is built from it: every value in range and every name
//! unique ([`ArchSpec::validate`]), the channels flowing from layer to layer, and the sizes a
//! cube takes through the layers ([`ArchSpec::check_input`]).
use super::{ArchSpec, Dims3, Layer, MAX_CHANNELS, MAX_FEATURES, MAX_LAYERS, MAX_NESTING, MAX_TRAINABLE, MAX_WINDOW};
use crate::{Error, Result};

impl ArchSpec {
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
pub(super) fn fill_names(layers: &mut [Layer], prefix: &str) {
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
