//! One volume written as MetaImage, as DICOM slices (shuffled file names; uncompressed and
//! RLE Lossless) and as NIfTI-1 (sform, qform; `.nii` and `.nii.gz`) reads into the same
//! geometry and gives the same cubes as `scans prepare` cuts them
//! (`scans::resample::extract`); and every way a series can be wrong is refused, naming
//! the file.
use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use scans::metaimage::{Geometry, WriteOptions};
use scans::resample::{extract, PatchGrid};
use scans::{Format, Source};

const UID: &str = "1.2.826.0.1.3680043.8.498.99";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const RLE: &str = "1.2.840.10008.1.2.5";

/// A CT-like volume: lung around −800 HU with a smooth texture, a 5 mm ball of soft tissue,
/// anisotropic voxels, the image axes rotated 90° about z.
struct Volume {
    g: Geometry,
    hu: Vec<i16>,
}

fn volume() -> Volume {
    let g = Geometry::new(
        [28, 24, 12],
        [0.75, 0.625, 2.5],
        [30.5, -20.25, -100.0],
        [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
    )
    .expect("geometry");
    let ball = g.voxel_to_world([14.0, 11.0, 6.0]);
    let mut hu = Vec::new();
    for z in 0..12 {
        for y in 0..24 {
            for x in 0..28 {
                let w = g.voxel_to_world([x as f64, y as f64, z as f64]);
                let d = (0..3).map(|k| (w[k] - ball[k]).powi(2)).sum::<f64>().sqrt();
                let tex = 120.0 * ((x as f64) * 0.7).sin() * ((y as f64) * 0.45 + z as f64).cos();
                let v = if d < 5.0 { 40.0 } else { -800.0 + tex };
                hu.push(v.round() as i16);
            }
        }
    }
    Volume { g, hu }
}

fn ds(v: f64) -> String {
    format!("{v}")
}

/// PackBits, as DICOM's RLE segments use it (a literal run or a repeat of up to 128).
fn packbits(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < src.len() {
        let mut run = 1;
        while i + run < src.len() && run < 128 && src[i + run] == src[i] {
            run += 1;
        }
        if run >= 2 {
            out.push((257 - run) as u8);
            out.push(src[i]);
            i += run;
        } else {
            let start = i;
            while i < src.len() && i - start < 128 && !(i + 1 < src.len() && src[i + 1] == src[i]) {
                i += 1;
            }
            if i == start {
                i += 1;
            }
            out.push((i - start - 1) as u8);
            out.extend_from_slice(&src[start..i]);
        }
    }
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// One frame of 16-bit samples as DICOM RLE Lossless: a 64-byte header and two segments
/// (high bytes, then low bytes). Written by hand: no Rust crate encodes RLE Lossless.
fn rle_frame(pixels: &[u16]) -> Vec<u8> {
    let hi: Vec<u8> = pixels.iter().map(|p| (p >> 8) as u8).collect();
    let lo: Vec<u8> = pixels.iter().map(|p| (p & 0xff) as u8).collect();
    let (a, b) = (packbits(&hi), packbits(&lo));
    let mut header = [0u32; 16];
    header[0] = 2;
    header[1] = 64;
    header[2] = 64 + a.len() as u32;
    let mut out: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    out.extend(a);
    out.extend(b);
    out
}

/// Writes `v` as one DICOM file per slice into `dir` ([`scans::dicom::write_series`]: file
/// names that say nothing of position, InstanceNumber against it); RLE Lossless when `ts`
/// says so; `edit` may change a slice's object before it is written.
fn write_dicom(v: &Volume, dir: &Path, ts: &str, edit: &dyn Fn(usize, &mut InMemDicomObject)) -> Vec<PathBuf> {
    let scan = scans::metaimage::Scan {
        path: dir.to_path_buf(),
        geometry: v.g.clone(),
        element_type: scans::metaimage::ElementType::Short,
        voxels: v.hu.iter().map(|&h| f32::from(h)).collect(),
    };
    let [nx, ny, _] = v.g.dims;
    let rle = |z: usize, o: &mut InMemDicomObject| {
        if ts == RLE {
            // Signed 16-bit samples, as the writer declares them (PixelRepresentation 1).
            let stored: Vec<u16> = v.hu[z * nx * ny..(z + 1) * nx * ny].iter().map(|&h| h as u16).collect();
            o.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                dicom_core::value::Value::PixelSequence(dicom_core::value::PixelFragmentSequence::new(
                    Vec::<u32>::new(),
                    vec![rle_frame(&stored)],
                )),
            ));
        }
        edit(z, o);
    };
    scans::dicom::write_series(&scan, dir, UID, Some(ts), &rle).expect("write dicom")
}

