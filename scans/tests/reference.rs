//! Scans that other tools wrote, read as those tools read them: `reference/make_cases.py`
//! (run with the project venv's Python: pydicom and nibabel, installed by scripts/setup)
//! writes DICOM series with pydicom in every transfer syntax and encoding we read (implicit
//! and explicit VR, big endian, deflated, RLE, bare data sets, no preamble, attributes
//! stored as UN) and NIfTI files with nibabel (sform, qform, both, gzip, big endian,
//! scaled, a quaternion of norm 2), each with the geometry and voxels pydicom and nibabel
//! read; then the hostile variants the standard readers would disagree on, each of which
//! must be refused with its reason; then pydicom's and nibabel's own test corpora, every
//! file of which must be read or refused by name, never crash.
mod common;

use std::path::{Path, PathBuf};

use scans::{Format, Source};
use serde_json::Value;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the case writer once into a temporary folder.
fn cases() -> (tempfile::TempDir, Vec<Value>) {
    let d = tempfile::tempdir().expect("tmp");
    let py = chain_tests::python();
    let o = std::process::Command::new(&py)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/make_cases.py"))
        .arg(d.path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", py.display()));
    assert!(
        o.status.success(),
        "make_cases.py failed (pydicom and nibabel come from scripts/setup):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(d.path().join("cases.json")).expect("cases.json");
    let v: Vec<Value> = serde_json::from_str(&text).expect("json");
    (d, v)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .flat_map(|x| match x.as_array() {
            Some(a) => a.iter().map(|y| y.as_f64().expect("number")).collect::<Vec<_>>(),
            None => vec![x.as_f64().expect("number")],
        })
        .collect()
}

fn read_f32(p: &Path) -> Vec<f32> {
    std::fs::read(p)
        .expect("voxels")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The one scan a DICOM case's folder holds (or the named series).
fn dicom_scan(dir: &Path, series: Option<&str>) -> Result<scans::Scan, String> {
    let found = scans::find(dir, Some(Format::Dicom)).map_err(|e| e.to_string())?;
    let src: Source = match series {
        Some(uid) => found
            .scans
            .get(uid)
            .cloned()
            .ok_or(format!("no series {uid}: {:?}", found.unreadable))?,
        None => {
            if let Some((p, why)) = found.unreadable.first() {
                return Err(format!("{}: {why}", p.display()));
            }
            assert_eq!(found.scans.len(), 1, "{:?}", found.scans.keys());
            found.scans.into_values().next().expect("one")
        }
    };
    src.read().map_err(|e| e.to_string())
}

fn check_read(name: &str, c: &Value, scan: &scans::Scan, root: &Path) {
    let g = &scan.geometry;
    let dims: Vec<usize> = floats(&c["dims"]).iter().map(|&v| v as usize).collect();
    assert_eq!(g.dims.to_vec(), dims, "{name}: dims");
    let close = |a: &[f64], b: &[f64], tol: f64, what: &str| {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * y.abs().max(1.0), "{name}: {what} {a:?} vs {b:?}");
        }
    };
    close(&g.spacing, &floats(&c["spacing"]), 1e-6, "spacing");
    close(&g.offset, &floats(&c["offset"]), 1e-5, "offset");
    let dir: Vec<f64> = g.direction.iter().flatten().copied().collect();
    close(&dir, &floats(&c["direction"]), 1e-6, "direction");
    let want = read_f32(&root.join(c["voxels"].as_str().expect("voxels")));
    assert_eq!(scan.voxels.len(), want.len(), "{name}: voxel count");
    let bad = scan.voxels.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(bad, 0, "{name}: {bad} voxels differ from the reference's");
}

#[test]
fn scans_other_tools_wrote_read_as_those_tools_read_them() {
    let (d, cases) = cases();
    let root = d.path();
    let mut counts = [0usize; 3];
    for c in &cases {
        let name = c["name"].as_str().expect("name");
        let path = root.join(c["path"].as_str().expect("path"));
        let dicom = c["format"] == "dicom";
        match c["expect"].as_str().expect("expect") {
            "read" => {
                let scan = if dicom {
                    dicom_scan(&path, c["series"].as_str())
                } else {
                    scans::nifti::read(&path).map_err(|e| e.to_string())
                }
                .unwrap_or_else(|e| panic!("{name}: {e}"));
                check_read(name, c, &scan, root);
                counts[0] += 1;
            }
            "refuse" => {
                let why = c["why"].as_str().expect("why");
                let (_, peak) = common::peak_of(|| {
                    let r = if dicom {
                        dicom_scan(&path, None).map(|_| ())
                    } else {
                        scans::nifti::read(&path).map(|_| ()).map_err(|e| e.to_string())
                    };
                    let e = r.expect_err(name);
                    assert!(e.contains(why), "{name}: {e}");
                    // The message names a file of the case.
                    let file = path.file_name().expect("name").to_string_lossy().into_owned();
                    assert!(
                        e.contains(&file) || e.contains(".dcm") || e.contains("IM"),
                        "{name}: {e}"
                    );
                });
                // A header claiming a huge volume costs nothing before the data run out.
                assert!(peak < 64 << 20, "{name}: {peak} bytes allocated");
                counts[1] += 1;
            }
            "corpus" => {
                corpus(name, &path, dicom);
                counts[2] += 1;
            }
            other => panic!("{name}: expect {other}"),
        }
    }
    assert!(counts[0] >= 20 && counts[1] >= 15 && counts[2] == 2, "{counts:?}");
}

/// Every file of a corpus read or refused by name; nothing panics.
fn corpus(name: &str, dir: &Path, dicom: bool) {
    let mut files: Vec<PathBuf> = walk(dir);
    files.sort();
    assert!(files.len() > 20, "{name}: {} files", files.len());
    let mut read = 0;
    for f in &files {
        let n = f.to_string_lossy().to_ascii_lowercase();
        if dicom {
            // Each file alone: what it is, or why not, never a panic.
            let _ = scans::dicom::probe(f);
        } else if n.ends_with(".nii") || n.ends_with(".nii.gz") {
            match scans::nifti::read(f) {
                Ok(_) => read += 1,
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.contains(&*f.file_name().expect("name").to_string_lossy()), "{e}");
                }
            }
        }
    }
    if dicom {
        // The whole folder as `prepare` finds it: every series read or refused naming a file.
        let found = scans::find(dir, Some(Format::Dicom)).expect("find");
        assert!(!found.directories.is_empty(), "{name}: DICOMDIR not told apart");
        for (p, why) in &found.unreadable {
            assert!(p.starts_with(dir) && !why.is_empty());
        }
        for (uid, src) in &found.scans {
            match src.read() {
                Ok(_) => read += 1,
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.contains('/'), "{uid}: {e}");
                }
            }
        }
    }
    assert!(read > 0, "{name}: nothing read");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// pydicom's two 12-bit JPEG Extended files (`JPGExtended.dcm`, and `JPEG-lossy.dcm`, whose
