//! Reading patch cubes from `.npy` files (float32, float64 or int16, either byte order, C or
//! Fortran order, in HU).
//!
//! One reader serves training and scoring. The header is parsed by ndarray-npy's own parser
//! (the authority on the format, and what writes our files) after its length has been
//! checked against the file, so a header that claims gigabytes allocates nothing. Then
//! only the voxels the model's centre crop needs are read, straight from the file into the
//! caller's buffer ([`load_patch_into`]): memory is bounded by the cube, not by the file,
//! and a well-formed 2000³ array costs what a 64³ one does. Values outside the crop are
//! never read, so they cannot reach a result (a NaN there is not looked for); within it, a
//! non-finite value is an error naming its flat index in the array.
use std::io::{Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::Path;

use ndarray::{Array3, ArrayD, IxDyn, ShapeBuilder};
use ndarray_npy::npy::header::{Header, Layout};
use py_literal::Value as PyValue;

use crate::preprocess::Preprocess;
use crate::{Error, Result};

/// Largest `.npy` header accepted (numpy's own are 128 bytes; its limit for reading is 10 kB
/// without `allow_pickle`).
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Largest array [`read_npy_hu`] reads whole (1 GiB of data). Patches are read through the
/// crop instead ([`load_patch_into`]), which has no such limit.
pub const MAX_WHOLE_BYTES: u64 = 1 << 30;

/// The element types a patch may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    I16,
}

impl Dtype {
    /// Bytes per element.
    pub fn width(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::I16 => 2,
        }
    }
}

/// What a `.npy` header declares, checked against the file's length.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    /// The descriptor as written (`<f4`, `>i2`...).
    pub descr: String,
    pub dtype: Dtype,
    /// Big-endian data.
    pub big_endian: bool,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Bytes before the data.
    pub data_offset: u64,
}

fn bad(path: &Path, msg: String) -> Error {
    Error::BadPatch {
        path: path.to_path_buf(),
        msg,
    }
}

const TRUNCATED: &str = "truncated: the file holds less data than its header declares";

/// Reads and checks the header of a `.npy` file: magic, version, dictionary (strictly, as
/// numpy writes it: `descr`, `fortran_order`, `shape` and nothing else), a supported
/// element type, and that the file holds exactly the data it declares. Runs before any
/// array is allocated. Returns the open file too.
fn open_npy(path: &Path) -> Result<(NpyHeader, std::fs::File)> {
    let mut f = files::open_regular(path)?;
    let file_len = f.metadata().map_err(|e| Error::from(files::Error::io(path, e)))?.len();
    let mut pre = [0u8; 12];
    let n = f.read(&mut pre).map_err(|e| Error::from(files::Error::io(path, e)))?;
    if n < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err(bad(
            path,
            if file_len == 0 {
                "empty file".into()
            } else {
                "not a .npy file (no NUMPY magic)".into()
            },
        ));
    }
    let (hlen, start) = match pre[6] {
        1 => (u64::from(u16::from_le_bytes([pre[8], pre[9]])), 10u64),
        2 | 3 if n >= 12 => (u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]])), 12u64),
        v => return Err(bad(path, format!("unsupported .npy version {v}"))),
    };
    if hlen > MAX_HEADER_BYTES || start + hlen > file_len {
        return Err(bad(
            path,
            format!("truncated: header of {hlen} bytes in a {file_len}-byte file"),
        ));
    }
    f.rewind().map_err(|e| Error::from(files::Error::io(path, e)))?;
    let header = Header::from_reader(&mut (&mut f).take(start + hlen))
        .map_err(|e| files::Error::parse(path, "not a valid .npy file", e))?;
    let descr = match &header.type_descriptor {
        PyValue::String(s) => s.clone(),
        other => format!("{other}"),
    };
    let (big_endian, kind) = match descr.as_bytes().first() {
        Some(b'<') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        Some(b'=') => (cfg!(target_endian = "big"), &descr[1..]),
        _ => (false, descr.as_str()),
    };
    let dtype = match kind {
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        "i2" => Dtype::I16,
        _ => {
            return Err(bad(
                path,
                format!("unsupported array type {descr}: expected float32, float64 or int16 HU values"),
            ))
        }
    };
    let shape = header.shape.clone();
    let elements = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    let need = elements
        .and_then(|e| e.checked_mul(dtype.width() as u64))
        .ok_or_else(|| bad(path, format!("shape {shape:?} overflows")))?;
    let have = file_len - start - hlen;
    if need > have {
        return Err(bad(
            path,
            format!(
                "truncated: the header declares {} elements ({need} bytes of data) but the file holds {have}",
                elements.unwrap_or(0)
            ),
        ));
    }
    if have > need {
        return Err(bad(
            path,
            format!("{} unexpected bytes after the array data", have - need),
        ));
    }
    let h = NpyHeader {
        descr,
        dtype,
        big_endian,
        fortran_order: header.layout == Layout::Fortran,
        shape,
        data_offset: start + hlen,
    };
    Ok((h, f))
}