/// Writes `v` as NIfTI-1 with an sform (or only a qform) in RAS.
fn write_nifti(v: &Volume, path: &Path, sform: bool) {
    use nifti::writer::WriterOptions;
    use nifti::NiftiHeader;
    let [nx, ny, nz] = v.g.dims;
    let arr = ndarray::Array3::from_shape_fn((nx, ny, nz), |(x, y, z)| v.hu[x + nx * (y + ny * z)]);
    let mut h = NiftiHeader::default();
    // RAS = diag(−1, −1, 1) · LPS.
    let flip = [-1.0, -1.0, 1.0];
    let m = |w: usize, axis: usize| (flip[w] * v.g.direction[axis][w] * v.g.spacing[axis]) as f32;
    let t = |w: usize| (flip[w] * v.g.offset[w]) as f32;
    h.pixdim = [
        1.0,
        v.g.spacing[0] as f32,
        v.g.spacing[1] as f32,
        v.g.spacing[2] as f32,
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    if sform {
        h.sform_code = 1;
        h.srow_x = [m(0, 0), m(0, 1), m(0, 2), t(0)];
        h.srow_y = [m(1, 0), m(1, 1), m(1, 2), t(1)];
        h.srow_z = [m(2, 0), m(2, 1), m(2, 2), t(2)];
    } else {
        // The rotation LPS-axes (0,1,0),(−1,0,0),(0,0,1) in RAS: columns (0,−1,0),(1,0,0),(0,0,1):
        // a rotation by −90° about z: quaternion (a, b, c, d) = (cos 45°, 0, 0, −sin 45°).
        h.qform_code = 1;
        h.sform_code = 0;
        h.quatern_b = 0.0;
        h.quatern_c = 0.0;
        h.quatern_d = -std::f32::consts::FRAC_1_SQRT_2;
        h.quatern_x = t(0);
        h.quatern_y = t(1);
        h.quatern_z = t(2);
    }
    WriterOptions::new(path)
        .reference_header(&h)
        .write_nifti(&arr)
        .expect("write nifti");
}

fn cubes(src: &Source) -> Vec<ndarray::Array3<f32>> {
    let scan = src.read().expect("read");
    let grid = PatchGrid {
        size_mm: 12.0,
        spacing_mm: 1.0,
    };
    let v = volume();
    [[14.0, 11.0, 6.0], [5.5, 7.25, 3.0], [20.0, 18.0, 9.5]]
        .iter()
        .map(|&idx| extract(&scan, v.g.voxel_to_world(idx), &grid))
        .collect()
}

fn max_diff(a: &[ndarray::Array3<f32>], b: &[ndarray::Array3<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y.iter()).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

fn only(dir: &Path, f: Format) -> Source {
    let found = scans::find(dir, Some(f)).expect("find");
    assert!(found.unreadable.is_empty(), "{:?}", found.unreadable);
    assert_eq!(found.scans.len(), 1, "{:?}", found.scans.keys());
    found.scans.into_values().next().expect("one")
}

#[test]
fn metaimage_dicom_and_nifti_give_the_same_cubes() {
    let d = tempfile::tempdir().expect("tmp");
    let v = volume();
    let hu: Vec<f32> = v.hu.iter().map(|&h| f32::from(h)).collect();
    let mhd = d.path().join("mhd").join(format!("{UID}.mhd"));
    std::fs::create_dir_all(mhd.parent().expect("dir")).expect("mkdir");
    scans::metaimage::write(&mhd, &v.g, &hu, WriteOptions::default()).expect("mhd");
    let reference = cubes(&only(&d.path().join("mhd"), Format::MetaImage));
    // DICOM, uncompressed and RLE Lossless: the same geometry, the same voxels, the same cubes.
    for (name, ts) in [("dicom", EXPLICIT_LE), ("dicom_rle", RLE)] {
        let dir = d.path().join(name);
        write_dicom(&v, &dir, ts, &|_, _| {});
        let src = only(&dir, Format::Dicom);
        let scan = src.read().expect(name);
        assert_eq!(scan.geometry.dims, v.g.dims, "{name}");
        for k in 0..3 {
            assert!(
                (scan.geometry.spacing[k] - v.g.spacing[k]).abs() < 1e-9,
                "{name}: {:?}",
                scan.geometry.spacing
            );
            assert!(
                (scan.geometry.offset[k] - v.g.offset[k]).abs() < 1e-9,
                "{name}: {:?}",
                scan.geometry.offset
            );
        }
        assert_eq!(scan.geometry.direction, v.g.direction, "{name}");
        assert_eq!(scan.voxels, hu, "{name}: voxels");
        assert_eq!(max_diff(&cubes(&src), &reference), 0.0, "{name}");
    }
    // NIfTI (float32 affine: the geometry to float32's precision), sform and qform, plain and gz.
    for (name, sform) in [("s.nii", true), ("s.nii.gz", true), ("q.nii", false)] {
        let dir = d.path().join(format!("nifti_{name}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        write_nifti(&v, &dir.join(name), sform);
        let src = only(&dir, Format::Nifti);
        let scan = src.read().expect(name);
        assert_eq!(scan.voxels, hu, "{name}: voxels");
        for k in 0..3 {
            assert!(
                (scan.geometry.spacing[k] - v.g.spacing[k]).abs() < 1e-5,
                "{name}: {:?}",
                scan.geometry.spacing
            );
            assert!(
                (scan.geometry.offset[k] - v.g.offset[k]).abs() < 1e-4,
                "{name}: {:?}",
                scan.geometry.offset
            );
            for j in 0..3 {
                assert!(
                    (scan.geometry.direction[k][j] - v.g.direction[k][j]).abs() < 1e-6,
                    "{name}: {:?}",
                    scan.geometry.direction
                );
            }
        }
        let diff = max_diff(&cubes(&src), &reference);
        assert!(diff < 0.05, "{name}: cubes differ by {diff} HU");
    }
}

fn refused(dir: &Path) -> String {
    let found = scans::find(dir, None);
    match found {
        Err(e) => e.to_string(),
        Ok(f) => {
            let src = f.scans.into_values().next().expect("a scan");
            src.read().expect_err("refused").to_string()
        }
    }
}

#[test]
fn series_that_are_not_one_volume_are_refused_naming_the_file() {
    let d = tempfile::tempdir().expect("tmp");
    let v = volume();
    type Edit = Box<dyn Fn(usize, &mut InMemDicomObject)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "not_ct",
            Box::new(|_, o| {
                o.put(DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("MR")));
            }),
            "Modality \"MR\"",
        ),
        (
            "tilted",
            Box::new(|z, o| {
                // Each slice shifted 0.5 mm along y per slice: a sheared stack.
                let p = [30.5, -20.25 + 0.5 * z as f64, -100.0 + 2.5 * z as f64];
                o.put(DataElement::new(
                    tags::IMAGE_POSITION_PATIENT,
                    VR::DS,
                    PrimitiveValue::Strs(p.iter().map(|&x| ds(x)).collect()),
                ));
            }),
            "gantry tilt",
        ),
        (
            "duplicate",
            Box::new(|z, o| {
                if z == 5 {
                    let p = [30.5, -20.25, -100.0 + 2.5 * 4.0];
                    o.put(DataElement::new(
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        PrimitiveValue::Strs(p.iter().map(|&x| ds(x)).collect()),
                    ));
                }
            }),
            "duplicate slice",
        ),
        (
            "not_parallel",
            Box::new(|z, o| {
                if z == 3 {
                    o.put(DataElement::new(
                        tags::IMAGE_ORIENTATION_PATIENT,
                        VR::DS,
                        PrimitiveValue::Strs(["1", "0", "0", "0", "1", "0"].map(String::from).into_iter().collect()),
                    ));
                }
            }),
            "not parallel",
        ),
        (
            "overflow",
            Box::new(|z, o| {
                if z == 2 {
                    o.put(DataElement::new(
                        tags::RESCALE_SLOPE,
                        VR::DS,
                        PrimitiveValue::from("1e38"),
                    ));
                }
            }),
            "no CT holds that",
        ),
    ];
    for (name, edit, want) in cases {
        let dir = d.path().join(name);
        write_dicom(&v, &dir, EXPLICIT_LE, &*edit);
        let e = refused(&dir);
        assert!(e.contains(want) && e.contains(".dcm"), "{name}: {e}");
    }
    // A missing slice: one file removed from the middle of the stack.
    let dir = d.path().join("gap");
    let files = write_dicom(&v, &dir, EXPLICIT_LE, &|_, _| {});
    std::fs::remove_file(&files[6]).expect("rm");
    let e = refused(&dir);
    assert!(
        e.contains("a missing slice") && e.contains("median spacing is 2.500"),
        "{e}"
    );
    // A transfer syntax no pure-Rust decoder reads: named, with its UID.
    let dir = d.path().join("jpeg2000");
    write_dicom(&v, &dir, "1.2.840.10008.1.2.4.90", &|_, o| {
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            dicom_core::value::Value::PixelSequence(dicom_core::value::PixelFragmentSequence::new(
                Vec::<u32>::new(),
                vec![vec![0xff, 0x4f, 0xff, 0x51]],
            )),
        ));
    });
    let e = refused(&dir);
    assert!(
        e.contains("1.2.840.10008.1.2.4.90") && e.contains("are not read here"),
        "{e}"
    );
}

