//! NIfTI-1 volumes (`.nii`, `.nii.gz`), read as nifti1_io (the reference library) and ITK
//! read them, and refused wherever the standard readers (nifti1_io, ITK/SimpleITK,
//! nibabel) would give different volumes, so that no choice among them is made silently.
//!
//! The 348-byte header is parsed here (either byte order) rather than by a crate, because
//! every field must be checked as the readers treat it (signed dimensions, the units, the
//! scaling) before any voxel is read. Then:
//! * **orientation**: the sform when `sform_code > 0` (as nifti1_io, nibabel and ITK for an
//!   orthogonal sform), else the qform (quaternion, `pixdim`, `qfac`), normalised as
//!   nifti1_io normalises a quaternion of norm above 1; NIfTI's world frame is RAS,
//!   LUNA16's (ITK's) LPS: the first two world coordinates change sign;
//! * **voxels**: `scl_slope × value + scl_inter` when the slope is a number other than 0,
//!   streamed from the file into the one float32 volume (no second copy), the header's
//!   volume checked against [`crate::metaimage::MAX_VOXELS`] and [`MAX_BYTES`] first and
//!   memory grown only as the data arrive, so a small file claiming a huge volume costs
//!   nothing.
//!
//! Refused, each with the reason (where the readers disagree, naming how):
//! * NIfTI-2, Analyze 7.5 and any magic other than `n+1` (a `.hdr/.img` pair header in a
//!   `.nii`), more than three dimensions (beyond trailing ones of size 1), dimensions of 0 or
//!   below, `vox_offset` below 352 or not a whole number, complex/RGB data, a `bitpix` that
//!   is not the datatype's;
//! * both xform codes 0 (no orientation: nibabel centres the volume, ITK puts it at the
//!   origin), a code outside 0..=5;
//! * a sheared or singular sform (ITK falls back to the qform, nibabel applies the shear);
//!   an sform and a qform that disagree when the sform is not `SCANNER_ANAT` (ITK then takes
//!   the qform, the others the sform); `pixdim` that differs from the sform's voxel size, or
//!   is negative (ITK takes its spacing from `pixdim` and mirrors a negative one);
//! * on the qform path: a negative `pixdim[1..3]` (ITK mirrors, nibabel takes |pixdim|,
//!   nifti1_io takes 1 mm), a zero or non-finite one, `qfac` below 0 but not −1 (nifti1_io
//!   and ITK read −1, nibabel 1), a non-finite quaternion or offset;
//! * spatial units of metres or microns (ITK rescales them to mm, nibabel does not);
//! * a slope of 0 or not finite with a non-zero intercept (ITK adds the intercept, nibabel
//!   ignores both), a non-finite intercept with a slope, a slope below 2.2e-16 in size (ITK
//!   reads 1), values beyond float32 or beyond any CT's HU, a voxel that is not finite;
//! * a spacing outside [`crate::metaimage::SPACING_RANGE_MM`], an origin beyond
//!   [`crate::metaimage::MAX_OFFSET_MM`].
use std::io::{BufReader, Read};
use std::path::Path;

use crate::metaimage::{ElementType, Geometry};
use crate::{bad, Scan};
use models::Result;

/// The largest volume read, in bytes of stored data.
pub const MAX_BYTES: u64 = 2 << 30;

/// HU a CT holds at most, either way (as the DICOM reader checks).
const HU_RANGE: (f64, f64) = (-40_000.0, 100_000.0);

/// The header fields this reader uses, in the file's byte order.
#[derive(Debug, Clone)]
pub struct Header {
    pub dim: [i16; 8],
    pub datatype: i16,
    pub bitpix: i16,
    pub pixdim: [f32; 8],
    pub vox_offset: f32,
    pub scl_slope: f32,
    pub scl_inter: f32,
    pub xyzt_units: u8,
    pub qform_code: i16,
    pub sform_code: i16,
    pub quatern: [f32; 3],
    pub qoffset: [f32; 3],
    pub srow: [[f32; 4]; 3],
    pub magic: [u8; 4],
    pub big_endian: bool,
}

