//! `infer merge`: the parts of a sharded run (or the folds of a k-fold run) merged into one output.
use std::path::PathBuf;
use std::process::ExitCode;

/// `infer merge` (of shards, or with `--folds` of a k-fold run's held-out parts).
pub(crate) fn merge(parts: &[PathBuf], out: &std::path::Path, folds: bool) -> ExitCode {
    // (parts, rows, failed), and how the line names them.
    let r = if folds {
        infer::folds::merge(parts, out).map(|m| (m.folds, m.rows, m.failed))
    } else {
        infer::shard::merge(parts, out).map(|m| (m.shards, m.rows, m.failed))
    };
    let (what, rows, failed) = if folds {
        (
            "folds",
            "rows of out-of-fold scores",
            "candidates failed (see the folds' errors files)",
        )
    } else {
        ("shards", "rows", "patches failed (see the shards' errors files)")
    };
    match r {
        Ok((n, k, bad)) => {
            let bad = if bad > 0 {
                format!("; {bad} {failed}")
            } else {
                String::new()
            };
            println!("merged {n} {what}: {k} {rows} -> {}{bad}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail("infer merge", &e),
    }
}
