//! Patches cut from a scan: cubes of a physical size (default 64 mm) at an isotropic spacing
//! (default 1 mm), resampled with trilinear interpolation around each patch only (a whole
//! scan is never resampled to cut a few cubes out of it).
//!
//! A patch's axes run along world z, y, x (array order (z, y, x), as the notebook's patches
//! and [`crate::metaimage`] arrays), whatever the scan's direction matrix, so a scan stored
//! with flipped or permuted axes gives the same anatomy orientation as any other. Voxel
//! centres sit at `center + (k − (n − 1)/2) · spacing` along each axis, so the requested
//! centre is the cube's geometric centre. Where the cube leaves the scan, voxels are air
//! (−1000 HU), also for the interpolation neighbours of points near the border.
use ndarray::Array3;
use serde::{Deserialize, Serialize};

use crate::metaimage::Scan;

/// The fewest voxels along a patch's edge (a cube under 8³ holds no nodule).
pub const MIN_EDGE: usize = 8;

/// The value given to points outside the scan: air.
pub const AIR_HU: f32 = -1000.0;

/// The grid of an extracted patch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchGrid {
    /// Edge of the cube in mm.
    pub size_mm: f64,
    /// Isotropic voxel size of the cube in mm.
    pub spacing_mm: f64,
}

impl Default for PatchGrid {
    fn default() -> Self {
        PatchGrid {
            size_mm: 64.0,
            spacing_mm: 1.0,
        }
    }
}

impl PatchGrid {
    /// Voxels along each edge: `size_mm / spacing_mm`, rounded.
    pub fn voxels(&self) -> usize {
        (self.size_mm / self.spacing_mm).round() as usize
    }

    pub fn validate(&self) -> Result<(), String> {
        let size_bad = !(self.size_mm.is_finite() && self.size_mm > 0.0);
        let spacing_bad = !(self.spacing_mm.is_finite() && self.spacing_mm > 0.0);
        if size_bad || spacing_bad {
            let mut v = Vec::new();
            if size_bad {
                v.push(format!("patch size {} mm must be positive", self.size_mm));
            }
            if spacing_bad {
                v.push(format!("patch spacing {} mm must be positive", self.spacing_mm));
            }
            return Err(v.join("; "));
        }
        crate::metaimage::check_spacing(&[self.spacing_mm]).map_err(|e| format!("patch {e}"))?;
        let n = self.size_mm / self.spacing_mm;
        if !(n.is_finite() && n < 1e6 && (MIN_EDGE..=models::preprocess::MAX_CUBE).contains(&self.voxels())) {
            return Err(format!(
                "{} mm at {} mm gives {n:.0} voxels per edge ({MIN_EDGE} to {} allowed)",
                self.size_mm,
                self.spacing_mm,
                models::preprocess::MAX_CUBE
            ));
        }
        Ok(())
    }
}

/// The cube of `grid.voxels()`³ values (z, y, x) centred on the world point `center` (mm).
pub fn extract(scan: &Scan, center: [f64; 3], grid: &PatchGrid) -> Array3<f32> {
    let n = grid.voxels();
    let mut out = vec![0f32; n * n * n];
    extract_into(scan, center, grid, &mut out);
    Array3::from_shape_vec((n, n, n), out).unwrap_or_else(|_| Array3::zeros((n, n, n)))
}

/// Continuous scan index of cube voxel (0, 0, 0), and its change per cube step along world
/// z, y, x (the cube's axes in array order).
fn cube_frame(scan: &Scan, center: [f64; 3], grid: &PatchGrid) -> ([f64; 3], [[f64; 3]; 3]) {
    let n = grid.voxels();
    let s = grid.spacing_mm;
    let h = (n as f64 - 1.0) / 2.0;
    let g = &scan.geometry;
    let base = g.world_to_voxel([center[0] - h * s, center[1] - h * s, center[2] - h * s]);
    let dz = g.apply_to_index([0.0, 0.0, s]);
    let dy = g.apply_to_index([0.0, s, 0.0]);
    let dx = g.apply_to_index([s, 0.0, 0.0]);
    (base, [dz, dy, dx])
}