/// Parses the 348 bytes of a NIfTI-1 header (either byte order).
pub fn parse_header(b: &[u8; 348], path: &Path) -> Result<Header> {
    let le = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let be = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let big_endian = match (le, be) {
        (348, _) => false,
        (_, 348) => true,
        (540, _) | (_, 540) => return Err(bad(path, "NIfTI-2 is not read (NIfTI-1 only)")),
        _ => return Err(bad(path, "not a NIfTI-1 file (sizeof_hdr is not 348)")),
    };
    let i16_at = |o: usize| {
        let v = [b[o], b[o + 1]];
        if big_endian {
            i16::from_be_bytes(v)
        } else {
            i16::from_le_bytes(v)
        }
    };
    let f32_at = |o: usize| {
        let v = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if big_endian {
            f32::from_be_bytes(v)
        } else {
            f32::from_le_bytes(v)
        }
    };
    Ok(Header {
        dim: std::array::from_fn(|i| i16_at(40 + 2 * i)),
        datatype: i16_at(70),
        bitpix: i16_at(72),
        pixdim: std::array::from_fn(|i| f32_at(76 + 4 * i)),
        vox_offset: f32_at(108),
        scl_slope: f32_at(112),
        scl_inter: f32_at(116),
        xyzt_units: b[123],
        qform_code: i16_at(252),
        sform_code: i16_at(254),
        quatern: [f32_at(256), f32_at(260), f32_at(264)],
        qoffset: [f32_at(268), f32_at(272), f32_at(276)],
        srow: std::array::from_fn(|r| std::array::from_fn(|c| f32_at(280 + 16 * r + 4 * c))),
        magic: [b[344], b[345], b[346], b[347]],
        big_endian,
    })
}

/// A stored voxel type: its size, and how a value of it becomes a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl Stored {
    fn of(datatype: i16) -> std::result::Result<Stored, String> {
        Ok(match datatype {
            2 => Stored::U8,
            256 => Stored::I8,
            4 => Stored::I16,
            512 => Stored::U16,
            8 => Stored::I32,
            768 => Stored::U32,
            1024 => Stored::I64,
            1280 => Stored::U64,
            16 => Stored::F32,
            64 => Stored::F64,
            32 | 1792 | 2048 => return Err(format!("datatype {datatype} is complex: a CT is real-valued")),
            128 | 2304 => {
                return Err(format!(
                    "datatype {datatype} is RGB colour: a CT has one value per voxel"
                ))
            }
            1536 => return Err("datatype 1536 (128-bit float) is not read".into()),
            other => return Err(format!("datatype {other} is no NIfTI-1 type")),
        })
    }

    fn size(self) -> usize {
        match self {
            Stored::U8 | Stored::I8 => 1,
            Stored::I16 | Stored::U16 => 2,
            Stored::I32 | Stored::U32 | Stored::F32 => 4,
            Stored::I64 | Stored::U64 | Stored::F64 => 8,
        }
    }

    fn value(self, b: &[u8], big: bool) -> f64 {
        macro_rules! num {
            ($t:ty, $n:expr) => {{
                let mut a = [0u8; $n];
                a.copy_from_slice(&b[..$n]);
                if big {
                    <$t>::from_be_bytes(a) as f64
                } else {
                    <$t>::from_le_bytes(a) as f64
                }
            }};
        }
        match self {
            Stored::U8 => f64::from(b[0]),
            Stored::I8 => f64::from(b[0] as i8),
            Stored::I16 => num!(i16, 2),
            Stored::U16 => num!(u16, 2),
            Stored::I32 => num!(i32, 4),
            Stored::U32 => num!(u32, 4),
            Stored::I64 => num!(i64, 8),
            Stored::U64 => num!(u64, 8),
            Stored::F32 => num!(f32, 4),
            Stored::F64 => num!(f64, 8),
        }
    }
}

