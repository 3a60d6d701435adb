//! DICOM CT series (dicom-rs: `dicom-object`, `dicom-pixeldata` with its pure-Rust decoders,
//! and [`jpeg12`] for 12-bit JPEG Extended).
//!
//! A series is the files that share a SeriesInstanceUID (one folder may hold several; each
//! is a scan). Its geometry, as ITK (and so LUNA16's MetaImage files) defines it:
//! * image x along ImageOrientationPatient's row direction, y along its column direction,
//!   z along their cross product (the slice normal), in the patient's LPS frame;
//! * slices ordered by ImagePositionPatient projected on that normal — not by file name or
//!   InstanceNumber — the first one's position the origin;
//! * x and y spacing from PixelSpacing (columns, rows), z spacing the median distance between
//!   consecutive positions (never SliceThickness, which is the slab a slice integrates).
//!
//! Voxels are RescaleSlope × stored value + RescaleIntercept, per slice (HU for CT).
//!
//! Files are read as the standard defines them, whoever wrote them ([`open`]): with or
//! without the Part-10 preamble or file meta group, attributes stored as UN decoded by their
//! dictionary VR. Pixel data decode in every transfer syntax listed in [`TRANSFER_SYNTAXES`];
//! any other is refused by name.
//!
//! Refused, each with a message naming the file and what is wrong: a modality other than CT;
//! files of one SeriesInstanceUID from different patients, studies or frames of reference
//! (an anonymiser that gave two series one UID: never interleaved into one volume); slices
//! that differ in size, spacing or orientation (non-parallel slices); positions off the
//! normal through the first one (gantry tilt, or a sheared stack); two slices at one
//! position; a gap over 1.5 × the median spacing (a missing slice); multi-frame or colour
//! images; a RescaleSlope that is zero or not finite, a rescale that overflows float32 or
//! gives values no CT holds; a transfer syntax not in the list, named with its UID.
use std::path::{Path, PathBuf};

use dicom_core::header::HasLength;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};

use crate::metaimage::{ElementType, Geometry};
use crate::{bad, guard, Scan};
use models::Result;

pub mod jpeg12;
pub mod open;
pub mod walk;

pub use open::{foreign_format, Opened};

/// The transfer syntaxes whose pixel data this reader decodes, with their names.
pub const TRANSFER_SYNTAXES: [(&str, &str); 10] = [
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian"),
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian (retired)"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline (8-bit)"),
    ("1.2.840.10008.1.2.4.51", "JPEG Extended (12-bit)"),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless, Non-Hierarchical"),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless, First-Order Prediction"),
    (
        "1.2.840.10008.1.2.1.98",
        "Encapsulated Uncompressed Explicit VR Little Endian",
    ),
];

/// Media Storage Directory Storage: a DICOMDIR, an index of the files beside it.
const DICOMDIR_CLASS: &str = "1.2.840.10008.1.3.10";

/// The largest slice read, in pixels (a CT slice has 512² or 1024²; 2048² at most).
const MAX_SLICE_PIXELS: usize = 2048 * 2048;

/// The most voxels one series may have (as MetaImage's reader allows).
const MAX_VOXELS: usize = crate::metaimage::MAX_VOXELS;

/// HU a CT holds at most, either way (air is −1000, padding values reach about −3000 and
/// −32768 with an intercept, dense metal 30000 on extended scales): a rescaled value beyond
/// these is no Hounsfield unit, and the rescale is wrong.
const HU_RANGE: (f64, f64) = (-40_000.0, 100_000.0);

/// What [`probe`] tells of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// An image of the series with this SeriesInstanceUID.
    Series(String),
    /// A DICOMDIR (an index of files, no image).
    Directory,
    /// Not a DICOM file.
    NotDicom,
}

