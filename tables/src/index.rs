//! The patch index CSV: `patch_file, seriesuid, diam_mm, center_x, center_y, center_z, label`
//! (`center_*` in world millimetres, `label` 1 for nodule, 0 for not). `patch_file` is
//! relative to the index's folder.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Columns every index must have, in the canonical order.
pub const COLUMNS: [&str; 7] = [
    "patch_file",
    "seriesuid",
    "diam_mm",
    "center_x",
    "center_y",
    "center_z",
    "label",
];

/// Default file name of the index inside a patch folder.
pub const INDEX_FILE: &str = "patch_index.csv";

/// One row of the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRow {
    pub patch_file: String,
    pub seriesuid: String,
    pub diam_mm: f64,
    pub center_x: f64,
    pub center_y: f64,
    pub center_z: f64,
    #[serde(deserialize_with = "label_01")]
    pub label: u8,
}

/// Accepts `0`/`1` and the `0.0`/`1.0` pandas writes for an integer column read as float.
fn label_01<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "0" | "0.0" => Ok(0),
        "1" | "1.0" => Ok(1),
        other => Err(serde::de::Error::custom(format!("label must be 0 or 1, got {other:?}"))),
    }
}

/// A loaded index: its rows and the folder patch paths are relative to.
#[derive(Debug, Clone)]
pub struct PatchIndex {
    pub path: PathBuf,
    pub root: PathBuf,
    pub rows: Vec<IndexRow>,
}

impl PatchIndex {
    /// Full path of a row's patch file.
    pub fn patch_path(&self, row: &IndexRow) -> PathBuf {
        self.root.join(&row.patch_file)
    }

    /// Reads an index, given either the CSV itself or the folder holding `patch_index.csv`.
    /// Checks the header (every missing column named at once), every row's types and label,
    /// and that every patch file exists (every missing file counted, the first few named).
    pub fn read(path: &Path) -> Result<Self> {
        let (path, mut rdr, _) = open_index(path, &COLUMNS, "an index needs")?;
        let bad = |msg: String| Error::BadIndex {
            path: path.clone(),
            msg,
        };
        let mut rows = Vec::new();
        for (i, rec) in rdr.deserialize::<IndexRow>().enumerate() {
            // Line numbers count the header as line 1.
            let row = rec.map_err(|e| Error::row(&path, i + 2, e))?;
            if row.patch_file.is_empty() || row.seriesuid.is_empty() {
                return Err(bad(format!("line {}: empty patch_file or seriesuid", i + 2)));
            }
            rows.push(row);
        }
        if rows.is_empty() {
            return Err(bad("the index has no rows".into()));
        }
        let mut seen = std::collections::HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            if let Some(first) = seen.insert(r.patch_file.as_str(), i + 2) {
                return Err(bad(format!(
                    "line {}: patch file {} is already listed on line {first}",
                    i + 2,
                    r.patch_file
                )));
            }
        }
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let absent: Vec<&str> = rows
            .iter()
            .filter(|r| !root.join(&r.patch_file).is_file())
            .map(|r| r.patch_file.as_str())
            .collect();
        if !absent.is_empty() {
            let shown: Vec<&str> = absent.iter().take(5).copied().collect();
            return Err(bad(format!(
                "{} patch file(s) listed in the index do not exist (or are not regular files) under {}: {}{}",
                absent.len(),
                root.display(),
                shown.join(", "),
                if absent.len() > shown.len() { ", ..." } else { "" }
            )));
        }
        Ok(PatchIndex { path, root, rows })
    }

    /// Writes rows as an index CSV atomically.
    pub fn write(path: &Path, rows: &[IndexRow]) -> Result<()> {
        let mut w = csv::Writer::from_writer(Vec::new());
        if rows.is_empty() {
            // serialize() writes the header with the first row: an empty index still has one.
            w.write_record(COLUMNS).map_err(|e| Error::BadIndex {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        }
        for r in rows {
            w.serialize(r).map_err(|e| Error::BadIndex {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        }
        let bytes = w.into_inner().map_err(|e| Error::BadIndex {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(files::write_atomic(path, &bytes)?)
    }
}

/// A row of an index given to a scorer: the label and the diameter are optional (new scans
/// have none), and a missing patch file is that file's error, not the whole index's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoringRow {
    pub patch_file: String,
    pub seriesuid: String,
    #[serde(default)]
    pub diam_mm: Option<f64>,
    pub center_x: f64,
    pub center_y: f64,
    pub center_z: f64,
    #[serde(default, deserialize_with = "opt_label_01")]
    pub label: Option<u8>,
}

fn opt_label_01<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some("0" | "0.0") => Ok(Some(0)),
        Some("1" | "1.0") => Ok(Some(1)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "label must be 0, 1 or empty, got {other:?}"
        ))),
    }
}

