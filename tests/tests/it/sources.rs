//! Every library and binary opens what a user names through `files` (regular files
//! only, never blocking on a FIFO, bounded in size): a direct `std::fs::read*` or
//! `File::open` on a user path is how a FIFO named `config.yaml` once hung `trainer sweep`.
//! This reads the workspace's sources and fails on any such call outside the `files` crate, unless
//! the line (or the one above it) says why it may (`files-exempt:`, for paths that are no
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

/// Whether `line` calls `pattern` itself: not a longer name ending in it (`DataFile::open(`
/// is not `File::open(`).
fn calls(line: &str, pattern: &str) -> bool {
    line.match_indices(pattern).any(|(i, _)| {
        !line[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn user_files_are_read_only_through_the_files_crate() {
    let root = chain_tests::workspace();
    // Every crate of the workspace (from its manifests: a hand-kept list missed `tracking`).
    let meta = chain_tests::cargo_metadata();
    let crates: Vec<&str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| *n != "chain-tests")
        .collect();
    assert!(crates.contains(&"tracking") && crates.len() >= 9, "{crates:?}");
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
        if f.starts_with(root.join("files")) {
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
            let exempt = line.contains("files-exempt:") || i > 0 && lines[i - 1].contains("files-exempt:");
            if !exempt && forbidden.iter().any(|p| calls(line, p)) {
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
        "user paths read around the files crate (use files::open_regular / read_regular*, or mark a non-user path `// files-exempt: why`):\n{}",
        found.join("\n")
    );
}

/// A source file's module path under its crate's `src`: `lib.rs` is the root (`""`), `a.rs`
/// and `a/mod.rs` are `a`, `a/b.rs` is `a::b`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts.join("::")
}

/// The paths a piece of code names after `crate::` or `super::` (groups in braces opened
/// one level), each resolved against `module` to a full path from the crate root.
fn named_paths(code: &str, module: &str) -> Vec<String> {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p).to_string();
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            // `super::` inside `crate::a::super::` does not occur; a word before it (as in
            // `my_crate::`) is not ours.
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let join = |p: &str| {
                let p = p.trim().trim_end_matches("::");
                if base.is_empty() {
                    p.to_string()
                } else {
                    format!("{base}::{p}")
                }
            };
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    out.push(join(item.split('{').next().unwrap_or("")));
                }
            } else {
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                out.push(join(&rest[..end]));
            }
        }
    }
    out
}

/// No two modules of one crate import each other, directly or round a longer circle
/// (a module and its own ancestors or descendants aside: a `mod.rs` and its parts share
/// one job). Circles make a crate's layers unreadable; the last three (calibrate's fit and
/// metrics, the trainer's kfold and train, epochs and folder) were cut by moving what both
/// needed below them.
#[test]
fn no_module_imports_circle_back_within_a_crate() {
    let root = chain_tests::workspace();
    let meta = chain_tests::cargo_metadata();
    let mut circles = Vec::new();
    let mut crates = 0;
    for pkg in meta["packages"].as_array().expect("packages") {
        let name = pkg["name"].as_str().unwrap_or_default();
        if name == "chain-tests" {
            continue;
        }
        crates += 1;
        let src = root.join(name).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: std::collections::BTreeMap<String, PathBuf> = files
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| n != "main.rs"))
            .map(|f| (module_of(&src, f), f.clone()))
            .collect();
        let related = |a: &str, b: &str| {
            a.is_empty() || b.is_empty() || a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
        };
        let mut edges: std::collections::BTreeMap<&str, std::collections::BTreeSet<String>> = Default::default();
        for (m, f) in &modules {
            let text = std::fs::read_to_string(f).expect("read");
            let code: String = text
                .split("\n#[cfg(test)]")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for p in named_paths(&code, m) {
                // The longest prefix that is a module of this crate.
                let mut to = p.as_str();
                while !modules.contains_key(to) {
                    match to.rsplit_once("::") {
                        Some((head, _)) => to = head,
                        None => {
                            to = "";
                            break;
                        }
                    }
                }
                if !related(m, to) {
                    edges.entry(m.as_str()).or_default().insert(to.to_string());
                }
            }
        }
        // Every circle through each module, by a depth-first search from it.
        for start in edges.keys() {
            let mut stack = vec![(start.to_string(), vec![start.to_string()])];
            while let Some((at, path)) = stack.pop() {
                for next in edges.get(at.as_str()).into_iter().flatten() {
                    if next == start {
                        let mut c = path.clone();
                        c.push(next.clone());
                        if path.iter().min() == Some(&start.to_string()) {
                            circles.push(format!("{name}: {}", c.join(" → ")));
                        }
                    } else if !path.contains(next) && path.len() < 8 {
                        let mut p = path.clone();
                        p.push(next.clone());
                        stack.push((next.clone(), p));
                    }
                }
            }
        }
    }
    assert!(crates >= 9, "{crates} crates read");
    assert!(circles.is_empty(), "modules that import each other:\n{}", circles.join("\n"));
}

