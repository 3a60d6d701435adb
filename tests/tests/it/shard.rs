//! `infer --shard K/N` and `infer merge`: three shards merged equal one run byte for byte
//! (CSV with a calibration, JSONL, a bad file among the inputs); merging parts of different
//! runs, missing or repeated parts, a changed shard or a merge onto a shard is refused; and
//! the job-array files in `deploy/` are what they claim.
use std::path::Path;

use chain_tests::{run_err, run_ok, s, workspace};
use serde::Deserialize;

use crate::fixture::fixture;

fn model() -> std::path::PathBuf {
    fixture().run.join("model.onnx")
}

/// Scores `patches` in `n` shards into `dir/s{k}.{ext}`, merges them into `dir/merged.{ext}`,
/// scores them in one run into `dir/one.{ext}`; returns (merged, one).
fn shards_and_one(patches: &Path, dir: &Path, n: usize, extra: &[&str], ext: &str) -> (Vec<u8>, Vec<u8>) {
    let m = model();
    let mut parts = Vec::new();
    for k in 1..=n {
        let out = dir.join(format!("s{k}.{ext}"));
        let shard = format!("{k}/{n}");
        let mut a = vec![s(patches), "--model", s(&m), "-o", s(&out), "--shard", &shard];
        a.extend_from_slice(extra);
        let _ = chain_tests::run("infer", &a);
        assert!(out.exists(), "shard {k} wrote nothing");
        parts.push(out);
    }
    // Any order.
    parts.reverse();
    let merged = dir.join(format!("merged.{ext}"));
    let mut a = vec!["merge"];
    a.extend(parts.iter().map(|p| s(p)));
    a.extend(["-o", s(&merged)]);
    run_ok("infer", &a);
    let one = dir.join(format!("one.{ext}"));
    let mut a = vec![s(patches), "--model", s(&m), "-o", s(&one)];
    a.extend_from_slice(extra);
    let _ = chain_tests::run("infer", &a);
    (
        std::fs::read(&merged).expect("merged"),
        std::fs::read(&one).expect("one"),
    )
}

#[test]
fn three_shards_merged_equal_one_run_byte_for_byte() {
    let f = fixture();
    let d = tempfile::tempdir().expect("tmp");
    let cal = d.path().join("cal/calibration.yaml");
    run_ok(
        "calibrate",
        &[s(&f.run), "-o", s(&cal), "--bootstrap", "0", "--no-report", "--no-bake"],
    );
    let csv_dir = d.path().join("csv");
    std::fs::create_dir(&csv_dir).expect("mkdir");
    let (merged, one) = shards_and_one(&f.patches, &csv_dir, 3, &["--calibration", s(&cal)], "csv");
    assert!(merged.len() > 1000);
    assert_eq!(merged, one, "merged CSV differs from one run");
    let jsonl_dir = d.path().join("jsonl");
    std::fs::create_dir(&jsonl_dir).expect("mkdir");
    let (merged, one) = shards_and_one(&f.patches, &jsonl_dir, 3, &["--format", "jsonl"], "jsonl");
    assert_eq!(merged, one, "merged JSONL differs from one run");
    // A bad file among the inputs: the shard holding it reports it; the merge still equals
    // the one run's rows.
    let patches = d.path().join("patches");
    std::fs::create_dir(&patches).expect("mkdir");
    for e in std::fs::read_dir(&f.patches).expect("ls").flatten() {
        if e.path().extension().is_some_and(|x| x == "npy") {
            std::fs::copy(e.path(), patches.join(e.file_name())).expect("copy");
        }
    }
    std::fs::write(patches.join("s010_bad.npy"), b"not a patch").expect("w");
    let bad_dir = d.path().join("bad");
    std::fs::create_dir(&bad_dir).expect("mkdir");
    let (merged, one) = shards_and_one(&patches, &bad_dir, 4, &[], "csv");
    assert_eq!(merged, one, "with a bad file");
    let records: Vec<String> = (1..=4)
        .map(|k| std::fs::read_to_string(bad_dir.join(format!("s{k}.csv.shard.yaml"))).expect("record"))
        .collect();
    assert_eq!(
        records.iter().filter(|r| r.contains("failed: 1")).count(),
        1,
        "{records:?}"
    );

    // Refusals.
    let csv = |k: usize| csv_dir.join(format!("s{k}.csv"));
    let out = d.path().join("refused.csv");
    let merge = |parts: &[&Path], out: &Path| {
        let mut a = vec!["merge"];
        a.extend(parts.iter().map(|p| s(p)));
        a.extend(["-o", s(out)]);
        run_err("infer", &a).stderr
    };
    let e = merge(&[&csv(1), &csv(2)], &out);
    assert!(e.contains("shard 3 of 3 is missing"), "{e}");
    let e = merge(&[&csv(1), &csv(2), &csv(3), &jsonl_dir.join("s2.jsonl")], &out);
    assert!(e.contains("differ from"), "{e}");
    let e = merge(&[&csv(1), &csv(2), &csv(3), &bad_dir.join("s3.csv")], &out);
    assert!(e.contains("shards of different runs"), "{e}");
    let e = merge(&[&csv(1), &csv(2), &csv(3)], &csv(2));
    assert!(e.contains("s2.csv"), "{e}");
    assert!(!out.exists());
    // A shard changed after it was written: it is no longer the output its record describes.
    let text = std::fs::read_to_string(csv(2)).expect("read");
    let cut: Vec<&str> = text.lines().collect();
    std::fs::write(csv(2), cut[..cut.len() - 1].join("\n") + "\n").expect("w");
    let e = merge(&[&csv(1), &csv(2), &csv(3)], &out);
    assert!(e.contains("not the output its record"), "{e}");
    assert!(!out.exists());
    // --shard needs a file output; K/N must make sense.
    let r = run_err(
        "infer",
        &[s(&f.patches), "--model", s(&model()), "-o", "-", "--shard", "1/2"],
    );
    assert!(r.stderr.contains("needs -o a file"), "{}", r.stderr);
    let r = run_err(
        "infer",
        &[s(&f.patches), "--model", s(&model()), "-o", s(&out), "--shard", "3/2"],
    );
    assert!(r.stderr.contains("1 <= K <= N"), "{}", r.stderr);
}

