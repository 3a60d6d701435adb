//! The decode → score pipeline of a run: a producer thread decodes and preprocesses the next
//! batch (in parallel, rayon) straight into a batch buffer laid out as the model's input
//! while the session scores the current one; the scoring thread only runs the session and
//! formats rows ([`score_all`]). A channel of capacity one and recycled batch buffers bound
//! what is in flight. A logit that is not finite is that file's error, never a probability
//! or a decision.
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use ndarray::{Array3, ArrayView3, Axis};
use rayon::prelude::*;

use metrics::sigmoid;
use scorer::Scorer;

use crate::calib::Cal;
use crate::inputs::{Decoded, Item};
use crate::output::{format_rows, OutRow};
use crate::settings::{Settings, Tta};
use crate::sink::Out;
use crate::InferError;

/// The 8 flip combinations of a cube (identity first).
pub(crate) fn flips(c: ArrayView3<f32>) -> Vec<Array3<f32>> {
    (0..8u8)
        .map(|mask| {
            let mut v = c.view();
            for axis in 0..3 {
                if mask & (1 << axis) != 0 {
                    v.invert_axis(Axis(axis));
                }
            }
            v.as_standard_layout().into_owned()
        })
        .collect()
}

/// What the scoring loop did.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) scored: usize,
    pub(crate) positives: usize,
    /// (name, reason) of every file that could not be scored.
    pub(crate) errors: Vec<(String, String)>,
    pub(crate) pipeline_seconds: f64,
    pub(crate) model_seconds: f64,
    /// When the first batch reached the scoring thread, from the pipeline's start.
    pub(crate) first_batch_seconds: Option<f64>,
    /// The last line printed: the same reason for the same path (every candidate of a scan
    /// that cannot be read) is printed once, and listed for each in the errors file.
    pub(crate) last_shown: String,
}

impl Tally {
    /// Records a file that could not be scored (printed as `path: reason`).
    pub(crate) fn fail(&mut self, name: &str, shown: &Path, why: String) {
        let line = format!("{}: {why}", shown.display());
        if line != self.last_shown {
            eprintln!("{line}");
            self.last_shown = line;
        }
        self.errors.push((name.to_string(), why));
    }
}

/// What the scoring loop needs besides the items.
pub(crate) struct Scoring<'a> {
    pub(crate) s: &'a Settings,
    /// Each item's tabular features (a model with them), by output name.
    pub(crate) feats: Option<&'a HashMap<String, Vec<f32>>>,
    pub(crate) cal: Option<&'a Cal>,
    pub(crate) has_label: bool,
    pub(crate) sha: &'a str,
    pub(crate) pb: &'a indicatif::ProgressBar,
    /// Cutting from scans (`--scans`), else decoding files.
    pub(crate) feed: Option<crate::from_scans::Feed<'a>>,
}

