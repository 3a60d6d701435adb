//! The r3d_18 spec declares exactly the state-dict entries torchvision's `r3d_18` has with
//! the notebook's stem and head: same names, shapes and kinds, in torchvision's order. The
//! fixture was written by `scripts/torchvision_r3d18.py names` (torch 2.11.0, torchvision).
use models::spec::{ArchSpec, ParamKind};

#[test]
fn r3d_18_spec_equals_torchvision_state_dict() {
    let fixture = include_str!("fixtures/r3d_18_state_dict.txt");
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
    let ours: Vec<(String, Vec<usize>, String)> = ArchSpec::r3d_18()
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
