//! DICOM CT series (dicom-rs: `dicom-object`, `dicom-pixeldata` with its pure-Rust decoders).
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
//! Refused, each with a message naming the file and what is wrong: a modality other than CT;
//! slices that differ in size, spacing or orientation (non-parallel slices); positions off
//! the normal through the first one (gantry tilt, or a sheared stack); two slices at one
//! position; a gap over 1.5 × the median spacing (a missing slice); multi-frame or colour
//! images; a rescale that overflows float32; a transfer syntax no pure-Rust decoder reads
//! (JPEG 2000, JPEG-LS, ...), named with its UID.
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};

use crate::{bad, Scan};
use models::metaimage::{ElementType, Geometry};
use models::Result;

/// The DICOM signature: `DICM` after a 128-byte preamble.
const MAGIC_AT: u64 = 128;

/// The most a DICOM file may hold (a CT slice is well under a MiB; a multi-frame file is
/// refused anyway): anything larger is refused before it is parsed.
const MAX_FILE: u64 = 1 << 30;

/// Opens `path` as a DICOM Part-10 file, reading up to `until` (all of it when `None`).
/// `Ok(None)`: no `DICM` signature.
fn open(path: &Path, until: Option<dicom_core::Tag>) -> Result<Option<DefaultDicomObject>> {
    let mut f = models::fsutil::open_regular(path)?;
    let len = f.metadata().map_err(|e| models::Error::io(path, e))?.len();
    if len > MAX_FILE {
        return Err(bad(
            path,
            format!("{len} bytes: more than a DICOM slice holds ({MAX_FILE})"),
        ));
    }
    let mut magic = [0u8; 4];
    let has = f.seek(SeekFrom::Start(MAGIC_AT)).is_ok() && f.read_exact(&mut magic).is_ok() && &magic == b"DICM";
    if !has {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(MAGIC_AT))
        .map_err(|e| models::Error::io(path, e))?;
    let mut opts = OpenFileOptions::new().read_preamble(dicom_object::file::ReadPreamble::Never);
    if let Some(t) = until {
        opts = opts.read_until(t);
    }
    opts.from_reader(std::io::BufReader::new(f.take(len)))
        .map(Some)
        .map_err(|e| bad(path, format!("not a readable DICOM file: {e}")))
}

/// The SeriesInstanceUID of a DICOM file (its header only), or `None` when the file has no
/// DICOM signature.
pub fn probe(path: &Path) -> Result<Option<String>> {
    let Some(obj) = open(path, Some(tags::PIXEL_DATA))? else {
        return Ok(None);
    };
    Ok(Some(text(&obj, path, tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?))
}

fn text(obj: &DefaultDicomObject, path: &Path, tag: dicom_core::Tag, name: &str) -> Result<String> {
    let e = obj
        .element_opt(tag)
        .map_err(|e| bad(path, format!("{name}: {e}")))?
        .ok_or_else(|| bad(path, format!("no {name}")))?;
    let s = e.to_str().map_err(|e| bad(path, format!("{name}: {e}")))?;
    Ok(s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string())
}

fn numbers(obj: &DefaultDicomObject, path: &Path, tag: dicom_core::Tag, name: &str, n: usize) -> Result<Vec<f64>> {
    let e = obj
        .element_opt(tag)
        .map_err(|e| bad(path, format!("{name}: {e}")))?
        .ok_or_else(|| bad(path, format!("no {name}")))?;
    let v = e.to_multi_float64().map_err(|e| bad(path, format!("{name}: {e}")))?;
    if v.len() != n || v.iter().any(|x| !x.is_finite()) {
        return Err(bad(path, format!("{name} must be {n} finite numbers, got {v:?}")));
    }
    Ok(v)
}

fn number_or(obj: &DefaultDicomObject, path: &Path, tag: dicom_core::Tag, name: &str, default: f64) -> Result<f64> {
    match obj.element_opt(tag).map_err(|e| bad(path, format!("{name}: {e}")))? {
        None => Ok(default),
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

/// One slice's header.
struct Slice {
    path: PathBuf,
    obj: DefaultDicomObject,
    position: [f64; 3],
    /// Row direction, column direction.
    orientation: [[f64; 3]; 2],
    /// Between columns (x), between rows (y).
    spacing: [f64; 2],
    size: [usize; 2],
    slope: f64,
    intercept: f64,
}

fn slice(path: &Path) -> Result<Slice> {
    let obj = open(path, None)?.ok_or_else(|| bad(path, "no DICOM signature (DICM at byte 128)"))?;
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
    if ps.iter().any(|&s| s <= 0.0) {
        return Err(bad(path, format!("PixelSpacing {ps:?} must be positive")));
    }
    let rows = number_or(&obj, path, tags::ROWS, "Rows", 0.0)?;
    let cols = number_or(&obj, path, tags::COLUMNS, "Columns", 0.0)?;
    if rows < 1.0 || cols < 1.0 {
        return Err(bad(path, format!("Rows {rows} × Columns {cols}: no image")));
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
    Ok(Slice {
        path: path.to_path_buf(),
        position: [ipp[0], ipp[1], ipp[2]],
        orientation: [row, col],
        spacing: [ps[1], ps[0]],
        size: [cols as usize, rows as usize],
        slope: number_or(&obj, path, tags::RESCALE_SLOPE, "RescaleSlope", 1.0)?,
        intercept: number_or(&obj, path, tags::RESCALE_INTERCEPT, "RescaleIntercept", 0.0)?,
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

/// One slice's voxels in HU (its own slope and intercept), row by row.
fn voxels(s: &Slice, out: &mut Vec<f32>) -> Result<()> {
    let ts = s.obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let decoded = s.obj.decode_pixel_data().map_err(|e| {
        use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
        let name = dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(&ts)
            .map_or("unknown", |t| t.name());
        bad(
            &s.path,
            format!("pixel data in transfer syntax {ts} ({name}) cannot be decoded here (uncompressed, RLE and JPEG are): {e}"),
        )
    })?;
    let raw: Vec<f64> = decoded
        .to_vec_with_options(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
        .map_err(|e| bad(&s.path, format!("pixel data: {e}")))?;
    if raw.len() != s.size[0] * s.size[1] {
        return Err(bad(
            &s.path,
            format!("{} pixel values for {}×{} pixels", raw.len(), s.size[0], s.size[1]),
        ));
    }
    for v in raw {
        let hu = s.slope * v + s.intercept;
        let f = hu as f32;
        if !f.is_finite() {
            return Err(bad(
                &s.path,
                format!(
                    "RescaleSlope {} × {v} + RescaleIntercept {} = {hu:e}: beyond float32",
                    s.slope, s.intercept
                ),
            ));
        }
        out.push(f);
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
    std::fs::create_dir_all(dir).map_err(|e| models::Error::io(dir, e))?;
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
const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Explicit VR Little Endian.
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
