//! Opening the CSV files every stage reads (indexes, scores, LUNA16 files) with one error
//! style: an I/O problem or a malformed header names the file.
use std::path::Path;

use crate::{Error, Result};

/// A reader that turns each `\r\n` into `\n`. The csv crate reads Windows line ends (as
/// Python's csv module writes them by default) but counts the line a record starts on one
/// short after every `\r\n`, so every message would name the line above the one at fault;
/// no kept crate offers the conversion as a `Read` adapter, and it is a few lines.
#[derive(Debug)]
pub struct Lf<R> {
    inner: std::io::BufReader<R>,
}

impl<R: std::io::Read> std::io::Read for Lf<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead;
        let mut w = 0;
        while w < buf.len() {
            let avail = self.inner.fill_buf()?;
            let Some(&first) = avail.first() else { break };
            if first == b'\r' {
                // Drop it when a `\n` follows (looking past the buffered bytes if need be).
                let lf_next = match avail.get(1) {
                    Some(&b) => b == b'\n',
                    None => {
                        self.inner.consume(1);
                        if self.inner.fill_buf()?.first() == Some(&b'\n') {
                            continue;
                        }
                        buf[w] = b'\r';
                        w += 1;
                        continue;
                    }
                };
                self.inner.consume(1);
                if !lf_next {
                    buf[w] = b'\r';
                    w += 1;
                }
                continue;
            }
            let room = buf.len() - w;
            let run = avail
                .iter()
                .take(room)
                .position(|&c| c == b'\r')
                .unwrap_or(avail.len().min(room));
            buf[w..w + run].copy_from_slice(&avail[..run]);
            self.inner.consume(run);
            w += run;
        }
        Ok(w)
    }
}

/// The reader [`open`] gives.
pub type CsvReader = csv::Reader<Lf<std::fs::File>>;

/// Opens `path` (a regular file: see [`files::open_regular`]; fields trimmed, every
/// row as long as the header (a ragged row is an error naming its line: a field with an
/// unquoted comma shifts the columns after it), Windows line ends read as Unix ones) and reads its header row when
/// `has_headers`.
pub fn open(path: &Path, has_headers: bool) -> Result<(CsvReader, csv::StringRecord)> {
    let file = Lf {
        inner: std::io::BufReader::new(files::open_regular(path)?),
    };
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .has_headers(has_headers)
        .from_reader(file);
    let headers = if has_headers {
        rdr.headers()
            .map_err(|source| Error::Header {
                path: path.to_path_buf(),
                source,
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
        // Windows line ends (Python's csv module writes them by default): the same lines.
        std::fs::write(&p, "a,b\r\n1,\"two\r\nlines\"\r\n3,4\r\n5,6\r\n").expect("w");
        let (mut r, _) = open(&p, true).expect("open");
        let got: Vec<(usize, String)> = rows(&mut r)
            .map(|(l, rec)| (l, rec.expect("row")[0].to_string()))
            .collect();
        assert_eq!(got, [(2, "1".to_string()), (4, "3".to_string()), (5, "5".to_string())]);
    }

    /// A ragged row read through the patch index is `Error::Row`: the file and the line a
    /// caller can match on, csv's own error as the source, and the message unchanged
    /// (`PATH: line N: REASON`).
    #[test]
    fn a_row_the_reader_refuses_is_matched_by_file_and_line() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("scores.csv");
        std::fs::write(&p, "patch_file,seriesuid,label,logit
a.npy,s1,0,0.5
b.npy,s1,x,0,9
").expect("w");
        let e = crate::scores::ScoreTable::read(&p, &crate::scores::Columns::default()).expect_err("ragged");
        match &e {
            Error::Row { path, line, source } => {
                assert_eq!((path.as_path(), *line), (p.as_path(), 3));
                assert!(std::error::Error::source(&e).is_some());
                assert_eq!(e.to_string(), format!("{}: line 3: {source}", p.display()));
            }
            other => panic!("not a Row error: {other:?}"),
        }
    }

    /// `\r\n` becomes `\n` wherever the reads split it; a lone `\r` stays.
    #[test]
    fn crlf_becomes_lf_across_any_read_size() {
        use std::io::Read;
        let text = b"a\r\nb\rc\r\n\r\nd\r";
        for size in 1..8 {
            let mut r = Lf {
                inner: std::io::BufReader::with_capacity(size, &text[..]),
            };
            let mut out = Vec::new();
            let mut buf = vec![0u8; size];
            loop {
                let n = r.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, b"a\nb\rc\n\nd\r", "size {size}");
        }
    }
}
