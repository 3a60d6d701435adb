//! Opening a DICOM file as the standard defines it, whoever wrote it:
//! * a Part-10 file (128-byte preamble, `DICM`, file meta group), or one written without
//!   the preamble (`DICM` first);
//! * a bare data set with no file meta group (older tools, some archives), its transfer
//!   syntax told from its first element as pydicom and DCMTK tell it (explicit or implicit
//!   VR, little or big endian);
//! * attributes stored with VR UN (as anonymisers and some archives rewrite them) decoded by
//!   the VR the standard's data dictionary gives their tag, as pydicom and DCMTK do; dicom-rs
//!   keeps their bytes as they are, so `RescaleSlope` "1" would otherwise read as 49 (the
//!   code of '1').
//!
//! A file that is not DICOM is told apart from one that is damaged: [`foreign_format`] names
//! the scan formats a file of another kind is (NRRD, Analyze, NIfTI, MetaImage, MINC...).
use std::io::Read;
use std::path::Path;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::value::{PrimitiveValue, C};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::{DefaultDicomObject, InMemDicomObject};

use super::walk::Encoding;

use crate::bad;
use models::Result;

/// The most a DICOM file may hold: a CT slice is at most a few MiB (2048² 16-bit pixels
/// are 8 MiB); anything larger is refused before it is parsed.
pub const MAX_FILE: u64 = 256 << 20;

/// What a file holds, as far as opening it tells.
pub enum Opened {
    /// A DICOM data set (with its file meta group, made up from the data set when the file
    /// has none).
    Dicom(Box<DefaultDicomObject>),
    /// Not DICOM.
    NotDicom,
}

/// The text of an error and of every error below it (dicom-rs nests the reason: "could
/// not decode pixel data" → "JPEG decoding failure" → "unsupported precision 12").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut c = e.source();
    while let Some(x) = c {
        let t = x.to_string();
        if !s.contains(&t) {
            s += ": ";
            s += &t;
        }
        c = x.source();
    }
    s
}

/// The largest data set a deflated file may inflate to.
const MAX_INFLATED: u64 = MAX_FILE;

/// Opens `path` (a regular file: [`files::open_regular`]) as DICOM, reading up to
/// the top-level element `until` (all of it when `None`). The file is read whole (at most
/// [`MAX_FILE`]) and its structure checked ([`super::walk`]) before dicom-rs parses it.
pub fn open(path: &Path, until: Option<Tag>) -> Result<Opened> {
    let bytes = read_bounded(path)?;
    let meta_at = if bytes.get(128..132) == Some(b"DICM") {
        Some(132)
    } else if bytes.get(..4) == Some(b"DICM") {
        Some(4)
    } else {
        None
    };
    let damaged = |why: String| bad(path, format!("a damaged DICOM file: {why}"));
    let mut obj = match meta_at {
        Some(at) => {
            let meta_end = at + super::walk::meta_group_end(&bytes[at..]).map_err(damaged)?;
            let meta = dicom_object::FileMetaTable::from_reader(&bytes[at - 4..meta_end])
                .map_err(|e| damaged(format!("its file meta group: {}", chain(&e))))?;
            let ts_uid = meta.transfer_syntax().to_string();
            let (data, enc, ts) = dataset_of(&bytes[meta_end..], &ts_uid).map_err(|e| bad(path, e))?;
            let checked = super::walk::check(&data, enc, until).map_err(damaged)?;
            let ds =
                InMemDicomObject::read_dataset_with_ts(&*checked.data(&data), ts).map_err(|e| damaged(chain(&e)))?;
            ds.with_exact_meta(meta)
        }
        None => {
            let Some((ts, enc)) = bare_data_set(&bytes) else {
                return Ok(Opened::NotDicom);
            };
            let what = |e: String| {
                bad(
                    path,
                    format!(
                        "a DICOM data set without a file meta group (read as {}) that cannot be read: {e}",
                        ts.name()
                    ),
                )
            };
            let checked = super::walk::check(&bytes, enc, until).map_err(what)?;
            let ds = InMemDicomObject::read_dataset_with_ts(&*checked.data(&bytes), ts).map_err(|e| what(chain(&e)))?;
            with_made_up_meta(ds, ts.uid(), path)?
        }
    };
    retype_un(&mut obj);
    Ok(Opened::Dicom(Box::new(obj)))
}

