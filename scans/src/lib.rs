//! Step 1 of the flow, scan → cubes: CT scans as hospitals and public collections store
//! them, read into one geometry ([`metaimage::Scan`]: voxels in HU, x fastest; world mm in
//! LUNA16's frame, ITK/LPS), and the cubes cut from them ([`resample`]) into a patch folder
//! ([`prepare`]) or straight into a scorer's batches (`infer --scans`). The `scans` binary
//! runs `prepare` and `inspect`. No libtorch, no ONNX Runtime: a CPU box that only prepares
//! data builds this crate alone (a test reads the binary's links).
//!
//! * MetaImage (`.mhd` + `.raw`/`.zraw`, `.mha`): [`metaimage`].
//! * DICOM series ([`dicom`]): files grouped by SeriesInstanceUID, slices ordered by their
//!   position along the slice normal, rescaled to HU; the `seriesuid` is the
//!   SeriesInstanceUID (as LUNA16's is).
//! * NIfTI-1 (`.nii`, `.nii.gz`, [`nifti`]): sform, else qform, from RAS to LPS; the
//!   `seriesuid` is the file name without its extension.
//! * Geometry (world ↔ voxel) in [`metaimage::Geometry`]; cutting in [`resample`].
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use metaimage::Scan;
use models::{Error, Result};

pub mod bench;
pub mod candidates;
pub mod dicom;
pub mod error;
pub mod guard;
pub mod inspect;
pub mod metaimage;
pub mod nifti;
pub mod prepare;
pub mod resample;

pub use error::ScanError;

pub(crate) fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::from(files::Error::BadInput {
        path: path.to_path_buf(),
        msg: msg.into(),
    })
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

impl Format {
    /// The format's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::MetaImage => "MetaImage",
            Format::Dicom => "DICOM",
            Format::Nifti => "NIfTI-1",
        }
    }
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

