//! `infer` and `calibrate` must never link libtorch: a scoring host has ONNX Runtime only.
use std::process::Command;

use chain_tests::{bin, workspace};

fn needed(name: &str) -> Vec<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(bin(name))
        .output()
        .expect("readelf (binutils)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1).map(|x| x.trim_end_matches(']').to_string()))
        .collect()
}

fn is_torch(lib: &str) -> bool {
    lib.contains("torch") || lib.starts_with("libc10")
}

#[test]
fn infer_and_calibrate_binaries_do_not_need_libtorch() {
    // Positive control: the check does see libtorch where it is linked.
    assert!(
        needed("trainer").iter().any(|l| is_torch(l)),
        "trainer should link libtorch: {:?}",
        needed("trainer")
    );
    for b in ["infer", "calibrate"] {
        let libs = needed(b);
        assert!(!libs.iter().any(|l| is_torch(l)), "{b} links libtorch: {libs:?}");
        // ONNX Runtime is loaded at run time, not linked.
        assert!(
            !libs.iter().any(|l| l.contains("onnxruntime")),
            "{b} links ONNX Runtime: {libs:?}"
        );
    }
}

#[test]
fn infer_and_calibrate_dependency_trees_are_free_of_tch() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for pkg in ["infer", "calibrate", "models"] {
        let out = Command::new(&cargo)
            .current_dir(workspace())
            .args(["tree", "--offline", "-p", pkg, "-e", "normal,build", "--prefix", "none"])
            .output()
            .expect("cargo tree");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().count() > 5, "cargo tree printed too little: {text}");
        for bad in ["tch v", "torch-sys v"] {
            assert!(
                !text.lines().any(|l| l.starts_with(bad)),
                "{pkg} depends on {bad}:\n{text}"
            );
        }
    }
}
