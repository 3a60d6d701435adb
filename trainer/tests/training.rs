//! Training as a user relies on it: k-fold cross-validation partitions the series, a run
//! streamed from disk trains exactly like one held in memory, and a resumed run ends with the
//! weights of an uninterrupted one. Run on the binary Cargo builds for these tests.
use std::collections::BTreeSet;

use chain_tests::{col, read_csv, run_ok, s};

const TRAINER: &str = env!("CARGO_BIN_EXE_trainer");

#[test]
fn k_fold_cross_validation_partitions_the_series() {
    let d = tempfile::tempdir().expect("tmp");
    let patches = chain_tests::synth(d.path(), 12, 4, 16, 31);
    let out = d.path().join("cv");
    let r = run_ok(
        TRAINER,
        &[
            "train",
            "--data",
            s(&patches),
            "--out",
            s(&out),
            "--cube-size",
            "16",
            "--width",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--folds",
            "3",
            "--device",
            "cpu",
            "-q",
        ],
    );
    assert!(
        r.stdout.contains("3-fold cross-validation: validation AUROC"),
        "{}",
        r.stdout
    );
    let cv: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(out.join("cv_summary.yaml")).expect("cv")).expect("yaml");
    assert_eq!(cv["folds"].as_sequence().map(Vec::len), Some(3));
    let mut val_series: Vec<String> = Vec::new();
    for f in 1..=3 {
        let dir = out.join(format!("fold_{f}"));
        assert!(dir.join("model.onnx").is_file(), "fold {f} lacks model.onnx");
        let (h, rows) = read_csv(&dir.join("split.csv"));
        val_series.extend(
            rows.iter()
                .filter(|r| r[col(&h, "split")] == "val")
                .map(|r| r[col(&h, "seriesuid")].clone()),
        );
    }
    let unique: BTreeSet<&String> = val_series.iter().collect();
    assert_eq!(val_series.len(), 12, "every series is validation exactly once");
    assert_eq!(unique.len(), 12);
}

#[test]
fn streaming_from_disk_trains_exactly_like_holding_everything_in_memory() {
    let d = tempfile::tempdir().expect("tmp");
    // 32³ cubes (128 KiB each), so a 1 MiB budget holds 8 of the 48.
    let patches = chain_tests::synth(d.path(), 8, 6, 32, 43);
    let go = |out: &std::path::Path, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--data",
            s(&patches),
            "--out",
            s(out),
            "--cube-size",
            "32",
            "--width",
            "4",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--threads",
            "1",
            "--device",
            "cpu",
        ];
        a.extend_from_slice(extra);
        run_ok(TRAINER, &a)
    };
    let memory = d.path().join("memory");
    go(&memory, &[]);
    // No cache at all: every batch, validation pass and the parity check read from disk.
    let streamed = d.path().join("streamed");
    let r = go(&streamed, &["--cache-mb", "0"]);
    assert!(r.stderr.contains("patches in memory: 0 of"), "{}", r.stderr);
    for f in ["last.safetensors", "best.safetensors", "val_scores.csv"] {
        let same = std::fs::read(memory.join(f)).expect("memory") == std::fs::read(streamed.join(f)).expect("streamed");
        assert!(same, "{f} differs between the in-memory and the streamed run");
    }
    // A budget that holds only part of the set gives the same run too.
    let part = d.path().join("part");
    let r = go(&part, &["--cache-mb", "1"]);
    assert!(r.stderr.contains("patches in memory: 8 of"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(memory.join("last.safetensors")).expect("memory"),
        std::fs::read(part.join("last.safetensors")).expect("part")
    );
}

#[test]
fn resume_ends_with_the_same_weights_as_an_uninterrupted_run() {
    let d = tempfile::tempdir().expect("tmp");
    let patches = chain_tests::synth(d.path(), 8, 6, 16, 41);
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "train",
            "--data",
            s(&patches),
            "--out",
            s(out),
            "--cube-size",
            "16",
            "--width",
            "4",
            "--epochs",
            "4",
            "--batch-size",
            "8",
            "--threads",
            "1",
            "--device",
            "cpu",
            "-q",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let whole = d.path().join("whole");
    let a: Vec<String> = args(&whole);
    run_ok(TRAINER, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let parts = d.path().join("parts");
    let mut b = args(&parts);
    b.extend(["--stop-after".to_string(), "2".to_string()]);
    let r = run_ok(TRAINER, &b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r.stdout.contains("paused"), "{}", r.stdout);
    assert!(!parts.join("model.onnx").exists(), "a paused run is not exported yet");
    // A different setting is refused; the same job resumes.
    let r = chain_tests::run(TRAINER, &["train", "--resume", s(&parts), "--lr", "0.5", "-q"]);
    assert!(!r.ok && r.stderr.contains("another config"), "{}", r.stderr);
    // A copy of the paused run, in another folder, goes on with another thread count.
    let copy = d.path().join("parts-2-threads");
    std::fs::create_dir(&copy).expect("mkdir");
    for e in std::fs::read_dir(&parts).expect("ls") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), copy.join(e.file_name())).expect("copy");
        }
    }
    let stop = ["--stop-after", "3", "-q"];
    run_ok(
        TRAINER,
        &[&["train", "--resume", s(&copy), "--threads", "2"][..], &stop[..]].concat(),
    );
    // The same job resumes, also with another memory budget (it only decides what is held
    // in memory; here: nothing, every patch streamed from disk).
    run_ok(TRAINER, &["train", "--resume", s(&parts), "--cache-mb", "0", "-q"]);
    // Weights, and so the exported model's scores, are identical (model.onnx itself differs
    // only in its metadata: the run folder is part of the config it records).
    for f in ["last.safetensors", "best.safetensors", "val_scores.csv"] {
        let same = std::fs::read(whole.join(f)).expect("whole") == std::fs::read(parts.join(f)).expect("parts");
        assert!(same, "{f} differs between the uninterrupted and the resumed run");
    }
    let (h, ra) = read_csv(&whole.join("metrics.csv"));
    let (_, rb) = read_csv(&parts.join("metrics.csv"));
    assert_eq!(ra.len(), 4);
    for key in ["train_loss", "val_loss", "val_auroc", "lr"] {
        let c = col(&h, key);
        let x: Vec<&String> = ra.iter().map(|r| &r[c]).collect();
        let y: Vec<&String> = rb.iter().map(|r| &r[c]).collect();
        assert_eq!(x, y, "{key} differs");
    }
}
