//! Scoring spread over a job array: `infer --shard K/N` scores the K-th of N contiguous parts
//! of the inputs (in their sorted order, so every task computes the same parts), and
//! `infer merge` joins the parts' outputs into what one run would have written, byte for byte.
//!
//! Each shard's output gets a record beside it, `OUT.shard.yaml`: which part of how many,
//! of which inputs (the sha256 of every input's name, in order), scored by which model and
//! calibration into which format, and how many rows it holds. `merge` refuses shards that
//! disagree on any of these, a part missing or given twice, parts that do not tile the
//! inputs, a row count that differs from its record, and a patch scored twice.
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::inputs::{Inputs, Item};
use crate::InferError;

/// The most parts a run may be cut into.
pub const MAX_SHARDS: usize = 100_000;

/// Part `k` (1-based) of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s}: K/N expected, such as 2/8"))?;
        let (k, n): (usize, usize) = (
            k.trim()
                .parse()
                .map_err(|_| format!("--shard {s}: K is not a whole number"))?,
            n.trim()
                .parse()
                .map_err(|_| format!("--shard {s}: N is not a whole number"))?,
        );
        if !(1..=MAX_SHARDS).contains(&n) || !(1..=n).contains(&k) {
            return Err(format!("--shard {s}: 1 <= K <= N <= {MAX_SHARDS} (K counts from 1)"));
        }
        Ok(Shard { k, n })
    }
}

/// What a shard's output holds (`OUT.shard.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub shard: usize,
    pub of: usize,
    /// Inputs of the whole run, and the sha256 of their names in order.
    pub inputs: usize,
    pub inputs_sha256: String,
    /// This part: inputs `first..end` of the whole run.
    pub first: usize,
    pub end: usize,
    /// Rows in the output (scored patches; failed ones are in the errors file).
    pub rows: usize,
    pub failed: usize,
    pub model_sha256: String,
    /// The calibration file's sha256, `model` for the model's own, or `none`.
    pub calibration: String,
    pub format: String,
    pub header: Vec<String>,
    /// `--tta` of the run (`none` or `flips`): shards scored otherwise are not merged.
    pub tta: String,
    /// sha256 of the output file this record describes: the output and its record are one
    /// commit only when this matches (a shard killed between writing its output and its
    /// record, or rerun with other settings, leaves a pair that `merge` refuses).
    pub output_sha256: String,
}

/// The record's path beside an output.
pub fn record_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".shard.yaml");
    PathBuf::from(s)
}

/// The inputs' identity: sha256 of their names in order, one per line.
pub fn inputs_sha256(inputs: &Inputs) -> String {
    let mut text = String::new();
    for it in &inputs.items {
        text += &it.name;
        text.push('\n');
    }
    files::sha256_bytes(text.as_bytes())
}

/// Keeps part `shard` of the inputs: items `[(k−1)·n/N, k·n/N)` of the sorted list (from
/// scans: the items of scans `[(k−1)·S/N, k·S/N)`, whole scans per part); the
/// entries refused while collecting are reported by part 1 only. Returns the part's range
/// and the whole run's size and identity.
pub fn select(inputs: &mut Inputs, shard: Shard) -> (usize, usize, usize, String) {
    let n = inputs.items.len();
    let sha = inputs_sha256(inputs);
    // From scans: whole scans per part (each scan read by one task only).
    let (first, end) = if inputs.scans.is_some() {
        shard_range(&inputs.items, shard.k, shard.n)
    } else {
        ((shard.k - 1) * n / shard.n, shard.k * n / shard.n)
    };
    inputs.items = inputs.items[first..end].to_vec();
    if shard.k != 1 {
        inputs.refused.clear();
    }
    (first, end, n, sha)
}

/// The patch each row of an output body (rows only) scores: CSV records (quoted fields,
/// newlines inside them, as the csv writer writes them), JSON lines' `patch_file`; a LUNA16
/// row names no patch (`None`).
pub(crate) fn patches_of(body: &[u8], format: &str) -> Result<Vec<Option<String>>, String> {
    match format {
        "jsonl" => body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(i, l)| {
                let v: serde_json::Value =
                    serde_json::from_slice(l).map_err(|e| format!("row {}: not JSON: {e}", i + 1))?;
                Ok(v.get("patch_file")
                    .or_else(|| v.get("candidate"))
                    .and_then(|p| p.as_str())
                    .map(str::to_string))
            })
            .collect(),
        _ => {
            let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(body);
            let luna = format == "luna16";
            r.records()
                .enumerate()
                .map(|(i, rec)| {
                    let rec = rec.map_err(|e| format!("row {}: {e}", i + 1))?;
                    Ok((!luna).then(|| rec.get(0).unwrap_or("").to_string()))
                })
                .collect()
        }
    }
}