/// The scaling that every standard reader applies: `None` when none does.
fn scaling(h: &Header) -> std::result::Result<Option<(f64, f64)>, String> {
    let (slope, inter) = (f64::from(h.scl_slope), f64::from(h.scl_inter));
    if slope == 0.0 || !slope.is_finite() {
        // nibabel and nifti1_io then apply nothing; ITK reads the slope as 1 and adds the
        // intercept unless it is 0 or not finite (which it reads as 0).
        if inter == 0.0 || !inter.is_finite() {
            return Ok(None);
        }
        return Err(format!(
            "scl_slope {slope} with scl_inter {inter}: ITK adds the intercept where nibabel and nifti1_io apply no scaling; \
             the readers disagree"
        ));
    }
    if !inter.is_finite() {
        return Err(format!(
            "scl_inter {inter} is not a number (nibabel refuses it, ITK reads 0)"
        ));
    }
    if slope.abs() < f64::EPSILON {
        return Err(format!(
            "scl_slope {slope:e}: ITK reads a slope this small as 1, the others as given"
        ));
    }
    Ok(Some((slope, inter)))
}

/// A RAS voxel-to-world map: rows of a 3×4 matrix.
type Affine = [[f64; 4]; 3];

/// The qform's map (nifti1_io's `nifti_quatern_to_mat44`, with the checks of the module
/// documentation).
fn qform(h: &Header) -> std::result::Result<Affine, String> {
    let [b, c, d] = h.quatern.map(f64::from);
    let t = h.qoffset.map(f64::from);
    if ![b, c, d].iter().chain(&t).all(|v| v.is_finite()) {
        return Err("the qform's quaternion or offset is not finite".into());
    }
    let qfac = f64::from(h.pixdim[0]);
    if qfac < 0.0 && qfac != -1.0 {
        return Err(format!(
            "pixdim[0] (qfac) {qfac}: nifti1_io and ITK read it as −1, nibabel as 1; the readers disagree"
        ));
    }
    let qfac = if qfac < 0.0 { -1.0 } else { 1.0 };
    let dx = [1, 2, 3].map(|i| f64::from(h.pixdim[i]));
    if let Some(v) = dx.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
        return Err(format!(
            "pixdim {} (voxel size {v}): on the qform, ITK mirrors a negative voxel size, nibabel takes its size, \
             nifti1_io takes 1 mm; the readers disagree",
            crate::metaimage::fmt_vec(&dx)
        ));
    }
    if dx.contains(&0.0) {
        return Err(format!(
            "pixdim {}: a voxel size of 0 says no size (the readers assume 1 mm)",
            crate::metaimage::fmt_vec(&dx)
        ));
    }
    // nifti1_io: a quaternion of norm above 1 (within rounding or not) is normalised.
    let mut a = 1.0 - (b * b + c * c + d * d);
    let (mut b, mut c, mut d) = (b, c, d);
    if a < 1e-7 {
        let s = 1.0 / (b * b + c * c + d * d).sqrt();
        b *= s;
        c *= s;
        d *= s;
        a = 0.0;
    } else {
        a = a.sqrt();
    }
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
    let s = [dx[0], dx[1], qfac * dx[2]];
    let mut m = [[0.0; 4]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = r[i][j] * s[j];
        }
        m[i][3] = t[i];
    }
    Ok(m)
}

/// Column `j`'s length and direction of a map.
fn column(m: &Affine, j: usize) -> (f64, [f64; 3]) {
    let col = [m[0][j], m[1][j], m[2][j]];
    let n = (col[0] * col[0] + col[1] * col[1] + col[2] * col[2]).sqrt();
    (n, col.map(|v| v / n))
}