/// The bytes of a version 1.0 `.npy` header holding the dictionary text `dict`, padded with
/// spaces and a newline to a multiple of 64 bytes as numpy pads it: what a writer puts
/// before the data (the tests use it to build sparse and hostile files).
pub fn npy_header_bytes(dict: &str) -> Vec<u8> {
    let mut d = dict.to_string();
    while !(10 + d.len() + 1).is_multiple_of(64) {
        d.push(' ');
    }
    d.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((d.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    out.extend(d.as_bytes());
    out
}

/// Reads and checks only the header of a `.npy` file (see [`load_patch_into`]).
pub fn npy_header(path: &Path) -> Result<NpyHeader> {
    open_npy(path).map(|(h, _)| h)
}

/// One element's value as f32 (f64 beyond f32's range becomes ±Inf, and so an error).
#[inline]
fn decode(b: &[u8], dtype: Dtype, big: bool) -> f32 {
    match (dtype, big) {
        (Dtype::F32, false) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        (Dtype::F32, true) => f32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        (Dtype::F64, false) => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        (Dtype::F64, true) => f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        (Dtype::I16, false) => f32::from(i16::from_le_bytes([b[0], b[1]])),
        (Dtype::I16, true) => f32::from(i16::from_be_bytes([b[0], b[1]])),
    }
}

/// Decodes a run of elements into `dst`, windowed and scaled; false when a value is not
/// finite. One loop per element type, so each compiles to a tight conversion.
fn convert_run(dst: &mut [f32], bytes: &[u8], dtype: Dtype, big: bool, pre: &Preprocess) -> bool {
    fn run<const W: usize>(dst: &mut [f32], bytes: &[u8], pre: &Preprocess, dec: impl Fn(&[u8; W]) -> f32) -> bool {
        // A copy the compiler knows `dst` cannot alias: the loop keeps the window in registers.
        let pre = pre.clone();
        let mut finite = true;
        for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(W)) {
            let mut a = [0u8; W];
            a.copy_from_slice(b);
            let v = dec(&a);
            finite &= v.is_finite();
            *d = pre.scale(v);
        }
        finite
    }
    match (dtype, big) {
        (Dtype::F32, false) => run::<4>(dst, bytes, pre, |b| f32::from_le_bytes(*b)),
        (Dtype::F32, true) => run::<4>(dst, bytes, pre, |b| f32::from_be_bytes(*b)),
        (Dtype::F64, false) => run::<8>(dst, bytes, pre, |b| f64::from_le_bytes(*b) as f32),
        (Dtype::F64, true) => run::<8>(dst, bytes, pre, |b| f64::from_be_bytes(*b) as f32),
        (Dtype::I16, false) => run::<2>(dst, bytes, pre, |b| f32::from(i16::from_le_bytes(*b))),
        (Dtype::I16, true) => run::<2>(dst, bytes, pre, |b| f32::from(i16::from_be_bytes(*b))),
    }
}

/// Reads a whole `.npy` array of HU values as float32, any rank (for tools and tests:
/// patches are read through [`load_patch_into`]). Arrays over [`MAX_WHOLE_BYTES`] are
/// refused; a non-finite value is an error naming its flat (C-order) index.
pub fn read_npy_hu(path: &Path) -> Result<ArrayD<f32>> {
    let (h, f) = open_npy(path)?;
    let n: usize = h.shape.iter().product();
    let bytes = n as u64 * h.dtype.width() as u64;
    if bytes > MAX_WHOLE_BYTES {
        return Err(bad(
            path,
            format!("{bytes} bytes of data: more than the {MAX_WHOLE_BYTES} read whole"),
        ));
    }
    let mut raw = vec![0u8; bytes as usize];
    f.read_exact_at(&mut raw, h.data_offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bad(path, TRUNCATED.into())
        } else {
            Error::from(files::Error::io(path, e))
        }
    })?;
    let values: Vec<f32> = raw
        .chunks_exact(h.dtype.width())
        .map(|b| decode(b, h.dtype, h.big_endian))
        .collect();
    let shape = IxDyn(&h.shape);
    let arr = if h.fortran_order {
        ArrayD::from_shape_vec(shape.f(), values)
    } else {
        ArrayD::from_shape_vec(shape, values)
    }
    .map_err(|e| bad(path, format!("shape {:?}: {e}", h.shape)))?;
    if arr.is_empty() {
        return Err(bad(path, format!("empty array of shape {:?}", arr.shape())));
    }
    if let Some(i) = arr.iter().position(|v| !v.is_finite()) {
        return Err(bad(path, format!("non-finite value (NaN or Inf) at flat index {i}")));
    }
    Ok(arr)
}