#[test]
fn the_call_reader_tells_a_call_from_a_longer_name() {
    assert!(calls("let f = std::fs::File::open(p)?;", "File::open("));
    assert!(calls("File::open(p)", "File::open("));
    assert!(!calls("let d = DataFile::open(path, &h, n)?;", "File::open("));
}

#[test]
fn the_module_reader_sees_crate_and_super_paths() {
    let code = "use crate::metrics::{sigmoid, softplus};\nuse crate::{fit, train::folder::RunFolder};\nlet x = super::epochs::f();\nlet y = other_crate::z;";
    let mut p = named_paths(code, "train::folder");
    p.sort();
    assert_eq!(
        p,
        ["fit", "metrics", "train::epochs::f", "train::folder::RunFolder"]
    );
    let src = Path::new("/x/src");
    assert_eq!(module_of(src, Path::new("/x/src/lib.rs")), "");
    assert_eq!(module_of(src, Path::new("/x/src/train/mod.rs")), "train");
    assert_eq!(module_of(src, Path::new("/x/src/train/epochs.rs")), "train::epochs");
}

/// Each binary's `main` only parses and dispatches (at most 40 lines): the work of a
/// subcommand is a function (or a module) of its own, with its own name in a backtrace.
#[test]
fn every_main_only_dispatches() {
    let mut long = Vec::new();
    let mut mains = 0;
    for (bin, srcs) in chain_tests::binaries() {
        let f = srcs[0].join("main.rs");
        let text = std::fs::read_to_string(&f).expect("main.rs");
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.iter().position(|l| l.starts_with("fn main()")).expect("fn main");
        let len = lines[start..].iter().position(|l| *l == "}").expect("end of main") + 1;
        mains += 1;
        if len > 40 {
            long.push(format!("{bin}: main is {len} lines"));
        }
    }
    assert!(mains >= 5, "{mains} binaries");
    assert!(long.is_empty(), "{long:?}");
}

/// The modules of a binary: its `main.rs` and the files it declares with `mod NAME;`.
fn binary_modules(src: &Path) -> Vec<PathBuf> {
    let main = src.join("main.rs");
    let mut out = vec![main.clone()];
    let text = std::fs::read_to_string(&main).unwrap_or_default();
    for l in text.lines() {
        if let Some(name) = l.trim().strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            out.push(src.join(format!("{name}.rs")));
            out.push(src.join(name).join("mod.rs"));
        }
    }
    out
}

/// clap is the binaries' business: no library's code names it (a library enum a flag takes
/// reaches the command line through `cli::choice`), and the crates below the binaries do not
/// depend on it at all. Every package's `src/` is read; a binary's own modules (its
/// `main.rs` and what it declares) are left out.
#[test]
fn no_library_code_uses_clap() {
    let root = chain_tests::workspace();
    let meta = chain_tests::cargo_metadata();
    let mut found = Vec::new();
    let mut libs = 0;
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().unwrap_or_default();
        if name == "chain-tests" || name == "cli" {
            continue;
        }
        let src = root.join(Path::new(p["manifest_path"].as_str().expect("manifest")).parent().expect("dir")).join("src");
        let bin_files = binary_modules(&src);
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        libs += 1;
        for f in files.iter().filter(|f| !bin_files.contains(f)) {
            let text = std::fs::read_to_string(f).expect("read");
            for (i, line) in text.lines().enumerate() {
                if line.contains("clap::") || line.contains("#[arg(") || line.contains("#[command(") {
                    found.push(format!("{}:{}: {}", f.strip_prefix(&root).unwrap_or(f).display(), i + 1, line.trim()));
                }
            }
        }
        let declares_clap = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["name"] == "clap" && d["kind"].is_null());
        let has_bin = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")));
        if declares_clap && !has_bin {
            found.push(format!("{name} has no binary and depends on clap"));
        }
    }
    assert!(libs >= 14, "{libs} packages read");
    assert!(found.is_empty(), "clap outside the binaries:\n{}", found.join("\n"));
}