/// Columns a scoring index must have (`diam_mm` and `label` are optional).
pub const SCORING_COLUMNS: [&str; 5] = ["patch_file", "seriesuid", "center_x", "center_y", "center_z"];

/// Resolves a folder to its `patch_index.csv`, opens it, and checks that the header has
/// every `required` column (all missing ones named at once).
fn open_index(
    path: &Path,
    required: &[&str],
    needs: &str,
) -> Result<(PathBuf, crate::csvio::CsvReader, csv::StringRecord)> {
    let path = if path.is_dir() {
        path.join(INDEX_FILE)
    } else {
        path.to_path_buf()
    };
    let (rdr, headers) = crate::csvio::open(&path, true)?;
    let missing = crate::csvio::missing(&headers, required);
    if !missing.is_empty() {
        return Err(Error::BadIndex {
            msg: format!(
                "missing column(s) {} ({needs}: {})",
                missing.join(", "),
                required.join(", ")
            ),
            path,
        });
    }
    Ok((path, rdr, headers))
}

/// An index read for scoring: the rows that can be scored, and those that cannot.
#[derive(Debug, Clone)]
pub struct ScoringIndex {
    /// The CSV read (a folder given resolves to its `patch_index.csv`).
    pub path: PathBuf,
    /// The folder `patch_file` paths are relative to.
    pub root: PathBuf,
    /// Whether the index has a `label` column.
    pub has_label: bool,
    pub rows: Vec<ScoringRow>,
    /// Rows refused one by one, as (`patch_file`, reason with the line): a patch listed
    /// again, a centre or diameter that is not finite. The other rows are scored.
    pub refused: Vec<(String, String)>,
}