/// Whether two maps give the same voxel grid (ITK's test: directions, sizes and offsets
/// within 1e-4).
fn similar(a: &Affine, b: &Affine) -> bool {
    (0..3).all(|j| {
        let (na, da) = column(a, j);
        let (nb, db) = column(b, j);
        (na - nb).abs() <= 1e-4 * na.max(1.0) && (0..3).all(|k| (da[k] - db[k]).abs() <= 1e-4)
    }) && (0..3).all(|i| (a[i][3] - b[i][3]).abs() <= 1e-4 * a[i][3].abs().max(1.0))
}

/// The sform's map, checked as usable by every reader alike.
fn sform(h: &Header) -> std::result::Result<Affine, String> {
    let m: Affine = h.srow.map(|r| r.map(f64::from));
    if m.iter().flatten().any(|v| !v.is_finite()) {
        return Err("the sform holds a value that is not finite".into());
    }
    let cols: Vec<(f64, [f64; 3])> = (0..3).map(|j| column(&m, j)).collect();
    if cols.iter().any(|(n, _)| !(*n > 0.0 && n.is_finite())) {
        return Err("the sform is singular (a voxel axis of no length)".into());
    }
    for i in 0..3 {
        for k in i + 1..3 {
            let dot: f64 = (0..3).map(|w| cols[i].1[w] * cols[k].1[w]).sum();
            if dot.abs() > 1e-4 {
                return Err(format!(
                    "the sform is sheared (voxel axes {i} and {k} are not perpendicular: cosine {dot:.2e}); \
                     ITK then uses the qform, nibabel the sheared sform; the readers disagree"
                ));
            }
        }
    }
    // ITK takes the spacing from pixdim (mirroring a negative one), the others from the sform.
    let dx = [1, 2, 3].map(|i| f64::from(h.pixdim[i]));
    for j in 0..3 {
        let n = cols[j].0;
        if dx[j].partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || (dx[j] - n).abs() > 1e-4 * n.max(1e-3) {
            return Err(format!(
                "pixdim {} differs from the sform's voxel size {}: ITK takes its spacing from pixdim (and mirrors a \
                 negative one), nibabel and nifti1_io from the sform; the readers disagree",
                crate::metaimage::fmt_vec(&dx),
                crate::metaimage::fmt_vec(&[cols[0].0, cols[1].0, cols[2].0])
            ));
        }
    }
    Ok(m)
}

/// The voxel-to-world (RAS) map every standard reader agrees on, or why they do not.
fn affine(h: &Header) -> std::result::Result<Affine, String> {
    for (name, code) in [("sform_code", h.sform_code), ("qform_code", h.qform_code)] {
        if !(0..=5).contains(&code) {
            return Err(format!("{name} {code} is no NIfTI-1 xform code (0 to 5)"));
        }
    }
    match (h.sform_code > 0, h.qform_code > 0) {
        (false, false) => {
            Err("neither an sform nor a qform (both codes 0): the file does not say where its voxels are".into())
        }
        (false, true) => qform(h),
        (true, false) => sform(h),
        (true, true) => {
            let s = sform(h)?;
            // Scanner-anatomical sforms are taken whatever the qform says (ITK too).
            if h.sform_code == 1 {
                return Ok(s);
            }
            let q = qform(h).map_err(|e| format!("the qform beside the sform: {e}"))?;
            if similar(&s, &q) {
                Ok(s)
            } else {
                Err(format!(
                    "the sform (code {}) and the qform (code {}) place the voxels differently: ITK then uses the qform, \
                     nibabel and nifti1_io the sform; the readers disagree",
                    h.sform_code, h.qform_code
                ))
            }
        }
    }
}

