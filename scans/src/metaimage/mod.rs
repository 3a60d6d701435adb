//! MetaImage scans (`.mhd` header + raw data file, or `.mha` with `ElementDataFile = LOCAL`),
//! as LUNA16 ships its 888 CT scans, and their geometry (world millimetres ↔ voxel indices).
//!
//! Written by hand: no kept Rust crate reads MetaImage (ITK's format), and the part we need
//! (3-D, one channel, raw or zlib data) is a page of text parsing.
//!
//! **Axis order.** MetaImage stores x fastest, then y, then z, and lists `DimSize`,
//! `ElementSpacing` and `Offset` as (x, y, z). [`Scan::voxels`] keeps that layout, which is a
//! C-order array of shape (z, y, x), the order of the notebook's patches and of every cube
//! this toolchain writes.
//!
//! **Geometry.** As ITK reads it: row `i` of `TransformMatrix` is the world direction of
//! image axis `i`, so `world = Offset + Σ_i row_i · spacing_i · index_i`. LUNA16's world
//! coordinates (`annotations.csv`, `candidates.csv`) are in this frame. Any invertible
//! direction is handled (flipped and permuted axes included), see [`Geometry`].
use std::io::Read;
use std::path::{Path, PathBuf};

use models::{Error, Result};

mod header;
mod write;

use header::{parse_header, read_header_bytes, Header};
pub use write::{write, WriteOptions};

/// The voxel types of MetaImage's `ElementType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    Char,
    UChar,
    Short,
    UShort,
    Int,
    UInt,
    Float,
    Double,
}

impl ElementType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "MET_CHAR" => Self::Char,
            "MET_UCHAR" => Self::UChar,
            "MET_SHORT" => Self::Short,
            "MET_USHORT" => Self::UShort,
            "MET_INT" | "MET_LONG" => Self::Int,
            "MET_UINT" | "MET_ULONG" => Self::UInt,
            "MET_FLOAT" => Self::Float,
            "MET_DOUBLE" => Self::Double,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Char => "MET_CHAR",
            Self::UChar => "MET_UCHAR",
            Self::Short => "MET_SHORT",
            Self::UShort => "MET_USHORT",
            Self::Int => "MET_INT",
            Self::UInt => "MET_UINT",
            Self::Float => "MET_FLOAT",
            Self::Double => "MET_DOUBLE",
        }
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            Self::Char | Self::UChar => 1,
            Self::Short | Self::UShort => 2,
            Self::Int | Self::UInt | Self::Float => 4,
            Self::Double => 8,
        }
    }

    /// Decodes `bytes` (a whole number of voxels) into `out`.
    fn decode(self, bytes: &[u8], msb: bool, out: &mut Vec<f32>) {
        macro_rules! conv {
            ($t:ty, $n:literal) => {
                out.extend(bytes.chunks_exact($n).map(|c| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c); // chunks_exact: always $n bytes
                    (if msb {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }) as f32
                }))
            };
        }
        match self {
            Self::Char => out.extend(bytes.iter().map(|&b| f32::from(b as i8))),
            Self::UChar => out.extend(bytes.iter().map(|&b| f32::from(b))),
            Self::Short => conv!(i16, 2),
            Self::UShort => conv!(u16, 2),
            Self::Int => conv!(i32, 4),
            Self::UInt => conv!(u32, 4),
            Self::Float => conv!(f32, 4),
            Self::Double => conv!(f64, 8),
        }
    }

    /// Encodes one value (rounded and saturated for integer types).
    fn encode(self, v: f32, msb: bool, out: &mut Vec<u8>) {
        macro_rules! put {
            ($x:expr) => {
                if msb {
                    out.extend_from_slice(&$x.to_be_bytes())
                } else {
                    out.extend_from_slice(&$x.to_le_bytes())
                }
            };
        }
        let r = v.round();
        match self {
            Self::Char => out.push((r as i8) as u8),
            Self::UChar => out.push(r as u8),
            Self::Short => put!(r as i16),
            Self::UShort => put!(r as u16),
            Self::Int => put!(r as i32),
            Self::UInt => put!(r as u32),
            Self::Float => put!(v),
            Self::Double => put!(f64::from(v)),
        }
    }
}