/// What [`merge`] did.
#[derive(Debug, Clone)]
pub struct Merged {
    pub shards: usize,
    pub rows: usize,
    pub failed: usize,
}

/// A merge's output policy: its parts and their records are inputs, the merged output is
/// one of ours (or new) and is locked while it is written. `kind` names the parts
/// (`shard`, `fold`).
pub(crate) fn open_merge(
    parts: &[PathBuf],
    records: &[PathBuf],
    out: &Path,
    kind: &str,
) -> Result<Option<files::Lock>, InferError> {
    let mut io = files::RunIo::new();
    io.inputs(&format!("{kind} output"), parts.iter().map(PathBuf::as_path));
    io.inputs(&format!("{kind} record"), records.iter().map(PathBuf::as_path));
    let target = io.output("merged output", out)?;
    files::check_replaceable(out, "scores output", &crate::output::is_scores)?;
    Ok(match &target {
        files::Target::File(p) => Some(files::Lock::beside(p, &format!("output {}", out.display()))?),
        files::Target::Stream(_) => None,
    })
}

/// A part's rows, read whole and checked against its record: the output the record
/// describes (`output_sha256`), under the record's header (none for JSON lines). `kind`
/// and `record` name the part and its record in messages.
pub(crate) fn checked_body(
    part: &Path,
    record: &Path,
    output_sha256: &str,
    header: Option<&str>,
    kind: &str,
) -> Result<Vec<u8>, InferError> {
    let bytes = files::read_regular(part)?;
    if files::sha256_bytes(&bytes) != output_sha256 {
        return Err(crate::bad_input(
            part,
            format!(
                "not the output its record {} describes (changed since, or the record of another run: \
                 a {kind} killed between writing the two?); score this {kind} again",
                record.display()
            ),
        ));
    }
    let Some(header) = header else {
        return Ok(bytes);
    };
    let end = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1);
    if bytes[..end].strip_suffix(b"\n").unwrap_or(&bytes[..end]) != header.as_bytes() {
        return Err(crate::bad_input(part, "its header is not its record's"));
    }
    Ok(bytes[end..].to_vec())
}

/// Refuses a part whose record disagrees with the first part's: each `(what, agrees)`;
/// `not_one` says what the parts then are not (`shards of one run`…).
pub(crate) fn agree(part: &Path, first: &Path, checks: &[(&str, bool)], not_one: &str) -> Result<(), InferError> {
    match checks.iter().find(|(_, same)| !same) {
        Some((what, _)) => Err(crate::bad_input(
            part,
            format!("{what} differ from {}'s: {not_one}", first.display()),
        )),
        None => Ok(()),
    }
}

/// Refuses parts numbered otherwise than 1..=n once each: `numbers` holds each part's number
/// and path; `kind` names them (`shard`, `fold`).
pub(crate) fn each_once(numbers: &[(usize, &PathBuf)], n: usize, kind: &str) -> Result<(), InferError> {
    for k in 1..=n {
        let given: Vec<&PathBuf> = numbers.iter().filter(|(i, _)| *i == k).map(|(_, p)| *p).collect();
        match given.len() {
            1 => {}
            0 => return Err(InferError::Usage(format!("{kind} {k} of {n} is missing"))),
            _ => {
                return Err(InferError::Usage(format!(
                    "{kind} {k} of {n} is given twice: {} and {}",
                    given[0].display(),
                    given[1].display()
                )))
            }
        }
    }
    Ok(())
}

