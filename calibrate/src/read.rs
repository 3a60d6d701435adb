//! Reading what is calibrated from patches: a labelled patch index scored through ONNX
//! Runtime ([`scorer::Scorer`]) into a [`ScoreTable`] (a scores CSV is read by
//! [`ScoreTable::read`], in `tables`). Every problem names the file, before anything is fitted.
use std::path::Path;

use tables::scores::ScoreTable;

use crate::CalError;

/// "This input is bad, and here is why": [`files::Error::bad_input`], the one constructor.
pub(crate) fn input_err(path: &Path, msg: String) -> CalError {
    files::Error::bad_input(path, msg).into()
}

/// Site recalibration: scores a labelled patch index (or folder with
/// `patch_index.csv`) with `model` through ONNX Runtime. Unreadable patches are
/// errors here: calibrating on a silently shrunken set would mislead.
/// A model with tabular features reads them from the index's rows (and `features_csv`
/// by series); a patch without a usable value is an error like an unreadable one.
pub fn from_patches(
    model: &Path,
    index: &Path,
    features_csv: Option<&Path>,
    opts: &scorer::ScorerOptions,
) -> Result<ScoreTable, CalError> {
    let idx = tables::index::read_scoring_index(index)?;
    if !idx.has_label {
        return Err(input_err(
            index,
            "the index has no `label` column: calibration needs labelled patches".into(),
        ));
    }
    let mut scorer = scorer::Scorer::open(model, opts)?;
    let pre = scorer.preprocess.clone();
    let mut t = ScoreTable {
        source: index.to_path_buf(),
        ..Default::default()
    };
    let (root, rows) = (&idx.root, &idx.rows);
    let mut errors: Vec<String> = idx.refused.iter().map(|(_, why)| why.clone()).collect();
    // A model with tabular features: each patch's values, from the index's columns.
    let feats = match &scorer.features {
        Some(columns) => {
            let keys: Vec<(&str, &str)> = rows
                .iter()
                .map(|r| (r.patch_file.as_str(), r.seriesuid.as_str()))
                .collect();
            let src = models::features::FeatureSource {
                columns: columns.clone(),
                join: features_csv.map(Path::to_path_buf),
            };
            Some(models::features::read(&idx.path, &keys, &src)?)
        }
        None => None,
    };
    let per = pre.cube_size.pow(3);
    let mut batch = Vec::new();
    let mut fbatch = Vec::new();
    for (c, chunk) in rows.chunks(32).enumerate() {
        batch.clear();
        fbatch.clear();
        let mut good = Vec::with_capacity(chunk.len());
        for (k, r) in chunk.iter().enumerate() {
            let f = match feats.as_ref().map(|f| &f[c * 32 + k]) {
                Some(Err(why)) => {
                    errors.push(why.clone());
                    continue;
                }
                Some(Ok(v)) => v.as_slice(),
                None => &[],
            };
            let path = root.join(&r.patch_file);
            let at = batch.len();
            batch.resize(at + per, 0.0);
            match models::patch::load_patch_into(&path, &pre, &mut batch[at..]) {
                Ok(()) => {
                    good.push(r);
                    fbatch.extend_from_slice(f);
                }
                Err(e) => {
                    batch.truncate(at);
                    errors.push(e.to_string());
                }
            }
        }
        let f = feats.is_some().then_some(fbatch.as_slice());
        for (r, z) in good.into_iter().zip(scorer.score_flat_with(&batch, f)?) {
            if !z.is_finite() {
                errors.push(format!(
                    "{}: the model's logit is {z} (not finite)",
                    root.join(&r.patch_file).display()
                ));
                continue;
            }
            let y = r
                .label
                .ok_or_else(|| input_err(index, format!("{}: no label", r.patch_file)))?;
            t.logits.push(f64::from(z));
            t.labels.push(y);
            t.seriesuid.push(r.seriesuid.clone());
        }
    }
    if !errors.is_empty() {
        return Err(input_err(
            index,
            format!(
                "{} patch(es) could not be scored:\n  {}",
                errors.len(),
                errors.join("\n  ")
            ),
        ));
    }
    t.check(index)?;
    Ok(t)
}