/// [`extract`] into `out` (`grid.voxels()`³ values, z-y-x order; panics on another
/// length, a caller's bug).
///
/// Scans whose axes run along the world's (any order, either sign: LUNA16's MetaImage, and
/// nearly every axial DICOM series and NIfTI file) take a separable path: each cube axis
/// moves along one scan axis only, so the two outer interpolations are done once per cube
/// row over just the scan voxels that row needs, then the inner one per voxel: ~10× fewer
/// operations than eight neighbours per voxel, in f32. Oblique scans (a gantry tilt, a
/// rotated direction matrix) take the general path, [`trilinear`] per voxel. Both give the
/// trilinear value at the same points (to float rounding: the separable path sums in f32).
pub fn extract_into(scan: &Scan, center: [f64; 3], grid: &PatchGrid, out: &mut [f32]) {
    let n = grid.voxels();
    assert_eq!(out.len(), n * n * n, "extract_into: a buffer for another cube size");
    let (base, steps) = cube_frame(scan, center, grid);
    if let Some(axes) = aligned_axes(&steps, n) {
        separable(scan, base, &steps, axes, n, out);
        return;
    }
    general(scan, base, &steps, n, out);
}

/// The general cut of [`extract_into`]: [`trilinear`] at every cube voxel.
fn general(scan: &Scan, base: [f64; 3], steps: &[[f64; 3]; 3], n: usize, out: &mut [f32]) {
    let [dz, dy, dx] = *steps;
    for (i, v) in out.iter_mut().enumerate() {
        let (a, b, c) = ((i / (n * n)) as f64, ((i / n) % n) as f64, (i % n) as f64);
        let p = [
            base[0] + a * dz[0] + b * dy[0] + c * dx[0],
            base[1] + a * dz[1] + b * dy[1] + c * dx[1],
            base[2] + a * dz[2] + b * dy[2] + c * dx[2],
        ];
        *v = trilinear(scan, p);
    }
}

/// [`extract_into`] by the general path whatever the scan (benchmarks: `scans bench-cut
/// --general` times the per-voxel cut the separable path replaces).
pub fn extract_into_general(scan: &Scan, center: [f64; 3], grid: &PatchGrid, out: &mut [f32]) {
    let n = grid.voxels();
    assert_eq!(out.len(), n * n * n, "extract_into: a buffer for another cube size");
    let (base, steps) = cube_frame(scan, center, grid);
    general(scan, base, &steps, n, out);
}

/// For each cube axis (z, y, x), the one scan axis it moves along, when every step moves
/// along one scan axis only (the others' components under 10⁻⁹ voxel over the whole cube)
/// and the three are distinct; `None` for an oblique scan.
fn aligned_axes(steps: &[[f64; 3]; 3], n: usize) -> Option<[usize; 3]> {
    let mut axes = [0usize; 3];
    for (k, d) in steps.iter().enumerate() {
        let main = (0..3).max_by(|&i, &j| d[i].abs().total_cmp(&d[j].abs()))?;
        let off_axis = (0..3).filter(|&i| i != main).map(|i| d[i].abs()).sum::<f64>();
        if !(d[main].is_finite() && d[main] != 0.0 && off_axis * n as f64 <= 1e-9) {
            return None;
        }
        axes[k] = main;
    }
    (axes[0] != axes[1] && axes[1] != axes[2] && axes[0] != axes[2]).then_some(axes)
}

/// Along one cube axis: per cube index, the lower scan neighbour and the weight of the
/// upper one, or `None` where the point is far outside (beyond one voxel: air, as
/// [`trilinear`] gives).
fn axis_points(base: f64, step: f64, n: usize, len: usize) -> Vec<Option<(i64, f32)>> {
    (0..n)
        .map(|i| {
            let p = base + i as f64 * step;
            (p >= -1.0 && p <= len as f64).then(|| {
                let f = p.floor();
                (f as i64, (p - f) as f32)
            })
        })
        .collect()
}