/// Reads a patch and applies `pre`: [`load_patch_into`] into a new cube.
pub fn load_patch(path: &Path, pre: &Preprocess) -> Result<Array3<f32>> {
    let c = pre.cube_size;
    let mut out = Array3::zeros((c, c, c));
    let slice = out
        .as_slice_mut()
        .ok_or_else(|| bad(path, "internal: a new cube is not contiguous".into()))?;
    load_patch_into(path, pre, slice)?;
    Ok(out)
}

/// For one axis of `n` voxels and a cube of `c`: (first source voxel, first destination
/// voxel, count) of the centre crop or pad, as [`Preprocess::apply`] places them.
fn crop_range(n: usize, c: usize) -> (usize, usize, usize) {
    if n >= c {
        ((n - c) / 2, 0, c)
    } else {
        (0, (c - n) / 2, n)
    }
}

/// Reads a patch into `out` (`cube_size³` values, z-y-x order): the centre crop or pad of
/// each axis to the cube ([`Preprocess::apply`]'s placement, padding with `pad_hu`), windowed
/// and scaled. Only the bytes of the crop are read, in runs as long as the layout allows
/// (the whole data in one read for a cube at the model's size), through a per-thread
/// buffer: memory does not grow with the file. The same values and errors as
/// [`Preprocess::apply`] on the whole array.
pub fn load_patch_into(path: &Path, pre: &Preprocess, out: &mut [f32]) -> Result<()> {
    load_inner(path, pre, out, None)
}

