//! Thumbnails of candidates scored straight from scans (`infer --scans`): each cube cut
//! from its scan at its world centre by the same resampler `scans prepare` and `infer
//! --scans` use, one scan in memory at a time.
use std::collections::BTreeMap;
use std::path::Path;

use scans::resample::PatchGrid;

use super::{Item, Made};
use crate::InferError;

/// Every item's thumbnail from the scans under `dir` (by its series and centre); a scan
/// that cannot be read, or a centre outside its scan, is that item's problem.
pub(super) fn thumbnails(
    items: &[Item],
    dir: &Path,
    only: Option<scans::Format>,
    grid: &PatchGrid,
) -> Result<Vec<Made>, InferError> {
    use rayon::prelude::*;
    let found = scans::find(dir, only)?;
    let mut made: Vec<Made> = vec![Err(String::new()); items.len()];
    let mut by_series: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        match (&it.series, it.centre) {
            (Some(s), Some(_)) => by_series.entry(s.as_str()).or_default().push(i),
            _ => made[i] = Err("no seriesuid and world centre to cut it from its scan".into()),
        }
    }
    let n = grid.voxels();
    for (uid, idx) in by_series {
        let Some(src) = found.scans.get(uid) else {
            for &i in &idx {
                made[i] = Err(format!("no scan of series {uid} under {}", dir.display()));
            }
            continue;
        };
        let scan = match src.read() {
            Ok(s) => s,
            Err(e) => {
                for &i in &idx {
                    made[i] = Err(format!("{}: {e}", src.path().display()));
                }
                continue;
            }
        };
        let cut: Vec<(usize, Made)> = idx
            .par_iter()
            .map(|&i| {
                let c = items[i].centre.unwrap_or([f64::NAN; 3]);
                if !scan.geometry.contains_world(c) {
                    return (
                        i,
                        Err(format!("the centre lies outside the scan {}", src.path().display())),
                    );
                }
                let mut hu = vec![0f32; n * n * n];
                scans::resample::extract_into(&scan, c, grid, &mut hu);
                let cube = ndarray::ArrayD::from_shape_vec(vec![n, n, n], hu).map_err(|e| e.to_string());
                (
                    i,
                    cube.and_then(|c| super::thumbs::thumbnail(&c, Some(grid.spacing_mm))),
                )
            })
            .collect();
        for (i, m) in cut {
            made[i] = m;
        }
    }
    Ok(made)
}
