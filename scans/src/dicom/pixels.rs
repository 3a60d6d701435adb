//! A slice's pixel data to Hounsfield units: our JPEG decoder for sequential DCT (8 or 12
//! bits), dicom-rs's decoders for the rest (native data and RLE checked against the header
//! first, since they size buffers from it), then the modality rescale.
use dicom_dictionary_std::tags;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};

use models::Result;

use super::{jpeg12, number_or, open, Slice, HU_RANGE, TRANSFER_SYNTAXES};
use crate::{bad, guard};

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
pub(super) fn voxels(s: &Slice, out: &mut Vec<f32>) -> Result<()> {
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
