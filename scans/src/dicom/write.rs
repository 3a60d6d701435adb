//! Writing a CT series as DICOM files, for tests and tools.
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;

use models::Result;

use super::CT_IMAGE_STORAGE;
use crate::{bad, Scan};

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

/// Explicit VR Little Endian.
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