/// The geometry of a RAS voxel-to-world map, in LPS.
fn geometry(m: Affine, dims: [usize; 3]) -> std::result::Result<Geometry, String> {
    let flip = [-1.0, -1.0, 1.0];
    let mut spacing = [0.0; 3];
    let mut direction = [[0.0; 3]; 3];
    for axis in 0..3 {
        let col = [0, 1, 2].map(|w| flip[w] * m[w][axis]);
        let len = (col[0] * col[0] + col[1] * col[1] + col[2] * col[2]).sqrt();
        if !(len.is_finite() && len > 0.0) {
            return Err(format!("voxel axis {axis} has no length in the sform/qform"));
        }
        spacing[axis] = len;
        direction[axis] = col.map(|v| v / len);
    }
    crate::metaimage::check_spacing(&spacing).map_err(|e| format!("voxel size: {e}"))?;
    let offset = [0, 1, 2].map(|w| flip[w] * m[w][3]);
    Geometry::new(dims, spacing, offset, direction)
}

/// Checks a header as a scan's and returns its volume's dimensions, stored type and
/// geometry.
fn check(h: &Header) -> std::result::Result<([usize; 3], Stored, Geometry), String> {
    match &h.magic {
        b"n+1\0" => {}
        b"ni1\0" => return Err("the magic says this is the header of a .hdr/.img pair, not a single .nii file".into()),
        m => {
            return Err(format!(
                "magic {:?}: an Analyze 7.5 file (or damaged), whose orientation the standard readers do not agree on",
                String::from_utf8_lossy(m)
            ))
        }
    }
    let nd = h.dim[0];
    if !(1..=7).contains(&nd) {
        return Err(format!("dim[0] {nd}: the number of dimensions must be 1 to 7"));
    }
    let nd = nd as usize;
    if nd < 3 {
        return Err(format!("{nd} dimensions: a scan is a 3-D volume"));
    }
    let dims_all = &h.dim[1..=nd];
    if let Some(d) = dims_all.iter().find(|&&d| d < 1) {
        return Err(format!("dim {dims_all:?}: a dimension of {d}"));
    }
    if dims_all[3..].iter().any(|&d| d != 1) {
        return Err(format!(
            "dim {dims_all:?}: a scan is a 3-D volume (further dimensions of size 1 at most)"
        ));
    }
    let dims = [0, 1, 2].map(|i| dims_all[i] as usize);
    let ty = Stored::of(h.datatype)?;
    if i64::from(h.bitpix) != 8 * ty.size() as i64 {
        return Err(format!(
            "bitpix {} is not the size of datatype {} ({} bits)",
            h.bitpix,
            h.datatype,
            8 * ty.size()
        ));
    }
    let off = f64::from(h.vox_offset);
    if !(off.is_finite() && off.fract() == 0.0 && off >= 352.0 && off <= MAX_BYTES as f64) {
        return Err(format!(
            "vox_offset {off}: a single-file NIfTI-1 volume starts at byte 352 or later (within 2 GiB), on a whole byte"
        ));
    }
    match h.xyzt_units & 0x07 {
        0 | 2 => {}
        1 => {
            return Err(
                "spatial units of metres: ITK converts them to mm, nibabel does not; the readers disagree".into(),
            )
        }
        3 => {
            return Err(
                "spatial units of microns: ITK converts them to mm, nibabel does not; the readers disagree".into(),
            )
        }
        u => return Err(format!("spatial unit code {u} is not one of NIfTI's")),
    }
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let n = n.filter(|&n| n <= crate::metaimage::MAX_VOXELS).ok_or_else(|| {
        format!(
            "dim {dims:?}: more than the {} voxels a scan may have",
            crate::metaimage::MAX_VOXELS
        )
    })?;
    let bytes = n as u64 * ty.size() as u64;
    if bytes > MAX_BYTES {
        return Err(format!("{bytes} bytes of voxels: more than the {MAX_BYTES} read"));
    }
    scaling(h)?;
    let g = geometry(affine(h)?, dims)?;
    Ok((dims, ty, g))
}

