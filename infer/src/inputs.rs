//! What a run scores: `.npy` files from folders and explicit paths, or the rows of an index.
//!
//! Nothing is skipped silently. In a folder, an entry named `*.npy` that is not a regular
//! file (a folder, a FIFO, a socket, a device), a symlink loop, an unreadable folder or a
//! name that is not UTF-8 is reported as that entry's error; an explicit path that is not
//! a regular file is reported when it is read (see [`files::open_regular`], which
//! never blocks). The same file reached twice (given twice, through a folder and by name,
//! through a symlink or a hard link) is scored once and the repeats reported; so is an
//! index row listing a patch again. Two different files never share an output name.
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::InferError;

/// One patch to score: its path, the name it gets in the output, and its index row when
/// the inputs came from an index CSV.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: PathBuf,
    pub name: String,
    pub row: Option<tables::index::ScoringRow>,
}

/// The scans a run reads, by seriesuid.
#[derive(Debug)]
pub struct ScanSet {
    pub dir: PathBuf,
    pub candidates: PathBuf,
    pub format: scans::candidates::CandidateFormat,
    pub sources: std::collections::BTreeMap<String, scans::Source>,
}

impl ScanSet {
    /// The name of the output's first column: `patch_file` for an index (rows then equal
    /// those of scoring its prepared folder), `candidate` for LUNA16's candidates.
    pub fn name_column(&self) -> &'static str {
        match self.format {
            scans::candidates::CandidateFormat::Index => "patch_file",
            scans::candidates::CandidateFormat::Luna16 => "candidate",
        }
    }
}

/// One batch from the decoding thread: the files that decoded, their cubes one after
/// another in `data` (the model's input layout), and the files that failed.
pub(crate) struct Decoded<'a> {
    pub(crate) good: Vec<&'a Item>,
    /// Each good item's input digest ([`models::patch::load_patch_hashed`]).
    pub(crate) digests: Vec<String>,
    pub(crate) bad: Vec<(&'a Item, models::Error)>,
    pub(crate) data: Vec<f32>,
}

/// The items of each scan, in order: consecutive runs of one seriesuid (items scored
/// from scans, in scan order).
pub(crate) fn scan_groups<'a, 'b>(items: &'b [&'a Item]) -> Vec<&'b [&'a Item]> {
    items
        .chunk_by(|a, b| a.row.as_ref().map(|r| &r.seriesuid) == b.row.as_ref().map(|r| &r.seriesuid))
        .collect()
}

/// An input that cannot be scored, found while collecting: (name, reason).
pub type Refused = (String, String);

/// The inputs of a run.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub items: Vec<Item>,
    /// Entries reported instead of scored.
    pub refused: Vec<Refused>,
    /// Whether the index has a `label` column (index mode).
    pub has_label: bool,
    /// The index CSV (index mode), or the candidates file (scored from scans).
    pub index: Option<PathBuf>,
    /// The scans the items are cut from (`--scans`): items then name their scan's path,
    /// and are grouped by scan in order.
    pub scans: Option<std::sync::Arc<ScanSet>>,
    /// What the run should say about its inputs besides errors (left-out candidates…).
    pub notes: Vec<String>,
}

/// A path as output text, or why it cannot be one.
fn name_of(p: &Path) -> Result<String, String> {
    p.to_str().map(str::to_string).ok_or_else(|| {
        "the file name is not valid UTF-8; rename it (output rows name their patch as text, \
         and two such names could not be told apart)"
            .to_string()
    })
}

