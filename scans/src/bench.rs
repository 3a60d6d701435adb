//! `scans bench-cut` (hidden; `scripts/bench-scans`): how fast cubes are cut from scans in
//! memory, reading aside. Each scan is read once (timed apart), then all its candidates are
//! cut with [`crate::resample::extract_into`] on a pool of each thread count asked for: the
//! cubes per second of cutting alone, on one core and on several.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Result, ScanError};
use crate::resample::{extract_into, PatchGrid};

/// What one thread count gave.
#[derive(Debug, Clone)]
pub struct CutSpeed {
    pub threads: usize,
    pub cubes: usize,
    pub seconds: f64,
}

/// Reads every scan with candidates once, and cuts all their cubes once per thread count.
/// Returns the seconds spent reading, and the cutting times.
/// With `general`, every cube takes the per-voxel path ([`crate::resample::extract_into_general`]).
pub fn cut_speed(
    dir: &Path,
    candidates: &Path,
    grid: &PatchGrid,
    threads: &[usize],
    general: bool,
) -> Result<(f64, usize, Vec<CutSpeed>)> {
    grid.validate().map_err(ScanError::Config)?;
    let list = crate::candidates::read(candidates)?;
    let found = crate::find(dir, None)?;
    let mut by_scan: BTreeMap<&str, Vec<[f64; 3]>> = BTreeMap::new();
    for c in &list.rows {
        if found.scans.contains_key(&c.seriesuid) {
            by_scan.entry(&c.seriesuid).or_default().push(c.center);
        }
    }
    let pools: Vec<rayon::ThreadPool> = threads
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .map_err(|source| ScanError::Threads { count: t, source })
        })
        .collect::<Result<_>>()?;
    let mut speeds: Vec<CutSpeed> = threads
        .iter()
        .map(|&t| CutSpeed {
            threads: t,
            cubes: 0,
            seconds: 0.0,
        })
        .collect();
    let n = grid.voxels();
    let mut reading = 0.0;
    let mut checksum = 0f64;
    for (uid, points) in &by_scan {
        let t0 = Instant::now();
        let scan = found.scans[*uid].read()?;
        reading += t0.elapsed().as_secs_f64();
        for (pool, sp) in pools.iter().zip(speeds.iter_mut()) {
            let t0 = Instant::now();
            let sum: f64 = pool.install(|| {
                points
                    .par_iter()
                    .map_init(
                        || vec![0f32; n * n * n],
                        |cube, &p| {
                            if general {
                                crate::resample::extract_into_general(&scan, p, grid, cube);
                            } else {
                                extract_into(&scan, p, grid, cube);
                            }
                            f64::from(cube[cube.len() / 2])
                        },
                    )
                    .sum()
            });
            sp.seconds += t0.elapsed().as_secs_f64();
            sp.cubes += points.len();
            checksum += sum;
        }
    }
    // Keeps the cutting from being optimised away, and says so if a value went wrong.
    if !checksum.is_finite() {
        return Err(ScanError::Internal("a cube held a value that is not finite".into()));
    }
    Ok((reading, by_scan.len(), speeds))
}