/// Writes the merged output atomically: the header once (none for JSON lines), then the
/// parts' rows in order, byte for byte.
pub(crate) fn write_merged(out: &Path, header: Option<&str>, bodies: &[Vec<u8>]) -> Result<(), InferError> {
    files::write_atomic_with(out, |w| {
        if let Some(h) = header {
            writeln!(w, "{h}")?;
        }
        for body in bodies {
            w.write_all(body)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Joins shard outputs into `out` (see the module documentation), atomically.
pub fn merge(shards: &[PathBuf], out: &Path) -> Result<Merged, InferError> {
    let records: Vec<PathBuf> = shards.iter().map(|p| record_path(p)).collect();
    let _lock = open_merge(shards, &records, out, "shard")?;
    let mut parts: Vec<(Record, &PathBuf)> = Vec::with_capacity(shards.len());
    for (p, r) in shards.iter().zip(&records) {
        let text = files::read_regular_to_string(r).map_err(|e| {
            crate::bad_input(
                p,
                format!("no shard record beside it ({e}): was it written by `infer --shard K/N`?"),
            )
        })?;
        let rec: Record = yaml_serde::from_str(&text).map_err(|e| InferError::from(files::Error::parse(r, "not a shard record", e)))?;
        parts.push((rec, p));
    }
    let Some((first, first_path)) = parts.first().map(|(r, p)| (r.clone(), (*p).clone())) else {
        return Err(InferError::Usage("infer merge needs the shard outputs".into()));
    };
    for (r, p) in &parts {
        agree(
            p,
            &first_path,
            &[
                ("the number of shards", r.of == first.of),
                (
                    "the inputs",
                    r.inputs_sha256 == first.inputs_sha256 && r.inputs == first.inputs,
                ),
                ("the model", r.model_sha256 == first.model_sha256),
                ("the test-time augmentation (--tta)", r.tta == first.tta),
                ("the calibration", r.calibration == first.calibration),
                (
                    "the output format",
                    r.format == first.format && r.header == first.header,
                ),
            ],
            "shards of different runs",
        )?;
    }
    parts.sort_by_key(|(r, _)| r.shard);
    let numbers: Vec<(usize, &PathBuf)> = parts.iter().map(|(r, p)| (r.shard, *p)).collect();
    each_once(&numbers, first.of, "shard")?;
    let mut at = 0;
    for (r, p) in &parts {
        if r.first != at || r.end < r.first {
            return Err(crate::bad_input(
                p,
                format!(
                    "holds inputs {}..{} where {at} was next: the shards do not tile the inputs",
                    r.first, r.end
                ),
            ));
        }
        at = r.end;
    }
    if at != first.inputs {
        return Err(InferError::Usage(format!(
            "the shards cover {at} of {} inputs",
            first.inputs
        )));
    }
    let joined = first.header.join(",");
    let header = (first.format != "jsonl").then_some(joined.as_str());
    // Every part is read whole, checked against its record (digest, rows), and its rows
    // copied byte for byte: the merge is then what one run writes.
    let mut bodies = Vec::with_capacity(parts.len());
    for (r, p) in &parts {
        bodies.push(checked_body(p, &record_path(p), &r.output_sha256, header, "shard")?);
    }
    let mut seen = HashSet::new();
    let mut rows = 0;
    for ((r, p), body) in parts.iter().zip(&bodies) {
        let names = patches_of(body, &first.format).map_err(|e| crate::bad_input(p, e))?;
        if names.len() != r.rows {
            return Err(crate::bad_input(p, format!("{} rows where its record says {}", names.len(), r.rows)));
        }
        // Parts tile the inputs, so a patch in two parts means parts of different runs.
        // (A LUNA16 submission names no patch: its rows may repeat within one run.)
        for n in names.into_iter().flatten() {
            if !seen.insert(n.clone()) {
                return Err(crate::bad_input(p, format!("{n} is scored twice")));
            }
        }
        rows += r.rows;
    }
    write_merged(out, header, &bodies)?;
    Ok(Merged {
        shards: parts.len(),
        rows,
        failed: parts.iter().map(|(r, _)| r.failed).sum(),
    })
}

/// Writes a shard's record beside its output.
pub fn write_record(out: &Path, rec: &Record) -> Result<(), InferError> {
    let text = yaml_serde::to_string(rec).map_err(|e| crate::output_err(out, e))?;
    files::write_atomic(&record_path(out), text.as_bytes())?;
    Ok(())
}

/// Part `k` of `n` of a run from scans: whole scans, `[(k−1)·S/N, k·S/N)` of the S scans in
/// order; returns the items' range.
pub(crate) fn shard_range(items: &[Item], k: usize, n: usize) -> (usize, usize) {
    let refs: Vec<&Item> = items.iter().collect();
    let starts: Vec<usize> = crate::inputs::scan_groups(&refs)
        .iter()
        .scan(0usize, |at, g| {
            let s = *at;
            *at += g.len();
            Some(s)
        })
        .collect();
    let s = starts.len();
    let bound = |j: usize| if j >= s { items.len() } else { starts[j] };
    (bound((k - 1) * s / n), bound(k * s / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_tile_the_inputs() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { k: 2, n: 3 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", "1/100001"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        // Every split of every size covers each input exactly once, in order.
        for n in 0..40 {
            for parts in 1..8 {
                let mut next = 0;
                for k in 1..=parts {
                    let (a, b) = ((k - 1) * n / parts, k * n / parts);
                    assert_eq!(a, next);
                    next = b;
                }
                assert_eq!(next, n);
            }
        }
    }
}