/// `code` with comments, string literals and character literals blanked (their newlines
/// kept, so line numbers hold), for counting braces.
fn strip_literals(code: &str) -> String {
    let b = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    let keep_newlines = |s: &[u8], out: &mut String| {
        for _ in s.iter().filter(|&&c| c == b'\n') {
            out.push('\n');
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        let word_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if rest.starts_with(b"//") {
            i += rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
        } else if rest.starts_with(b"/*") {
            let end = rest.windows(2).position(|w| w == b"*/").map_or(rest.len(), |p| p + 2);
            keep_newlines(&rest[..end], &mut out);
            i += end;
        } else if !word_before && (rest.starts_with(b"r\"") || rest.starts_with(b"r#") || rest.starts_with(b"br\"") || rest.starts_with(b"br#")) {
            let start = rest.iter().position(|&c| c == b'"').unwrap_or(0);
            let hashes = rest[..start].iter().filter(|&&c| c == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let end = rest[start + 1..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| start + 1 + p + close.len());
            keep_newlines(&rest[..end], &mut out);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            keep_newlines(&rest[..j.min(rest.len())], &mut out);
            i += j + 1;
        } else if rest[0] == b'\'' && (rest.get(2) == Some(&b'\'') || rest.get(1) == Some(&b'\\')) {
            // A character literal ('x', '\n', '\u{..}'); a lifetime ('a) has no closing quote.
            let end = rest[1..].iter().position(|&c| c == b'\'').map_or(1, |p| p + 2);
            i += end;
            out.push('_');
        } else {
            out.push(rest[0] as char);
            i += 1;
        }
    }
    out
}

/// Each function in `code` (comments and literals stripped) with its length in lines.
fn function_lengths(code: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let t = ["pub(crate) ", "pub(super) ", "pub "].iter().fold(t, |t, p| t.strip_prefix(p).unwrap_or(t));
        let t = ["const ", "async ", "unsafe "].iter().fold(t, |t, p| t.strip_prefix(p).unwrap_or(t));
        let Some(rest) = t.strip_prefix("fn ") else { continue };
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let (mut depth, mut opened) = (0i64, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            if !opened && l.contains(';') && !l.contains('{') {
                break; // a declaration without a body
            }
            depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
            opened |= l.contains('{');
            if opened && depth <= 0 {
                out.push((name.clone(), i + 1, j - i + 1));
                break;
            }
        }
    }
    out
}

/// The size limits a reader can hold in their head: no function over 100 lines and no
/// source file over 600 lines of code (tests aside: `#[cfg(test)]` modules at a file's end
/// and `tests/` folders), counted with comments and literals stripped from the braces.
#[test]
fn no_function_over_100_lines_and_no_file_over_600() {
    let root = chain_tests::workspace();
    let meta = chain_tests::cargo_metadata();
    let (mut long, mut files_read) = (Vec::new(), 0);
    for p in meta["packages"].as_array().expect("packages") {
        if p["name"] == "chain-tests" {
            continue;
        }
        let dir = root.join(Path::new(p["manifest_path"].as_str().expect("manifest")).parent().expect("dir"));
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for f in files {
            files_read += 1;
            let text = std::fs::read_to_string(&f).expect("read");
            let code = text.split("\n#[cfg(test)]").next().unwrap_or("");
            let at = f.strip_prefix(&root).unwrap_or(&f).display().to_string();
            let n = code.trim_end().lines().count();
            if n > 600 {
                long.push(format!("{at}: {n} lines"));
            }
            for (name, line, len) in function_lengths(&strip_literals(code)) {
                if len > 100 {
                    long.push(format!("{at}:{line}: fn {name} is {len} lines"));
                }
            }
        }
    }
    assert!(files_read > 100, "{files_read} files read");
    assert!(long.is_empty(), "over the limits:\n{}", long.join("\n"));
}

#[test]
fn the_length_reader_skips_literals_and_counts_bodies() {
    let code = "fn a() {\n    let s = \"}}}\";\n    let c = '}';\n    // }\n}\nfn b<'x>(v: &'x str) -> &'x str {\n    v\n}\nfn decl();\n";
    let got = function_lengths(&strip_literals(code));
    assert_eq!(got, vec![("a".to_string(), 1, 5), ("b".to_string(), 6, 3)]);
    let raw = "fn r() {\n    let s = r#\"{ \"quoted\" {\"#;\n}\n";
    assert_eq!(function_lengths(&strip_literals(raw)), vec![("r".to_string(), 1, 3)]);
}
