//! `infer` and `calibrate` must never link libtorch: a scoring host has ONNX Runtime only.
//! `froc` scores a results file and needs neither libtorch nor ONNX Runtime.
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
    for b in ["infer", "calibrate", "froc"] {
        let libs = needed(b);
        assert!(!libs.iter().any(|l| is_torch(l)), "{b} links libtorch: {libs:?}");
        // ONNX Runtime is loaded at run time, not linked.
        assert!(
            !libs.iter().any(|l| l.contains("onnxruntime")),
            "{b} links ONNX Runtime: {libs:?}"
        );
    }
}

/// The normal and build dependencies of a workspace package, one `name vX.Y.Z` per line.
fn dependency_tree(pkg: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace())
        .args(["tree", "--offline", "-p", pkg, "-e", "normal,build", "--prefix", "none"])
        .output()
        .expect("cargo tree");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines().next().is_some_and(|l| l.starts_with(&format!("{pkg} v"))),
        "cargo tree printed no tree of {pkg}: {text}"
    );
    text
}

#[test]
fn infer_and_calibrate_dependency_trees_are_free_of_tch() {
    // chain-tests: the fixtures the packages' own tests share (`infer`'s among them).
    for pkg in ["infer", "calibrate", "scorer", "evaluation", "models", "synth", "plots", "cli", "chain-tests"] {
        let text = dependency_tree(pkg);
        for bad in ["tch v", "torch-sys v"] {
            assert!(
                !text.lines().any(|l| l.starts_with(bad)),
                "{pkg} depends on {bad}:\n{text}"
            );
        }
    }
}

/// The evaluation step (`froc`) and the crates below the scorer never pull ONNX Runtime's
/// bindings in; the scorer does (positive control).
#[test]
fn evaluation_and_the_contract_are_free_of_onnx_runtime() {
    assert!(dependency_tree("scorer").lines().any(|l| l.starts_with("ort v")));
    for pkg in ["evaluation", "models", "synth", "plots", "files", "tables", "luna16", "metrics", "host", "chain-tests"] {
        let text = dependency_tree(pkg);
        for bad in ["ort v", "ort-sys v", "tch v", "tar v", "walkdir v", "indicatif v"] {
            assert!(
                !text.lines().any(|l| l.starts_with(bad)),
                "{pkg} depends on {bad}:\n{text}"
            );
        }
    }
}

/// The trainer does not reach `calibrate`, `infer` or the evaluation step (it needs only the
/// contract, the scorer for its parity check, and plots); `calibrate` reaches neither `infer`
/// nor the evaluation step (comparing models is evaluation, at the end of the flow); the
/// evaluation step reaches neither the scorer nor `calibrate`; the crates below `models`
/// (files, tables, luna16, metrics, host) reach no crate above them.
#[test]
fn crates_depend_only_on_what_sits_below_them() {
    let direct = |pkg: &str| -> Vec<String> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(&cargo)
            .current_dir(workspace())
            .args([
                "tree",
                "--offline",
                "-p",
                pkg,
                "-e",
                "normal",
                "--depth",
                "1",
                "--prefix",
                "none",
            ])
            .output()
            .expect("cargo tree");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect()
    };
    let t = direct("trainer");
    assert!(t.contains(&"scorer".to_string()), "{t:?}");
    for bad in ["calibrate", "infer", "evaluation"] {
        assert!(!t.contains(&bad.to_string()), "trainer depends on {bad}: {t:?}");
    }
    let c = direct("calibrate");
    for bad in ["infer", "evaluation"] {
        assert!(!c.contains(&bad.to_string()), "calibrate depends on {bad}: {c:?}");
    }
    let above = ["models", "synth", "scorer", "plots", "scans", "tracking", "trainer", "calibrate", "infer", "evaluation", "cli"];
    for (pkg, may) in [
        ("files", &[][..]),
        ("host", &[][..]),
        ("metrics", &[][..]),
        ("tables", &["files", "metrics"][..]),
        ("luna16", &["tables"][..]),
    ] {
        let d = direct(pkg);
        for bad in above.iter().chain(["files", "tables", "luna16", "metrics", "host"].iter()) {
            if *bad != pkg && !may.contains(bad) {
                assert!(!d.contains(&bad.to_string()), "{pkg} depends on {bad}: {d:?}");
            }
        }
    }
    let f = direct("evaluation");
    assert!(
        !f.contains(&"scorer".to_string()) && !f.contains(&"calibrate".to_string()),
        "{f:?}"
    );
}

