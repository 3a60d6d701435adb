//! The command synopses in docs/ say what `--help` says: every flag a command's `--help`
//! lists is in its synopsis, and every flag a synopsis names is one `--help` lists (a new
//! user found `--shard`, `merge`, `--cache-mb`, compare's `--label-col`/`--series-col` in
//! `--help` only).
use std::collections::{BTreeMap, BTreeSet};

use chain_tests::{run_ok, workspace};

/// Flags (`--name`) in a text.
fn flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let rest = &text[i + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let before = text[..i].chars().last();
        if !name.is_empty()
            && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && before.is_none_or(|c| !c.is_alphanumeric())
        {
            out.insert(format!("--{name}"));
        }
    }
    out.remove("--help");
    out.remove("--version");
    out
}

/// The subcommands `--help` lists.
fn subcommands(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut on = false;
    for l in help.lines() {
        if l.starts_with("Commands:") {
            on = true;
            continue;
        }
        if on {
            if !l.starts_with("  ") {
                break;
            }
            if let Some(w) = l.split_whitespace().next() {
                if l.starts_with("  ") && !l.starts_with("   ") && w != "help" {
                    out.push(w.to_string());
                }
            }
        }
    }
    out
}

/// Synopsis lines of `bin` in a doc: lines of its ```sh blocks that start with the binary's
/// name (no `$ ` prompt: those are examples), with their indented continuation lines, by
/// the command they are of (`bin` or `bin sub`).
fn synopses(doc: &str, bin: &str, subs: &[String]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut in_sh = false;
    let mut current: Option<String> = None;
    for l in doc.lines() {
        if l.starts_with("```") {
            in_sh = l.starts_with("```sh");
            current = None;
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(rest) = l.strip_prefix(&format!("{bin} ")) {
            let first = rest.split_whitespace().next().unwrap_or("");
            let key = if subs.iter().any(|s| s == first) {
                format!("{bin} {first}")
            } else {
                bin.to_string()
            };
            let text = l.split("  #").next().unwrap_or(l);
            out.entry(key.clone()).or_default().push_str(&format!(" {text}"));
            current = Some(key);
        } else if l.starts_with(' ') {
            if let Some(k) = &current {
                let text = l.split("  #").next().unwrap_or(l);
                out.entry(k.clone()).or_default().push_str(&format!(" {text}"));
            }
        } else {
            current = None;
        }
    }
    out
}

/// The options `--help` defines (its option lines, not flags its prose mentions), each with
/// its short form if it has one.
fn help_options(help: &str) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for l in help.lines() {
        let t = l.trim_start();
        if !l.starts_with("  ") || !t.starts_with('-') {
            continue;
        }
        let (short, rest) = match t.strip_prefix('-').and_then(|r| r.chars().next()).filter(|c| *c != '-') {
            Some(c) => (Some(format!("-{c}")), t.get(4..).unwrap_or("")),
            None => (None, t),
        };
        if let Some(name) = flags(rest.split_whitespace().next().unwrap_or("")).into_iter().next() {
            out.insert(name, short);
        }
    }
    out
}

/// Whether a synopsis names an option, by its long or its short form.
fn names(line: &str, long: &str, short: Option<&String>) -> bool {
    flags(line).contains(long)
        || short.is_some_and(|s| {
            line.split(|c: char| c.is_whitespace() || "[]()|".contains(c))
                .any(|w| w == s)
        })
}

