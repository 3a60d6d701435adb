//! CT scans as hospitals and public collections store them, read into the geometry
//! `trainer prepare` cuts patches from: [`models::metaimage::Scan`] (voxels in HU, x fastest;
//! world mm in LUNA16's frame, ITK/LPS).
//!
//! * MetaImage (`.mhd` + `.raw`/`.zraw`, `.mha`): [`models::metaimage`].
//! * DICOM series ([`dicom`]): files grouped by SeriesInstanceUID, slices ordered by their
//!   position along the slice normal, rescaled to HU; the `seriesuid` is the
//!   SeriesInstanceUID (as LUNA16's is).
//! * NIfTI-1 (`.nii`, `.nii.gz`, [`nifti`]): sform, else qform, from RAS to LPS; the
//!   `seriesuid` is the file name without its extension.
//!
//! Its own crate so that the DICOM and NIfTI decoders reach only the trainer: the scoring
//! binaries, which read patches, never link them.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use models::metaimage::Scan;
use models::{Error, Result};

pub mod dicom;
pub mod nifti;

pub(crate) fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::BadInput {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Where a scan's voxels are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A `.mhd` or `.mha` file.
    MetaImage(PathBuf),
    /// The files of one DICOM series (in file-name order; their order in space comes from
    /// their positions) and the folder they were found in.
    Dicom { dir: PathBuf, files: Vec<PathBuf> },
    /// A `.nii` or `.nii.gz` file.
    Nifti(PathBuf),
}

impl Source {
    /// The path that names the scan in messages: the file, or a DICOM series' folder.
    pub fn path(&self) -> &Path {
        match self {
            Source::MetaImage(p) | Source::Nifti(p) => p,
            Source::Dicom { dir, .. } => dir,
        }
    }

    /// Every file the scan is read from (for the output policy: nothing written may be one).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Source::MetaImage(p) => vec![p.clone(), p.with_extension("raw"), p.with_extension("zraw")],
            Source::Nifti(p) => vec![p.clone()],
            Source::Dicom { files, .. } => files.clone(),
        }
    }

    /// The format, in words.
    pub fn format(&self) -> String {
        match self {
            Source::MetaImage(_) => "MetaImage".into(),
            Source::Nifti(_) => "NIfTI-1".into(),
            Source::Dicom { files, .. } => format!("DICOM series of {} files", files.len()),
        }
    }

    /// Reads the scan.
    pub fn read(&self) -> Result<Scan> {
        match self {
            Source::MetaImage(p) => Scan::read(p),
            Source::Nifti(p) => nifti::read(p),
            Source::Dicom { dir, files } => dicom::read_series(dir, files),
        }
    }
}

/// A scan format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    MetaImage,
    Dicom,
    Nifti,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "metaimage" | "mhd" => Ok(Format::MetaImage),
            "dicom" => Ok(Format::Dicom),
            "nifti" => Ok(Format::Nifti),
            other => Err(format!("scan format {other:?}: metaimage, dicom or nifti")),
        }
    }
}

/// A file name's scan format by its extension (DICOM: `.dcm`, or no extension).
fn kind_of(p: &Path) -> Option<Format> {
    let name = p.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".mhd") || name.ends_with(".mha") {
        Some(Format::MetaImage)
    } else if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        Some(Format::Nifti)
    } else if name.ends_with(".dcm") || p.extension().is_none() {
        Some(Format::Dicom)
    } else {
        None
    }
}

/// The seriesuid a file name gives (MetaImage, NIfTI): its name without the extension.
fn uid_from_name(p: &Path) -> String {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    for ext in [".nii.gz", ".nii", ".mhd", ".mha"] {
        if lower.ends_with(ext) {
            return name[..name.len() - ext.len()].to_string();
        }
    }
    name
}

/// What [`find`] found.
#[derive(Debug, Default)]
pub struct Found {
    pub scans: BTreeMap<String, Source>,
    /// Files that look like DICOM but whose header could not be read: each reported, none
    /// skipped silently.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Every scan under `dir` (all subfolders, symlinks followed), of one format when `only`
/// says so: MetaImage and NIfTI files by extension, DICOM files (`.dcm`, or no extension
/// and the `DICM` signature) grouped by SeriesInstanceUID. Anything named like a scan is
/// one, so a FIFO or a folder so named is that scan's error when it is read (reading never
/// blocks), not skipped. A series found twice (also in two formats: choose one with
/// `only`), or a uid that could climb out of the output folder, is an error.
pub fn find(dir: &Path, only: Option<Format>) -> Result<Found> {
    if !dir.is_dir() {
        return Err(bad(dir, "not a folder of scans"));
    }
    let mut found = Found::default();
    let mut dicom: BTreeMap<String, (PathBuf, Vec<PathBuf>)> = BTreeMap::new();
    let add = |found: &mut Found, uid: String, src: Source| -> Result<()> {
        // The uid names folders and files under --out: nothing that could climb out of it.
        if uid.is_empty() || uid == "." || uid == ".." || uid.contains(['/', '\\']) || uid.contains('\0') {
            return Err(bad(
                src.path(),
                format!("a scan's seriesuid must name a file, not {uid:?}"),
            ));
        }
        if let Some(prev) = found.scans.insert(uid.clone(), src.clone()) {
            let hint = if std::mem::discriminant(&prev) == std::mem::discriminant(&src) {
                String::new()
            } else {
                format!(" ({} and {}: choose one format)", prev.format(), src.format())
            };
            return Err(bad(
                src.path(),
                format!(
                    "series {uid} appears twice: {} and {}{hint}",
                    prev.path().display(),
                    src.path().display()
                ),
            ));
        }
        Ok(())
    };
    for e in walkdir::WalkDir::new(dir).follow_links(true).sort_by_file_name() {
        let e = match e {
            Ok(e) => e,
            // A symlink loop or an unreadable folder: say so and go on with the rest.
            Err(err) => {
                eprintln!("prepare: skipping {err}");
                continue;
            }
        };
        let (p, depth, is_dir) = (e.path().to_path_buf(), e.depth(), e.file_type().is_dir());
        if depth == 0 {
            continue;
        }
        let kind = kind_of(&p).filter(|k| only.is_none_or(|o| o == *k));
        match kind {
            Some(Format::MetaImage) => add(&mut found, uid_from_name(&p), Source::MetaImage(p))?,
            Some(Format::Nifti) => add(&mut found, uid_from_name(&p), Source::Nifti(p))?,
            Some(Format::Dicom) if !is_dir => match dicom::probe(&p) {
                Ok(Some(uid)) => {
                    let folder = p.parent().unwrap_or(dir).to_path_buf();
                    let entry = dicom.entry(uid).or_insert_with(|| (folder, Vec::new()));
                    entry.1.push(p);
                }
                // Without an extension and without the signature: not a scan.
                Ok(None) => {
                    if p.extension().is_some() {
                        found
                            .unreadable
                            .push((p, "no DICOM signature (DICM at byte 128)".into()));
                    }
                }
                Err(e) => found.unreadable.push((p, e.to_string())),
            },
            _ => {}
        }
    }
    for (uid, (folder, files)) in dicom {
        add(&mut found, uid, Source::Dicom { dir: folder, files })?;
    }
    if found.scans.is_empty() {
        return Err(bad(
            dir,
            match only {
                None => "no .mhd or .mha scans, no .nii/.nii.gz and no DICOM files found (looked in every subfolder)"
                    .to_string(),
                Some(f) => format!("no {f:?} scans found (looked in every subfolder)"),
            },
        ));
    }
    Ok(found)
}