/// Where a scan sits in the world: the mapping between voxel indices (x, y, z) and world
/// millimetres.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    /// Voxels along x, y, z.
    pub dims: [usize; 3],
    /// Voxel size along image axes x, y, z, in mm.
    pub spacing: [f64; 3],
    /// World position of voxel (0, 0, 0), in mm.
    pub offset: [f64; 3],
    /// `direction[i]`: the world direction of image axis i (row i of `TransformMatrix`).
    pub direction: [[f64; 3]; 3],
    /// world − offset ↦ continuous index: the inverse of (direction columns × spacing).
    to_index: [[f64; 3]; 3],
}

impl Geometry {
    /// Checks the values (positive finite spacing, finite offset, invertible direction).
    pub fn new(
        dims: [usize; 3],
        spacing: [f64; 3],
        offset: [f64; 3],
        direction: [[f64; 3]; 3],
    ) -> Result<Self, String> {
        if dims.contains(&0) {
            return Err(format!("DimSize {dims:?} has a zero"));
        }
        check_spacing(&spacing).map_err(|e| format!("ElementSpacing: {e}"))?;
        if offset.iter().any(|o| !(o.is_finite() && o.abs() <= MAX_OFFSET_MM)) {
            return Err(format!(
                "Offset {} lies over {} m from the origin (or is not finite): not a position in a patient",
                fmt_vec(&offset),
                MAX_OFFSET_MM / 1000.0
            ));
        }

        // A = [d0·s0 | d1·s1 | d2·s2] (columns); world − offset = A · index.
        let mut a = [[0.0; 3]; 3];
        for (i, row) in direction.iter().enumerate() {
            for j in 0..3 {
                a[j][i] = row[j] * spacing[i];
            }
        }
        let to_index = invert3(&a).ok_or_else(|| format!("TransformMatrix {direction:?} is singular"))?;
        Ok(Geometry {
            dims,
            spacing,
            offset,
            direction,
            to_index,
        })
    }

    /// World position (mm) of a continuous voxel index (x, y, z).
    pub fn voxel_to_world(&self, idx: [f64; 3]) -> [f64; 3] {
        let mut w = self.offset;
        for ((row, s), i) in self.direction.iter().zip(self.spacing).zip(idx) {
            for (wj, d) in w.iter_mut().zip(row) {
                *wj += d * s * i;
            }
        }
        w
    }

    /// Continuous voxel index (x, y, z) of a world position (mm).
    pub fn world_to_voxel(&self, w: [f64; 3]) -> [f64; 3] {
        let d = [w[0] - self.offset[0], w[1] - self.offset[1], w[2] - self.offset[2]];
        self.apply_to_index(d)
    }

    /// Whether world point `w` (mm) lies in the scan: within half a voxel of its outer voxel
    /// centres along every axis (a NaN is outside).
    pub fn contains_world(&self, w: [f64; 3]) -> bool {
        let v = self.world_to_voxel(w);
        (0..3).all(|k| v[k] >= -0.5 && v[k] <= self.dims[k] as f64 - 0.5)
    }

    /// The index change of a world displacement `d` (mm).
    pub fn apply_to_index(&self, d: [f64; 3]) -> [f64; 3] {
        let m = &self.to_index;
        [
            m[0][0] * d[0] + m[0][1] * d[1] + m[0][2] * d[2],
            m[1][0] * d[0] + m[1][1] * d[1] + m[1][2] * d[2],
            m[2][0] * d[0] + m[2][1] * d[1] + m[2][2] * d[2],
        ]
    }

    /// Whether the direction rows are orthonormal (to 1e-3), as a scanner writes them.
    pub fn is_orthonormal(&self) -> bool {
        (0..3).all(|i| {
            (0..3).all(|k| {
                let dot: f64 = (0..3).map(|j| self.direction[i][j] * self.direction[k][j]).sum();
                (dot - if i == k { 1.0 } else { 0.0 }).abs() < 1e-3
            })
        })
    }
}