/// Every `.npy` under the inputs in a stable (sorted) order, with the name each gets in the
/// output. Folders are listed, or walked with `recursive` (following symlinks, loops
/// detected). A folder without patches, or a path that does not exist, is an error.
pub fn collect_inputs(inputs: &[PathBuf], recursive: bool) -> Result<Inputs, InferError> {
    let mut out = Inputs::default();
    for input in inputs {
        if input.is_dir() {
            let mut files = Vec::new();
            let walker = walkdir::WalkDir::new(input)
                .follow_links(true)
                .max_depth(if recursive { usize::MAX } else { 1 })
                .sort_by_file_name();
            for entry in walker {
                match entry {
                    Ok(e) if e.depth() > 0 && e.path().extension().is_some_and(|x| x == "npy") => {
                        if e.file_type().is_file() {
                            files.push(e.into_path());
                        } else {
                            let why = format!(
                                "not a regular file ({}); patches must be regular .npy files",
                                files::read::kind_of(e.file_type())
                            );
                            out.refused.push((e.path().display().to_string(), why));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let p = e
                            .path()
                            .map_or_else(|| input.display().to_string(), |p| p.display().to_string());
                        let why = if e.loop_ancestor().is_some() {
                            "symlink loop".to_string()
                        } else {
                            e.to_string()
                        };
                        out.refused.push((p, why));
                    }
                }
            }
            if files.is_empty() && out.refused.is_empty() {
                return Err(crate::bad_input(
                    input,
                    if recursive {
                        "no .npy files under this folder"
                    } else {
                        "no .npy files in this folder (--recursive to descend)"
                    },
                ));
            }
            // One folder: names relative to it (they match its patch_index.csv); several
            // inputs: paths as given, so two folders' equal names stay distinct.
            for p in files {
                let shown = if inputs.len() == 1 {
                    p.strip_prefix(input).unwrap_or(&p)
                } else {
                    &p
                };
                match name_of(shown) {
                    Ok(name) => out.items.push(Item {
                        path: p,
                        name,
                        row: None,
                    }),
                    Err(why) => out.refused.push((p.to_string_lossy().into_owned(), why)),
                }
            }
        } else if input.exists() || input.symlink_metadata().is_ok() {
            match name_of(input) {
                Ok(name) => out.items.push(Item {
                    path: input.clone(),
                    name,
                    row: None,
                }),
                Err(why) => out.refused.push((input.to_string_lossy().into_owned(), why)),
            }
        } else {
            return Err(crate::bad_input(input, "no such file or folder"));
        }
    }
    drop_repeats(&mut out);
    Ok(out)
}

/// The rows of an index CSV as items; output rows then carry the index's columns. Rows the
/// index refuses (a patch listed again, a non-finite centre) are reported, not scored.
pub fn collect_index(index: &Path) -> Result<Inputs, InferError> {
    let idx = tables::index::read_scoring_index(index)?;
    let items = idx
        .rows
        .into_iter()
        .map(|r| Item {
            path: idx.root.join(&r.patch_file),
            name: r.patch_file.clone(),
            row: Some(r),
        })
        .collect();
    let mut out = Inputs {
        items,
        refused: idx.refused,
        has_label: idx.has_label,
        index: Some(idx.path),
        ..Inputs::default()
    };
    drop_repeats(&mut out);
    Ok(out)
}

/// Keeps the first of items that are the same file (by device and inode, so symlinks, hard
/// links and `./a.npy` beside `a.npy` are caught) or share a name, and reports the rest.
fn drop_repeats(inputs: &mut Inputs) {
    let mut by_file: HashMap<(u64, u64), String> = HashMap::new();
    let mut by_name: HashMap<String, ()> = HashMap::new();
    let mut kept = Vec::with_capacity(inputs.items.len());
    for it in inputs.items.drain(..) {
        if by_name.insert(it.name.clone(), ()).is_some() {
            inputs.refused.push((
                it.name.clone(),
                "listed twice: scored once, under its first entry".into(),
            ));
            continue;
        }
        if let Ok(m) = std::fs::metadata(&it.path) {
            if let Some(first) = by_file.insert((m.dev(), m.ino()), it.name.clone()) {
                let why = format!("the same file as {first}: scored once, under that name");
                by_file.insert((m.dev(), m.ino()), first);
                inputs.refused.push((it.name.clone(), why));
                continue;
            }
        }
        kept.push(it);
    }
    inputs.items = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_entries_repeats_and_odd_names_are_reported_not_skipped() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("p");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(root.join("a.npy"), b"x").expect("w");
        std::fs::create_dir(root.join("dir.npy")).expect("mkdir");
        std::fs::hard_link(root.join("a.npy"), root.join("hard.npy")).expect("ln");
        std::fs::write(root.join("notes.txt"), b"x").expect("w");
        use std::os::unix::ffi::OsStrExt;
        let odd = root.join(std::ffi::OsStr::from_bytes(b"bad\xff.npy"));
        std::fs::write(&odd, b"x").expect("w");
        let got = collect_inputs(std::slice::from_ref(&root), false).expect("collect");
        let names: Vec<&str> = got.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a.npy"]);
        let why: Vec<String> = got.refused.iter().map(|(n, w)| format!("{n}: {w}")).collect();
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(
            why.iter().any(|w| w.contains("dir.npy") && w.contains("a folder")),
            "{why:?}"
        );
        assert!(
            why.iter()
                .any(|w| w.contains("hard.npy") && w.contains("the same file as a.npy")),
            "{why:?}"
        );
        assert!(why.iter().any(|w| w.contains("not valid UTF-8")), "{why:?}");
        // A file given twice, and once more through another spelling.
        let a = root.join("a.npy");
        let dotted = root.join(".").join("a.npy");
        let got = collect_inputs(&[a.clone(), a.clone(), dotted], false).expect("collect");
        assert_eq!(got.items.len(), 1);
        assert_eq!(got.refused.len(), 2, "{:?}", got.refused);
    }
}
