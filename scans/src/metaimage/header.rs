//! A MetaImage header read into what the reader needs: the `key = value` lines (bounded in
//! size), the kind of image, its geometry, and where its data are.
use std::io::Read;
use std::path::{Path, PathBuf};

use models::{Error, Result};

use super::{ElementType, Geometry};

/// The parsed header.
#[derive(Debug, Clone)]
pub(super) struct Header {
    pub(super) geometry: Geometry,
    pub(super) element_type: ElementType,
    pub(super) msb: bool,
    pub(super) compressed: bool,
    pub(super) compressed_size: Option<usize>,
    pub(super) header_size: i64,
    /// `None`: LOCAL (data follows the header in the same file).
    pub(super) data_file: Option<PathBuf>,
    /// Byte where the header ends (start of LOCAL data).
    pub(super) header_end: usize,
}

/// The header text of a `.mhd`, or the start of a `.mha` (up to and including the
/// `ElementDataFile` line; a header is small, the data may be large).
pub(super) fn read_header_bytes(path: &Path) -> Result<Vec<u8>> {
    let f = files::open_regular(path)?;
    let mut buf = Vec::new();
    let mut r = std::io::BufReader::new(f).take(1 << 20);
    // Read line by line until ElementDataFile (the last header key in MetaIO).
    loop {
        let mut line = Vec::new();
        let n = std::io::BufRead::read_until(&mut r, b'\n', &mut line).map_err(|e| Error::from(files::Error::io(path, e)))?;
        if n == 0 {
            break;
        }
        let is_last = String::from_utf8_lossy(&line)
            .trim_start()
            .get(..15)
            .is_some_and(|k| k.eq_ignore_ascii_case("ElementDataFile"));
        buf.extend_from_slice(&line);
        if is_last {
            break;
        }
    }
    Ok(buf)
}

pub(super) fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let (kv, header_end) = header_lines(bytes)?;
    let f = Fields(&kv);
    f.check_kind()?;
    let geometry = f.geometry()?;
    let et = f.get(&["ElementType"]).ok_or("the header has no ElementType")?;
    let element_type = ElementType::parse(et).ok_or_else(|| {
        format!(
            "ElementType = {et}: not supported (MET_CHAR, MET_UCHAR, MET_SHORT, MET_USHORT, MET_INT, MET_UINT, MET_FLOAT, MET_DOUBLE)"
        )
    })?;
    let msb = match f.get(&["BinaryDataByteOrderMSB", "ElementByteOrderMSB"]) {
        Some(v) => boolean("BinaryDataByteOrderMSB", v)?,
        None => false,
    };
    let compressed = match f.get(&["CompressedData"]) {
        Some(v) => boolean("CompressedData", v)?,
        None => false,
    };
    let compressed_size = match f.get(&["CompressedDataSize"]) {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| format!("CompressedDataSize = {v}: not a byte count"))?,
        ),
        None => None,
    };
    let header_size = match f.get(&["HeaderSize"]) {
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= -1 => n,
            _ => return Err(format!("HeaderSize = {v}: expected -1 or a byte count")),
        },
        None => 0,
    };
    Ok(Header {
        geometry,
        element_type,
        msb,
        compressed,
        compressed_size,
        header_size,
        data_file: f.data_file()?,
        header_end,
    })
}

/// The header's `Key = Value` lines up to and including `ElementDataFile` (the last one:
/// the data may follow in the same file), and the byte where they end.
pub(super) fn header_lines(bytes: &[u8]) -> Result<(Vec<(String, String)>, usize), String> {
    let mut kv: Vec<(String, String)> = Vec::new();
    let mut header_end = 0usize;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        header_end += line.len();
        let text =
            std::str::from_utf8(line).map_err(|_| "the header is not text (is this a MetaImage file?)".to_string())?;
        let t = text.trim();
        if t.is_empty() {
            continue;
        }
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| format!("header line {t:?} is not `Key = Value` (is this a MetaImage file?)"))?;
        let key = k.trim().to_string();
        let is_last = key.eq_ignore_ascii_case("ElementDataFile");
        kv.push((key, v.trim().to_string()));
        if is_last {
            return Ok((kv, header_end));
        }
    }
    Err("the header has no ElementDataFile line".into())
}