fn invert3(a: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    if !det.is_finite() || det.abs() < 1e-12 {
        return None;
    }
    let mut inv = [[0.0; 3]; 3];
    for (r, row) in inv.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            // Cofactor of a[c][r] (transposed), over det.
            let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
            let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
            *v = (a[r1][c1] * a[r2][c2] - a[r1][c2] * a[r2][c1]) / det;
        }
    }
    Some(inv)
}

/// A scan in memory: geometry and voxel values (HU for CT), x fastest.
#[derive(Debug, Clone)]
pub struct Scan {
    pub path: PathBuf,
    pub geometry: Geometry,
    pub element_type: ElementType,
    /// `dims[0] · dims[1] · dims[2]` values; index `x + dims[0]·(y + dims[1]·z)`, i.e. a
    /// C-order (z, y, x) array.
    pub voxels: Vec<f32>,
}

/// Upper bound on voxels a header may claim (2³⁰: a 1024³ volume, 4 GiB as f32; LUNA16's
/// largest is about 512 × 512 × 800), checked before anything is allocated.
pub const MAX_VOXELS: usize = 1 << 30;

/// The finest and coarsest voxel a scan may have, in mm: 1 µm (beyond micro-CT) to 100 mm
/// (no CT slice is thicker). A spacing outside is a unit or encoding mistake (1e-30 makes
/// the voxel grid singular, 1e300 overflows every world position), refused as such.
pub const SPACING_RANGE_MM: (f64, f64) = (1e-3, 100.0);

/// How far from the world origin a scan's origin may lie, in mm (10 m: scanner coordinates
/// are within a metre or two).
pub const MAX_OFFSET_MM: f64 = 1e4;

/// Numbers for a message, without Rust's debug formatting.
pub fn fmt_vec(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
    format!("[{}]", parts.join(", "))
}

/// Checks voxel spacings against [`SPACING_RANGE_MM`]; the error says which and why.
pub fn check_spacing(spacing: &[f64]) -> std::result::Result<(), String> {
    let (lo, hi) = SPACING_RANGE_MM;
    if spacing.iter().any(|s| !(s.is_finite() && *s >= lo && *s <= hi)) {
        return Err(format!(
            "spacing {} mm: each must lie within [{lo}, {hi}] mm (1 µm to 10 cm); a value outside is a unit or encoding mistake",
            fmt_vec(spacing)
        ));
    }
    Ok(())
}

impl Scan {
    /// Reads a `.mhd` (with its data file) or `.mha`.
    pub fn read(path: &Path) -> Result<Scan> {
        let bad = |msg: String| Error::BadPatch {
            path: path.to_path_buf(),
            msg,
        };
        let bytes = read_header_bytes(path)?;
        let h = parse_header(&bytes).map_err(bad)?;
        let n = h.geometry.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let n = n
            .filter(|&n| n <= MAX_VOXELS)
            .ok_or_else(|| bad(format!("DimSize {:?} is implausibly large", h.geometry.dims)))?;
        let mut data = DataFile::open(path, &h, n * h.element_type.size())?;
        let body = if h.compressed { data.inflate()? } else { data.raw()? };
        let mut voxels = Vec::new();
        voxels
            .try_reserve_exact(n)
            .map_err(|_| bad(format!("cannot allocate {n} voxels")))?;
        h.element_type.decode(&body, h.msb, &mut voxels);
        // Integer types are always finite; a float scan with NaN or Inf would be cut into
        // cubes that look like something (0 HU after clipping, say): refused.
        let bad_voxels = voxels.iter().filter(|v| !v.is_finite()).count();
        if bad_voxels > 0 {
            let i = voxels.iter().position(|v| !v.is_finite()).unwrap_or(0);
            let [nx, ny, _] = h.geometry.dims;
            return Err(bad(format!(
                "{bad_voxels} voxel(s) are NaN or Inf (the first at x={}, y={}, z={}); a scan must hold finite values",
                i % nx,
                i / nx % ny,
                i / (nx * ny)
            )));
        }
        Ok(Scan {
            path: path.to_path_buf(),
            geometry: h.geometry,
            element_type: h.element_type,
            voxels,
        })
    }