/// The bytes of a regular file of at most [`MAX_FILE`].
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let f = files::open_regular(path)?;
    let len = f.metadata().map_err(|e| files::Error::io(path, e))?.len();
    if len > MAX_FILE {
        return Err(bad(
            path,
            format!("{len} bytes: more than a DICOM slice holds ({MAX_FILE}); not read"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(MAX_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| files::Error::io(path, e))?;
    Ok(bytes)
}

/// The data set after the file meta group, as dicom-rs is to parse it: a deflated one
/// inflated here (bounded by [`MAX_INFLATED`]) and parsed as the explicit VR little endian
/// data it then is; with its encoding for [`super::walk`].
fn dataset_of<'a>(
    b: &'a [u8],
    ts_uid: &str,
) -> std::result::Result<(std::borrow::Cow<'a, [u8]>, Encoding, Ts), String> {
    if ts_uid == "1.2.840.10008.1.2.1.99" {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(b)
            .take(MAX_INFLATED + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("the deflated data set does not inflate: {e}"))?;
        if out.len() as u64 > MAX_INFLATED {
            return Err(format!("the deflated data set inflates past {MAX_INFLATED} bytes"));
        }
        return Ok((out.into(), Encoding::EXPLICIT_LE, ts_named("1.2.840.10008.1.2.1")?));
    }
    let ts =
        ts_named(ts_uid).map_err(|_| format!("transfer syntax {ts_uid:?} is not one the DICOM standard defines"))?;
    let enc = match ts_uid {
        "1.2.840.10008.1.2" => Encoding::IMPLICIT_LE,
        "1.2.840.10008.1.2.2" => Encoding::EXPLICIT_BE,
        _ => Encoding::EXPLICIT_LE,
    };
    Ok((b.into(), enc, ts))
}

type Ts = &'static dicom_encoding::TransferSyntax;

/// A transfer syntax of the registry by its UID.
fn ts_named(uid: &str) -> std::result::Result<Ts, String> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uid)
        .ok_or_else(|| format!("transfer syntax {uid} unknown"))
}

/// The transfer syntax of a data set written without a file meta group, told from its
/// first element (group 0008 or another low group, as such files start): explicit VR when
/// two letters of a VR follow the tag, little or big endian by which reading of the group
/// is small. `None`: these bytes do not start a data set.
fn bare_data_set(head: &[u8]) -> Option<(Ts, Encoding)> {
    if head.len() < 8 {
        return None;
    }
    let (le, be) = (
        u16::from_le_bytes([head[0], head[1]]),
        u16::from_be_bytes([head[0], head[1]]),
    );
    let explicit = VR::from_binary([head[4], head[5]]).is_some_and(|vr| vr != VR::UN)
        && head[4].is_ascii_uppercase()
        && head[5].is_ascii_uppercase();
    // The first elements of a data set are of groups 0002 to 0010, in ascending order.
    let low = |g: u16| (0x0002..=0x0010).contains(&g) && g.is_multiple_of(2);
    if low(le) {
        if explicit {
            Some((ts_named("1.2.840.10008.1.2.1").ok()?, Encoding::EXPLICIT_LE))
        } else {
            // Implicit VR: a 4-byte length follows the tag; it must fit in the file.
            let n = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if n < MAX_FILE as u32 || n == u32::MAX {
                Some((ts_named("1.2.840.10008.1.2").ok()?, Encoding::IMPLICIT_LE))
            } else {
                None
            }
        }
    } else if low(be) && explicit {
        Some((ts_named("1.2.840.10008.1.2.2").ok()?, Encoding::EXPLICIT_BE))
    } else {
        None
    }
}

/// A file meta group for a data set read without one: its transfer syntax, and its SOP
/// class and instance (CT Image Storage and a placeholder when the data set lacks them).
fn with_made_up_meta(ds: InMemDicomObject, ts: &str, path: &Path) -> Result<DefaultDicomObject> {
    let get = |tag: Tag| {
        ds.get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string())
            .filter(|s| !s.is_empty())
    };
    let class = get(tags::SOP_CLASS_UID).unwrap_or_else(|| super::CT_IMAGE_STORAGE.to_string());
    let instance = get(tags::SOP_INSTANCE_UID).unwrap_or_else(|| "2.25.0".to_string());
    ds.with_meta(
        dicom_object::FileMetaTableBuilder::new()
            .transfer_syntax(ts)
            .media_storage_sop_class_uid(class)
            .media_storage_sop_instance_uid(instance),
    )
    .map_err(|e| {
        bad(
            path,
            format!("a DICOM data set without a file meta group: {}", chain(&e)),
        )
    })
}