#[test]
fn nifti_files_that_are_not_a_scan_are_refused() {
    let d = tempfile::tempdir().expect("tmp");
    let v = volume();
    let dir = d.path().join("n");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let p = dir.join("scan.nii");
    write_nifti(&v, &p, true);
    let good = std::fs::read(&p).expect("read");
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "nifti2",
            Box::new(|b| b[0..4].copy_from_slice(&540i32.to_le_bytes())),
            "NIfTI-2",
        ),
        (
            "no_orientation",
            Box::new(|b| {
                // qform_code (offset 252) and sform_code (254) both 0.
                b[252..256].copy_from_slice(&[0, 0, 0, 0]);
            }),
            "neither an sform nor a qform",
        ),
        (
            "huge",
            Box::new(|b| {
                // dim = 4, 30000 × 30000 × 30000 × 1 int16: refused before any voxel is read.
                for (i, v) in [4u16, 30000, 30000, 30000, 1].iter().enumerate() {
                    b[40 + 2 * i..42 + 2 * i].copy_from_slice(&v.to_le_bytes());
                }
            }),
            "voxels a scan may have",
        ),
        ("truncated", Box::new(|b| b.truncate(b.len() - 100)), "voxels"),
        (
            "overflow",
            Box::new(|b| {
                // scl_slope (offset 112) 1e38.
                b[112..116].copy_from_slice(&1e38f32.to_le_bytes());
            }),
            "no CT holds that",
        ),
    ];
    for (name, edit, want) in cases {
        let mut b = good.clone();
        edit(&mut b);
        std::fs::write(&p, &b).expect("write");
        let e = scans::nifti::read(&p).expect_err(name).to_string();
        assert!(e.contains(want) && e.contains("scan.nii"), "{name}: {e}");
    }
    // A FIFO named like a scan: an error, never a wait.
    let fifo = dir.join("fifo.nii");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let e = scans::nifti::read(&fifo).expect_err("fifo").to_string();
    assert!(e.contains("fifo.nii"), "{e}");
}