    /// The value at integer voxel (x, y, z), `None` outside the scan.
    pub fn get(&self, x: i64, y: i64, z: i64) -> Option<f32> {
        let [nx, ny, nz] = self.geometry.dims.map(|d| d as i64);
        if x < 0 || y < 0 || z < 0 || x >= nx || y >= ny || z >= nz {
            return None;
        }
        Some(self.voxels[(x + nx * (y + ny * z)) as usize])
    }

    /// Minimum and maximum voxel value.
    pub fn range(&self) -> (f32, f32) {
        self.voxels
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })
    }
}

/// A scan's voxel data in its file (the header's own file for `LOCAL`, else the one it
/// names): opened as a regular file only, and read no further than the header accounts for
/// (a header naming /dev/zero or a FIFO must not make us read, or wait, forever).
struct DataFile<'a> {
    header_path: &'a Path,
    h: &'a Header,
    path: PathBuf,
    file: std::fs::File,
    len: usize,
    /// Where the voxel bytes (or the zlib stream) start in the file.
    base: usize,
    /// The bytes the header's volume takes.
    need: usize,
}

impl<'a> DataFile<'a> {
    fn open(header_path: &'a Path, h: &'a Header, need: usize) -> Result<Self> {
        let path = match &h.data_file {
            None => header_path.to_path_buf(),
            Some(f) if f.is_absolute() => f.clone(),
            Some(f) => header_path.parent().unwrap_or(Path::new(".")).join(f),
        };
        let bad = |msg: String| Error::BadPatch {
            path: header_path.to_path_buf(),
            msg,
        };
        let data_err = |e: std::io::Error| {
            bad(format!(
                "ElementDataFile {}: {e}",
                path.file_name()
                    .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into())
            ))
        };
        let file = match files::open_regular(&path) {
            Ok(f) => f,
            Err(files::Error::Io { source, .. }) => return Err(data_err(source)),
            Err(_) => return Err(bad(format!("ElementDataFile {} is not a regular file", path.display()))),
        };
        let len = file.metadata().map_err(data_err)?.len() as usize;
        let base = if h.data_file.is_none() { h.header_end } else { 0 };
        Ok(DataFile {
            header_path,
            h,
            path,
            file,
            len,
            base,
            need,
        })
    }

    /// `what` holds fewer bytes than the header's volume.
    fn short(&self, have: usize, what: &str) -> Error {
        Error::BadPatch {
            path: self.path.clone(),
            msg: format!(
                "{what} holds {have} bytes, the header ({} {:?} {}) needs {}",
                self.h.element_type.name(),
                self.h.geometry.dims,
                self.header_path.display(),
                self.need
            ),
        }
    }

    /// The zlib stream inflated, streamed from the file (the compressed bytes are never
    /// held whole) and bounded: never more than the header's volume (plus one byte to
    /// notice more). The buffer grows with what actually inflates, not with what the header
    /// claims, and a failed allocation is an error (read_to_end reserves fallibly).
    fn inflate(&mut self) -> Result<Vec<u8>> {
        use std::io::Seek;
        let avail = self.len.saturating_sub(self.base);
        let csize = self.h.compressed_size.map_or(avail, |c| c.min(avail));
        self.file
            .seek(std::io::SeekFrom::Start(self.base as u64))
            .map_err(|e| Error::from(files::Error::io(&self.path, e)))?;
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(std::io::BufReader::new((&self.file).take(csize as u64)))
            .take(self.need as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::BadPatch {
                path: self.path.clone(),
                msg: format!("compressed data does not inflate (zlib): {e}"),
            })?;
        if out.len() < self.need {
            return Err(self.short(out.len(), "inflated data"));
        }
        if out.len() > self.need {
            return Err(Error::BadPatch {
                path: self.path.clone(),
                msg: format!(
                    "compressed data inflate beyond the {} bytes the header ({} {:?} {}) declares",
                    self.need,
                    self.h.element_type.name(),
                    self.h.geometry.dims,
                    self.header_path.display()
                ),
            });
        }
        Ok(out)
    }

    /// The raw voxel bytes. HeaderSize = −1: the data are the file's last bytes; else they
    /// start HeaderSize bytes in (after the header of a LOCAL file).
    fn raw(&mut self) -> Result<Vec<u8>> {
        use std::io::Seek;
        let need = self.need;
        let start = if self.h.header_size == -1 {
            self.len.saturating_sub(need).max(self.base)
        } else {
            self.base + self.h.header_size as usize
        };
        if self.len < start + need {
            return Err(self.short(self.len.saturating_sub(start), "data"));
        }
        self.file
            .seek(std::io::SeekFrom::Start(start as u64))
            .map_err(|e| Error::from(files::Error::io(&self.path, e)))?;
        let mut body = Vec::new();
        body.try_reserve_exact(need).map_err(|_| Error::BadPatch {
            path: self.header_path.to_path_buf(),
            msg: format!("cannot allocate {need} bytes for the voxel data"),
        })?;
        (&self.file)
            .take(need as u64)
            .read_to_end(&mut body)
            .map_err(|e| Error::from(files::Error::io(&self.path, e)))?;
        if body.len() < need {
            return Err(self.short(body.len(), "data"));
        }
        Ok(body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn geom(direction: [[f64; 3]; 3]) -> Geometry {
        Geometry::new([5, 4, 3], [0.7, 0.8, 2.5], [-10.0, 20.0, -300.0], direction).unwrap()
    }

    #[test]
    fn world_voxel_round_trip_for_any_direction() {
        let dirs = [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
            [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
            {
                let (c, s) = (0.3f64.cos(), 0.3f64.sin());
                [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]
            },
        ];
        for d in dirs {
            let g = geom(d);
            assert!(g.is_orthonormal());
            for idx in [[0.0, 0.0, 0.0], [4.0, 3.0, 2.0], [1.5, -0.25, 7.0]] {
                let w = g.voxel_to_world(idx);
                let back = g.world_to_voxel(w);
                for k in 0..3 {
                    assert!((back[k] - idx[k]).abs() < 1e-9, "{d:?}: {idx:?} -> {w:?} -> {back:?}");
                }
            }
        }
        // Axis x flipped: one voxel along x moves −spacing_x in world x.
        let g = geom([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        let w = g.voxel_to_world([1.0, 0.0, 0.0]);
        assert!(
            (w[0] - (-10.7)).abs() < 1e-12 && w[1] == 20.0 && w[2] == -300.0,
            "{w:?}"
        );
        // Row i is axis i's direction: a permutation sends index y along world z.
        let g = geom([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]);
        let w = g.voxel_to_world([0.0, 1.0, 0.0]);
        assert_eq!(w, [-10.0, 20.0, -300.0 + 0.8]);
    }

    #[test]
    fn header_errors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("NDims = 2\nDimSize = 4 4\nElementType = MET_SHORT\nElementDataFile = x.raw\n", "only 3-D"),
            ("NDims = 3\nDimSize = 4 4\nElementType = MET_SHORT\nElementDataFile = x.raw\n", "expected 3 numbers"),
            ("NDims = 3\nDimSize = 4 4 4\nElementType = MET_LONG_LONG\nElementDataFile = x.raw\n", "ElementType"),
            ("NDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n", "no ElementDataFile"),
            (
                "NDims = 3\nDimSize = 4 4 4\nElementSpacing = 1 0 1\nElementType = MET_SHORT\nElementDataFile = x.raw\n",
                "ElementSpacing",
            ),
            (
                "NDims = 3\nDimSize = 4 4 4\nTransformMatrix = 1 0 0 1 0 0 0 0 1\nElementType = MET_SHORT\nElementDataFile = x.raw\n",
                "singular",
            ),
            ("NDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = x.raw\n", "x.raw"),
            ("\u{89}PNG garbage", "MetaImage"),
            // A data "file" that never ends is refused, not read.
            ("NDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = /dev/zero\n", "not a regular file"),
            ("NDims = 3\nDimSize = 4 4 4\nHeaderSize = -5\nElementType = MET_SHORT\nElementDataFile = x.raw\n", "HeaderSize"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let p = dir.path().join(format!("h{i}.mhd"));
            std::fs::write(&p, text).unwrap();
            let e = Scan::read(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(&format!("h{i}.mhd")), "case {i}: {e}");
        }
    }

    #[test]
    fn every_element_type_and_byte_order_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let g = geom([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        let vals: Vec<f32> = (0..60).map(|i| (i as f32) * 2.0 - 40.0).collect();
        for et in [
            ElementType::Char,
            ElementType::UChar,
            ElementType::Short,
            ElementType::UShort,
            ElementType::Int,
            ElementType::UInt,
            ElementType::Float,
            ElementType::Double,
        ] {
            for (msb, compressed, local) in [
                (false, false, false),
                (true, false, false),
                (false, true, false),
                (true, true, true),
            ] {
                let p = dir.path().join(format!(
                    "{}_{msb}_{compressed}.{}",
                    et.name(),
                    if local { "mha" } else { "mhd" }
                ));
                let o = WriteOptions {
                    element_type: et,
                    msb,
                    compressed,
                    local,
                };
                write(&p, &g, &vals, o).unwrap();
                let s = Scan::read(&p).unwrap();
                assert_eq!(s.geometry, g);
                let unsigned = matches!(et, ElementType::UChar | ElementType::UShort | ElementType::UInt);
                let want: Vec<f32> = vals.iter().map(|&v| if unsigned { v.max(0.0) } else { v }).collect();
                assert_eq!(s.voxels, want, "{et:?} msb={msb} compressed={compressed} local={local}");
            }
        }
    }

    #[test]
    fn short_data_is_an_error_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let g = geom([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        let p = dir.path().join("s.mhd");
        write(&p, &g, &[0.0; 60], WriteOptions::default()).unwrap();
        let raw = dir.path().join("s.raw");
        std::fs::write(&raw, vec![0u8; 100]).unwrap();
        let e = Scan::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("s.raw") && e.contains("holds 100 bytes") && e.contains("needs 120"),
            "{e}"
        );
        // Compressed data that inflates short.
        let p = dir.path().join("c.mhd");
        write(
            &p,
            &g,
            &[0.0; 60],
            WriteOptions {
                compressed: true,
                ..Default::default()
            },
        )
        .unwrap();
        let z = dir.path().join("c.zraw");
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &[0u8; 50]).unwrap();
        std::fs::write(&z, enc.finish().unwrap()).unwrap();
        let e = Scan::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("c.zraw") && e.contains("inflated data holds 50 bytes"),
            "{e}"
        );
        // A header claiming a huge volume is refused before allocating it.
        let p = dir.path().join("big.mhd");
        std::fs::write(
            &p,
            "NDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_SHORT\nElementDataFile = s.raw\n",
        )
        .unwrap();
        let e = Scan::read(&p).unwrap_err().to_string();
        assert!(e.contains("implausibly large"), "{e}");
    }

    /// Compressed data that inflate to more than the header declares, and float scans with
    /// NaN or Inf voxels, are errors naming the file (never cut into cubes of 0 HU).
    #[test]
    fn overlong_inflation_and_non_finite_voxels_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let g = geom([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        let p = dir.path().join("c.mhd");
        let compressed = WriteOptions {
            compressed: true,
            ..Default::default()
        };
        write(&p, &g, &[0.0; 60], compressed).unwrap();
        let z = dir.path().join("c.zraw");
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &[0u8; 1000]).unwrap();
        std::fs::write(&z, enc.finish().unwrap()).unwrap();
        let e = Scan::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("c.zraw") && e.contains("inflate beyond the 120 bytes"),
            "{e}"
        );
        for (bad, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "Inf"), (f32::NEG_INFINITY, "-Inf")] {
            let mut vals = vec![-800.0f32; 60];
            vals[7] = bad;
            let p = dir.path().join("f.mhd");
            let o = WriteOptions {
                element_type: ElementType::Float,
                ..Default::default()
            };
            write(&p, &g, &vals, o).unwrap();
            let e = Scan::read(&p).unwrap_err().to_string();
            assert!(
                e.contains("f.mhd") && e.contains("1 voxel(s) are NaN or Inf"),
                "{what}: {e}"
            );
        }
        // The header itself must be a regular file.
        let e = Scan::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
    }
}
