//! The output policy every binary applies before it does any work.
//!
//! A run declares its inputs (every file it will read: patches, index, model, calibration,
//! scores, scans) and then each output it will write. An output is refused when
//! * it resolves (symlinks and `..` followed) to an input: the same path, or the same file
//!   under another name (a hard link), so `infer -o patches/a.npy` cannot turn a patch
//!   into a CSV and `calibrate -o model.onnx` cannot overwrite the model;
//! * it resolves to another output of the same run;
//! * it is a folder, a socket or a block device, or its folder does not exist.
//!
//! A character device or FIFO is written through ([`Target::Stream`]), never replaced. The
//! first time an output folder is seen, the temporary files that killed runs left there are
//! removed ([`super::clean_stale_temps`]).
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::write::{clean_stale_temps, resolve_output, Target};
use crate::{Error, Result};

/// An input's identity: the file it is, whatever it is called.
#[derive(Debug, Clone)]
struct Input {
    role: String,
    shown: PathBuf,
    dev: u64,
    ino: u64,
}

#[derive(Debug, Clone)]
struct Output {
    role: String,
    shown: PathBuf,
    target: Target,
}

/// The inputs and outputs of one run (see the module documentation).
#[derive(Debug, Default)]
pub struct RunIo {
    inputs: Vec<Input>,
    ids: HashSet<(u64, u64)>,
    outputs: Vec<Output>,
    cleaned: HashSet<PathBuf>,
}

impl RunIo {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares an input file (`role`: "model", "patch", ...). A path that does not exist
    /// is skipped here: the reader reports it.
    pub fn input(&mut self, role: &str, path: &Path) -> &mut Self {
        if let Ok(m) = std::fs::metadata(path) {
            if self.ids.insert((m.dev(), m.ino())) {
                self.inputs.push(Input {
                    role: role.to_string(),
                    shown: path.to_path_buf(),
                    dev: m.dev(),
                    ino: m.ino(),
                });
            }
        }
        self
    }

    /// Declares several input files of one role.
    pub fn inputs<'a>(&mut self, role: &str, paths: impl IntoIterator<Item = &'a Path>) -> &mut Self {
        for p in paths {
            self.input(role, p);
        }
        self
    }

    /// Declares an output and checks it against the inputs and the other outputs; returns
    /// where it will be written.
    pub fn output(&mut self, role: &str, path: &Path) -> Result<Target> {
        let target = resolve_output(path)?;
        let refuse = |msg: String| Error::BadOutput {
            path: path.to_path_buf(),
            msg,
        };
        if let Target::File(p) = &target {
            if let Ok(m) = std::fs::metadata(p) {
                if self.ids.contains(&(m.dev(), m.ino())) {
                    let i = self
                        .inputs
                        .iter()
                        .find(|i| i.dev == m.dev() && i.ino == m.ino())
                        .map_or_else(String::new, |i| format!(" {} {}", i.role, i.shown.display()));
                    return Err(refuse(format!(
                        "the {role} would overwrite the{i}, an input of this run; choose another output path"
                    )));
                }
            }
            if let Some(o) = self.outputs.iter().find(|o| o.target == target) {
                return Err(refuse(format!(
                    "the {role} and the {} ({}) are the same file; give them different paths",
                    o.role,
                    o.shown.display()
                )));
            }
            if let Some(dir) = p.parent() {
                if self.cleaned.insert(dir.to_path_buf()) {
                    clean_stale_temps(dir);
                }
            }
        }
        self.outputs.push(Output {
            role: role.to_string(),
            shown: path.to_path_buf(),
            target: target.clone(),
        });
        Ok(target)
    }

    /// Declares the files `names` (relative paths) inside the output folder `dir` as
    /// outputs. Folders that do not exist yet are skipped: nothing in them can be an input.
    pub fn outputs_in(&mut self, role: &str, dir: &Path, names: &[&str]) -> Result<()> {
        for n in names {
            let p = dir.join(n);
            if p.parent().is_some_and(Path::is_dir) {
                self.output(role, &p)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_naming_inputs_or_each_other_are_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let model = d.path().join("model.onnx");
        let patch = d.path().join("a.npy");
        for p in [&model, &patch] {
            std::fs::write(p, b"x").expect("w");
        }
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        std::os::unix::fs::symlink(&model, d.path().join("alias.onnx")).expect("ln");
        std::fs::hard_link(&patch, d.path().join("hard.npy")).expect("hard link");
        let mut io = RunIo::new();
        io.input("model", &model).inputs("patch", [patch.as_path()]);
        for (out, why) in [
            (model.clone(), "model"),
            (sub.join("../model.onnx"), "model"),
            (d.path().join("alias.onnx"), "model"),
            (d.path().join("hard.npy"), "patch"),
            (patch.clone(), "patch"),
        ] {
            let e = io.output("scores", &out).expect_err("input").to_string();
            assert!(e.contains("an input of this run") && e.contains(why), "{e}");
        }
        assert!(io.output("scores", &d.path().join("scores.csv")).is_ok());
        let e = io
            .output("errors file", &sub.join("../scores.csv"))
            .expect_err("same output")
            .to_string();
        assert!(e.contains("the errors file and the scores"), "{e}");
        // Devices are written through and may be named twice.
        assert_eq!(
            io.output("scores", Path::new("/dev/null")).expect("dev"),
            Target::Stream("/dev/null".into())
        );
        assert!(io.output("errors file", Path::new("/dev/null")).is_ok());
        let e = io.output("scores", &sub).expect_err("dir").to_string();
        assert!(e.contains("a folder"), "{e}");
    }
}