/// The Slurm batch scripts parse as bash and run arrays whose tasks score one shard (or run
/// one sweep task) each, then a dependent merge (or collect); the Kubernetes manifests are
/// Indexed Jobs whose pods take their part from `JOB_COMPLETION_INDEX`.
#[test]
fn the_job_array_files_score_shards_and_merge() {
    for (script, wants) in [(
        "deploy/slurm/sweep.sbatch",
        &["SLURM_ARRAY_TASK_ID", "trainer\" sweep", "--collect"][..],
    )] {
        let p = workspace().join(script);
        let ok = std::process::Command::new("bash")
            .arg("-n")
            .arg(&p)
            .status()
            .expect("bash");
        assert!(ok.success(), "{script}");
        let text = std::fs::read_to_string(&p).expect("read");
        for w in wants {
            assert!(text.contains(w), "{w} in {script}");
        }
    }
    let text = std::fs::read_to_string(workspace().join("deploy/k8s/sweep-indexed-job.yaml")).expect("read");
    let docs: Vec<yaml_serde::Value> = yaml_serde::Deserializer::from_str(&text)
        .map(|d| yaml_serde::Value::deserialize(d).expect("yaml"))
        .collect();
    assert!(docs.iter().any(|d| d["spec"]["completionMode"] == "Indexed"));
    assert!(text.contains("trainer sweep") && text.contains("--collect"));
    let sbatch = workspace().join("deploy/slurm/score.sbatch");
    let ok = std::process::Command::new("bash")
        .arg("-n")
        .arg(&sbatch)
        .status()
        .expect("bash");
    assert!(ok.success());
    let text = std::fs::read_to_string(&sbatch).expect("read");
    // The array is given on the command line: an #SBATCH --array line would make the merge
    // step (the same script) an array of merges racing on one output (scripts/slurm-check
    // found it on a real cluster).
    assert!(
        !text.lines().any(|l| l.starts_with("#SBATCH --array")),
        "{}",
        sbatch.display()
    );
    for want in ["--array=1-N", "SLURM_ARRAY_TASK_ID", "--shard", "merge"] {
        assert!(text.contains(want), "{want} in {}", sbatch.display());
    }
    let manifest = workspace().join("deploy/k8s/score-indexed-job.yaml");
    let text = std::fs::read_to_string(&manifest).expect("read");
    let docs: Vec<yaml_serde::Value> = yaml_serde::Deserializer::from_str(&text)
        .map(|d| yaml_serde::Value::deserialize(d).expect("yaml"))
        .collect();
    let score = docs
        .iter()
        .find(|d| d["spec"]["completionMode"] == "Indexed")
        .expect("an Indexed Job");
    assert_eq!(score["spec"]["completions"], score["spec"]["parallelism"]);
    let script = yaml_serde::to_string(&score["spec"]["template"]).expect("yaml");
    assert!(
        script.contains("JOB_COMPLETION_INDEX") && script.contains("--shard"),
        "{script}"
    );
    assert!(text.contains("merge"), "{text}");
}
