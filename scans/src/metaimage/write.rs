//! Writing a MetaImage scan (`.mhd` + `.raw`, or one `.mha`), for tests and tools.
use std::path::Path;

use models::{Error, Result};

use super::{ElementType, Geometry};

/// How [`write`](fn@write) stores the voxels.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    pub element_type: ElementType,
    pub msb: bool,
    pub compressed: bool,
    /// `.mha`-style: data in the same file after the header.
    pub local: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            element_type: ElementType::Short,
            msb: false,
            compressed: false,
            local: false,
        }
    }
}

/// Writes a scan as MetaImage: `path` is the header (`.mhd`, or `.mha` with `local`); the
/// raw data file goes beside it with the extension `.raw` (or `.zraw` compressed). Used by
/// tests and tools that make synthetic scans; integer types are rounded and saturated.
pub fn write(path: &Path, g: &Geometry, voxels: &[f32], o: WriteOptions) -> Result<()> {
    let n: usize = g.dims.iter().product();
    if voxels.len() != n {
        return Err(Error::BadPatch {
            path: path.to_path_buf(),
            msg: format!("{} values for DimSize {:?}", voxels.len(), g.dims),
        });
    }
    let mut data = Vec::with_capacity(n * o.element_type.size());
    for &v in voxels {
        o.element_type.encode(v, o.msb, &mut data);
    }
    if o.compressed {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &data).map_err(|e| Error::from(files::Error::io(path, e)))?;
        data = enc.finish().map_err(|e| Error::from(files::Error::io(path, e)))?;
    }
    let fmt3 = |v: [f64; 3]| format!("{} {} {}", v[0], v[1], v[2]);
    let d = &g.direction;
    let data_name = if o.local {
        "LOCAL".to_string()
    } else {
        let ext = if o.compressed { "zraw" } else { "raw" };
        path.with_extension(ext)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut header = format!(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = {}\nCompressedData = {}\n",
        if o.msb { "True" } else { "False" },
        if o.compressed { "True" } else { "False" },
    );
    if o.compressed {
        header += &format!("CompressedDataSize = {}\n", data.len());
    }
    header += &format!(
        "TransformMatrix = {} {} {} {} {} {} {} {} {}\nOffset = {}\nCenterOfRotation = 0 0 0\nElementSpacing = {}\nDimSize = {} {} {}\nElementType = {}\nElementDataFile = {}\n",
        d[0][0], d[0][1], d[0][2], d[1][0], d[1][1], d[1][2], d[2][0], d[2][1], d[2][2],
        fmt3(g.offset),
        fmt3(g.spacing),
        g.dims[0], g.dims[1], g.dims[2],
        o.element_type.name(),
        data_name
    );
    if o.local {
        let mut all = header.into_bytes();
        all.extend_from_slice(&data);
        Ok(files::write_atomic(path, &all)?)
    } else {
        files::write_atomic(&path.with_file_name(&data_name), &data)?;
        Ok(files::write_atomic(path, header.as_bytes())?)
    }
}