/// Reads an index for scoring. Header and row-format errors name the file and line and
/// stop the read; a row listing a patch again (the first one is kept) or with a non-finite
/// centre or diameter is refused on its own ([`ScoringIndex::refused`]).
pub fn read_scoring_index(path: &Path) -> Result<ScoringIndex> {
    let (path, mut rdr, headers) = open_index(
        path,
        &SCORING_COLUMNS,
        "a scoring index (diam_mm and label optional) needs",
    )?;
    let bad = |msg: String| Error::BadIndex {
        path: path.clone(),
        msg,
    };
    let has_label = headers.iter().any(|h| h == "label");
    let mut rows = Vec::new();
    let mut refused = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (line, rec) in crate::csvio::rows(&mut rdr) {
        let row: ScoringRow = rec
            .and_then(|r| r.deserialize(Some(&headers)))
            .map_err(|e| Error::row(&path, line, e))?;
        if row.patch_file.is_empty() {
            return Err(bad(format!("line {line}: empty patch_file")));
        }
        let values = [
            ("center_x", Some(row.center_x)),
            ("center_y", Some(row.center_y)),
            ("center_z", Some(row.center_z)),
            ("diam_mm", row.diam_mm),
        ];
        if let Some((name, v)) = values.iter().find(|(_, v)| v.is_some_and(|v| !v.is_finite())) {
            refused.push((
                row.patch_file.clone(),
                format!(
                    "{} line {line}: {name} is not finite ({})",
                    path.display(),
                    v.unwrap_or(f64::NAN)
                ),
            ));
            continue;
        }
        if let Some(first) = seen.insert(row.patch_file.clone(), line) {
            refused.push((
                row.patch_file.clone(),
                format!("{} line {line}: listed again (first on line {first})", path.display()),
            ));
            continue;
        }
        rows.push(row);
    }
    if rows.is_empty() && refused.is_empty() {
        return Err(bad("the index has no rows".into()));
    }
    let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(ScoringIndex {
        path,
        root,
        has_label,
        rows,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(f: &str, s: &str, label: u8) -> IndexRow {
        IndexRow {
            patch_file: f.into(),
            seriesuid: s.into(),
            diam_mm: 5.0,
            center_x: 1.0,
            center_y: 2.0,
            center_z: 3.0,
            label,
        }
    }

    #[test]
    fn roundtrip_and_missing_files() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("a.npy"), b"x").expect("w");
        let p = dir.path().join(INDEX_FILE);
        PatchIndex::write(&p, &[row("a.npy", "s1", 1)]).expect("write");
        let idx = PatchIndex::read(dir.path()).expect("read");
        assert_eq!(idx.rows, vec![row("a.npy", "s1", 1)]);

        PatchIndex::write(&p, &[row("a.npy", "s1", 1), row("a.npy", "s2", 0)]).expect("write");
        let msg = PatchIndex::read(&p).expect_err("duplicate").to_string();
        assert!(
            msg.contains("line 3") && msg.contains("already listed on line 2"),
            "{msg}"
        );
        PatchIndex::write(&p, &[row("a.npy", "s1", 1), row("gone.npy", "s2", 0)]).expect("write");
        let msg = PatchIndex::read(&p).expect_err("missing").to_string();
        assert!(
            msg.contains("patch_index.csv") && msg.contains("gone.npy") && msg.contains("1 patch file"),
            "{msg}"
        );
    }

    #[test]
    fn scoring_index_has_optional_label_and_diameter() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("new.csv");
        std::fs::write(
            &p,
            "patch_file,seriesuid,center_x,center_y,center_z\nsub/a.npy,s1,1.5,2,-3\n",
        )
        .expect("w");
        let idx = read_scoring_index(&p).expect("read");
        assert_eq!(idx.root, dir.path());
        assert!(!idx.has_label);
        assert_eq!(idx.rows[0].patch_file, "sub/a.npy");
        assert_eq!(
            (idx.rows[0].diam_mm, idx.rows[0].label, idx.rows[0].center_x),
            (None, None, 1.5)
        );
        std::fs::write(&p, "patch_file,seriesuid,center_x,center_y\na.npy,s1,1,2\n").expect("w");
        let msg = read_scoring_index(&p).expect_err("cols").to_string();
        assert!(msg.contains("missing column(s) center_z"), "{msg}");
    }

    /// A duplicated row and non-finite centres are refused row by row, naming the line;
    /// the other rows stay.
    #[test]
    fn scoring_index_refuses_duplicates_and_non_finite_centres_per_row() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("new.csv");
        std::fs::write(
            &p,
            "patch_file,seriesuid,center_x,center_y,center_z,diam_mm\n\
             a.npy,s1,1,2,3,4\nb.npy,s1,NaN,2,3,\nc.npy,s1,1,inf,3,\na.npy,s1,1,2,3,4\nd.npy,s1,1,2,3,-inf\ne.npy,s2,0,0,0,\n",
        )
        .expect("w");
        let idx = read_scoring_index(&p).expect("read");
        let kept: Vec<&str> = idx.rows.iter().map(|r| r.patch_file.as_str()).collect();
        assert_eq!(kept, ["a.npy", "e.npy"]);
        let why: Vec<String> = idx.refused.iter().map(|(f, w)| format!("{f}: {w}")).collect();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(
            why[0].starts_with("b.npy") && why[0].contains("line 3: center_x is not finite"),
            "{why:?}"
        );
        assert!(why[1].contains("line 4: center_y"), "{why:?}");
        assert!(
            why[2].starts_with("a.npy") && why[2].contains("line 5: listed again (first on line 2)"),
            "{why:?}"
        );
        assert!(why[3].contains("diam_mm is not finite"), "{why:?}");
    }

    #[test]
    fn missing_columns_all_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("idx.csv");
        std::fs::write(&p, "patch_file,seriesuid,diam_mm,center_x\na.npy,s,1,2\n").expect("w");
        let msg = PatchIndex::read(&p).expect_err("cols").to_string();
        assert!(
            msg.contains("idx.csv") && msg.contains("center_y, center_z, label"),
            "{msg}"
        );
    }

    #[test]
    fn bad_label_names_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("idx.csv");
        std::fs::write(dir.path().join("a.npy"), b"x").expect("w");
        std::fs::write(
            dir.path().join("float.csv"),
            "patch_file,seriesuid,diam_mm,center_x,center_y,center_z,label\na.npy,s,1,2,3,4,1.0\n",
        )
        .expect("w");
        assert_eq!(
            PatchIndex::read(&dir.path().join("float.csv")).expect("1.0").rows[0].label,
            1
        );
        std::fs::write(
            &p,
            "patch_file,seriesuid,diam_mm,center_x,center_y,center_z,label\na.npy,s,1,2,3,4,7\n",
        )
        .expect("w");
        let msg = PatchIndex::read(&p).expect_err("label").to_string();
        assert!(msg.contains("line 2") && msg.contains("label"), "{msg}");
    }
}
