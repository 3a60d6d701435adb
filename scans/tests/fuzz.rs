//! Structure-aware fuzzing of the DICOM and NIfTI readers, as `models/tests/fuzz.rs` does
//! for the other parsers: valid files whose headers carry hostile values (sizes of 0 or
//! 65535, spacings of NaN, 1e308 or −1, slopes of 0, UIDs that climb out of a folder,
//! attributes stored as UN, pixel data cut short or replaced by made-up JPEG streams,
//! NIfTI dimensions, types, offsets, forms and scalings of every kind), and valid files
//! with bytes flipped, cut, grown or spliced. Every input must end in a scan or an error
//! naming a file; none may panic, and none may make the reader hold more than 64 MiB.
mod common;

use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use proptest::prelude::*;
use scans::metaimage::{ElementType, Geometry, Scan};

/// The most memory any one read may hold at once beyond what it started with.
const BOUND: usize = 64 << 20;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            "tests/fuzz.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// A small CT volume to write as DICOM.
fn volume() -> Scan {
    let g = Geometry::new(
        [12, 10, 3],
        [0.7, 0.7, 2.0],
        [-10.0, 5.0, -50.0],
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    )
    .expect("geometry");
    let voxels = (0..360).map(|i| -900.0 + (i % 37) as f32 * 20.0).collect();
    Scan {
        path: PathBuf::new(),
        geometry: g,
        element_type: ElementType::Float,
        voxels,
    }
}

/// A hostile value for one attribute.
#[derive(Debug, Clone)]
enum Edit {
    Text(u32, VR, String),
    Short(u32, u16),
    Un(u32, Vec<u8>),
    Remove(u32),
    PixelBytes(Vec<u8>),
    Fragments(Vec<Vec<u8>>),
}

const TEXT_TAGS: [(u32, VR); 10] = [
    (0x0028_0030, VR::DS), // PixelSpacing
    (0x0020_0032, VR::DS), // ImagePositionPatient
    (0x0020_0037, VR::DS), // ImageOrientationPatient
    (0x0028_1053, VR::DS), // RescaleSlope
    (0x0028_1052, VR::DS), // RescaleIntercept
    (0x0028_0008, VR::IS), // NumberOfFrames
    (0x0008_0060, VR::CS), // Modality
    (0x0020_000E, VR::UI), // SeriesInstanceUID
    (0x0010_0020, VR::LO), // PatientID
    (0x0020_0052, VR::UI), // FrameOfReferenceUID
];
const SHORT_TAGS: [u32; 6] = [
    0x0028_0010,
    0x0028_0011,
    0x0028_0100,
    0x0028_0101,
    0x0028_0102,
    0x0028_0103,
];

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "nan",
            "inf",
            "-inf",
            "-1",
            "0",
            "1e308",
            "1e-308",
            "1e-30",
            "",
            "abc",
            "1\\2\\3\\4",
            "1\\2",
            "65535",
            "-0",
            "../x",
            "a/b",
            "CT",
            "MR",
            "1.2.3",
            "1\\0\\0\\0\\1\\0",
            "0\\0\\0\\0\\0\\0",
            "1\\0\\0\\1\\0\\0",
            "2147483648",
            "-2147483649",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,40}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..TEXT_TAGS.len(), hostile_text()).prop_map(|(i, v)| Edit::Text(TEXT_TAGS[i].0, TEXT_TAGS[i].1, v)),
        (
            0..SHORT_TAGS.len(),
            prop::sample::select(vec![0u16, 1, 7, 8, 12, 15, 16, 17, 32, 64, 255, 4096, 65535])
        )
            .prop_map(|(i, v)| Edit::Short(SHORT_TAGS[i], v)),
        (
            prop::sample::select(vec![
                0x0028_1053u32,
                0x0028_0010,
                0x0020_000E,
                0x0020_0032,
                0x0028_0030,
                0x0008_0060
            ]),
            prop::collection::vec(any::<u8>(), 0..24)
        )
            .prop_map(|(t, b)| Edit::Un(t, b)),
        prop::sample::select(vec![
            0x0028_0030u32,
            0x0020_0032,
            0x0020_0037,
            0x0028_0010,
            0x0008_0060,
            0x7FE0_0010
        ])
        .prop_map(Edit::Remove),
        prop::collection::vec(any::<u8>(), 0..400).prop_map(Edit::PixelBytes),
        prop::collection::vec(jpeg_like(), 1..3).prop_map(Edit::Fragments),
    ]
}

