//! The points to score straight from scans (`infer --scans DIR --candidates FILE`): LUNA16's
//! candidates format (`seriesuid, coordX, coordY, coordZ`, optional `class`), or our patch
//! index format (`patch_file, seriesuid, center_x, center_y, center_z`, optional `diam_mm`
//! and `label`). World millimetres in the scans' frame (LPS, as LUNA16 gives them).
//!
//! Each candidate gets a name that identifies it in the output: in the index format its
//! `patch_file` (so the rows equal those of scoring that prepared folder), in LUNA16's
//! `SERIESUID@X,Y,Z` with the coordinates as the file writes them; a row repeated in a
//! LUNA16 file (`candidates_V2.csv` has such rows) is scored each time, its repeats named
//! `…#2`, `…#3`, so that FROC counts every row. A row that cannot be scored (a blank
//! seriesuid, a coordinate that is not finite, a patch listed twice in an index) is refused
//! on its own, naming the file and line; a file that is not one of the two formats is an
//! error.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use models::{Error, Result};

/// The file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateFormat {
    /// `seriesuid, coordX, coordY, coordZ[, class]`.
    Luna16,
    /// `patch_file, seriesuid, center_x, center_y, center_z[, diam_mm, label]`.
    Index,
}

/// One point to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its name in the output (unique in the list).
    pub name: String,
    pub seriesuid: String,
    /// World mm (x, y, z).
    pub center: [f64; 3],
    pub diam_mm: Option<f64>,
    pub label: Option<u8>,
}

/// A candidates file read.
#[derive(Debug, Clone)]
pub struct CandidateList {
    pub path: PathBuf,
    pub format: CandidateFormat,
    /// Whether the file gives labels (`class` or `label`).
    pub has_label: bool,
    pub rows: Vec<Candidate>,
    /// Rows refused one by one: (name or `FILE line N`, reason).
    pub refused: Vec<(String, String)>,
}

fn bad(path: &Path, msg: String) -> Error {
    tables::Error::BadCsv {
        path: path.to_path_buf(),
        msg,
    }
    .into()
}

/// A 0/1 label as the file writes it (`0`, `1`, `0.0`, `1.0`; blank: none).
fn label_of(s: &str) -> std::result::Result<Option<u8>, String> {
    match s.trim() {
        "" => Ok(None),
        "0" | "0.0" => Ok(Some(0)),
        "1" | "1.0" => Ok(Some(1)),
        other => Err(format!("must be 0, 1 or empty, got {other:?}")),
    }
}

