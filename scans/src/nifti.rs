//! NIfTI-1 volumes (`.nii`, `.nii.gz`; the `nifti` crate).
//!
//! The voxel-to-world map is the sform when `sform_code > 0`, else the qform when
//! `qform_code > 0` (quaternion, `pixdim`, `qfac`); a file with neither states no
//! orientation and is refused. NIfTI's world frame is RAS, LUNA16's (ITK's) LPS: the first
//! two world coordinates change sign. Voxels are `scl_slope × value + scl_inter` when the
//! slope is not 0. The header is read and its volume's size checked (2 GiB at most) before
//! any voxel is; NIfTI-2, more than three dimensions (beyond a fourth of size 1), a scaling
//! that overflows float32 or a non-finite voxel are errors naming the file.
use std::io::{BufReader, Read};
use std::path::Path;

use nifti::{InMemNiftiVolume, IntoNdArray, NiftiHeader};

use crate::{bad, Scan};
use models::metaimage::{ElementType, Geometry};
use models::Result;

/// The largest volume read, in bytes of stored data.
const MAX_BYTES: u64 = 2 << 30;

/// The voxel-to-world (RAS) map: rows of a 3×4 matrix.
fn affine(h: &NiftiHeader, path: &Path) -> Result<[[f64; 4]; 3]> {
    if h.sform_code > 0 {
        let rows = [h.srow_x, h.srow_y, h.srow_z].map(|r| r.map(f64::from));
        return Ok(rows);
    }
    if h.qform_code > 0 {
        let (b, c, d) = (f64::from(h.quatern_b), f64::from(h.quatern_c), f64::from(h.quatern_d));
        let a2 = 1.0 - (b * b + c * c + d * d);
        // Rounding can push a2 a little below 0 for a 180° rotation.
        let a = if a2 > 0.0 { a2.sqrt() } else { 0.0 };
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let s = [
            f64::from(h.pixdim[1]),
            f64::from(h.pixdim[2]),
            qfac * f64::from(h.pixdim[3]),
        ];
        let t = [h.quatern_x, h.quatern_y, h.quatern_z].map(f64::from);
        let mut m = [[0.0; 4]; 3];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = r[i][j] * s[j];
            }
            m[i][3] = t[i];
        }
        return Ok(m);
    }
    Err(bad(
        path,
        "neither an sform nor a qform (both codes 0): the file does not say where its voxels are",
    ))
}

/// The geometry of a RAS voxel-to-world map, in LPS.
fn geometry(m: [[f64; 4]; 3], dims: [usize; 3], path: &Path) -> Result<Geometry> {
    let flip = [-1.0, -1.0, 1.0];
    let mut spacing = [0.0; 3];
    let mut direction = [[0.0; 3]; 3];
    for axis in 0..3 {
        let col = [0, 1, 2].map(|w| flip[w] * m[w][axis]);
        let len = (col[0] * col[0] + col[1] * col[1] + col[2] * col[2]).sqrt();
        if !(len.is_finite() && len > 0.0) {
            return Err(bad(path, format!("voxel axis {axis} has no length in the sform/qform")));
        }
        spacing[axis] = len;
        direction[axis] = col.map(|v| v / len);
    }
    let offset = [0, 1, 2].map(|w| flip[w] * m[w][3]);
    Geometry::new(dims, spacing, offset, direction).map_err(|e| bad(path, e))
}

/// Reads a NIfTI-1 scan (see the module documentation).
pub fn read(path: &Path) -> Result<Scan> {
    let f = models::fsutil::open_regular(path)?;
    let gz = path.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
    let mut r: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    let mut first = [0u8; 4];
    r.read_exact(&mut first)
        .map_err(|e| bad(path, format!("not a NIfTI file (no header): {e}")))?;
    match (i32::from_le_bytes(first), i32::from_be_bytes(first)) {
        (348, _) | (_, 348) => {}
        (540, _) | (_, 540) => return Err(bad(path, "NIfTI-2 is not read (NIfTI-1 only)")),
        _ => return Err(bad(path, "not a NIfTI-1 file (sizeof_hdr is not 348)")),
    }
    let mut r = std::io::Cursor::new(first).chain(r);
    let h = NiftiHeader::from_reader(&mut r).map_err(|e| bad(path, format!("NIfTI header: {e}")))?;
    let dim = h.dim().map_err(|e| bad(path, format!("NIfTI dim {:?}: {e}", h.dim)))?;
    if dim.len() < 3 || dim[3..].iter().any(|&d| d != 1) {
        return Err(bad(
            path,
            format!("dim {dim:?}: a scan is a 3-D volume (a fourth dimension of size 1 at most)"),
        ));
    }
    let dims = [dim[0], dim[1], dim[2]].map(usize::from);
    let ty = h
        .data_type()
        .map_err(|e| bad(path, format!("datatype {}: {e}", h.datatype)))?;
    let n = dims.iter().product::<usize>();
    let bytes = n as u64 * ty.size_of() as u64;
    if bytes > MAX_BYTES {
        return Err(bad(
            path,
            format!("{bytes} bytes of voxels: more than the {MAX_BYTES} read"),
        ));
    }
    let g = geometry(affine(&h, path)?, dims, path)?;
    // The voxels start at vox_offset (extensions may lie between the header and them).
    let skip = (f64::from(h.vox_offset) as u64).saturating_sub(348);
    std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink())
        .map_err(|e| bad(path, format!("NIfTI extensions: {e}")))?;
    let vol = InMemNiftiVolume::from_reader((&mut r).take(bytes), &h)
        .map_err(|e| bad(path, format!("voxels ({bytes} bytes expected): {e}")))?;
    let arr = vol
        .into_ndarray::<f32>()
        .map_err(|e| bad(path, format!("voxels as float32: {e}")))?;
    // NIfTI stores x fastest; ours is the same order.
    let voxels: Vec<f32> = arr.t().iter().copied().collect();
    if voxels.len() != n {
        return Err(bad(path, format!("{} voxels for dim {dims:?}", voxels.len())));
    }
    if let Some(i) = voxels.iter().position(|v| !v.is_finite()) {
        return Err(bad(
            path,
            format!(
                "voxel {i} (x fastest) is not finite (a NaN in the data, or scl_slope {} × value + scl_inter {} beyond float32)",
                h.scl_slope, h.scl_inter
            ),
        ));
    }
    Ok(Scan {
        path: path.to_path_buf(),
        geometry: g,
        element_type: ElementType::Float,
        voxels,
    })
}