/// The separable trilinear cut of [`extract_into`] for axis-aligned scans.
fn separable(scan: &Scan, base: [f64; 3], steps: &[[f64; 3]; 3], axes: [usize; 3], n: usize, out: &mut [f32]) {
    let dims = scan.geometry.dims;
    let strides = [1usize, dims[0], dims[0] * dims[1]];
    let pts: Vec<Vec<Option<(i64, f32)>>> = (0..3)
        .map(|k| axis_points(base[axes[k]], steps[k][axes[k]], n, dims[axes[k]]))
        .collect();
    let (len_c, stride_c) = (dims[axes[2]] as i64, strides[axes[2]]);
    // The scan indices along the inner axis that the row needs (the same for every row).
    let inner: Vec<(i64, f32)> = pts[2].iter().flatten().copied().collect();
    let lo = inner.iter().map(|p| p.0).min().unwrap_or(0);
    let hi = inner.iter().map(|p| p.0 + 1).max().unwrap_or(-1);
    let width = (hi - lo + 1).max(0) as usize;
    let mut tmp = vec![0f32; width];
    let valid = |i: i64, k: usize| i >= 0 && i < dims[axes[k]] as i64;
    let vox = &scan.voxels;
    for (a, plane) in out.chunks_exact_mut(n * n).enumerate() {
        let Some((za, ta)) = pts[0][a] else {
            plane.fill(AIR_HU);
            continue;
        };
        for (b, row) in plane.chunks_exact_mut(n).enumerate() {
            let Some((yb, tb)) = pts[1][b] else {
                row.fill(AIR_HU);
                continue;
            };
            // The four scan rows around (a, b), their weights, and whether each is inside.
            let mut rows: [(Option<usize>, f32); 4] = [(None, 0.0); 4];
            for (r, (da, db)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                let (ia, ib) = (za + da, yb + db);
                let w = if da == 0 { 1.0 - ta } else { ta } * if db == 0 { 1.0 - tb } else { tb };
                let at = (valid(ia, 0) && valid(ib, 1))
                    .then(|| ia as usize * strides[axes[0]] + ib as usize * strides[axes[1]]);
                rows[r] = (at, w);
            }
            let air: f32 = rows.iter().filter(|r| r.0.is_none()).map(|r| r.1).sum::<f32>() * AIR_HU;
            let all_inside = rows.iter().all(|r| r.0.is_some()) && lo >= 0 && hi < len_c;
            if all_inside && stride_c == 1 {
                // The common case (x along x, the cube inside the scan): four contiguous runs
                // of scan voxels, summed in a loop the compiler vectorises.
                let run = |r: usize| {
                    let at = rows[r].0.unwrap_or(0) + lo as usize;
                    &vox[at..at + width]
                };
                let (r0, r1, r2, r3) = (run(0), run(1), run(2), run(3));
                let (w0, w1, w2, w3) = (rows[0].1, rows[1].1, rows[2].1, rows[3].1);
                for ((((t, a), b), c), d) in tmp.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                    *t = w0 * a + w1 * b + w2 * c + w3 * d;
                }
            } else {
                fill_row(&mut tmp, lo, len_c, stride_c, &rows, air, vox);
            }
            for (v, p) in row.iter_mut().zip(&pts[2]) {
                *v = match p {
                    Some((ic, tc)) => {
                        let j = (ic - lo) as usize;
                        tmp[j] * (1.0 - tc) + tmp[j + 1] * tc
                    }
                    None => AIR_HU,
                };
            }
        }
    }
}

/// One row of the separable cut where a neighbour row or voxel may lie outside the scan
/// (air) or the inner axis is strided.
fn fill_row(
    tmp: &mut [f32],
    lo: i64,
    len_c: i64,
    stride_c: usize,
    rows: &[(Option<usize>, f32); 4],
    air: f32,
    vox: &[f32],
) {
    for (j, t) in tmp.iter_mut().enumerate() {
        let ic = lo + j as i64;
        *t = if ic < 0 || ic >= len_c {
            AIR_HU
        } else {
            let o = ic as usize * stride_c;
            let mut acc = air;
            for &(at, w) in rows {
                if let Some(at) = at {
                    acc += w * vox[at + o];
                }
            }
            acc
        };
    }
}

