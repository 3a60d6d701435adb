//! The output formats: one row per scored patch in CSV or JSONL with every column, or the
//! LUNA16 submission format; rows are formatted batch by batch and streamed to a
//! [`files::Sink`].
/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr, strum::EnumMessage)]
#[strum(serialize_all = "kebab-case")]
pub enum Format {
    /// One row per patch with every column.
    Csv,
    /// One JSON object per line with the same fields.
    Jsonl,
    /// LUNA16 submission format `seriesuid,coordX,coordY,coordZ,probability` (needs an
    /// index with world coordinates; probability is the calibrated one when calibrated).
    Luna16,
}

/// Whether the first bytes of a file are one of our score outputs (any format): what a run
/// may replace at its output path.
pub(crate) fn is_scores(head: &[u8]) -> bool {
    head.starts_with(b"patch_file,")
        || head.starts_with(b"candidate,")
        || head.starts_with(b"{\"candidate\"")
        || head.starts_with(b"seriesuid,coordX,coordY,coordZ,probability")
        || head.starts_with(b"{\"patch_file\"")
}

/// One scored patch, with every output column.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct OutRow<'a> {
    /// The row's name: a patch file's, or (scored from scans with LUNA16's candidates) the
    /// candidate's; one of the two is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) patch_file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) candidate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seriesuid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) diam_mm: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) center_x: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) center_y: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) center_z: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) label: Option<Option<u8>>,
    pub(crate) logit: f32,
    pub(crate) probability: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) calibrated_probability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) decision: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) operating_point: Option<&'a str>,
    pub(crate) model_sha256: &'a str,
    /// sha256 of what was read from the patch file (its header's description and the
    /// cropped voxels: `models::patch::load_patch_hashed`): `--resume` keeps a row only for
    /// the same input.
    pub(crate) input_sha256: &'a str,
}

/// Which optional columns a run's rows carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Columns {
    /// The index's columns (series, diameter, centre): inputs from an index or from scans.
    pub(crate) index: bool,
    /// The label (an index with labels).
    pub(crate) label: bool,
    /// The calibrated probability, decision and operating point.
    pub(crate) calibrated: bool,
}

/// The CSV header for the rows a run writes (the order of [`OutRow`]'s fields).
/// `name` is the first column's: `patch_file`, or `candidate` for LUNA16's candidates
/// scored from scans.
pub(crate) fn csv_header(format: Format, name: &'static str, cols: Columns) -> Vec<&'static str> {
    if format == Format::Luna16 {
        return vec!["seriesuid", "coordX", "coordY", "coordZ", "probability"];
    }
    let mut h = vec![name];
    if cols.index {
        h.extend(["seriesuid", "diam_mm", "center_x", "center_y", "center_z"]);
        if cols.label {
            h.push("label");
        }
    }
    h.extend(["logit", "probability"]);
    if cols.calibrated {
        h.extend(["calibrated_probability", "decision", "operating_point"]);
    }
    h.extend(["model_sha256", "input_sha256"]);
    h
}

/// Formats one batch's rows; the text goes to the sink in one write. An error is the
/// encoder's (serde_json's or csv's), kept for [`crate::InferError::Output`].
pub(crate) fn format_rows(
    format: Format,
    rows: &[OutRow],
    out: &mut Vec<u8>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match format {
        Format::Jsonl => {
            for row in rows {
                serde_json::to_writer(&mut *out, row)?;
                out.push(b'\n');
            }
            Ok(())
        }
        Format::Csv | Format::Luna16 => {
            let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(&mut *out);
            for row in rows {
                let r = if format == Format::Csv {
                    w.serialize(row)
                } else {
                    w.serialize((
                        row.seriesuid.unwrap_or_default(),
                        row.center_x.unwrap_or(f64::NAN),
                        row.center_y.unwrap_or(f64::NAN),
                        row.center_z.unwrap_or(f64::NAN),
                        row.calibrated_probability.unwrap_or(row.probability),
                    ))
                };
                r?;
            }
            Ok(w.flush()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_follows_the_row_fields() {
        assert_eq!(
            csv_header(Format::Csv, "patch_file", Columns::default()),
            ["patch_file", "logit", "probability", "model_sha256", "input_sha256"]
        );
        let all = Columns {
            index: true,
            label: true,
            calibrated: true,
        };
        assert_eq!(csv_header(Format::Csv, "candidate", all).len(), 14);
    }
}