/// What a DICOM file is (its header only): an image of a series, a DICOMDIR, or not DICOM.
pub fn probe(path: &Path) -> Result<Probe> {
    let Opened::Dicom(obj) = open::open(path, Some(tags::PIXEL_DATA))? else {
        return Ok(Probe::NotDicom);
    };
    if obj.meta().media_storage_sop_class_uid() == DICOMDIR_CLASS || obj.get(tags::DIRECTORY_RECORD_SEQUENCE).is_some()
    {
        return Ok(Probe::Directory);
    }
    let uid = text(&obj, path, tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
    if uid.is_empty() {
        return Err(bad(path, "SeriesInstanceUID is empty: the file names no series"));
    }
    Ok(Probe::Series(uid))
}

/// An element this reader needs, refused by name when it is stored as UN and could not be
/// decoded by its dictionary VR (its bytes are never read as numbers).
fn element<'a>(
    obj: &'a DefaultDicomObject,
    path: &Path,
    tag: dicom_core::Tag,
    name: &str,
) -> Result<Option<&'a dicom_object::mem::InMemElement>> {
    let e = obj.element_opt(tag).map_err(|e| bad(path, format!("{name}: {e}")))?;
    if let Some(e) = e {
        if e.vr() == VR::UN {
            return Err(bad(
                path,
                format!("{name} is stored with VR UN and its bytes do not fit its dictionary VR"),
            ));
        }
    }
    Ok(e)
}

fn text(obj: &DefaultDicomObject, path: &Path, tag: dicom_core::Tag, name: &str) -> Result<String> {
    let e = element(obj, path, tag, name)?.ok_or_else(|| bad(path, format!("no {name}")))?;
    let s = e.to_str().map_err(|e| bad(path, format!("{name}: {e}")))?;
    Ok(s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string())
}

/// An optional text attribute ("" when absent).
fn text_or_empty(obj: &DefaultDicomObject, path: &Path, tag: dicom_core::Tag, name: &str) -> Result<String> {
    match element(obj, path, tag, name)? {
        None => Ok(String::new()),
        Some(_) => text(obj, path, tag, name),
    }
}

fn numbers(obj: &DefaultDicomObject, path: &Path, tag: dicom_core::Tag, name: &str, n: usize) -> Result<Vec<f64>> {
    let e = element(obj, path, tag, name)?.ok_or_else(|| bad(path, format!("no {name}")))?;
    let v = e.to_multi_float64().map_err(|e| bad(path, format!("{name}: {e}")))?;
    if v.len() != n || v.iter().any(|x| !x.is_finite()) {
        let shown: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        return Err(bad(
            path,
            format!("{name} must be {n} finite numbers, got [{}]", shown.join(", ")),
        ));
    }
    Ok(v)
}

fn number_or(obj: &DefaultDicomObject, path: &Path, tag: dicom_core::Tag, name: &str, default: f64) -> Result<f64> {
    match element(obj, path, tag, name)? {
        None => Ok(default),
        Some(e) if e.is_empty() => Ok(default),
        Some(e) => {
            let v = e.to_float64().map_err(|e| bad(path, format!("{name}: {e}")))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(bad(path, format!("{name} is not finite: {v}")))
            }
        }
    }
}

/// Who and where a slice belongs to: one series is one patient, study and frame of
/// reference.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    patient: String,
    study: String,
    frame: String,
}

/// One slice's header.
struct Slice {
    path: PathBuf,
    obj: DefaultDicomObject,
    identity: Identity,
    position: [f64; 3],
    /// Row direction, column direction.
    orientation: [[f64; 3]; 2],
    /// Between columns (x), between rows (y).
    spacing: [f64; 2],
    size: [usize; 2],
    slope: f64,
    intercept: f64,
    /// PixelRepresentation 1 (two's complement) and BitsStored, for the 12-bit JPEG path.
    signed: bool,
    bits_stored: u32,
}