/// A made-up JPEG stream: SOI, a frame header of any precision and size, tables of random
/// bytes, a scan header and random entropy-coded data.
fn jpeg_like() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![0xC0u8, 0xC1, 0xC2, 0xC3]),
        prop::sample::select(vec![8u8, 12, 16, 0, 255]),
        any::<u16>(),
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..80),
        prop::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(sof, p, h, w, tables, data)| {
            let mut v = vec![0xFF, 0xD8, 0xFF, sof, 0, 11, p];
            v.extend(h.to_be_bytes());
            v.extend(w.to_be_bytes());
            v.extend([1, 1, 0x11, 0]);
            v.extend([0xFF, 0xC4]);
            v.extend(((tables.len() + 2) as u16).to_be_bytes());
            v.extend(&tables);
            v.extend([0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0]);
            v.extend(&data);
            v.extend([0xFF, 0xD9]);
            v
        })
}

fn apply(e: &Edit, o: &mut InMemDicomObject) {
    let tag = |t: u32| dicom_core::Tag((t >> 16) as u16, (t & 0xffff) as u16);
    match e {
        Edit::Text(t, vr, v) => {
            o.put(DataElement::new(tag(*t), *vr, PrimitiveValue::from(v.as_str())));
        }
        Edit::Short(t, v) => {
            o.put(DataElement::new(tag(*t), VR::US, PrimitiveValue::from(*v)));
        }
        Edit::Un(t, b) => {
            o.put(DataElement::new(
                tag(*t),
                VR::UN,
                PrimitiveValue::U8(b.iter().copied().collect()),
            ));
        }
        Edit::Remove(t) => {
            o.remove_element(tag(*t));
        }
        Edit::PixelBytes(b) => {
            o.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PrimitiveValue::U8(b.iter().copied().collect()),
            ));
        }
        Edit::Fragments(f) => {
            o.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                dicom_core::value::Value::PixelSequence(dicom_core::value::PixelFragmentSequence::new(
                    Vec::<u32>::new(),
                    f.clone(),
                )),
            ));
        }
    }
}

/// Reads every scan of `dir` as `prepare` does; nothing may panic or exceed [`BOUND`].
fn read_all(dir: &Path) {
    let _serial = common::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (_, peak) = common::peak_of(|| {
        if let Ok(found) = scans::find(dir, None) {
            for (p, why) in &found.unreadable {
                assert!(!why.is_empty(), "{}", p.display());
            }
            for src in found.scans.values() {
                if let Err(e) = src.read() {
                    assert!(e.to_string().contains('/'), "an error naming no file: {e}");
                }
            }
        }
    });
    assert!(peak < BOUND, "{peak} bytes held");
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Vec<(usize, u8)>),
    Cut(usize),
    Splice(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(Mutation::Flip),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..32)).prop_map(|(a, b)| Mutation::Splice(a, b)),
    ]
}

fn mutate(mut v: Vec<u8>, m: &Mutation) -> Vec<u8> {
    if v.is_empty() {
        return v;
    }
    match m {
        Mutation::Flip(at) => {
            for &(i, b) in at {
                let n = v.len();
                v[i % n] = b;
            }
        }
        Mutation::Cut(n) => v.truncate(n % v.len()),
        Mutation::Splice(at, bytes) => {
            let at = at % v.len();
            v.splice(at..at, bytes.iter().copied());
        }
    }
    v
}