/// Decodes on a producer thread, scores on this one, formats rows into `out`. Returns an
/// error only for what stops the whole run (fail-fast, the session failing, the output).
pub(crate) fn score_all(todo: &[&Item], scorer: &mut Scorer, c: &Scoring, out: &mut Out, t: &mut Tally) -> Result<(), InferError> {
    let s = c.s;
    let op = c.cal.and_then(Cal::operating_point);
    // Rows name LUNA16's candidates in a `candidate` column, anything else as `patch_file`.
    let scan_candidate = c.feed.as_ref().is_some_and(|f| f.set.name_column() == "candidate");
    let pre = scorer.preprocess.clone();
    let io = |e: std::io::Error| InferError::from(files::Error::io(&s.out, e));
    std::thread::scope(|scope| -> Result<(), InferError> {
        let (tx, rx) = sync_channel::<Decoded>(1);
        // Buffers the scoring thread is done with come back: no fresh tens of MiB (and their
        // page faults) per batch.
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<f32>>();
        let feed = c.feed.as_ref();
        scope.spawn(move || {
            if let Some(f) = feed {
                crate::from_scans::produce(todo, f, &tx, &back_rx);
                return;
            }
            decode_patches(todo, s.batch_size, &pre, &tx, &back_rx);
        });
        let t_pipeline = Instant::now();
        let mut text = Vec::new();
        for dec in rx {
            if t.first_batch_seconds.is_none() {
                t.first_batch_seconds = Some(t_pipeline.elapsed().as_secs_f64());
            }
            for (it, e) in dec.bad {
                if s.fail_fast {
                    return Err(e.into());
                }
                let msg = e.to_string();
                let reason = msg
                    .strip_prefix(&format!("{}: ", it.path.display()))
                    .unwrap_or(&msg)
                    .to_string();
                t.fail(&it.name, &it.path, reason);
            }
            let t_model = Instant::now();
            let feats = c.feats.map(|m| batch_features(m, &dec.good));
            let logits = score_batch(scorer, s.tta, &dec.data, feats.as_deref(), dec.good.len())?;
            t.model_seconds += t_model.elapsed().as_secs_f64();
            let mut rows = Vec::with_capacity(dec.good.len());
            let digests: Vec<String> = dec
                .good
                .iter()
                .zip(&dec.digests)
                .map(|(it, d)| input_digest(d, s.tta, c.feats.and_then(|m| m.get(&it.name)).map(Vec::as_slice)))
                .collect();
            for ((it, &logit), digest) in dec.good.iter().zip(&logits).zip(&digests) {
                if !logit.is_finite() {
                    let why = format!(
                        "the model's logit is {logit} (not finite): no probability or decision is given for it"
                    );
                    if s.fail_fast {
                        return Err(crate::bad_input(&it.path, why));
                    }
                    t.fail(&it.name, &it.path, why);
                    continue;
                }
                let z = f64::from(logit);
                let decision = op.map(|(_, threshold)| u8::from(z >= threshold));
                t.positives += usize::from(decision.unwrap_or(0));
                let r = it.row.as_ref();
                rows.push(OutRow {
                    patch_file: (!scan_candidate).then_some(it.name.as_str()),
                    candidate: scan_candidate.then_some(it.name.as_str()),
                    seriesuid: r.map(|r| r.seriesuid.as_str()),
                    diam_mm: r.map(|r| r.diam_mm),
                    center_x: r.map(|r| r.center_x),
                    center_y: r.map(|r| r.center_y),
                    center_z: r.map(|r| r.center_z),
                    label: if c.has_label { r.map(|r| r.label) } else { None },
                    logit,
                    probability: sigmoid(z),
                    calibrated_probability: c.cal.map(|c| c.probability(z)),
                    decision,
                    operating_point: op.map(|(name, _)| name),
                    model_sha256: c.sha,
                    input_sha256: digest,
                });
            }
            // This batch's text goes to the output in one write; memory stays at one batch.
            text.clear();
            format_rows(s.format, &rows, &mut text).map_err(|source| crate::InferError::Output {
                path: s.out.clone(),
                source,
            })?;
            out.write_all(&text).map_err(io)?;
            t.scored += rows.len();
            c.pb.inc(dec.good.len() as u64);
            let _ = back_tx.send(dec.data);
        }
        t.pipeline_seconds = t_pipeline.elapsed().as_secs_f64();
        Ok(())
    })
}