/// JPEG Lossless (process 14, first-order prediction) slices, made by DCMTK from an
/// uncompressed series (`tests/fixtures/make_jpeg_lossless.sh`): the same volume, voxel for
/// voxel, as the uncompressed files they came from.
#[test]
fn jpeg_lossless_slices_decode_to_the_uncompressed_volume() {
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg_lossless");
    let plain = only(&fx.join("plain"), Format::Dicom).read().expect("plain");
    let jpeg = only(&fx.join("jpeg"), Format::Dicom).read().expect("jpeg lossless");
    assert_eq!(plain.geometry, jpeg.geometry);
    assert_eq!(plain.geometry.dims, [32, 32, 4]);
    assert_eq!(plain.geometry.spacing, [0.7, 0.8, 1.25]);
    assert_eq!(plain.voxels, jpeg.voxels);
    assert!(plain.voxels.iter().any(|&v| v < -1000.0) && plain.voxels.iter().any(|&v| v > -700.0));
}

/// 12-bit JPEG Extended (process 2 & 4) slices, made by DCMTK from an uncompressed 12-bit
/// series (`tests/fixtures/make_jpeg_extended.sh`): our decoder ([`scans::dicom::jpeg12`])
/// gives, sample for sample, what DCMTK's own decoder (IJG libjpeg) gives for the same
/// files, and stays within the lossy coding's error of the original.
#[test]
fn jpeg_extended_12_bit_slices_decode_as_dcmtk_decodes_them() {
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg_extended");
    let plain = only(&fx.join("plain"), Format::Dicom).read().expect("plain");
    let jpeg = only(&fx.join("jpeg"), Format::Dicom).read().expect("jpeg extended");
    let dcmtk = only(&fx.join("decoded"), Format::Dicom)
        .read()
        .expect("dcmdjpeg's decoding");
    assert_eq!(jpeg.geometry, plain.geometry);
    assert_eq!(jpeg.geometry.dims, [48, 40, 4]);
    assert_eq!(
        jpeg.voxels, dcmtk.voxels,
        "our 12-bit decoding differs from IJG libjpeg's"
    );
    let worst = jpeg
        .voxels
        .iter()
        .zip(&plain.voxels)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst > 0.0 && worst < 200.0, "lossy error {worst} HU");
    // The extremes of the 12-bit range survive as HU (intercept −1024).
    assert!(plain.voxels.contains(&3071.0) && plain.voxels.contains(&-1024.0));
}

/// 8-bit JPEG Baseline (process 1) slices made by DCMTK (`make_jpeg_baseline.sh`): the
/// samples DCMTK's decoder gives, as for 12 bits.
#[test]
fn jpeg_baseline_8_bit_slices_decode_as_dcmtk_decodes_them() {
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg_baseline");
    let plain = only(&fx.join("plain"), Format::Dicom).read().expect("plain");
    let jpeg = only(&fx.join("jpeg"), Format::Dicom).read().expect("jpeg baseline");
    let dcmtk = only(&fx.join("decoded"), Format::Dicom)
        .read()
        .expect("dcmdjpeg's decoding");
    assert_eq!(jpeg.geometry, plain.geometry);
    assert_eq!(
        jpeg.voxels, dcmtk.voxels,
        "our 8-bit decoding differs from IJG libjpeg's"
    );
    let worst = jpeg
        .voxels
        .iter()
        .zip(&plain.voxels)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst > 0.0 && worst <= 8.0 * 40.0, "lossy error {worst} HU");
}