const TRANSFER_SYNTAXES: [&str; 6] = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.90",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn dicom_series_with_hostile_attributes(edits in prop::collection::vec((0usize..3, edit()), 1..4), ts in 0usize..TRANSFER_SYNTAXES.len()) {
        let d = tempfile::tempdir().expect("tmp");
        let v = volume();
        let ts = TRANSFER_SYNTAXES[ts];
        // The writer may refuse what it cannot encode: only what it writes is read.
        let written = std::panic::catch_unwind(|| {
            scans::dicom::write_series(&v, d.path(), "1.2.826.0.1.3680043.8.498.5", Some(ts), &|z, o| {
                for (slice, e) in &edits {
                    if *slice == z {
                        apply(e, o);
                    }
                }
            })
        });
        if let Ok(Ok(_)) = written {
            read_all(d.path());
        }
    }

    #[test]
    fn dicom_files_with_damaged_bytes(m in mutation(), which in 0usize..3, bare in any::<bool>()) {
        let d = tempfile::tempdir().expect("tmp");
        let files = scans::dicom::write_series(&volume(), d.path(), "1.2.826.0.1.3680043.8.498.6", None, &|_, _| {})
            .expect("write");
        let f = &files[which];
        let mut bytes = std::fs::read(f).expect("read");
        if bare {
            // A bare data set: no preamble, no file meta group.
            let meta_len = u32::from_le_bytes(bytes[140..144].try_into().expect("4")) as usize;
            bytes = bytes[144 + meta_len..].to_vec();
        }
        std::fs::write(f, mutate(bytes, &m)).expect("write");
        read_all(d.path());
    }

    #[test]
    fn nifti_headers_with_hostile_fields(
        fields in prop::collection::vec((0usize..NIFTI_FIELDS.len(), any::<u32>(), hostile_f32()), 1..6),
        data_len in 0usize..2000,
        gz in any::<bool>(),
        m in prop::option::of(mutation()),
    ) {
        let d = tempfile::tempdir().expect("tmp");
        let mut b = nifti_valid();
        for (i, raw, f) in &fields {
            let (at, kind) = NIFTI_FIELDS[*i];
            match kind {
                'h' => b[at..at + 2].copy_from_slice(&(*raw as i16).to_le_bytes()),
                'f' => b[at..at + 4].copy_from_slice(&f.to_le_bytes()),
                'b' => b[at] = *raw as u8,
                _ => b[at..at + 4].copy_from_slice(&raw.to_le_bytes()),
            }
        }
        b.truncate(352 + data_len.min(b.len() - 352));
        if let Some(m) = &m {
            b = mutate(b, m);
        }
        let p = if gz {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&b).expect("gz");
            let p = d.path().join("s.nii.gz");
            std::fs::write(&p, e.finish().expect("gz")).expect("write");
            p
        } else {
            let p = d.path().join("s.nii");
            std::fs::write(&p, &b).expect("write");
            p
        };
        let _serial = common::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let (r, peak) = common::peak_of(|| scans::nifti::read(&p).map(|_| ()));
        if let Err(e) = r {
            prop_assert!(e.to_string().contains("s.nii"), "{}", e);
        }
        prop_assert!(peak < BOUND, "{} bytes held", peak);
    }
}

/// Offsets of the NIfTI-1 header fields the fuzzer sets, and their kind ('h' i16, 'f' f32,
/// 'b' byte, 'i' 4 raw bytes).
const NIFTI_FIELDS: [(usize, char); 26] = [
    (40, 'h'),
    (42, 'h'),
    (44, 'h'),
    (46, 'h'),
    (48, 'h'),
    (70, 'h'),
    (72, 'h'),
    (76, 'f'),
    (80, 'f'),
    (84, 'f'),
    (88, 'f'),
    (108, 'f'),
    (112, 'f'),
    (116, 'f'),
    (123, 'b'),
    (252, 'h'),
    (254, 'h'),
    (256, 'f'),
    (260, 'f'),
    (264, 'f'),
    (268, 'f'),
    (280, 'f'),
    (284, 'f'),
    (300, 'f'),
    (320, 'f'),
    (344, 'i'),
];

