//! Opening the CSV files every stage reads (indexes, scores, LUNA16 files) with one error
//! style: an I/O problem or a malformed header names the file.
use std::path::Path;

use crate::{Error, Result};

/// Opens `path` (a regular file: see [`crate::fsutil::open_regular`]; fields trimmed, rows
/// may vary in length) and reads its header row when `has_headers`.
pub fn open(path: &Path, has_headers: bool) -> Result<(csv::Reader<std::fs::File>, csv::StringRecord)> {
    let file = crate::fsutil::open_regular(path)?;
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .has_headers(has_headers)
        .from_reader(file);
    let headers = if has_headers {
        rdr.headers()
            .map_err(|e| Error::BadCsv {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?
            .clone()
    } else {
        csv::StringRecord::new()
    };
    Ok((rdr, headers))
}

/// The rows of `rdr`, each with the line of the file it starts on as the csv crate counts
/// lines: a row's index is not its line when a quoted field spans lines, and a message must
/// point at the line a user's editor shows. (Blank lines, which the reader skips, are not
/// counted by the crate: after one, the line named is one short.)
pub fn rows<R: std::io::Read>(
    rdr: &mut csv::Reader<R>,
) -> impl Iterator<Item = (usize, csv::Result<csv::StringRecord>)> + '_ {
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let mut rec = csv::StringRecord::new();
        let at = rdr.position().line();
        let (line, item) = match rdr.read_record(&mut rec) {
            Ok(false) => return None,
            Ok(true) => (rec.position().map_or(at, |p| p.line()), Ok(rec)),
            Err(e) => {
                failed = true;
                (e.position().map_or(at, |p| p.line()), Err(e))
            }
        };
        Some((usize::try_from(line).unwrap_or(usize::MAX), item))
    })
}

/// The names in `want` that the header lacks.
pub fn missing<'a>(headers: &csv::StringRecord, want: &[&'a str]) -> Vec<&'a str> {
    want.iter()
        .copied()
        .filter(|c| !headers.iter().any(|h| h == *c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_file_and_the_missing_columns() {
        let d = tempfile::tempdir().expect("tmp");
        let msg = open(&d.path().join("absent.csv"), true)
            .expect_err("absent")
            .to_string();
        assert!(msg.contains("absent.csv"), "{msg}");
        let p = d.path().join("x.csv");
        std::fs::write(&p, "a, b\n1,2\n").expect("w");
        let (_, h) = open(&p, true).expect("open");
        assert_eq!(missing(&h, &["a", "b", "c"]), ["c"]);
    }

    #[test]
    fn rows_carry_the_line_they_start_on() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("x.csv");
        std::fs::write(&p, "a,b\n1,\"two\nlines\"\n3,4\n5,6\n").expect("w");
        let (mut r, _) = open(&p, true).expect("open");
        let got: Vec<(usize, String)> = rows(&mut r)
            .map(|(l, rec)| (l, rec.expect("row")[0].to_string()))
            .collect();
        assert_eq!(got, [(2, "1".to_string()), (4, "3".to_string()), (5, "5".to_string())]);
    }
}
