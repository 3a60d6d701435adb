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

use crate::metaimage::{ElementType, Geometry};
use crate::{bad, Scan};
use models::Result;

pub mod jpeg12;
pub mod open;
mod pixels;
pub mod walk;
mod write;

use pixels::voxels;
pub use write::write_series;

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
    let e = obj.element_opt(tag).map_err(|e| files::Error::parse(path, name, e))?;
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
    let s = e.to_str().map_err(|e| files::Error::parse(path, name, e))?;
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
    let v = e.to_multi_float64().map_err(|e| files::Error::parse(path, name, e))?;
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
            let v = e.to_float64().map_err(|e| files::Error::parse(path, name, e))?;
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

/// CT Image Storage.
pub(crate) const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