fn hostile_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        prop::sample::select(vec![
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            0.5,
            -0.5,
            2.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-30,
            1e30,
            f32::MAX,
            f32::MIN_POSITIVE,
            352.0,
            351.0,
            348.0,
            1e9,
        ]),
        any::<f32>(),
    ]
}

/// A valid `.nii`: 8 × 6 × 4 int16 voxels, sform and qform (identity, 1 mm).
fn nifti_valid() -> Vec<u8> {
    let mut b = vec![0u8; 352];
    b[0..4].copy_from_slice(&348i32.to_le_bytes());
    for (i, v) in [3i16, 8, 6, 4, 1, 1, 1, 1].iter().enumerate() {
        b[40 + 2 * i..42 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    b[70..72].copy_from_slice(&4i16.to_le_bytes());
    b[72..74].copy_from_slice(&16i16.to_le_bytes());
    for (i, v) in [1.0f32, 1.0, 1.0, 1.0].iter().enumerate() {
        b[76 + 4 * i..80 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    b[108..112].copy_from_slice(&352f32.to_le_bytes());
    b[123] = 2;
    b[252..254].copy_from_slice(&1i16.to_le_bytes());
    b[254..256].copy_from_slice(&1i16.to_le_bytes());
    for (r, row) in [[1.0f32, 0.0, 0.0, -4.0], [0.0, 1.0, 0.0, -3.0], [0.0, 0.0, 1.0, -2.0]]
        .iter()
        .enumerate()
    {
        for (c, v) in row.iter().enumerate() {
            b[280 + 16 * r + 4 * c..284 + 16 * r + 4 * c].copy_from_slice(&v.to_le_bytes());
        }
    }
    b[268..272].copy_from_slice(&(-4f32).to_le_bytes());
    b[272..276].copy_from_slice(&(-3f32).to_le_bytes());
    b[276..280].copy_from_slice(&(-2f32).to_le_bytes());
    b[344..348].copy_from_slice(b"n+1\0");
    for i in 0..8 * 6 * 4 {
        b.extend(((i % 50) as i16 * 10 - 300).to_le_bytes());
    }
    b
}

#[test]
fn the_valid_nifti_of_the_fuzzer_reads() {
    let d = tempfile::tempdir().expect("tmp");
    let p = d.path().join("ok.nii");
    std::fs::write(&p, nifti_valid()).expect("write");
    let s = scans::nifti::read(&p).expect("valid");
    assert_eq!(s.geometry.dims, [8, 6, 4]);
    let found = scans::find(d.path(), None).expect("find");
    assert_eq!(found.scans.len(), 1);
    let v = tempfile::tempdir().expect("tmp");
    scans::dicom::write_series(&volume(), v.path(), "1.2.3", None, &|_, _| {}).expect("write");
    let found = scans::find(v.path(), None).expect("find");
    let s = found.scans.values().next().expect("one").read().expect("valid dicom");
    assert_eq!(s.voxels, volume().voxels);
}

// The MetaImage reader (moved here with it from the models crate).

/// Hostile values for a MetaImage key.
fn mhd_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9 .eE+-]{0,40}",
        prop::sample::select(vec![
            "MET_SHORT",
            "MET_FLOAT",
            "MET_DOUBLE",
            "MET_UCHAR",
            "MET_INT",
            "True",
            "False",
            "-1",
            "3",
            "4 4 4",
            "1000000 1000000 1000",
            "1000 1000 1000",
            "1024 1024 1024",
            "0 0 0",
            "1 0 0 0 1 0 0 0 1",
            "0 0 0 0 0 0 0 0 0",
            "nan nan nan",
            "1e308 1e308 1e308",
            "4 3",
            "4 3 2 1",
            "-4 3 2",
        ])
        .prop_map(str::to_string),
    ]
}

/// A MetaImage header from generated key/value lines.
fn mhd_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "NDims",
        "DimSize",
        "ElementSpacing",
        "Offset",
        "TransformMatrix",
        "ElementType",
        "BinaryDataByteOrderMSB",
        "CompressedData",
        "CompressedDataSize",
        "HeaderSize",
        "ObjectType",
        "ElementNumberOfChannels",
        "Junk",
    ]);
    (
        prop::collection::vec((key, mhd_value()), 0..12),
        prop::sample::select(vec!["d.raw", "LOCAL", "", "/dev/zero", "missing.raw"]),
    )
        .prop_map(|(kv, data)| {
            let mut s = String::new();
            for (k, v) in kv {
                s += &format!("{k} = {v}\n");
            }
            s += &format!("ElementDataFile = {data}\n");
            s
        })
}