/// [`load_patch_into`], and the sha256 of what was read: the header's description of the
/// array (type, order, shape, data offset) and every byte of the crop, in reading order.
/// Two files give one digest exactly when the model sees the same input from them (what
/// lies outside the crop is not read, so not hashed); `infer --resume` keeps an earlier row
/// only if its file still gives the digest that row records.
pub fn load_patch_hashed(path: &Path, pre: &Preprocess, out: &mut [f32]) -> Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    load_inner(path, pre, out, Some(&mut h))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A cube of HU values in memory (`n`³, z-y-x order, as cut from a scan), given to the model
/// as [`load_patch_hashed`] gives a patch file: centre crop or pad to `pre.cube_size`,
/// windowed and scaled into `out`, and the digest that function returns for the same cube
/// stored as a float32 `.npy` (C order, as `scans prepare --dtype float32` writes it). So
/// a row scored from a scan and one scored from that cube's file carry the same
/// `input_sha256`, and the same logit. `Err` names the first non-finite value (by its flat
/// index), or a buffer of the wrong size.
pub fn cube_into_hashed(
    hu: &[f32],
    n: usize,
    pre: &Preprocess,
    out: &mut [f32],
) -> std::result::Result<String, String> {
    use sha2::Digest;
    let c = pre.cube_size;
    if out.len() != c * c * c || hu.len() != n * n * n || n == 0 {
        return Err(format!(
            "internal: a {}-value cube of edge {n} into a {}-value buffer for a {c}³ cube",
            hu.len(),
            out.len()
        ));
    }
    let shape = vec![n, n, n];
    let header = Header {
        type_descriptor: PyValue::String("<f4".into()),
        layout: Layout::Standard,
        shape: shape.clone(),
    };
    let offset = header
        .to_bytes()
        .map_err(|e| format!("internal: a .npy header for {shape:?}: {e}"))?
        .len();
    let mut h = sha2::Sha256::new();
    h.update(format!("<f4|false|{shape:?}|{offset}\n").as_bytes());
    let (s, d, k) = crop_range(n, c);
    if k < c {
        out.fill(pre.scale(pre.pad_hu));
    }
    let mut bytes = Vec::new();
    let mut first_bad: Option<usize> = None;
    // A copy the compiler knows `out` cannot alias: the scaling loop then vectorises.
    let pre = pre.clone();
    for z in 0..k {
        for y in 0..k {
            let src = ((s + z) * n + s + y) * n + s;
            let row = &hu[src..src + k];
            // The bytes a float32 `.npy` stores (little-endian), hashed as they are on a
            // little-endian host.
            if cfg!(target_endian = "little") {
                h.update(bytemuck::cast_slice::<f32, u8>(row));
            } else {
                bytes.clear();
                bytes.extend(row.iter().flat_map(|v| v.to_le_bytes()));
                h.update(&bytes);
            }
            let o = ((d + z) * c + d + y) * c + d;
            for (dst, &v) in out[o..o + k].iter_mut().zip(row) {
                *dst = pre.scale(v);
            }
            if first_bad.is_none() && !row.iter().all(|v| v.is_finite()) {
                first_bad = row.iter().position(|v| !v.is_finite()).map(|x| src + x);
            }
        }
    }
    if let Some(i) = first_bad {
        return Err(format!("non-finite value (NaN or Inf) at flat index {i}"));
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn load_inner(path: &Path, pre: &Preprocess, out: &mut [f32], mut digest: Option<&mut sha2::Sha256>) -> Result<()> {
    use sha2::Digest;
    let c = pre.cube_size;
    if out.len() != c * c * c {
        return Err(bad(
            path,
            format!("internal: a buffer of {} values for a {c}³ cube", out.len()),
        ));
    }
    let (h, f) = open_npy(path)?;
    if let Some(d) = digest.as_deref_mut() {
        d.update(format!("{}|{}|{:?}|{}\n", h.descr, h.fortran_order, h.shape, h.data_offset).as_bytes());
    }
    let &[nz, ny, nx] = h.shape.as_slice() else {
        return Err(bad(
            path,
            format!("expected a 3-D cube (z, y, x), got shape {:?}", h.shape),
        ));
    };
    if nz == 0 || ny == 0 || nx == 0 {
        return Err(bad(path, format!("empty array of shape {:?}", h.shape)));
    }
    let cut = Cut {
        n: [nz, ny, nx],
        ranges: [crop_range(nz, c), crop_range(ny, c), crop_range(nx, c)],
        c,
    };
    if cut.ranges.iter().any(|&(_, _, k)| k < c) {
        out.fill(pre.scale(pre.pad_hu));
    }
    thread_local! {
        static BYTES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut r = CubeReader {
        path,
        h: &h,
        f: &f,
        pre,
        digest,
        first_bad: None,
    };
    BYTES.with_borrow_mut(|buf| {
        if h.fortran_order {
            r.fortran_order(&cut, buf, out)
        } else {
            r.c_order(&cut, buf, out)
        }
    })?;
    if let Some([z, y, x]) = r.first_bad {
        let i = (z * ny + y) * nx + x;
        return Err(bad(path, format!("non-finite value (NaN or Inf) at flat index {i}")));
    }
    Ok(())
}

/// The part of an array a cube takes: per axis (z, y, x) its length in the file, and
/// [`crop_range`]'s (first voxel in the file, first voxel in the cube, voxels taken).
struct Cut {
    n: [usize; 3],
    ranges: [(usize, usize, usize); 3],
    c: usize,
}

/// Reads the cut of one open `.npy` file into a cube, feeding the digest, and notes the
/// first non-finite voxel (its (z, y, x) in the array).
struct CubeReader<'a> {
    path: &'a Path,
    h: &'a NpyHeader,
    f: &'a std::fs::File,
    pre: &'a Preprocess,
    digest: Option<&'a mut sha2::Sha256>,
    first_bad: Option<[usize; 3]>,
}

impl CubeReader<'_> {
    fn note_bad(&mut self, zyx: [usize; 3]) {
        if self.first_bad.is_none_or(|b| zyx < b) {
            self.first_bad = Some(zyx);
        }
    }

    /// `buf.len()` bytes at `at` (from the data's start), fed to the digest.
    fn read_at(&mut self, buf: &mut [u8], at: u64) -> Result<()> {
        use sha2::Digest;
        self.f.read_exact_at(buf, self.h.data_offset + at).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad(self.path, TRUNCATED.into())
            } else {
                Error::from(files::Error::io(self.path, e))
            }
        })?;
        if let Some(d) = self.digest.as_deref_mut() {
            d.update(&*buf);
        }
        Ok(())
    }

    /// C order: element (z, y, x) at ((z·ny + y)·nx + x). Runs along x, merged with the
    /// next axes while the crop covers them whole.
    fn c_order(&mut self, cut: &Cut, buf: &mut Vec<u8>, out: &mut [f32]) -> Result<()> {
        let [_, ny, nx] = cut.n;
        let [(sz, dz, cz), (sy, dy, cy), (sx, dx, cx)] = cut.ranges;
        let (c, w, h) = (cut.c, self.h.dtype.width(), self.h);
        let full_x = cx == nx;
        let full_y = full_x && cy == ny;
        let (planes, rows_per_read) = if full_y {
            (1, cz * cy)
        } else if full_x {
            (cz, cy)
        } else {
            (cz * cy, 1)
        };
        buf.resize(rows_per_read * cx * w, 0);
        for k in 0..planes {
            // The first (z, y) row of this read.
            let (z0, y0) = if full_y {
                (sz, sy)
            } else if full_x {
                (sz + k, sy)
            } else {
                (sz + k / cy, sy + k % cy)
            };
            let at = ((z0 * ny + y0) * nx + sx) as u64 * w as u64;
            self.read_at(buf, at)?;
            for (r, row) in buf.chunks_exact(cx * w).enumerate() {
                // Row r of this read is (z, y) = (z0, y0) + r rows on.
                let flat = (z0 - sz) * cy + (y0 - sy) + r;
                let (oz, oy) = (flat / cy, flat % cy);
                let o = ((dz + oz) * c + dy + oy) * c + dx;
                if !convert_run(&mut out[o..o + cx], row, h.dtype, h.big_endian, self.pre) {
                    if let Some(x) = row
                        .chunks_exact(w)
                        .position(|b| !decode(b, h.dtype, h.big_endian).is_finite())
                    {
                        self.note_bad([sz + oz, sy + oy, sx + x]);
                    }
                }
            }
        }
        Ok(())
    }

    /// Fortran order: element (z, y, x) at ((x·ny + y)·nz + z). Runs along z.
    fn fortran_order(&mut self, cut: &Cut, buf: &mut Vec<u8>, out: &mut [f32]) -> Result<()> {
        let [nz, ny, _] = cut.n;
        let [(sz, dz, cz), (sy, dy, cy), (sx, dx, cx)] = cut.ranges;
        let (c, w, h) = (cut.c, self.h.dtype.width(), self.h);
        buf.resize(cz * w, 0);
        for x in 0..cx {
            for y in 0..cy {
                let at = (((sx + x) * ny + sy + y) * nz + sz) as u64 * w as u64;
                self.read_at(buf, at)?;
                for (z, b) in buf.chunks_exact(w).enumerate() {
                    let v = decode(b, h.dtype, h.big_endian);
                    if !v.is_finite() {
                        self.note_bad([sz + z, sy + y, sx + x]);
                    }
                    out[((dz + z) * c + dy + y) * c + dx + x] = self.pre.scale(v);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};
    use ndarray_npy::write_npy;

    #[test]
    fn reads_all_supported_dtypes() {
        let dir = tempfile::tempdir().expect("tmp");
        let a32 = Array3::<f32>::from_elem((2, 3, 4), -500.0);
        let a64 = a32.mapv(f64::from);
        let a16 = a32.mapv(|v| v as i16);
        for (name, write) in [
            (
                "f32.npy",
                Box::new(|p: &Path| write_npy(p, &a32)) as Box<dyn Fn(&Path) -> Result<(), ndarray_npy::WriteNpyError>>,
            ),
            ("f64.npy", Box::new(|p: &Path| write_npy(p, &a64))),
            ("i16.npy", Box::new(|p: &Path| write_npy(p, &a16))),
        ] {
            let p = dir.path().join(name);
            write(&p).expect("write");
            let r = read_npy_hu(&p).expect(name);
            assert_eq!(r.shape(), &[2, 3, 4]);
            assert!(r.iter().all(|&v| v == -500.0), "{name}");
        }
    }

    #[test]
    fn rejects_other_dtypes_truncation_and_nan() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("u8.npy");
        write_npy(&p, &Array2::<u8>::zeros((2, 2))).expect("write");
        let msg = read_npy_hu(&p).expect_err("u8").to_string();
        assert!(
            msg.contains("u8.npy") && msg.contains("expected float32, float64 or int16"),
            "{msg}"
        );

        let p = dir.path().join("cut.npy");
        write_npy(&p, &Array3::<f32>::zeros((4, 4, 4))).expect("write");
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() - 10]).expect("truncate");
        let msg = read_npy_hu(&p).expect_err("cut").to_string();
        assert!(msg.contains("cut.npy") && msg.contains("truncated"), "{msg}");

        let p = dir.path().join("nan.npy");
        let mut a = Array3::<f32>::zeros((2, 2, 2));
        a[[1, 1, 1]] = f32::NAN;
        write_npy(&p, &a).expect("write");
        let msg = read_npy_hu(&p).expect_err("nan").to_string();
        assert!(msg.contains("nan.npy") && msg.contains("non-finite"), "{msg}");

        // A header that claims far more data than the file holds: refused before allocating.
        let p = dir.path().join("huge.npy");
        let mut bytes = npy_header_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (99999, 99999, 9), }");
        bytes.extend([0u8; 32]);
        std::fs::write(&p, bytes).expect("write");
        let msg = read_npy_hu(&p).expect_err("huge").to_string();
        assert!(
            msg.contains("huge.npy") && msg.contains("declares 89998200009 elements"),
            "{msg}"
        );

        let p = dir.path().join("empty.npy");
        std::fs::write(&p, b"").expect("write");
        assert!(read_npy_hu(&p).expect_err("empty").to_string().contains("empty file"));

        let p = dir.path().join("junk.npy");
        std::fs::write(&p, b"hello").expect("write");
        let msg = read_npy_hu(&p).expect_err("junk").to_string();
        assert!(msg.contains("junk.npy"), "{msg}");
    }

    /// The direct decoder gives `load_patch`'s values and errors, on its fast path (cubes
    /// at the model's size in f32/f64/i16) and off it (cropping, padding, big-endian,
    /// Fortran order).
    #[test]
    fn decoding_into_a_buffer_equals_load_patch() {
        use ndarray::ShapeBuilder;
        let dir = tempfile::tempdir().expect("tmp");
        let pre = Preprocess {
            cube_size: 8,
            ..Preprocess::default()
        };
        let f = |z: usize, y: usize, x: usize| (z * 97 + y * 13 + x * 7) as f32 * 9.0 - 1200.0;
        let cube = Array3::from_shape_fn((8, 8, 8), |(z, y, x)| f(z, y, x));
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let npy = |write: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Vec::new();
            write(&mut b);
            b
        };
        use ndarray_npy::WriteNpyExt;
        files.push(("f32".into(), npy(&|b| cube.write_npy(b).expect("npy"))));
        files.push(("f64".into(), npy(&|b| cube.mapv(f64::from).write_npy(b).expect("npy"))));
        files.push((
            "i16".into(),
            npy(&|b| cube.mapv(|v| v as i16).write_npy(b).expect("npy")),
        ));
        let small = Array3::from_shape_fn((5, 8, 11), |(z, y, x)| f(z, y, x));
        files.push(("crop_pad".into(), npy(&|b| small.write_npy(b).expect("npy"))));
        let fortran = Array3::from_shape_fn((8, 8, 8).f(), |(z, y, x)| f(z, y, x));
        files.push(("fortran".into(), npy(&|b| fortran.write_npy(b).expect("npy"))));
        // Big-endian float32: the header says '>f4' and the bytes are swapped.
        let mut be = npy(&|b| cube.write_npy(b).expect("npy"));
        let at = be.windows(3).position(|w| w == b"<f4").expect("descr");
        be[at] = b'>';
        let data = be.len() - 8 * 8 * 8 * 4;
        for w in be[data..].chunks_exact_mut(4) {
            w.reverse();
        }
        files.push(("big_endian".into(), be));
        // Headers ndarray-npy refuses must be refused here too, not read on the fast path.
        let mut odd_key = npy(&|b| cube.write_npy(b).expect("npy"));
        let at = odd_key.windows(6).position(|w| w == b"'shape").expect("shape key");
        odd_key[at + 1..at + 6].copy_from_slice(b"SHAPE");
        let mut minor = npy(&|b| cube.write_npy(b).expect("npy"));
        minor[7] = 9;
        for (name, bytes) in [("odd_key", odd_key), ("minor_version", minor)] {
            let p = dir.path().join(format!("{name}.npy"));
            std::fs::write(&p, &bytes).expect("write");
            assert!(npy_header(&p).is_err(), "{name}: refused as ndarray-npy refuses it");
            let mut got = vec![0.0; 512];
            match (load_patch(&p, &pre), load_patch_into(&p, &pre, &mut got)) {
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{name}"),
                (Ok(a), Ok(())) => assert_eq!(a.as_slice().expect("standard"), &got[..], "{name}"),
                (a, b) => panic!("{name}: load_patch {a:?}, load_patch_into {b:?}"),
            }
        }
        // The oracle: ndarray-npy's own reader, then the whole-array preprocessing.
        let oracle = |name: &str, bytes: &[u8], p: &Path| -> Array3<f32> {
            use ndarray_npy::ReadNpyExt;
            let hu: ArrayD<f32> = match name {
                "f64" => ArrayD::<f64>::read_npy(bytes).expect(name).mapv(|v| v as f32),
                "i16" => ArrayD::<i16>::read_npy(bytes).expect(name).mapv(f32::from),
                _ => ArrayD::<f32>::read_npy(bytes).expect(name),
            };
            pre.apply(&hu, p).expect(name)
        };
        for (name, bytes) in &files {
            let p = dir.path().join(format!("{name}.npy"));
            std::fs::write(&p, bytes).expect("write");
            npy_header(&p).expect(name);
            let want = oracle(name, bytes, &p);
            assert_eq!(want, load_patch(&p, &pre).expect(name), "{name}");
            let mut got = vec![f32::NAN; 512];
            load_patch_into(&p, &pre, &mut got).expect(name);
            assert_eq!(want.as_slice().expect("standard"), &got[..], "{name}");
        }
        // Errors, with load_patch's words.
        let mut nan = cube.clone();
        nan[[3, 2, 1]] = f32::NAN;
        let mut extra = npy(&|b| cube.write_npy(b).expect("npy"));
        extra.extend_from_slice(&[0, 0, 0, 0]);
        let full = npy(&|b| cube.write_npy(b).expect("npy"));
        let f64_inf = npy(&|b| {
            cube.mapv(|v| if v > 1000.0 { 1e300 } else { f64::from(v) })
                .write_npy(b)
                .expect("npy")
        });
        for (name, bytes) in [
            ("nan", npy(&|b| nan.write_npy(b).expect("npy"))),
            ("extra", extra),
            ("truncated", full[..full.len() - 6].to_vec()),
            ("f64_beyond_f32", f64_inf),
            (
                "rank2",
                npy(&|b| ndarray::Array2::<f32>::zeros((8, 64)).write_npy(b).expect("npy")),
            ),
        ] {
            let p = dir.path().join(format!("{name}.npy"));
            std::fs::write(&p, &bytes).expect("write");
            let want = load_patch(&p, &pre).expect_err(name).to_string();
            let mut got = vec![0.0; 512];
            let err = load_patch_into(&p, &pre, &mut got).expect_err(name).to_string();
            assert_eq!(err, want, "{name}");
        }
    }

    /// The crop reader against an independent decoder: ndarray-npy reads the whole array
    /// and [`Preprocess::apply`] crops it. Every dtype, byte order and memory order, on
    /// shapes that crop, pad, or both, by odd and even margins.
    /// A cube in memory gives what its float32 `.npy` file gives: the same model input and
    /// the same digest, whether it is cropped, padded or taken whole; a NaN is refused.
    #[test]
    fn a_cube_in_memory_is_read_as_its_npy_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let pre = Preprocess {
            cube_size: 8,
            ..Preprocess::default()
        };
        for n in [8usize, 11, 5, 64] {
            let cube = Array3::from_shape_fn((n, n, n), |(z, y, x)| {
                ((z * 31 + y * 17 + x * 5) % 97) as f32 * 23.5 - 1100.0
            });
            let p = dir.path().join(format!("c{n}.npy"));
            write_npy(&p, &cube).expect("write");
            let (mut a, mut b) = (vec![0f32; 512], vec![0f32; 512]);
            let from_file = load_patch_hashed(&p, &pre, &mut a).expect("file");
            let from_memory = cube_into_hashed(cube.as_slice().expect("flat"), n, &pre, &mut b).expect("memory");
            assert_eq!(from_file, from_memory, "{n}³");
            assert_eq!(a, b, "{n}³");
        }
        let mut bad = vec![0f32; 1000];
        bad[123] = f32::NAN;
        let e = cube_into_hashed(&bad, 10, &pre, &mut vec![0f32; 512]).expect_err("NaN");
        assert!(e.contains("flat index 123"), "{e}");
    }

    #[test]
    fn crop_reader_equals_reading_whole_and_cropping() {
        use ndarray::ShapeBuilder;
        use ndarray_npy::WriteNpyExt;
        let dir = tempfile::tempdir().expect("tmp");
        let pre = Preprocess {
            cube_size: 8,
            ..Preprocess::default()
        };
        let oracle = |p: &Path| -> Array3<f32> {
            let a: ArrayD<f32> = match ndarray_npy::read_npy::<_, ArrayD<f32>>(p) {
                Ok(a) => a,
                Err(_) => match ndarray_npy::read_npy::<_, ArrayD<f64>>(p) {
                    Ok(a) => a.mapv(|v| v as f32),
                    Err(_) => ndarray_npy::read_npy::<_, ArrayD<i16>>(p).expect("i16").mapv(f32::from),
                },
            };
            pre.apply(&a, p).expect("apply")
        };
        let f = |z: usize, y: usize, x: usize| ((z * 31 + y * 17 + x * 5) % 97) as f32 * 23.0 - 1100.0;
        let mut k = 0;
        for shape in [
            (8, 8, 8),
            (5, 8, 11),
            (13, 3, 9),
            (1, 1, 1),
            (20, 9, 8),
            (8, 20, 7),
            (10, 10, 30),
        ] {
            for fortran in [false, true] {
                let a = if fortran {
                    Array3::from_shape_fn(shape.f(), |(z, y, x)| f(z, y, x))
                } else {
                    Array3::from_shape_fn(shape, |(z, y, x)| f(z, y, x))
                };
                let mut variants: Vec<Vec<u8>> = Vec::new();
                let mut b = Vec::new();
                a.write_npy(&mut b).expect("f32");
                variants.push(b);
                let mut b = Vec::new();
                a.mapv(f64::from).write_npy(&mut b).expect("f64");
                variants.push(b);
                let mut b = Vec::new();
                a.mapv(|v| v as i16).write_npy(&mut b).expect("i16");
                variants.push(b);
                // Big-endian float32 and int16: the descriptor says so and the bytes follow.
                for (from, width) in [(0usize, 4usize), (2, 2)] {
                    let mut be = variants[from].clone();
                    let tag = if width == 4 { b"<f4" } else { b"<i2" };
                    let at = be.windows(3).position(|w| w == tag).expect("descr");
                    be[at] = b'>';
                    let data = be.len() - a.len() * width;
                    for w in be[data..].chunks_exact_mut(width) {
                        w.reverse();
                    }
                    variants.push(be);
                }
                for bytes in variants {
                    k += 1;
                    let p = dir.path().join(format!("v{k}.npy"));
                    std::fs::write(&p, &bytes).expect("write");
                    let want = oracle(&p);
                    let got = load_patch(&p, &pre).expect("load");
                    assert_eq!(got, want, "{shape:?} fortran={fortran} file {k}");
                }
            }
        }
        // A NaN inside the crop is named by its flat index in the whole array; one outside
        // the crop is never read.
        let mut a = Array3::from_shape_fn((10, 10, 10), |(z, y, x)| f(z, y, x));
        a[[5, 6, 7]] = f32::NAN;
        a[[0, 0, 0]] = f32::NAN;
        let p = dir.path().join("nan.npy");
        a.write_npy(std::fs::File::create(&p).expect("create")).expect("w");
        let e = load_patch(&p, &pre).expect_err("nan").to_string();
        assert!(e.contains(&format!("flat index {}", 5 * 100 + 6 * 10 + 7)), "{e}");
        a[[5, 6, 7]] = 0.0;
        a.write_npy(std::fs::File::create(&p).expect("create")).expect("w");
        assert!(
            load_patch(&p, &pre).is_ok(),
            "a NaN outside the crop cannot reach a result"
        );
    }

    /// A well-formed array far larger than the cube (3.4 GB of int16, stored sparse) is read
    /// through its centre crop only; reading it whole is refused with the limit named.
    #[test]
    fn a_huge_array_is_read_only_where_the_crop_needs_it() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("huge.npy");
        let n = 1200usize;
        let head = npy_header_bytes(&format!(
            "{{'descr': '<i2', 'fortran_order': False, 'shape': ({n}, {n}, {n}), }}"
        ));
        let mut file = std::fs::File::create(&p).expect("create");
        file.write_all(&head).expect("w");
        file.set_len((head.len() + n * n * n * 2) as u64).expect("sparse");
        // The voxel at the cube's centre, (n/2, n/2, n/2), holds 123 HU.
        let centre = ((n / 2 * n + n / 2) * n + n / 2) * 2;
        file.write_all_at(&123i16.to_le_bytes(), (head.len() + centre) as u64)
            .expect("w");
        drop(file);
        let pre = Preprocess {
            cube_size: 8,
            hu_min: -1000.0,
            hu_max: 1000.0,
            ..Preprocess::default()
        };
        let cube = load_patch(&p, &pre).expect("crop");
        // The crop starts at (n − 8)/2 = 596, so the centre voxel is at 604 − 596 = 4.
        assert_eq!(cube[[4, 4, 4]], pre.scale(123.0));
        assert_eq!(cube[[3, 4, 4]], pre.scale(0.0));
        let e = read_npy_hu(&p).expect_err("whole").to_string();
        assert!(e.contains("more than the 1073741824 read whole"), "{e}");
    }
}