/// A UN value decoded by the VR the standard dictionary gives `tag` (UN values are always
/// in implicit-VR little-endian form, PS3.5 §6.2.2). `None`: a tag the dictionary does not
/// know (private), a VR that is not text or numbers (sequences, bytes), or bytes that do
/// not fit the VR; such an element stays UN and is never read as a number.
fn decode_un(tag: Tag, bytes: &[u8], signed_pixels: bool) -> Option<(VR, PrimitiveValue)> {
    if bytes.is_empty() {
        return None;
    }
    let vr = match StandardDataDictionary.by_tag(tag)?.vr() {
        VirtualVr::Exact(vr) => vr,
        VirtualVr::Xs => {
            if signed_pixels {
                VR::SS
            } else {
                VR::US
            }
        }
        _ => return None,
    };
    fn le<const N: usize, T>(b: &[u8], f: fn([u8; N]) -> T) -> Option<C<T>> {
        if !b.len().is_multiple_of(N) {
            return None;
        }
        Some(
            b.chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect(),
        )
    }
    let text = || String::from_utf8_lossy(bytes).trim_end_matches(['\0', ' ']).to_string();
    let v = match vr {
        VR::AE
        | VR::AS
        | VR::CS
        | VR::DA
        | VR::DS
        | VR::DT
        | VR::IS
        | VR::LO
        | VR::PN
        | VR::SH
        | VR::TM
        | VR::UC
        | VR::UI => PrimitiveValue::Strs(
            text()
                .split('\\')
                .map(|s| s.trim_matches([' ', '\0']).to_string())
                .collect(),
        ),
        VR::LT | VR::ST | VR::UT | VR::UR => PrimitiveValue::Str(text()),
        VR::US => PrimitiveValue::U16(le(bytes, u16::from_le_bytes)?),
        VR::SS => PrimitiveValue::I16(le(bytes, i16::from_le_bytes)?),
        VR::UL => PrimitiveValue::U32(le(bytes, u32::from_le_bytes)?),
        VR::SL => PrimitiveValue::I32(le(bytes, i32::from_le_bytes)?),
        VR::UV => PrimitiveValue::U64(le(bytes, u64::from_le_bytes)?),
        VR::SV => PrimitiveValue::I64(le(bytes, i64::from_le_bytes)?),
        VR::FL => PrimitiveValue::F32(le(bytes, f32::from_le_bytes)?),
        VR::FD => PrimitiveValue::F64(le(bytes, f64::from_le_bytes)?),
        _ => return None,
    };
    Some((vr, v))
}

/// Re-types every top-level UN element whose tag the standard dictionary knows (see the
/// module documentation); the elements this reader uses are all top-level.
pub fn retype_un(obj: &mut InMemDicomObject) {
    let signed = obj.get(tags::PIXEL_REPRESENTATION).is_some_and(|e| match e.vr() {
        VR::UN => e.value().primitive().is_some_and(|p| p.to_bytes().first() == Some(&1)),
        _ => e.to_int::<u16>().ok() == Some(1),
    });
    let un: Vec<(Tag, Vec<u8>)> = obj
        .iter()
        .filter(|e| e.vr() == VR::UN)
        .filter_map(|e| Some((e.header().tag, e.value().primitive()?.to_bytes().into_owned())))
        .collect();
    // What cannot be decoded stays UN: the reader refuses a UN element it needs by name
    // rather than reading its bytes as numbers.
    for (tag, bytes) in un {
        if let Some((vr, v)) = decode_un(tag, &bytes, signed) {
            obj.put(DataElement::new(tag, vr, v));
        }
    }
}