fn mhd_valid(compressed: bool, float: bool) -> (String, Vec<u8>) {
    let et = if float { "MET_FLOAT" } else { "MET_SHORT" };
    let n = 4 * 3 * 2;
    let data: Vec<u8> = if float {
        (0..n).flat_map(|i| (i as f32 - 500.0).to_le_bytes()).collect()
    } else {
        (0..n).flat_map(|i| (i as i16 - 500).to_le_bytes()).collect()
    };
    let data = if compressed {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &data).expect("zlib");
        enc.finish().expect("zlib")
    } else {
        data
    };
    let header = format!(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = {}\n\
         TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = -10 5 -300\nElementSpacing = 0.7 0.7 2.5\n\
         DimSize = 4 3 2\nElementType = {et}\nElementDataFile = d.raw\n",
        if compressed { "True" } else { "False" }
    );
    (header, data)
}

proptest! {
    #![proptest_config(config())]

    /// The MetaImage header and reader: generated headers over random data, and valid
    /// scans mutated in the header or the data.
    #[test]
    fn metaimage_header_and_reader(
        kind in 0u8..4,
        text in mhd_text(),
        value in mhd_value(),
        which in 0usize..11,
        data in prop::collection::vec(any::<u8>(), 0..512),
        m in mutation(),
        compressed in any::<bool>(),
        float in any::<bool>(),
    ) {
        let _g = common::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let d = tempfile::tempdir().expect("tmp");
        let (header, data) = match kind {
            0 => (text.into_bytes(), data),
            1 => {
                let (h, v) = mhd_valid(compressed, float);
                (mutate(h.into_bytes(), &m), v)
            }
            2 => {
                // One key of a valid header given a hostile value.
                let (h, v) = mhd_valid(compressed, float);
                let mut lines: Vec<String> = h.lines().map(str::to_string).collect();
                let i = which % (lines.len() - 1);
                let key = lines[i].split(" = ").next().unwrap_or("").to_string();
                lines[i] = format!("{key} = {value}");
                ((lines.join("\n") + "\n").into_bytes(), v)
            }
            _ => {
                let (h, v) = mhd_valid(compressed, float);
                (h.into_bytes(), mutate(v, &m))
            }
        };
        let p = d.path().join("s.mhd");
        std::fs::write(&p, &header).expect("w");
        std::fs::write(d.path().join("d.raw"), &data).expect("w");
        let (r, peak) = common::peak_of(|| scans::metaimage::Scan::read(&p));
        prop_assert!(peak <= BOUND, "Scan::read held {peak} bytes");
        if let Ok(s) = r {
            prop_assert!(s.voxels.iter().all(|v| v.is_finite()));
        }
        // The same as one .mha file.
        let mut local = header.clone();
        local.extend_from_slice(&data);
        let p = d.path().join("s.mha");
        std::fs::write(&p, &local).expect("w");
        let (_, peak) = common::peak_of(|| scans::metaimage::Scan::read(&p));
        prop_assert!(peak <= BOUND, "Scan::read (.mha) held {peak} bytes");
    }
}