#[test]
fn every_synopsis_names_the_flags_help_lists_and_no_others() {
    let mut problems = Vec::new();
    for (bin, doc) in [
        ("trainer", "docs/trainer.md"),
        ("infer", "docs/infer.md"),
        ("calibrate", "docs/calibrate.md"),
        ("froc", "docs/froc.md"),
        ("scans", "docs/scans.md"),
    ] {
        let text = std::fs::read_to_string(workspace().join(doc)).expect("doc");
        let top = run_ok(bin, &["--help"]).stdout;
        let subs = subcommands(&top);
        let syn = synopses(&text, bin, &subs);
        let mut commands = vec![(bin.to_string(), top.clone())];
        for s in &subs {
            commands.push((format!("{bin} {s}"), run_ok(bin, &[s, "--help"]).stdout));
        }
        for (cmd, help) in commands {
            let opts = help_options(&help);
            let Some(line) = syn.get(&cmd) else {
                // A binary of subcommands only has no synopsis of its own.
                if !(cmd == bin && opts.is_empty()) {
                    problems.push(format!("{doc}: no synopsis of `{cmd}`"));
                }
                continue;
            };
            let missing: Vec<&String> = opts
                .iter()
                .filter(|(l, s)| !names(line, l, s.as_ref()))
                .map(|(l, _)| l)
                .collect();
            let unknown: Vec<String> = flags(line).into_iter().filter(|f| !opts.contains_key(f)).collect();
            if !missing.is_empty() {
                problems.push(format!("{doc}: `{cmd}` synopsis lacks {missing:?} (in --help)"));
            }
            if !unknown.is_empty() {
                problems.push(format!(
                    "{doc}: `{cmd}` synopsis names {unknown:?}, which --help does not list"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_synopsis_reader_reads_options_forms_and_continuations() {
    let help = "Usage: x run [OPTIONS]\n\nOptions:\n  -o, --out <OUT>  Where (see `--other` in prose)\n      --top <N>\n  -h, --help  Print help\n";
    let opts = help_options(help);
    assert_eq!(opts.keys().collect::<Vec<_>>(), ["--out", "--top"]);
    let doc = "```sh\nx run A [-o B]\n      [--top 5]   # a comment --not-a-flag\nx other\n```\n$ x run --nope\n";
    let syn = synopses(doc, "x", &["run".to_string(), "other".to_string()]);
    let line = &syn["x run"];
    assert!(names(line, "--out", opts["--out"].as_ref()) && names(line, "--top", None));
    assert!(!flags(line).contains("--not-a-flag") && !flags(line).contains("--nope"));
    assert!(syn.contains_key("x other"));
}

/// Where ONNX Runtime is looked for: `--help` of every binary that loads it and the docs
/// give one order, the one the scorer searches in (next to the binary, then
/// `$ORT_DYLIB_PATH`, then the project venv).
#[test]
fn the_library_search_order_is_stated_once() {
    let order = |text: &str| -> Vec<usize> {
        ["next to", "$ORT_DYLIB_PATH", "venv"]
            .iter()
            .map(|k| text.find(k).unwrap_or_else(|| panic!("{k:?} not in: {text}")))
            .collect()
    };
    let sorted = |v: &[usize]| v.windows(2).all(|w| w[0] < w[1]);
    let doc = std::fs::read_to_string(workspace().join("docs/infer.md")).expect("doc");
    let at = doc
        .find("ONNX Runtime is found in this order")
        .expect("the docs state the order");
    assert!(sorted(&order(&doc[at..at + 400])), "docs/infer.md");
    let src = std::fs::read_to_string(workspace().join("scorer/src/runtime.rs")).expect("runtime.rs");
    let body = &src[src.find("pub fn locate").expect("locate")..];
    let code = |k: &str| body.find(k).unwrap_or_else(|| panic!("{k} not searched in runtime.rs"));
    assert!(
        code("current_exe") < code("ORT_ENV") && code("ORT_ENV") < code("venv_dirs"),
        "the scorer searches beside the binary, then the variable, then the venv"
    );
    for (bin, args) in [
        ("infer", vec!["--help"]),
        ("trainer", vec!["train", "--help"]),
        ("calibrate", vec!["--help"]),
    ] {
        let help = run_ok(bin, &args).stdout;
        let at = help.find("--ort-lib").expect("--ort-lib");
        let text: String = help[at..].chars().take(300).collect();
        assert!(sorted(&order(&text)), "{bin}: {text}");
    }
}