/// What another scan format's file is, by its name or its first bytes, for a message that
/// says so (never "no DICOM signature" for an NRRD file). `None`: none this knows.
pub fn foreign_format(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let by_name = [
        (".nrrd", "NRRD"),
        (".nhdr", "NRRD (detached header)"),
        (".hdr", "Analyze 7.5 / NIfTI-1 pair header"),
        (".img", "Analyze 7.5 / NIfTI-1 pair image data"),
        (".img.gz", "Analyze 7.5 / NIfTI-1 pair image data"),
        (".mgh", "FreeSurfer MGH"),
        (".mgz", "FreeSurfer MGH (compressed)"),
        (".mnc", "MINC"),
        (".gipl", "GIPL"),
        (".gipl.gz", "GIPL"),
        (".vtk", "VTK"),
        (".vti", "VTK image data"),
        (".nii.gz", "NIfTI"),
        (".nii", "NIfTI"),
        (".mhd", "MetaImage"),
        (".mha", "MetaImage"),
        (".raw", "raw voxel data (a MetaImage's data file?)"),
        (".zraw", "compressed raw voxel data (a MetaImage's data file?)"),
        (".brik", "AFNI BRIK"),
        (".brik.gz", "AFNI BRIK"),
        (".par", "Philips PAR/REC"),
        (".rec", "Philips PAR/REC"),
    ];
    let mut head = [0u8; 352];
    let n = files::open_regular(path)
        .ok()
        .map(|mut f| {
            let mut got = 0;
            while got < head.len() {
                match f.read(&mut head[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got += k,
                }
            }
            got
        })
        .unwrap_or(0);
    let head = &head[..n];
    let sizeof_hdr = |h: &[u8]| {
        h.get(..4).map(|b| {
            (
                i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            )
        })
    };
    let by_content = if head.starts_with(b"NRRD000") {
        Some("NRRD")
    } else if head.starts_with(b"\x89HDF") {
        Some("HDF5 (MINC-2?)")
    } else if head.starts_with(b"CDF\x01") || head.starts_with(b"CDF\x02") {
        Some("NetCDF (MINC-1?)")
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip-compressed data (a .nii.gz or .mgz named otherwise?)")
    } else if head.starts_with(b"ObjectType") || head.starts_with(b"NDims") {
        Some("MetaImage header")
    } else if let Some((le, be)) = sizeof_hdr(head) {
        if le == 348 || be == 348 {
            match head.get(344..348) {
                Some(b"n+1\0") => Some("NIfTI-1"),
                Some(b"ni1\0") => Some("NIfTI-1 pair header (.hdr/.img)"),
                _ => Some("Analyze 7.5 header"),
            }
        } else if le == 540 || be == 540 {
            Some("NIfTI-2")
        } else {
            None
        }
    } else {
        None
    };
    by_content.or_else(|| by_name.iter().find(|(ext, _)| name.ends_with(ext)).map(|(_, f)| *f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn un_values_decode_by_their_dictionary_vr() {
        let (vr, v) = decode_un(tags::RESCALE_SLOPE, b"1 ", false).expect("DS");
        assert_eq!(vr, VR::DS);
        assert_eq!(v.to_float64().expect("f64"), 1.0);
        let (vr, v) = decode_un(tags::ROWS, &512u16.to_le_bytes(), false).expect("US");
        assert_eq!(vr, VR::US);
        assert_eq!(v.to_int::<u32>().expect("int"), 512);
        let (_, v) = decode_un(tags::IMAGE_POSITION_PATIENT, b"-1.5\\2\\3.25", false).expect("DS");
        assert_eq!(v.to_multi_float64().expect("3"), vec![-1.5, 2.0, 3.25]);
        let (_, v) = decode_un(tags::SERIES_INSTANCE_UID, b"1.2.3\0", false).expect("UI");
        assert_eq!(v.to_str(), "1.2.3");
        // US with an odd number of bytes, a private tag: left alone.
        assert!(decode_un(tags::ROWS, &[1, 2, 3], false).is_none());
        assert!(decode_un(Tag(0x0009, 0x1001), b"12", false).is_none());
    }

    #[test]
    fn bare_data_sets_are_told_by_their_first_element() {
        // (0008,0005) CS, explicit little endian.
        let mut h = vec![0x08, 0x00, 0x05, 0x00, b'C', b'S', 10, 0];
        assert!(bare_data_set(&h).is_some_and(|t| t.0.uid() == "1.2.840.10008.1.2.1"));
        // Implicit: a 4-byte length.
        h[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert!(bare_data_set(&h).is_some_and(|t| t.0.uid() == "1.2.840.10008.1.2"));
        // Big endian explicit.
        let h = [0x00, 0x08, 0x00, 0x05, b'C', b'S', 0, 10];
        assert!(bare_data_set(&h).is_some_and(|t| t.0.uid() == "1.2.840.10008.1.2.2"));
        // Text, an NRRD file: not a data set.
        assert!(bare_data_set(b"NRRD0004\n").is_none());
        assert!(bare_data_set(b"# hello world").is_none());
    }
}
