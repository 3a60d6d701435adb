//! Every library and binary opens what a user names through `models::fsutil` (regular files
//! only, never blocking on a FIFO, bounded in size): a direct `std::fs::read*` or
//! `File::open` on a user path is how a FIFO named `config.yaml` once hung `trainer sweep`.
//! This reads the workspace's sources and fails on any such call outside `fsutil`, unless
//! the line (or the one above it) says why it may (`fsutil-exempt:`, for paths that are no
//! user input, such as `/proc/self/status`). Tests (`#[cfg(test)]` modules) are left out.
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn user_files_are_read_only_through_fsutil() {
    let root = chain_tests::workspace();
    let crates = [
        "models",
        "scans",
        "scorer",
        "plots",
        "froc",
        "calibrate",
        "infer",
        "trainer",
    ];
    let forbidden = [
        "fs::read(",
        "fs::read_to_string(",
        "File::open(",
        "OpenOptions::new()",
        "from_path(",
    ];
    let mut files = Vec::new();
    for c in crates {
        rust_files(&root.join(c).join("src"), &mut files);
    }
    assert!(files.len() > 50, "{} source files", files.len());
    let mut found = Vec::new();
    for f in &files {
        if f.components().any(|c| c.as_os_str() == "fsutil") {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        // Tests at the end of a file are not what a user runs.
        let code = text.split("\n#[cfg(test)]").next().unwrap_or("");
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            let exempt = line.contains("fsutil-exempt:") || i > 0 && lines[i - 1].contains("fsutil-exempt:");
            if !exempt && forbidden.iter().any(|p| line.contains(p)) {
                found.push(format!(
                    "{}:{}: {}",
                    f.strip_prefix(&root).unwrap_or(f).display(),
                    i + 1,
                    l
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "user paths read around models::fsutil (use open_regular / read_regular*, or mark a non-user path `// fsutil-exempt: why`):\n{}",
        found.join("\n")
    );
}