/// The scan's value at continuous index `p` (x, y, z); neighbours outside are air.
pub fn trilinear(scan: &Scan, p: [f64; 3]) -> f32 {
    let [nx, ny, nz] = scan.geometry.dims;
    // Far outside (or not a number): air, before any float→int cast can saturate.
    let within = |v: f64, n: usize| v >= -1.0 && v <= n as f64;
    if !(within(p[0], nx) && within(p[1], ny) && within(p[2], nz)) {
        return AIR_HU;
    }
    let f = [p[0].floor(), p[1].floor(), p[2].floor()];
    let t = [p[0] - f[0], p[1] - f[1], p[2] - f[2]];
    let (x0, y0, z0) = (f[0] as i64, f[1] as i64, f[2] as i64);
    let inside = x0 >= 0 && y0 >= 0 && z0 >= 0 && x0 + 1 < nx as i64 && y0 + 1 < ny as i64 && z0 + 1 < nz as i64;
    let mut acc = 0.0f64;
    for dz in 0..2i64 {
        let wz = if dz == 0 { 1.0 - t[2] } else { t[2] };
        for dy in 0..2i64 {
            let wy = if dy == 0 { 1.0 - t[1] } else { t[1] };
            for dx in 0..2i64 {
                let w = wz * wy * if dx == 0 { 1.0 - t[0] } else { t[0] };
                if w == 0.0 {
                    continue;
                }
                let v = if inside {
                    let (x, y, z) = ((x0 + dx) as usize, (y0 + dy) as usize, (z0 + dz) as usize);
                    scan.voxels[x + nx * (y + ny * z)]
                } else {
                    scan.get(x0 + dx, y0 + dy, z0 + dz).unwrap_or(AIR_HU)
                };
                acc += w * f64::from(v);
            }
        }
    }
    acc as f32
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::metaimage::{self, ElementType, Geometry, WriteOptions};

    /// A volume holding a Gaussian blob (σ 4 mm, +900 HU over −800) at world point `at`.
    fn blob_volume(g: &Geometry, at: [f64; 3]) -> Vec<f32> {
        let [nx, ny, nz] = g.dims;
        let mut v = Vec::with_capacity(nx * ny * nz);
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let w = g.voxel_to_world([x as f64, y as f64, z as f64]);
                    let d2: f64 = (0..3).map(|k| (w[k] - at[k]).powi(2)).sum();
                    v.push((-800.0 + 900.0 * (-d2 / 32.0).exp()) as f32);
                }
            }
        }
        v
    }

    /// Centroid (z, y, x) of the blob in a cube, from values above −700 HU.
    fn centroid(c: &Array3<f32>) -> [f64; 3] {
        let (mut s, mut m) = (0.0, [0.0; 3]);
        for ((a, b, cc), &v) in c.indexed_iter() {
            let w = f64::from(v + 700.0).max(0.0);
            s += w;
            m[0] += w * a as f64;
            m[1] += w * b as f64;
            m[2] += w * cc as f64;
        }
        [m[0] / s, m[1] / s, m[2] / s]
    }

    /// Scans with anisotropic spacing, flipped / permuted / rotated directions, compressed
    /// and big-endian files, and a blob near the scan's edge: the cube cut at the blob's
    /// world position has it at its centre to within half a voxel.
    #[test]
    fn the_object_lands_at_the_cube_centre() {
        let dir = tempfile::tempdir().unwrap();
        let (c, s) = (0.5f64.cos(), 0.5f64.sin());
        let cases: Vec<(&str, [[f64; 3]; 3], WriteOptions, bool)> = vec![
            (
                "identity",
                [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                WriteOptions::default(),
                false,
            ),
            (
                "flipped_xy_compressed",
                [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
                WriteOptions {
                    compressed: true,
                    ..Default::default()
                },
                false,
            ),
            (
                "permuted_big_endian",
                [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]],
                WriteOptions {
                    msb: true,
                    element_type: ElementType::Float,
                    ..Default::default()
                },
                false,
            ),
            (
                "rotated_mha",
                [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]],
                WriteOptions {
                    local: true,
                    ..Default::default()
                },
                false,
            ),
            (
                "edge",
                [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                WriteOptions::default(),
                true,
            ),
        ];
        let grid = PatchGrid {
            size_mm: 24.0,
            spacing_mm: 1.0,
        };
        let n = grid.voxels();
        let h = (n as f64 - 1.0) / 2.0;
        for (name, d, opts, edge) in cases {
            let g = Geometry::new([48, 40, 24], [0.7, 0.8, 2.5], [-20.3, 11.1, -140.0], d).unwrap();
            // The blob at the (off-grid) world point of index (21.3, 17.6, 10.4), or 9 mm
            // inside the scan's first x face for the edge case.
            let mut idx = [21.3, 17.6, 10.4];
            if edge {
                idx[0] = 9.0 / 0.7;
            }
            let at = g.voxel_to_world(idx);
            let path = dir
                .path()
                .join(format!("{name}.{}", if opts.local { "mha" } else { "mhd" }));
            metaimage::write(&path, &g, &blob_volume(&g, at), opts).unwrap();
            let scan = Scan::read(&path).unwrap();
            let cube = extract(&scan, at, &grid);
            assert_eq!(cube.dim(), (n, n, n));
            let m = centroid(&cube);
            for k in 0..3 {
                assert!((m[k] - h).abs() < 0.5, "{name}: blob centroid {m:?}, cube centre {h}");
            }
            if edge {
                // The cube reaches 3 mm beyond the scan's x = 0 face: that part is air.
                assert_eq!(cube[[n / 2, n / 2, 0]], AIR_HU, "{name}: outside the scan is air");
                assert!(cube[[n / 2, n / 2, 5]] > -800.5, "{name}: inside the scan is tissue");
            }
        }
    }

    /// Trilinear interpolation reproduces an affine function exactly, so in a scan whose
    /// values are `f(world) = 10·x + 3·y − 2·z`, every cube voxel (a, b, c) must hold f at
    /// `centre + ((c − h)·s, (b − h)·s, (a − h)·s)`: this pins the cube's axes to world z, y, x
    /// for any direction matrix.
    #[test]
    fn cube_axes_run_along_world_z_y_x() {
        let dir = tempfile::tempdir().unwrap();
        let f = |w: [f64; 3]| 10.0 * w[0] + 3.0 * w[1] - 2.0 * w[2];
        let (c, s) = (0.4f64.cos(), 0.4f64.sin());
        for (k, d) in [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
            [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]],
        ]
        .into_iter()
        .enumerate()
        {
            let g = Geometry::new([40, 40, 40], [0.9, 0.6, 1.3], [5.0, -7.0, 30.0], d).unwrap();
            let mut vals = Vec::new();
            for z in 0..40 {
                for y in 0..40 {
                    for x in 0..40 {
                        vals.push(f(g.voxel_to_world([x as f64, y as f64, z as f64])) as f32);
                    }
                }
            }
            let path = dir.path().join(format!("affine{k}.mhd"));
            let o = WriteOptions {
                element_type: ElementType::Double,
                ..Default::default()
            };
            metaimage::write(&path, &g, &vals, o).unwrap();
            let scan = Scan::read(&path).unwrap();
            let centre = g.voxel_to_world([19.5, 20.2, 18.7]);
            let grid = PatchGrid {
                size_mm: 8.0,
                spacing_mm: 1.0,
            };
            let cube = extract(&scan, centre, &grid);
            let h = 3.5;
            for ((a, b, cc), &v) in cube.indexed_iter() {
                let w = [
                    centre[0] + (cc as f64 - h),
                    centre[1] + (b as f64 - h),
                    centre[2] + (a as f64 - h),
                ];
                let want = f(w);
                assert!(
                    (f64::from(v) - want).abs() < 1e-3 * want.abs().max(1.0),
                    "direction {d:?} at ({a},{b},{cc}): {v} vs {want}"
                );
            }
        }
    }

    /// Absurd coordinates (a CSV in other units, 1e300) give air, not a panic.
    #[test]
    fn far_away_points_are_air() {
        let g = Geometry::new(
            [4, 4, 4],
            [1.0; 3],
            [0.0; 3],
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        )
        .unwrap();
        let scan = Scan {
            path: "mem".into(),
            geometry: g,
            element_type: ElementType::Short,
            voxels: vec![0.0; 64],
        };
        for p in [
            [1e300, 0.0, 0.0],
            [-1e300, 1.0, 1.0],
            [f64::NAN, 0.0, 0.0],
            [9.2e18, 9.2e18, 9.2e18],
        ] {
            assert_eq!(trilinear(&scan, p), AIR_HU, "{p:?}");
        }
        let cube = extract(
            &scan,
            [1e300, 0.0, 0.0],
            &PatchGrid {
                size_mm: 4.0,
                spacing_mm: 1.0,
            },
        );
        assert!(cube.iter().all(|&v| v == AIR_HU));
        assert_eq!(trilinear(&scan, [1.5, 1.5, 1.5]), 0.0);
    }

    /// The separable path gives the general path's values (to f32 rounding) for scans with
    /// flipped, permuted and anisotropic axes, centres inside, at the border and outside.
    #[test]
    fn separable_cut_equals_the_general_one() {
        let dirs = [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]],
            [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
            [[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
        ];
        let mut checked = 0;
        for (k, dir) in dirs.iter().enumerate() {
            let g = Geometry::new([23, 19, 11], [0.7, 0.8, 2.5], [-8.0, 3.0, 10.0], *dir).unwrap();
            let voxels: Vec<f32> = (0..23 * 19 * 11)
                .map(|i| ((i * 7919 + k * 13) % 2000) as f32 - 1000.0 + 0.25)
                .collect();
            let scan = Scan {
                path: "mem".into(),
                geometry: g.clone(),
                element_type: ElementType::Float,
                voxels,
            };
            for grid in [
                PatchGrid {
                    size_mm: 12.0,
                    spacing_mm: 1.0,
                },
                PatchGrid {
                    size_mm: 9.0,
                    spacing_mm: 0.5,
                },
            ] {
                let n = grid.voxels();
                for idx in [
                    [11.0, 9.0, 5.0],
                    [0.0, 0.0, 0.0],
                    [22.4, 18.9, 10.6],
                    [-3.0, 10.0, 5.0],
                    [40.0, 9.0, 5.0],
                ] {
                    let center = g.voxel_to_world(idx);
                    let (base, steps) = cube_frame(&scan, center, &grid);
                    let axes = aligned_axes(&steps, n).expect("an axis-aligned scan");
                    let mut fast = vec![0f32; n * n * n];
                    let mut slow = vec![0f32; n * n * n];
                    separable(&scan, base, &steps, axes, n, &mut fast);
                    general(&scan, base, &steps, n, &mut slow);
                    let worst = fast.iter().zip(&slow).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(worst < 2e-3, "direction {k}, centre {idx:?}, {n}³: max |Δ| {worst} HU");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 40);
        // An oblique scan is not taken for an aligned one.
        let tilt = 0.1f64;
        let g = Geometry::new(
            [8, 8, 8],
            [1.0; 3],
            [0.0; 3],
            [
                [1.0, 0.0, 0.0],
                [0.0, tilt.cos(), tilt.sin()],
                [0.0, -tilt.sin(), tilt.cos()],
            ],
        )
        .unwrap();
        let scan = Scan {
            path: "mem".into(),
            geometry: g,
            element_type: ElementType::Short,
            voxels: vec![0.0; 512],
        };
        let (_, steps) = cube_frame(
            &scan,
            [4.0; 3],
            &PatchGrid {
                size_mm: 8.0,
                spacing_mm: 1.0,
            },
        );
        assert_eq!(aligned_axes(&steps, 8), None);
    }

    #[test]
    fn grid_is_validated() {
        assert_eq!(PatchGrid::default().voxels(), 64);
        assert_eq!(
            PatchGrid {
                size_mm: 48.0,
                spacing_mm: 0.75
            }
            .voxels(),
            64
        );
        assert!(PatchGrid {
            size_mm: 64.0,
            spacing_mm: 0.0
        }
        .validate()
        .is_err());
        assert!(PatchGrid {
            size_mm: 640.0,
            spacing_mm: 0.5
        }
        .validate()
        .unwrap_err()
        .contains("voxels per edge"));
    }
}