/// Reads the header of a NIfTI file (`.gz` or not) and returns it with the reader
/// positioned just after it.
fn open_header(path: &Path) -> Result<(Header, Box<dyn Read>, u64)> {
    let f = files::open_regular(path)?;
    let file_len = f.metadata().map_err(|e| files::Error::io(path, e))?.len();
    let gz = path.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
    let mut r: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    let mut b = [0u8; 348];
    r.read_exact(&mut b)
        .map_err(|e| bad(path, format!("not a NIfTI file (no 348-byte header): {e}")))?;
    let h = parse_header(&b, path)?;
    Ok((h, r, if gz { u64::MAX } else { file_len }))
}

/// Reads a NIfTI-1 file's header and checks it (everything but the voxels); returns the
/// header and the geometry `read` would give.
pub fn read_geometry(path: &Path) -> Result<(Header, Geometry)> {
    let (h, _, _) = open_header(path)?;
    let (_, _, g) = check(&h).map_err(|e| bad(path, e))?;
    Ok((h, g))
}

/// Reads a NIfTI-1 scan (see the module documentation).
pub fn read(path: &Path) -> Result<Scan> {
    let (h, mut r, file_len) = open_header(path)?;
    let (dims, ty, g) = check(&h).map_err(|e| bad(path, e))?;
    let scale = scaling(&h).map_err(|e| bad(path, e))?;
    let n = dims.iter().product::<usize>();
    let offset = f64::from(h.vox_offset) as u64;
    let bytes = n as u64 * ty.size() as u64;
    if file_len != u64::MAX && file_len < offset + bytes {
        return Err(bad(
            path,
            format!(
                "{file_len} bytes, where the header's {dims:?} voxels of {} bytes from byte {offset} need {}: truncated",
                ty.size(),
                offset + bytes
            ),
        ));
    }
    // Extensions may lie between the header and the voxels.
    let skipped = std::io::copy(&mut (&mut r).take(offset - 348), &mut std::io::sink())
        .map_err(|e| bad(path, format!("NIfTI extensions: {e}")))?;
    if skipped != offset - 348 {
        return Err(bad(path, format!("the file ends before vox_offset {offset}")));
    }
    let mut voxels: Vec<f32> = Vec::new();
    let mut buf = vec![0u8; (1 << 20) / ty.size() * ty.size()];
    let mut pending = 0usize;
    let mut left = bytes;
    while left > 0 {
        let got = r
            .read(&mut buf[pending..])
            .map_err(|e| bad(path, format!("voxels: {e}")))?;
        if got == 0 {
            return Err(bad(
                path,
                format!(
                    "the data end after {} of the header's {n} voxels: truncated",
                    voxels.len()
                ),
            ));
        }
        let have = pending + got;
        let whole = have / ty.size() * ty.size();
        let take = whole.min(left as usize);
        // Grow as the data arrive, never beyond the header's volume (no doubling past it).
        let add = take / ty.size();
        if voxels.capacity() - voxels.len() < add {
            let target = (voxels.len() + add).max(voxels.capacity() * 2).min(n);
            voxels
                .try_reserve_exact(target - voxels.len())
                .map_err(|_| bad(path, format!("cannot allocate {n} voxels")))?;
        }
        for chunk in buf[..take].chunks_exact(ty.size()) {
            let v = ty.value(chunk, h.big_endian);
            let hu = match scale {
                Some((s, i)) => s * v + i,
                None => v,
            };
            if !hu.is_finite() || !(HU_RANGE.0..=HU_RANGE.1).contains(&hu) {
                let i = voxels.len();
                return Err(bad(
                    path,
                    format!(
                        "voxel {i} (x fastest) is {hu:e}{}: no CT holds that (HU lie within [{}, {}])",
                        scale.map_or_else(String::new, |(s, i)| format!(" (scl_slope {s} × {v} + scl_inter {i})")),
                        HU_RANGE.0,
                        HU_RANGE.1
                    ),
                ));
            }
            voxels.push(hu as f32);
        }
        left -= take as u64;
        buf.copy_within(take..have, 0);
        pending = have - take;
    }
    Ok(Scan {
        path: path.to_path_buf(),
        geometry: g,
        element_type: ElementType::Float,
        voxels,
    })
}