/// scan header is not a sequential one's: IJG ignores that, pylibjpeg refuses it) decode to
/// exactly what DCMTK's `dcmdjpeg` (IJG libjpeg) gives: the sha256 of those 262,144
/// little-endian 16-bit samples, taken from `dcmdjpeg FILE out.dcm` on each (both files
/// hold the same image).
#[test]
fn pydicom_12_bit_jpeg_files_decode_as_dcmtk_decodes_them() {
    const DCMTK: &str = "d30242775a414c01d616447854ebe3f2b20259822894bcd6891f879bcdcbf313";
    let corpus = std::fs::read_dir(workspace().join(".venv/lib"))
        .expect("venv (scripts/setup)")
        .flatten()
        .map(|e| e.path().join("site-packages/pydicom/data/test_files"))
        .find(|p| p.is_dir())
        .expect("pydicom's test files (scripts/setup installs pydicom)");
    for f in ["JPGExtended.dcm", "JPEG-lossy.dcm"] {
        let Ok(scans::dicom::Opened::Dicom(obj)) = scans::dicom::open::open(&corpus.join(f), None) else {
            panic!("{f}: not opened");
        };
        let frags = obj
            .get(dicom_dictionary_std::tags::PIXEL_DATA)
            .and_then(|e| e.value().fragments())
            .expect("encapsulated pixel data");
        let stream: Vec<u8> = frags.iter().flat_map(|f| f.iter().copied()).collect();
        let img = scans::dicom::jpeg12::decode(&stream, None).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!((img.width, img.height, img.precision), (256, 1024, 12), "{f}");
        let bytes: Vec<u8> = img.samples.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(files::sha256_bytes(&bytes), DCMTK, "{f}");
    }
}
