//! Every command the README shows (`$ ...` in its code blocks) runs as written, in a fresh
//! folder holding what `scripts/demo` makes before it, and prints what the README shows
//! in form: the same lines, in order, with numbers, timings and the workspace's path free
//! to differ (a line `...` stands for lines left out). Then every command block of docs/
//! runs as written in the same folder (on the demo's outputs), but for synopses (checked
//! against `--help` in docs.rs) and blocks marked `<!-- not run: why -->`.
use std::path::Path;
use std::process::Command;

use chain_tests::{bin_dir, run_ok, s, workspace};

/// A command of the README and the output it shows.
#[derive(Debug)]
struct Example {
    command: String,
    shown: Vec<String>,
}

fn examples(readme: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    let mut continuing = false;
    for l in readme.lines() {
        if l.starts_with("```") {
            in_block = !in_block;
            continuing = false;
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(cmd) = l.strip_prefix("$ ") {
            continuing = cmd.ends_with('\\');
            out.push(Example {
                command: cmd.trim_end_matches('\\').to_string(),
                shown: Vec::new(),
            });
        } else if let Some(ex) = out.last_mut() {
            if continuing {
                continuing = l.ends_with('\\');
                ex.command.push(' ');
                ex.command.push_str(l.trim().trim_end_matches('\\'));
            } else {
                ex.shown.push(l.to_string());
            }
        }
    }
    out
}

/// A line's form: the workspace's path as `<ws>`, each run of digits (with its decimal
/// point and exponent) as `#`.
fn form(line: &str, ws: &str) -> String {
    let line = line.replace(ws, "<ws>");
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars.peek().is_some_and(|d| d.is_ascii_digit() || *d == '.' || *d == 'e') {
                chars.next();
            }
            out.push('#');
        } else {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

/// Runs `cmd` in `dir` through the shell, with the workspace's binaries first on PATH;
/// stdout and stderr together, as a terminal shows them.
fn shell(dir: &Path, cmd: &str) -> (bool, String) {
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let o = Command::new("bash")
        .args(["-c", &format!("{cmd} 2>&1")])
        .current_dir(dir)
        .env("PATH", path)
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    for l in text.lines() {
        chain_tests::assert_no_debug_formatting("readme", &[cmd], l);
    }
    (o.status.success(), text)
}

#[test]
fn every_readme_command_runs_as_written_and_prints_what_it_shows() {
    let d = tempfile::tempdir().expect("tmp");
    let w = d.path();
    let ws = std::fs::canonicalize(workspace()).expect("workspace");
    let shared = ws.join("../shared/data");
    let readme = std::fs::read_to_string(ws.join("README.md")).expect("README");
    let ex = examples(&readme);
    assert!(ex.len() >= 5, "{ex:?}");
    // What scripts/demo makes before the README's commands (its own steps), and the two
    // small CSVs the prepare example names (three candidates on the slab, no nodule).
    let demo = w.join("demo");
    for (dir, series, seed) in [("patches", "40", "7"), ("new_patches", "12", "99")] {
        let out = demo.join(dir);
        run_ok(
            "trainer",
            &["synth", "--out", s(&out), "--series", series, "--patches-per-series", "10", "--cube-size", "32", "--seed", seed],
        );
    }
    let uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919";
    std::fs::write(w.join("annotations.csv"), "seriesuid,coordX,coordY,coordZ,diameter_mm\n").expect("w");
    let mut c = String::from("seriesuid,coordX,coordY,coordZ,class\n");
    for (x, y) in [(-60.0, -20.0), (0.0, 0.0), (60.0, 30.0)] {
        c += &format!("{uid},{x},{y},-87.0,0\n");
    }
    std::fs::write(w.join("candidates.csv"), c).expect("w");
    let mut problems = Vec::new();
    for e in &ex {
        // The shared data sits beside the repository: the README's relative path, from here.
        let cmd = e.command.replace("../shared/data", s(&shared));
        if cmd.starts_with("froc ") {
            // scripts/demo's step before it: the LUNA16 submission file.
            let (ok, out) = shell(
                w,
                "infer --model demo/run/model.onnx --calibration demo/run/calibration.yaml --index demo/new_patches \
                 --format luna16 -o demo/new_luna16_results.csv -q",
            );
            assert!(ok, "{out}");
        }
        let (ok, out) = shell(w, &cmd);
        if !ok {
            problems.push(format!("`{}` failed:\n{out}", e.command));
            continue;
        }
        // The shown lines, in order, among the printed ones (`...`: lines left out).
        // (The README was run in the workspace, this here: both are `<ws>`.)
        let printed: Vec<String> = out
            .lines()
            .map(|l| form(&l.replace(s(&shared), "../shared/data").replace(s(w), s(&ws)), s(&ws)))
            .collect();
        let mut at = 0;
        for want in e.shown.iter().filter(|l| l.trim() != "...") {
            let f = form(want, "/work/main");
            match printed[at..].iter().position(|p| *p == f) {
                Some(i) => at += i + 1,
                None => {
                    problems.push(format!(
                        "`{}`: the README shows\n  {want}\nbut it printed (in form):\n  {}",
                        e.command,
                        printed.join("\n  ")
                    ));
                    break;
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    run_docs_blocks(w, &ws);
}

/// A ```sh block of a doc: where it starts, its text, and the reason it is not run (the
/// `<!-- not run: why -->` line before it), if any.
#[derive(Debug)]
struct Block {
    at: String,
    text: String,
    not_run: Option<String>,
}

fn doc_blocks(doc: &str, name: &str) -> Vec<Block> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_start();
        if !fence.starts_with("```") {
            i += 1;
            continue;
        }
        let indent = lines[i].len() - fence.len();
        let start = i;
        i += 1;
        let mut body = Vec::new();
        while i < lines.len() && !lines[i].trim_start().starts_with("```") {
            body.push(lines[i].get(indent..).unwrap_or("").to_string());
            i += 1;
        }
        i += 1;
        if fence != "```sh" {
            continue;
        }
        let before = lines[..start].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim());
        let not_run = before
            .and_then(|l| l.strip_prefix("<!-- not run:"))
            .map(|r| r.trim_end_matches("-->").trim().to_string());
        out.push(Block {
            at: format!("{name}:{}", start + 1),
            text: body.join("\n"),
            not_run,
        });
    }
    out
}

/// A synopsis: optional parts in brackets, alternatives, or `...` (checked against
/// `--help` by docs.rs, not run).
fn is_synopsis(text: &str) -> bool {
    text.lines().any(|l| l.contains("[--") || l.contains("(--") || l.contains("..."))
}

/// Runs every command block of docs/ in `w` (where the README's commands ran), each as one
/// bash script that stops at its first failure.
fn run_docs_blocks(w: &Path, ws: &Path) {
    let mut docs: Vec<_> = std::fs::read_dir(ws.join("docs"))
        .expect("docs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    let (mut ran, mut not_run, mut synopses, mut problems) = (0, Vec::new(), 0, Vec::new());
    for d in &docs {
        let name = d.strip_prefix(ws).unwrap_or(d).display().to_string();
        for b in doc_blocks(&std::fs::read_to_string(d).expect("doc"), &name) {
            match &b.not_run {
                Some(why) if why.is_empty() => problems.push(format!("{}: `not run` without a reason", b.at)),
                Some(why) => not_run.push(format!("{}: {why}", b.at)),
                None if is_synopsis(&b.text) => synopses += 1,
                None => {
                    ran += 1;
                    let (ok, out) = shell(w, &format!("set -euo pipefail\n{}", b.text));
                    if !ok {
                        problems.push(format!("{} failed:\n{}\n--- printed:\n{out}", b.at, b.text));
                    }
                }
            }
        }
    }
    eprintln!("docs: {ran} block(s) run, {synopses} synopsis block(s), not run:\n  {}", not_run.join("\n  "));
    assert!(ran >= 3 && synopses >= 5, "{ran} run, {synopses} synopses");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn the_docs_reader_finds_blocks_and_their_marks() {
    let md = "text\n\n<!-- not run: needs LUNA16 -->\n```sh\nscans prepare --scans LUNA16\n```\n\n   ```sh\n   infer a \\\n     b\n   ```\n```yaml\nx: 1\n```\n```sh\ninfer [--x 1]\n```\n";
    let b = doc_blocks(md, "d.md");
    assert_eq!(b.len(), 3);
    assert_eq!(b[0].not_run.as_deref(), Some("needs LUNA16"));
    assert_eq!((b[1].text.as_str(), b[1].not_run.is_none()), ("infer a \\\n  b", true));
    assert!(is_synopsis(&b[2].text) && !is_synopsis(&b[1].text));
}

#[test]
fn the_readme_reader_joins_continuations_and_forms_ignore_numbers() {
    let md = "```\n$ a --x 1 \\\n    --y 2\nout 3.5 s\n...\nend 7\n```\ntext\n```\n$ b\n```\n";
    let ex = examples(md);
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0].command, "a --x 1  --y 2");
    assert_eq!(ex[0].shown, ["out 3.5 s", "...", "end 7"]);
    assert_eq!(form("scored 120 patch(es), 306.9 patches/s -> /w/x", "/w"), "scored # patch(es), # patches/s -> <ws>/x");
    assert_eq!(form("AUROC 0.8525 (1.43e-6)", "/w"), "AUROC # (#-#)");
}
