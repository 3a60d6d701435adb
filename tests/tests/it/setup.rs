//! scripts/setup: idempotent, and both install variants resolve to the pinned set.
use std::process::Command;

use chain_tests::workspace;

fn setup(args: &[&str]) -> (bool, String) {
    let out = Command::new(workspace().join("scripts/setup"))
        .args(args)
        .output()
        .expect("run scripts/setup");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn setup_is_idempotent() {
    // The suite runs after scripts/setup, so a second run must find everything in place.
    let (ok, text) = setup(&[]);
    assert!(ok, "{text}");
    assert!(text.contains("already set up"), "{text}");
}

/// Asks PyPI (through pip) to resolve both variants; needs the registry, as CI has.
/// `NODULE_TESTS_OFFLINE=1` skips it on a host without one.
#[test]
fn setup_variants_resolve_to_the_pinned_packages() {
    if std::env::var_os("NODULE_TESTS_OFFLINE").is_some() {
        eprintln!("skipped: NODULE_TESTS_OFFLINE is set");
        return;
    }
    let (ok, cuda) = setup(&["--cuda", "--dry-run"]);
    assert!(ok, "{cuda}");
    for want in [
        "torch==2.11.0",
        "onnxruntime-gpu==1.31.1",
        "onnx==1.23.2",
        "scikit-learn==1.9.1",
        "nvidia-cudnn-cu13==",
        "nvidia-cublas==",
    ] {
        assert!(cuda.contains(want), "cuda variant lacks {want}:\n{cuda}");
    }
    let (ok, cpu) = setup(&["--cpu", "--dry-run"]);
    assert!(ok, "{cpu}");
    for want in [
        "torch==2.11.0",
        "nvidia-cuda-runtime==13.0.96",
        "nvidia-cuda-cupti==13.0.85",
        "onnxruntime==1.31.1",
        "onnx==1.23.2",
        "scikit-learn==1.9.1",
    ] {
        assert!(cpu.contains(want), "cpu variant lacks {want}:\n{cpu}");
    }
    assert!(
        !cpu.contains("nvidia-cudnn") && !cpu.contains("onnxruntime-gpu"),
        "cpu variant pulls CUDA wheels:\n{cpu}"
    );
    let (ok, text) = setup(&["--bogus"]);
    assert!(!ok && text.contains("unknown argument"), "{text}");
}