/// Decodes `.npy` patches batch by batch on the rayon pool and sends each batch (its good
/// cubes packed, its failures beside) to the scoring thread; a buffer the scorer is done
/// with comes back through `back_rx` and is reused.
pub(crate) fn decode_patches<'a>(
    todo: &[&'a Item],
    batch_size: usize,
    pre: &models::preprocess::Preprocess,
    tx: &std::sync::mpsc::SyncSender<Decoded<'a>>,
    back_rx: &std::sync::mpsc::Receiver<Vec<f32>>,
) {
    let per = pre.cube_size.pow(3);
    for chunk in todo.chunks(batch_size) {
        let mut data = back_rx.try_recv().unwrap_or_default();
        data.resize(chunk.len() * per, 0.0);
        let results: Vec<Result<String, models::Error>> = data
            .par_chunks_mut(per)
            .zip(chunk.par_iter())
            .map(|(slot, it)| models::patch::load_patch_hashed(&it.path, pre, slot))
            .collect();
        // The good cubes close ranks (this moves data only when a file failed).
        let (mut good, mut bad) = (Vec::with_capacity(chunk.len()), Vec::new());
        let mut digests = Vec::with_capacity(chunk.len());
        for (k, (it, r)) in chunk.iter().zip(results).enumerate() {
            match r {
                Ok(digest) => {
                    if good.len() != k {
                        data.copy_within(k * per..(k + 1) * per, good.len() * per);
                    }
                    good.push(*it);
                    digests.push(digest);
                }
                Err(e) => bad.push((*it, e)),
            }
        }
        data.truncate(good.len() * per);
        if tx
            .send(Decoded {
                good,
                digests,
                bad,
                data,
            })
            .is_err()
        {
            break; // the consumer stopped (fail-fast or an error)
        }
    }
}

/// The features of the decoded patches, in their order (a model with them).
pub(crate) fn batch_features(by_name: &HashMap<String, Vec<f32>>, good: &[&Item]) -> Vec<f32> {
    good.iter()
        .flat_map(|it| by_name.get(&it.name).map(Vec::as_slice).unwrap_or_default())
        .copied()
        .collect()
}

/// The logits of one decoded batch of `n` cubes (and their features, a model with them):
/// as they are, or with `--tta flips` the mean logit over each cube's eight flips.
pub(crate) fn score_batch(scorer: &mut Scorer, tta: Tta, data: &[f32], feats: Option<&[f32]>, n: usize) -> Result<Vec<f32>, InferError> {
    let d = scorer.preprocess.cube_size;
    let per = d * d * d;
    Ok(match tta {
        Tta::None => scorer.score_flat_with(data, feats)?,
        Tta::Flips => {
            let all: Vec<Array3<f32>> = data
                .chunks_exact(per)
                .filter_map(|c| ArrayView3::from_shape((d, d, d), c).ok())
                .flat_map(flips)
                .collect();
            // Each patch's features with each of its eight flips.
            let nf = feats.map_or(0, |f| f.len() / n.max(1));
            let f8: Option<Vec<f32>> = feats.map(|f| {
                f.chunks(nf.max(1))
                    .flat_map(|row| std::iter::repeat_n(row, 8).flatten().copied())
                    .collect()
            });
            scorer
                .score_with(&all, f8.as_deref())?
                .chunks(8)
                .map(|c| c.iter().sum::<f32>() / 8.0)
                .collect()
        }
    })
}

/// A row's `input_sha256`: what the model was given for it. The digest of the bytes read
/// from the patch ([`models::patch::load_patch_hashed`]) as it is for a plain run; with
/// tabular features or `--tta flips`, the sha256 of that digest with the feature values
/// and the augmentation, so that `--resume` rescores a row whose features or augmentation
/// differ as it rescores a changed file.
pub(crate) fn input_digest(crop: &str, tta: Tta, feats: Option<&[f32]>) -> String {
    if tta == Tta::None && feats.is_none() {
        return crop.to_string();
    }
    let mut text = format!("{crop}|tta={tta:?}|");
    for v in feats.unwrap_or_default() {
        text += &format!("{:08x},", v.to_bits());
    }
    files::sha256_bytes(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_are_the_eight_distinct_mirrors() {
        let c = Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 100 + y * 10 + x) as f32);
        let f = flips(c.view());
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], c);
        assert_eq!(f[1][[0, 0, 0]], c[[1, 0, 0]]);
        assert_eq!(f[7][[0, 0, 0]], c[[1, 2, 3]]);
        for i in 0..8 {
            for j in 0..i {
                assert_ne!(f[i], f[j], "flip {i} equals flip {j}");
            }
        }
    }
}