/// `True`/`False` (or 1/0), as ITK writes them.
pub(super) fn boolean(name: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{name} = {v}: expected True or False")),
    }
}

/// A header's fields, looked up by any of a key's names (case-insensitive, as ITK does).
pub(super) struct Fields<'a>(&'a [(String, String)]);

impl Fields<'_> {
    pub(super) fn get(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| {
            self.0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
        })
    }

    pub(super) fn floats(name: &str, v: &str, n: usize) -> Result<Vec<f64>, String> {
        let xs: Vec<f64> = v
            .split_whitespace()
            .map(str::parse::<f64>)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{name} = {v}: not {n} numbers"))?;
        if xs.len() != n {
            return Err(format!("{name} = {v}: expected {n} numbers, found {}", xs.len()));
        }
        Ok(xs)
    }

    /// A 3-D, single-channel, binary image: what a CT scan is.
    pub(super) fn check_kind(&self) -> Result<(), String> {
        if let Some(t) = self.get(&["ObjectType"]) {
            if !t.eq_ignore_ascii_case("Image") {
                return Err(format!("ObjectType = {t}: only Image is supported"));
            }
        }
        let ndims = self.get(&["NDims"]).ok_or("the header has no NDims")?;
        if ndims != "3" {
            return Err(format!("NDims = {ndims}: only 3-D scans are supported"));
        }
        if let Some(c) = self.get(&["ElementNumberOfChannels"]) {
            if c != "1" {
                return Err(format!(
                    "ElementNumberOfChannels = {c}: only single-channel scans are supported"
                ));
            }
        }
        if let Some(b) = self.get(&["BinaryData"]) {
            if !boolean("BinaryData", b)? {
                return Err("BinaryData = False (ASCII voxel data) is not supported".into());
            }
        }
        Ok(())
    }

    /// Dimensions, spacing, offset and direction (ITK's defaults where a key is absent).
    pub(super) fn geometry(&self) -> Result<Geometry, String> {
        let dims_s = self.get(&["DimSize"]).ok_or("the header has no DimSize")?;
        let dims_v: Vec<usize> = dims_s
            .split_whitespace()
            .map(str::parse::<usize>)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("DimSize = {dims_s}: not 3 positive integers"))?;
        let dims: [usize; 3] = dims_v
            .try_into()
            .map_err(|v: Vec<usize>| format!("DimSize = {dims_s}: expected 3 numbers, found {}", v.len()))?;
        let spacing = match self.get(&["ElementSpacing", "ElementSize"]) {
            Some(v) => Self::floats("ElementSpacing", v, 3)?,
            None => vec![1.0; 3],
        };
        let offset = match self.get(&["Offset", "Origin", "Position"]) {
            Some(v) => Self::floats("Offset", v, 3)?,
            None => vec![0.0; 3],
        };
        let m = match self.get(&["TransformMatrix", "Rotation", "Orientation"]) {
            Some(v) => Self::floats("TransformMatrix", v, 9)?,
            None => vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        };
        let direction = [[m[0], m[1], m[2]], [m[3], m[4], m[5]], [m[6], m[7], m[8]]];
        Geometry::new(
            dims,
            [spacing[0], spacing[1], spacing[2]],
            [offset[0], offset[1], offset[2]],
            direction,
        )
    }

    /// The data file (`None`: `LOCAL`, in this file after the header); multi-file data is
    /// refused.
    pub(super) fn data_file(&self) -> Result<Option<PathBuf>, String> {
        let df = self.get(&["ElementDataFile"]).unwrap_or_default();
        if df.eq_ignore_ascii_case("LOCAL") {
            Ok(None)
        } else if df.is_empty() {
            Err("ElementDataFile is empty".into())
        } else if df.eq_ignore_ascii_case("LIST") || df.contains('%') {
            Err(format!("ElementDataFile = {df}: multi-file data is not supported"))
        } else {
            Ok(Some(PathBuf::from(df)))
        }
    }
}