/// A file name's scan format by its extension (DICOM: `.dcm`, `.dicom`, `.ima`, or no
/// extension).
fn kind_of(p: &Path) -> Option<Format> {
    let name = p.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".mhd") || name.ends_with(".mha") {
        Some(Format::MetaImage)
    } else if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        Some(Format::Nifti)
    } else if name.ends_with(".dcm") || name.ends_with(".dicom") || name.ends_with(".ima") || p.extension().is_none() {
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

/// Why a seriesuid cannot name the files and folders made for it, if it cannot (it names
/// folders and files under an output folder: nothing that could climb out of it).
pub fn bad_uid(uid: &str) -> Option<String> {
    if uid.is_empty()
        || uid == "."
        || uid == ".."
        || uid.contains(['/', '\\', '\0'])
        || uid.chars().any(char::is_control)
    {
        Some(format!(
            "a scan's seriesuid must name a file (no '/', '\\', control characters, '.' or '..'), not {uid:?}"
        ))
    } else {
        None
    }
}

/// What [`find`] found.
#[derive(Debug, Default)]
pub struct Found {
    pub scans: BTreeMap<String, Source>,
    /// Files that are not scans this reads, or that cannot be read as one, each with the
    /// reason: a scan of another format (NRRD, Analyze...), a damaged DICOM file, a series
    /// found twice. Each is an error of the run, reported and never skipped silently; the
    /// other scans go on.
    pub unreadable: Vec<(PathBuf, String)>,
    /// DICOMDIR index files, which hold no image (the files they list are read as found).
    pub directories: Vec<PathBuf>,
    /// Files without an extension that are neither DICOM nor a known scan format (a
    /// README, a lock file): counted, not read.
    pub ignored: usize,
}

/// Every scan under `dir` (all subfolders, symlinks followed), of one format when `only`
/// says so: MetaImage and NIfTI files by extension, DICOM files (`.dcm`, `.dicom`, `.ima`,
/// or no extension; with or without the Part-10 header) grouped by SeriesInstanceUID.
/// Anything named like a scan is one, so a FIFO or a folder so named is that scan's error
/// when it is read (reading never blocks), not skipped. A file of another scan format
/// (NRRD, Analyze, MINC...), a file that cannot be read, a seriesuid that could climb out
/// of the output folder, and a series found twice (also in two formats: choose one with
/// `only`) are each listed in [`Found::unreadable`] with the reason, and never stop the
/// other scans. Only a folder without any scan, or one that cannot be listed, is an error.
pub fn find(dir: &Path, only: Option<Format>) -> Result<Found> {
    if !dir.is_dir() {
        return Err(bad(dir, "not a folder of scans"));
    }
    let mut f = Finder::default();
    for e in walkdir::WalkDir::new(dir).follow_links(true).sort_by_file_name() {
        let e = match e {
            Ok(e) => e,
            // A symlink loop or an unreadable folder: that path's error, the rest goes on.
            Err(err) => {
                let p = err.path().map_or_else(|| dir.to_path_buf(), Path::to_path_buf);
                f.found.unreadable.push((p, format!("cannot be listed: {err}")));
                continue;
            }
        };
        let (p, depth, is_dir) = (e.path().to_path_buf(), e.depth(), e.file_type().is_dir());
        if depth == 0 || (is_dir && kind_of(&p) != Some(Format::MetaImage) && kind_of(&p) != Some(Format::Nifti)) {
            continue;
        }
        let kind = kind_of(&p);
        if kind.is_some_and(|k| only.is_some_and(|o| o != k)) {
            continue;
        }
        match kind {
            Some(Format::MetaImage) => f.add(uid_from_name(&p), Source::MetaImage(p)),
            Some(Format::Nifti) => f.add(uid_from_name(&p), Source::Nifti(p)),
            Some(Format::Dicom) => f.dicom_file(p, dir),
            None if only.is_none() => f.other_file(p),
            None => {}
        }
    }
    let found = f.finish();
    if found.scans.is_empty() && found.unreadable.is_empty() {
        return Err(bad(
            dir,
            match only {
                None => "no .mhd or .mha scans, no .nii/.nii.gz and no DICOM files found (looked in every subfolder)"
                    .to_string(),
                Some(f) => format!("no {} scans found (looked in every subfolder)", f.name()),
            },
        ));
    }
    Ok(found)
}

/// What [`find`] has seen so far: the scans, the DICOM files by series, and the series
/// found more than once.
#[derive(Default)]
struct Finder {
    found: Found,
    dicom: BTreeMap<String, (PathBuf, Vec<PathBuf>)>,
    twice: BTreeMap<String, Vec<PathBuf>>,
}

impl Finder {
    /// One scan of series `uid` (a name that cannot be a file's is refused; a series seen
    /// before is noted, and read neither time).
    fn add(&mut self, uid: String, src: Source) {
        if let Some(why) = bad_uid(&uid) {
            for f in src.files().into_iter().take(1) {
                self.found.unreadable.push((f, why.clone()));
            }
            return;
        }
        if let Some(prev) = self.found.scans.get(&uid) {
            self.twice
                .entry(uid)
                .or_insert_with(|| vec![prev.path().to_path_buf()])
                .push(src.path().to_path_buf());
            return;
        }
        if let Some(v) = self.twice.get_mut(&uid) {
            v.push(src.path().to_path_buf());
            return;
        }
        self.found.scans.insert(uid, src);
    }

    /// A file that may be DICOM: a slice of its series, a DICOMDIR, or a file that is not
    /// DICOM after all (reported, unless it has no extension: a README).
    fn dicom_file(&mut self, p: PathBuf, dir: &Path) {
        match dicom::probe(&p) {
            Ok(dicom::Probe::Series(uid)) => {
                if let Some(why) = bad_uid(&uid) {
                    self.found.unreadable.push((p, why));
                    return;
                }
                let folder = p.parent().unwrap_or(dir).to_path_buf();
                self.dicom.entry(uid).or_insert_with(|| (folder, Vec::new())).1.push(p);
            }
            Ok(dicom::Probe::Directory) => self.found.directories.push(p),
            Ok(dicom::Probe::NotDicom) => match dicom::foreign_format(&p) {
                Some(f) => self.found.unreadable.push((
                    p,
                    format!("a {f} file: not a scan format read here (MetaImage, DICOM, NIfTI-1); convert it"),
                )),
                None if p.extension().is_none() => self.found.ignored += 1,
                None => self.found.unreadable.push((
                    p,
                    "named as DICOM but not DICOM (no DICM signature, not a data set) and no scan format known here"
                        .into(),
                )),
            },
            Err(e) => self.found.unreadable.push((p, e.to_string())),
        }
    }

    /// Any other file: a scan format not read here is reported (the data file of an
    /// Analyze/NIfTI pair with its header, a MetaImage's .raw not at all).
    fn other_file(&mut self, p: PathBuf) {
        if let Some(f) = dicom::foreign_format(&p) {
            let pair_data = f.contains("image data") && p.with_extension("hdr").is_file();
            let metaimage_data = f.contains("raw voxel data");
            if !pair_data && !metaimage_data {
                self.found.unreadable.push((
                    p,
                    format!("a {f} file: not a scan format read here (MetaImage, DICOM, NIfTI-1); convert it"),
                ));
            }
        }
    }

    /// The DICOM series added, and every series found twice refused, naming its places.
    fn finish(mut self) -> Found {
        for (uid, (folder, files)) in std::mem::take(&mut self.dicom) {
            self.add(uid, Source::Dicom { dir: folder, files });
        }
        for (uid, paths) in std::mem::take(&mut self.twice) {
            self.found.scans.remove(&uid);
            let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            self.found.unreadable.push((
                paths.last().cloned().unwrap_or_default(),
                format!(
                    "series {uid} appears {} times: {}; neither is read (if it is one series in two formats, choose one with --format)",
                    paths.len(),
                    shown.join(" and ")
                ),
            ));
        }
        self.found
    }
}
