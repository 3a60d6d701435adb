//! The video-ResNet specs declare exactly the state-dict entries torchvision's `r3d_18`,
//! `mc3_18` and `r2plus1d_18` have with the notebook's stem and head: same names, shapes and
//! kinds, in torchvision's order. The fixtures were written by
//! `scripts/torchvision_video.py names ARCH` (torch 2.11.0, torchvision 0.26.0).
use models::spec::{ArchSpec, ParamKind};

#[test]
fn r3d_18_spec_equals_torchvision_state_dict() {
    check(ArchSpec::r3d_18(), include_str!("fixtures/r3d_18_state_dict.txt"));
}

#[test]
fn mc3_18_spec_equals_torchvision_state_dict() {
    check(ArchSpec::mc3_18(), include_str!("fixtures/mc3_18_state_dict.txt"));
}

#[test]
fn r2plus1d_18_spec_equals_torchvision_state_dict() {
    check(
        ArchSpec::r2plus1d_18(),
        include_str!("fixtures/r2plus1d_18_state_dict.txt"),
    );
}

fn check(spec: ArchSpec, fixture: &str) {
    let theirs: Vec<(String, Vec<usize>, String)> = fixture
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let shape = if f[1] == "scalar" {
                vec![]
            } else {
                f[1].split('x').map(|d| d.parse().expect("dim")).collect()
            };
            (f[0].to_string(), shape, f[2].to_string())
        })
        .collect();
    assert!(theirs.len() > 100, "fixture too short: {}", theirs.len());
    let ours: Vec<(String, Vec<usize>, String)> = spec
        .params()
        .into_iter()
        .map(|p| {
            (
                p.name,
                p.shape,
                if p.kind == ParamKind::Counter {
                    "int64"
                } else {
                    "float32"
                }
                .to_string(),
            )
        })
        .collect();
    let only_theirs: Vec<&String> = theirs
        .iter()
        .map(|t| &t.0)
        .filter(|n| !ours.iter().any(|o| &o.0 == *n))
        .collect();
    let only_ours: Vec<&String> = ours
        .iter()
        .map(|o| &o.0)
        .filter(|n| !theirs.iter().any(|t| &t.0 == *n))
        .collect();
    assert!(
        only_theirs.is_empty() && only_ours.is_empty(),
        "only torchvision: {only_theirs:?}; only ours: {only_ours:?}"
    );
    assert_eq!(
        ours, theirs,
        "names, shapes, dtypes and order must equal torchvision's state dict"
    );
}