fn slice(path: &Path) -> Result<Slice> {
    let Opened::Dicom(obj) = open::open(path, None)? else {
        return Err(bad(path, "not a DICOM file"));
    };
    let obj = *obj;
    let modality = text(&obj, path, tags::MODALITY, "Modality")?;
    if modality != "CT" {
        return Err(bad(path, format!("Modality {modality:?}: only CT is read (HU)")));
    }
    let frames = number_or(&obj, path, tags::NUMBER_OF_FRAMES, "NumberOfFrames", 1.0)?;
    if frames != 1.0 {
        return Err(bad(
            path,
            format!("{frames} frames: multi-frame images are not read (one slice per file)"),
        ));
    }
    let samples = number_or(&obj, path, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel", 1.0)?;
    if samples != 1.0 {
        return Err(bad(path, format!("{samples} samples per pixel: a CT slice has one")));
    }
    let ipp = numbers(&obj, path, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient", 3)?;
    let iop = numbers(
        &obj,
        path,
        tags::IMAGE_ORIENTATION_PATIENT,
        "ImageOrientationPatient",
        6,
    )?;
    let ps = numbers(&obj, path, tags::PIXEL_SPACING, "PixelSpacing", 2)?;
    if let Err(why) = crate::metaimage::check_spacing(&[ps[1], ps[0]]) {
        return Err(bad(path, format!("PixelSpacing: {why}")));
    }
    if ipp.iter().any(|p| p.abs() > crate::metaimage::MAX_OFFSET_MM) {
        return Err(bad(
            path,
            format!(
                "ImagePositionPatient {ipp:?} lies over {} m from the origin: not a position in a patient",
                crate::metaimage::MAX_OFFSET_MM / 1000.0
            ),
        ));
    }
    let rows = number_or(&obj, path, tags::ROWS, "Rows", 0.0)?;
    let cols = number_or(&obj, path, tags::COLUMNS, "Columns", 0.0)?;
    if rows < 1.0 || cols < 1.0 {
        return Err(bad(path, format!("Rows {rows} × Columns {cols}: no image")));
    }
    if rows * cols > MAX_SLICE_PIXELS as f64 {
        return Err(bad(
            path,
            format!("Rows {rows} × Columns {cols}: more than the {MAX_SLICE_PIXELS} pixels a slice may have"),
        ));
    }
    let unit = |v: [f64; 3]| {
        let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        (n > 1e-6).then(|| v.map(|x| x / n))
    };
    let (Some(row), Some(col)) = (unit([iop[0], iop[1], iop[2]]), unit([iop[3], iop[4], iop[5]])) else {
        return Err(bad(
            path,
            format!("ImageOrientationPatient {iop:?} has a zero direction"),
        ));
    };
    if dot(row, col).abs() > 1e-3 {
        return Err(bad(
            path,
            format!("ImageOrientationPatient {iop:?}: row and column directions are not perpendicular"),
        ));
    }
    let slope = number_or(&obj, path, tags::RESCALE_SLOPE, "RescaleSlope", 1.0)?;
    if slope == 0.0 {
        return Err(bad(
            path,
            "RescaleSlope is 0: every voxel would be the intercept; the rescale is wrong",
        ));
    }
    let intercept = number_or(&obj, path, tags::RESCALE_INTERCEPT, "RescaleIntercept", 0.0)?;
    let identity = Identity {
        patient: text_or_empty(&obj, path, tags::PATIENT_ID, "PatientID")?,
        study: text_or_empty(&obj, path, tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
        frame: text_or_empty(&obj, path, tags::FRAME_OF_REFERENCE_UID, "FrameOfReferenceUID")?,
    };
    let signed = number_or(&obj, path, tags::PIXEL_REPRESENTATION, "PixelRepresentation", 0.0)? == 1.0;
    let bits_stored = number_or(&obj, path, tags::BITS_STORED, "BitsStored", 16.0)?;
    if !(1.0..=32.0).contains(&bits_stored) {
        return Err(bad(path, format!("BitsStored {bits_stored}")));
    }
    Ok(Slice {
        path: path.to_path_buf(),
        position: [ipp[0], ipp[1], ipp[2]],
        orientation: [row, col],
        spacing: [ps[1], ps[0]],
        size: [cols as usize, rows as usize],
        slope,
        intercept,
        identity,
        signed,
        bits_stored: bits_stored as u32,
        obj,
    })
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// How far apart (mm) two positions along the normal must be to be two slices.
const SAME_POSITION_MM: f64 = 1e-3;
/// A gap over this many median spacings is a missing slice.
const MAX_GAP: f64 = 1.5;

/// Checks that every slice belongs to the first one's patient, study and frame of
/// reference: one SeriesInstanceUID given to two series (an anonymiser's fault) is refused,
/// never interleaved.
fn one_series(slices: &[Slice], uid: &str) -> Result<()> {
    let first = &slices[0];
    for s in &slices[1..] {
        let (a, b) = (&first.identity, &s.identity);
        for (what, x, y) in [
            ("PatientID", &a.patient, &b.patient),
            ("StudyInstanceUID", &a.study, &b.study),
            ("FrameOfReferenceUID", &a.frame, &b.frame),
        ] {
            if x != y {
                return Err(bad(
                    &s.path,
                    format!(
                        "SeriesInstanceUID {uid} is shared with {}, but its {what} is {y:?} where that file's is {x:?}: \
                         two series under one UID (an anonymiser's fault?); not read as one volume",
                        first.path.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}
/// Orders the slices along the normal and checks the stack; returns the z spacing.
fn stack(slices: &mut [Slice], dir: &Path) -> Result<f64> {
    let first = &slices[0];
    let (orient, spacing, size) = (first.orientation, first.spacing, first.size);
    for s in slices.iter() {
        let same_orientation = (0..2).all(|k| dot(s.orientation[k], orient[k]) > 1.0 - 1e-6);
        if !same_orientation {
            return Err(bad(
                &s.path,
                format!(
                    "ImageOrientationPatient differs from {}'s: the slices are not parallel",
                    first.path.display()
                ),
            ));
        }
        if s.size != size || (0..2).any(|k| (s.spacing[k] - spacing[k]).abs() > 1e-6 * spacing[k].max(1.0)) {
            return Err(bad(
                &s.path,
                format!(
                    "{}×{} pixels of {:?} mm, where {} has {}×{} of {:?} mm: one series, one slice format",
                    s.size[0],
                    s.size[1],
                    s.spacing,
                    first.path.display(),
                    size[0],
                    size[1],
                    spacing
                ),
            ));
        }
    }
    let normal = cross(orient[0], orient[1]);
    slices.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    let origin = slices[0].position;
    let mut steps = Vec::with_capacity(slices.len());
    for w in slices.windows(2) {
        let step = dot(w[1].position, normal) - dot(w[0].position, normal);
        if step < SAME_POSITION_MM {
            return Err(bad(
                &w[1].path,
                format!(
                    "at the same position along the slice normal as {} ({:.3} mm): a duplicate slice",
                    w[0].path.display(),
                    dot(w[0].position, normal)
                ),
            ));
        }
        steps.push(step);
    }
    if steps.is_empty() {
        return Err(bad(dir, "a series of one slice is not a volume"));
    }
    // Every position on the normal through the first: otherwise the stack is sheared
    // (gantry tilt) and the voxel grid is not a box.
    for s in slices.iter() {
        let d = [0, 1, 2].map(|k| s.position[k] - origin[k]);
        let along = dot(d, normal);
        let off = [0, 1, 2].map(|k| d[k] - along * normal[k]);
        let off = dot(off, off).sqrt();
        if off > 1e-2 * spacing[0].min(spacing[1]).max(0.01) && off > 1e-3 {
            return Err(bad(
                &s.path,
                format!(
                    "ImagePositionPatient lies {off:.3} mm off the slice normal through the first slice: gantry tilt or a sheared stack is not read"
                ),
            ));
        }
    }
    let mut sorted = steps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    for (i, &st) in steps.iter().enumerate() {
        if st > MAX_GAP * median {
            return Err(bad(
                &slices[i + 1].path,
                format!(
                    "{st:.3} mm after {}, where the median spacing is {median:.3} mm: a missing slice",
                    slices[i].path.display()
                ),
            ));
        }
    }
    Ok(median)
}

/// The pixel data of a JPEG-coded slice as one byte stream (its fragments joined; a single
/// frame may be split over several).
fn jpeg_stream(s: &Slice) -> Option<Vec<u8>> {
    let frags = s.obj.get(tags::PIXEL_DATA)?.value().fragments()?;
    Some(frags.iter().flat_map(|f| f.iter().copied()).collect())
}

/// A sequential-DCT JPEG frame (8 or 12 bits) decoded by our decoder, which gives what IJG
/// libjpeg (DCMTK, GDCM) gives, sample for sample; checked against the header.
fn jpeg_values(s: &Slice, stream: &[u8]) -> Result<Vec<f64>> {
    let img = jpeg12::decode(stream, Some((s.size[0], s.size[1])))
        .map_err(|e| bad(&s.path, format!("JPEG pixel data: {e}")))?;
    if [img.width, img.height] != s.size {
        return Err(bad(
            &s.path,
            format!(
                "the JPEG image is {}×{} where Columns × Rows say {}×{}",
                img.width, img.height, s.size[0], s.size[1]
            ),
        ));
    }
    // The JPEG's precision holds BitsStored bits: more would be a sign bit the samples
    // lack, and a sample beyond them a value the header does not allow.
    let bits = s.bits_stored;
    if bits > u32::from(img.precision) {
        return Err(bad(
            &s.path,
            format!(
                "BitsStored {bits} in a {}-bit JPEG: the header and the pixel data disagree",
                img.precision
            ),
        ));
    }
    if let Some(v) = img.samples.iter().find(|&&v| u32::from(v) >= 1 << bits) {
        return Err(bad(
            &s.path,
            format!("a sample of {v} in {bits} stored bits: the header and the pixel data disagree"),
        ));
    }
    Ok(img
        .samples
        .iter()
        .map(|&v| {
            let v = i64::from(v);
            // Two's complement within BitsStored when PixelRepresentation is 1.
            if s.signed && bits < 32 && v >= 1 << (bits - 1) {
                (v - (1 << bits)) as f64
            } else {
                v as f64
            }
        })
        .collect())
}

/// One slice's stored values, decoded: 12-bit JPEG by [`jpeg12`], everything else by
/// dicom-pixeldata.
fn stored_values(s: &Slice, ts: &str) -> Result<Vec<f64>> {
    let jpeg = ts == "1.2.840.10008.1.2.4.50" || ts == "1.2.840.10008.1.2.4.51";
    if jpeg {
        // Sequential DCT at 8 or 12 bits: our decoder, which gives what IJG libjpeg (DCMTK,
        // GDCM) gives, sample for sample.
        if let Some(stream) = jpeg_stream(s).filter(|d| jpeg12::sequential_precision(d).is_some()) {
            return jpeg_values(s, &stream);
        }
    }
    // Native (uncompressed) pixel data must hold the slice: checked here, before a decoder
    // sizes its buffers by Rows × Columns.
    if let Some(bytes) = s
        .obj
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().primitive())
        .map(|p| p.calculate_byte_len())
    {
        let bits = number_or(&s.obj, &s.path, tags::BITS_ALLOCATED, "BitsAllocated", 16.0)?;
        if ![8.0, 16.0, 32.0].contains(&bits) {
            return Err(bad(
                &s.path,
                format!("BitsAllocated {bits}: a CT slice has 8, 16 or 32"),
            ));
        }
        let need = s.size[0] * s.size[1] * bits as usize / 8;
        if bytes < need {
            return Err(bad(
                &s.path,
                format!(
                    "{bytes} bytes of pixel data where {}×{} pixels of {bits} bits need {need}: truncated",
                    s.size[0], s.size[1]
                ),
            ));
        }
    }
    if ts == "1.2.840.10008.1.2.5" {
        check_rle(s)?;
    }
    let decode = || {
        s.obj.decode_pixel_data().and_then(|d| {
            d.to_vec_with_options::<f64>(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
        })
    };
    let decoded = guard::decoder(decode)
        .map_err(|p| bad(&s.path, format!("pixel data the decoder cannot take ({p}): damaged")))?;
    decoded.map_err(|e| {
        let name = TRANSFER_SYNTAXES
            .iter()
            .find(|(u, _)| *u == ts)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| {
                use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
                dicom_transfer_syntax_registry::TransferSyntaxRegistry
                    .get(ts)
                    .map_or("unknown".to_string(), |t| t.name().to_string())
            });
        let supported = TRANSFER_SYNTAXES.iter().any(|(u, _)| *u == ts);
        bad(
            &s.path,
            if supported {
                format!("pixel data in transfer syntax {ts} ({name}) cannot be decoded: {}", open::chain(&e))
            } else {
                format!(
                    "pixel data in transfer syntax {ts} ({name}) are not read here (read: uncompressed, deflated, RLE, \
                     JPEG baseline, extended and lossless); convert the series, e.g. with `gdcmconv --raw` or `dcmdjpls`: {}",
                    open::chain(&e)
                )
            },
        )
    })
}

/// An RLE Lossless frame's header checked before dicom-rs's decoder reads it (it sizes an
/// array by the segment count and slices by the offsets unchecked): one fragment, a 64-byte
/// header, one segment per byte of a sample, offsets rising inside the fragment.
fn check_rle(s: &Slice) -> Result<()> {
    let frags = s
        .obj
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().fragments())
        .ok_or_else(|| bad(&s.path, "RLE Lossless pixel data that are not encapsulated"))?;
    let [f] = frags else {
        return Err(bad(
            &s.path,
            format!("{} RLE fragments for one frame: one expected", frags.len()),
        ));
    };
    let bits = number_or(&s.obj, &s.path, tags::BITS_ALLOCATED, "BitsAllocated", 16.0)?;
    let want = (bits / 8.0).ceil() as usize;
    let word = |i: usize| {
        f.get(4 * i..4 * i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let damaged = |why: &str| bad(&s.path, format!("an RLE Lossless frame with {why}: damaged"));
    let n = word(0).ok_or_else(|| damaged("no header"))?;
    if f.len() < 64 || n != want || !(1..=15).contains(&n) {
        return Err(damaged(&format!("{n} segments where {bits}-bit samples have {want}")));
    }
    let mut last = 63;
    for i in 1..=n {
        let o = word(i).ok_or_else(|| damaged("a short header"))?;
        if o <= last || o >= f.len() {
            return Err(damaged(&format!(
                "segment offset {o} outside the frame of {} bytes",
                f.len()
            )));
        }
        last = o;
    }
    Ok(())
}

/// One slice's voxels in HU (its own slope and intercept), row by row.
fn voxels(s: &Slice, out: &mut Vec<f32>) -> Result<()> {
    let ts = s.obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let raw = stored_values(s, &ts)?;
    if raw.len() != s.size[0] * s.size[1] {
        return Err(bad(
            &s.path,
            format!("{} pixel values for {}×{} pixels", raw.len(), s.size[0], s.size[1]),
        ));
    }
    for v in raw {
        let hu = s.slope * v + s.intercept;
        if !(HU_RANGE.0..=HU_RANGE.1).contains(&hu) {
            return Err(bad(
                &s.path,
                format!(
                    "RescaleSlope {} × stored {v} + RescaleIntercept {} = {hu:e}: no CT holds that (HU lie within \
                     [{}, {}]); the rescale or the pixel data are wrong",
                    s.slope, s.intercept, HU_RANGE.0, HU_RANGE.1
                ),
            ));
        }
        out.push(hu as f32);
    }
    Ok(())
}

/// Reads the series made of `files` (found in `dir`) into a scan (see the module
/// documentation).
pub fn read_series(dir: &Path, files: &[PathBuf]) -> Result<Scan> {
    if files.is_empty() {
        return Err(bad(dir, "a DICOM series without files"));
    }
    let mut slices = files.iter().map(|p| slice(p)).collect::<Result<Vec<_>>>()?;
    let uid = text(
        &slices[0].obj,
        &slices[0].path,
        tags::SERIES_INSTANCE_UID,
        "SeriesInstanceUID",
    )?;
    for s in &slices[1..] {
        let other = text(&s.obj, &s.path, tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
        if other != uid {
            return Err(bad(
                &s.path,
                format!("SeriesInstanceUID {other}, not {uid}: another series"),
            ));
        }
    }
    one_series(&slices, &uid)?;
    let dz = stack(&mut slices, dir)?;
    let first = &slices[0];
    let [row, col] = first.orientation;
    let normal = cross(row, col);
    let dims = [first.size[0], first.size[1], slices.len()];
    let geometry = Geometry::new(
        dims,
        [first.spacing[0], first.spacing[1], dz],
        first.position,
        [row, col, normal],
    )
    .map_err(|e| bad(dir, e))?;
    let n = dims.iter().product::<usize>();
    if n > MAX_VOXELS {
        return Err(bad(
            dir,
            format!("{dims:?} voxels: more than the {MAX_VOXELS} a scan may have"),
        ));
    }
    let mut voxels_out = Vec::new();
    voxels_out
        .try_reserve_exact(n)
        .map_err(|_| bad(dir, format!("cannot allocate {n} voxels")))?;
    for s in &slices {
        voxels(s, &mut voxels_out)?;
    }
    Ok(Scan {
        path: dir.to_path_buf(),
        geometry,
        element_type: ElementType::Float,
        voxels: voxels_out,
    })
}

/// Writes `scan` as a DICOM CT series: one file per slice (`IM<n>.dcm`, `n` not in slice
/// order), 16-bit signed stored values (voxels rounded and saturated to int16; slope 1,
/// intercept 0), in the uncompressed explicit-VR little-endian transfer syntax unless `ts`
/// names another, whose pixel data `edit` then supplies; `edit` may change any slice's
/// object before it is written. For tests and tools that make series (the reader's own
/// checks apply to what it writes). Returns the files in slice order.
pub fn write_series(
    scan: &Scan,
    dir: &Path,
    series_uid: &str,
    ts: Option<&str>,
    edit: &dyn Fn(usize, &mut dicom_object::InMemDicomObject),
) -> Result<Vec<PathBuf>> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    std::fs::create_dir_all(dir).map_err(|e| files::Error::io(dir, e))?;
    let g = &scan.geometry;
    let [nx, ny, nz] = g.dims;
    let ds = |v: f64| format!("{v}");
    let mut files = Vec::with_capacity(nz);
    for z in 0..nz {
        let mut o = dicom_object::InMemDicomObject::new_empty();
        let mut put = |tag, vr, val: PrimitiveValue| {
            o.put(DataElement::new(tag, vr, val));
        };
        let sop = format!("{series_uid}.{}", z + 1);
        put(tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE.into());
        put(tags::SOP_INSTANCE_UID, VR::UI, sop.as_str().into());
        put(tags::MODALITY, VR::CS, "CT".into());
        put(tags::SERIES_INSTANCE_UID, VR::UI, series_uid.into());
        // Against the order in space: readers must not sort by it.
        put(tags::INSTANCE_NUMBER, VR::IS, ds((nz - z) as f64).as_str().into());
        let pos = g.voxel_to_world([0.0, 0.0, z as f64]);
        put(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(pos.iter().map(|&p| ds(p)).collect()),
        );
        let d = g.direction;
        put(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(d[0].iter().chain(&d[1]).map(|&p| ds(p)).collect()),
        );
        put(
            tags::PIXEL_SPACING,
            VR::DS,
            PrimitiveValue::Strs([ds(g.spacing[1]), ds(g.spacing[0])].into_iter().collect()),
        );
        put(tags::ROWS, VR::US, PrimitiveValue::from(ny as u16));
        put(tags::COLUMNS, VR::US, PrimitiveValue::from(nx as u16));
        put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
        put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2".into());
        put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
        put(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
        put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
        put(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(1u16));
        put(tags::RESCALE_INTERCEPT, VR::DS, "0".into());
        put(tags::RESCALE_SLOPE, VR::DS, "1".into());
        let stored: Vec<i16> = scan.voxels[z * nx * ny..(z + 1) * nx * ny]
            .iter()
            .map(|&h| f64::from(h).round().clamp(-32768.0, 32767.0) as i16)
            .collect();
        put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::I16(stored.into()));
        edit(z, &mut o);
        let file = o
            .with_meta(
                dicom_object::FileMetaTableBuilder::new()
                    .transfer_syntax(ts.unwrap_or(EXPLICIT_VR_LE))
                    .media_storage_sop_class_uid(CT_IMAGE_STORAGE)
                    .media_storage_sop_instance_uid(sop.as_str()),
            )
            .map_err(|e| bad(dir, format!("DICOM file meta: {e}")))?;
        // Names that sort neither by position nor by InstanceNumber.
        let p = dir.join(format!("IM{:05}.dcm", (z * 7919) % 10007));
        file.write_to_file(&p)
            .map_err(|e| bad(&p, format!("cannot write: {e}")))?;
        files.push(p);
    }
    Ok(files)
}

/// CT Image Storage.
pub(crate) const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Explicit VR Little Endian.
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