/// Step 1, scan → cubes, builds and runs without libtorch and without ONNX Runtime: a CPU
/// box that only prepares data needs neither (the `scans` binary's links, and the crate's
/// dependency tree; the trainer, which links libtorch, no longer reads scans).
#[test]
fn the_scans_binary_carries_no_libtorch_and_no_onnx_runtime() {
    let libs = needed("scans");
    assert!(
        !libs.iter().any(|l| is_torch(l) || l.contains("onnxruntime")),
        "scans links {libs:?}"
    );
    let text = dependency_tree("scans");
    for bad in ["tch v", "torch-sys v", "ort v", "ort-sys v"] {
        assert!(
            !text.lines().any(|l| l.starts_with(bad)),
            "scans depends on {bad}:\n{text}"
        );
    }
    let trainer = dependency_tree("trainer");
    assert!(
        !trainer
            .lines()
            .any(|l| l.starts_with("scans v") || l.starts_with("dicom-object v")),
        "the trainer still reads scans"
    );
}

/// The check that binaries are newer than their sources follows the manifests: each binary
/// is checked against every workspace crate it is built from (froc against luna16, infer
/// against scans), and against no crate it is not.
#[test]
fn the_stale_binary_check_follows_the_manifests() {
    let bins = chain_tests::binaries();
    let of = |b: &str| -> Vec<String> {
        bins.iter()
            .find(|(n, _)| n == b)
            .unwrap_or_else(|| panic!("no binary {b} in {bins:?}"))
            .1
            .iter()
            .map(|d| {
                d.parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect()
    };
    let names: Vec<&str> = bins.iter().map(|(n, _)| n.as_str()).collect();
    for b in ["trainer", "calibrate", "froc", "infer", "scans"] {
        assert!(names.contains(&b), "{names:?}");
    }
    assert_eq!(of("calibrate")[0], "calibrate", "its own crate first");
    assert_eq!(of("froc")[0], "evaluation", "the froc binary is the evaluation crate's");
    assert!(of("froc").contains(&"luna16".to_string()), "{:?}", of("froc"));
    assert!(!of("calibrate").contains(&"evaluation".to_string()), "{:?}", of("calibrate"));
    assert!(of("infer").contains(&"scans".to_string()), "{:?}", of("infer"));
    assert!(of("infer").contains(&"models".to_string()), "{:?}", of("infer"));
    assert!(!of("scans").contains(&"scorer".to_string()), "{:?}", of("scans"));
    assert!(!of("trainer").contains(&"scans".to_string()), "{:?}", of("trainer"));
}

/// Every dependency a crate declares is used by its code (as `cargo machete` checks: the
/// crate's name appears as a path in the sources of the targets that take it), so no crate
/// builds what it does not use. Normal dependencies are looked for in `src/`, dev-dependencies
/// in `tests/`, `benches/`, `examples/` and `src/` (unit tests), build dependencies in
/// `build.rs`.
#[test]
fn every_declared_dependency_is_used() {
    let meta = chain_tests::cargo_metadata();
    fn sources(dir: &std::path::Path, out: &mut String) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                *out += &std::fs::read_to_string(&p).unwrap_or_default();
            }
        }
    }
    let mut unused = Vec::new();
    for p in meta["packages"].as_array().expect("packages") {
        let root = std::path::Path::new(p["manifest_path"].as_str().expect("manifest"))
            .parent()
            .expect("dir")
            .to_path_buf();
        let (mut src, mut dev, mut build) = (String::new(), String::new(), String::new());
        sources(&root.join("src"), &mut src);
        for d in ["tests", "benches", "examples"] {
            sources(&root.join(d), &mut dev);
        }
        dev += &src;
        build += &std::fs::read_to_string(root.join("build.rs")).unwrap_or_default();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let name = d["rename"]
                .as_str()
                .or(d["name"].as_str())
                .unwrap_or_default()
                .replace('-', "_");
            let text = match d["kind"].as_str() {
                None => &src,
                Some("dev") => &dev,
                _ => &build,
            };
            let used = [
                format!("{name}::"),
                format!("use {name}"),
                format!("extern crate {name}"),
            ]
            .iter()
            .any(|pat| text.contains(pat.as_str()));
            if !used {
                unused.push(format!(
                    "{} declares {} ({}) and does not use it",
                    p["name"].as_str().unwrap_or_default(),
                    name,
                    d["kind"].as_str().unwrap_or("normal")
                ));
            }
        }
    }
    assert!(unused.is_empty(), "{}", unused.join("\n"));
}