/// Which columns of a candidates file hold what.
struct Layout {
    format: CandidateFormat,
    /// The series and the centre's three columns, by name.
    cols: [&'static str; 4],
    /// The diameter's column (`""`: none in this format) and the label's, by name.
    value_cols: [&'static str; 2],
    /// The positions of `cols`.
    idx: Vec<usize>,
    name_col: Option<usize>,
    diam_col: Option<usize>,
    label_col: Option<usize>,
}

/// The layout of a candidates file from its header: LUNA16's or a patch index's.
fn layout(path: &Path, headers: &csv::StringRecord) -> Result<Layout> {
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (format, cols, value_cols) = if col("patch_file").is_some() {
        (
            CandidateFormat::Index,
            ["seriesuid", "center_x", "center_y", "center_z"],
            ["diam_mm", "label"],
        )
    } else {
        (
            CandidateFormat::Luna16,
            ["seriesuid", "coordX", "coordY", "coordZ"],
            ["", "class"],
        )
    };
    let idx: Vec<Option<usize>> = cols.iter().map(|c| col(c)).collect();
    let missing: Vec<&str> = cols
        .iter()
        .zip(&idx)
        .filter(|(_, i)| i.is_none())
        .map(|(c, _)| *c)
        .collect();
    if !missing.is_empty() {
        return Err(bad(
            path,
            format!(
                "missing column(s) {} (a candidates file is LUNA16's seriesuid, coordX, coordY, coordZ[, class] \
                 or a patch index: patch_file, seriesuid, center_x, center_y, center_z; found {})",
                missing.join(", "),
                headers.iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(Layout {
        format,
        cols,
        value_cols,
        idx: idx.into_iter().flatten().collect(),
        name_col: col("patch_file"),
        diam_col: (!value_cols[0].is_empty()).then(|| col(value_cols[0])).flatten(),
        label_col: col(value_cols[1]),
    })
}

/// A row's centre (world mm), diameter (mm) and label.
type RowValues = ([f64; 3], Option<f64>, Option<u8>);

/// A row's centre, diameter and label, or why the row is refused.
fn values(
    texts: &[&str; 3],
    diam: Option<&str>,
    label: Option<&str>,
    cols: [&str; 4],
    value_cols: [&str; 2],
) -> std::result::Result<RowValues, String> {
    let mut center = [0f64; 3];
    for k in 0..3 {
        match texts[k].parse::<f64>() {
            Ok(v) if v.is_finite() => center[k] = v,
            _ => return Err(format!("{} is not a finite number: {:?}", cols[k + 1], texts[k])),
        }
    }
    let diam_mm = match diam {
        None | Some("") => None,
        Some(t) => match t.parse::<f64>() {
            Ok(v) if v.is_finite() => Some(v),
            _ => return Err(format!("diam_mm is not a finite number: {t:?}")),
        },
    };
    let label = label
        .map(label_of)
        .transpose()
        .map_err(|why| format!("{} {why}", value_cols[1]))?
        .flatten();
    Ok((center, diam_mm, label))
}

/// Reads a candidates file in either format (told apart by its header).
pub fn read(path: &Path) -> Result<CandidateList> {
    let (mut rdr, headers) = tables::csvio::open(path, true)?;
    let Layout {
        format,
        cols,
        value_cols,
        idx,
        name_col,
        diam_col,
        label_col,
    } = layout(path, &headers)?;
    let mut out = CandidateList {
        path: path.to_path_buf(),
        format,
        has_label: label_col.is_some(),
        rows: Vec::new(),
        refused: Vec::new(),
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut repeats: HashMap<String, usize> = HashMap::new();
    for (line, rec) in tables::csvio::rows(&mut rdr) {
        let rec = rec.map_err(|e| tables::Error::row(path, line, e))?;
        let field = |i: usize| rec.get(i).unwrap_or("").trim();
        let at = format!("{} line {line}", path.display());
        let uid = field(idx[0]).to_string();
        let texts = [field(idx[1]), field(idx[2]), field(idx[3])];
        let base_name = match name_col {
            Some(c) => field(c).to_string(),
            None => format!("{uid}@{},{},{}", texts[0], texts[1], texts[2]),
        };
        let shown = if base_name.is_empty() {
            at.clone()
        } else {
            base_name.clone()
        };
        let mut refuse = |why: String| out.refused.push((shown.clone(), format!("{at}: {why}")));
        if name_col.is_some() && base_name.is_empty() {
            refuse("empty patch_file".into());
            continue;
        }
        if uid.is_empty() {
            refuse("blank seriesuid: which scan is this point in?".into());
            continue;
        }
        let (center, diam_mm, label) = match values(&texts, diam_col.map(field), label_col.map(field), cols, value_cols) {
            Ok(v) => v,
            Err(why) => {
                refuse(why);
                continue;
            }
        };
        let name = if name_col.is_some() {
            if let Some(first) = seen.get(&base_name) {
                refuse(format!("listed again (first on line {first})"));
                continue;
            }
            base_name
        } else {
            // The same point again: scored again, under a name of its own.
            let k = repeats.entry(base_name.clone()).or_insert(0);
            *k += 1;
            if *k == 1 {
                base_name
            } else {
                format!("{base_name}#{k}")
            }
        };
        seen.insert(name.clone(), line);
        out.rows.push(Candidate {
            name,
            seriesuid: uid,
            center,
            diam_mm,
            label,
        });
    }
    if out.rows.is_empty() && out.refused.is_empty() {
        return Err(bad(path, "no candidates (the file has a header and no rows)".into()));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<CandidateList> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.csv");
        std::fs::write(&p, text).unwrap();
        read(&p)
    }

    #[test]
    fn luna16_rows_are_named_by_series_and_point_and_repeats_kept() {
        let l = read_text(
            "seriesuid,coordX,coordY,coordZ,class\n\
             1.2.3,-56.08,-67.85,-311.92,0\n\
             1.2.3,-56.08,-67.85,-311.92,0\n\
             1.2.3,10,20,30,1\n\
             ,1,2,3,0\n\
             9.9,nan,2,3,0\n\
             9.9,1,2,3,2\n",
        )
        .unwrap();
        assert_eq!(l.format, CandidateFormat::Luna16);
        assert!(l.has_label);
        let names: Vec<&str> = l.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "1.2.3@-56.08,-67.85,-311.92",
                "1.2.3@-56.08,-67.85,-311.92#2",
                "1.2.3@10,20,30"
            ]
        );
        assert_eq!(l.rows[2].label, Some(1));
        assert_eq!(l.rows[2].center, [10.0, 20.0, 30.0]);
        let why: Vec<&str> = l.refused.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(
            why[0].contains("line 5") && why[0].contains("blank seriesuid"),
            "{why:?}"
        );
        assert!(why[1].contains("coordX is not a finite number"), "{why:?}");
        assert!(why[2].contains("class must be 0, 1 or empty"), "{why:?}");
    }

    #[test]
    fn index_rows_keep_their_patch_names_and_a_repeat_is_refused() {
        let l = read_text(
            "patch_file,seriesuid,diam_mm,center_x,center_y,center_z,label\n\
             patches/a/pos_0001.npy,a,5.5,1,2,3,1\n\
             patches/a/pos_0001.npy,a,5.5,1,2,3,1\n",
        )
        .unwrap();
        assert_eq!(l.format, CandidateFormat::Index);
        assert_eq!(l.rows.len(), 1);
        assert_eq!(l.rows[0].diam_mm, Some(5.5));
        assert!(l.refused[0].1.contains("listed again (first on line 2)"));
        let e = read_text("seriesuid,x,y,z\n1,2,3,4\n").unwrap_err().to_string();
        assert!(e.contains("missing column(s) coordX, coordY, coordZ"), "{e}");
    }
}
