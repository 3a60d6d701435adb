//! `scans inspect`: what a scan is, as `prepare` will read it — size, spacing, origin,
//! direction, extent in world mm, the HU range, and where world points land.
use std::path::Path;

use crate::error::{Result, ScanError};

/// The scan at `path`: a `.mhd`/`.mha`/`.nii`/`.nii.gz` file, a DICOM file (its series, from
/// the files beside it), or a folder holding exactly one scan (or `series` among several).
pub fn locate(path: &Path, format: Option<crate::Format>, series: Option<&str>) -> Result<(String, crate::Source)> {
    let dir_of_file;
    let (dir, want) = if path.is_dir() {
        (path, series.map(str::to_string))
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if [".mhd", ".mha"].iter().any(|e| name.ends_with(e)) {
            return Ok((uid_of(path), crate::Source::MetaImage(path.to_path_buf())));
        }
        if [".nii", ".nii.gz"].iter().any(|e| name.ends_with(e)) {
            return Ok((uid_of(path), crate::Source::Nifti(path.to_path_buf())));
        }
        // A DICOM file: its series among the files of its folder.
        let uid = match crate::dicom::probe(path)? {
            crate::dicom::Probe::Series(uid) => uid,
            crate::dicom::Probe::Directory => {
                return Err(ScanError::from(files::Error::bad_input(
                    path,
                    "a DICOMDIR (an index of files, no image); inspect its folder instead",
                )))
            }
            crate::dicom::Probe::NotDicom => {
                return Err(ScanError::from(files::Error::bad_input(
                    path,
                    format!(
                        "not a scan ({})",
                        crate::dicom::foreign_format(path).map_or_else(
                            || "not DICOM, and no scan format known here".to_string(),
                            |f| format!("a {f} file, a format not read here")
                        )
                    ),
                )))
            }
        };
        dir_of_file = path
            .parent()
            .map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf);
        (dir_of_file.as_path(), Some(uid))
    };
    let found = crate::find(
        dir,
        format.or(if path.is_dir() {
            None
        } else {
            Some(crate::Format::Dicom)
        }),
    )?;
    for (p, why) in &found.unreadable {
        eprintln!("inspect: warning: {}: {why}", p.display());
    }
    // Nothing readable: the reasons are the error.
    let reasons = || {
        found
            .unreadable
            .iter()
            .map(|(p, why)| format!("{}: {why}", p.display()))
            .collect::<Vec<_>>()
            .join("\n  ")
    };
    match want {
        Some(uid) => found.scans.get(&uid).cloned().map(|s| (uid.clone(), s)).ok_or_else(|| {
            ScanError::from(files::Error::bad_input(
                dir,
                format!("no series {uid} read here\n  {}", reasons()),
            ))
        }),
        None if found.scans.is_empty() => Err(ScanError::from(files::Error::bad_input(
            dir,
            format!("no scan read here:\n  {}", reasons()),
        ))),
        None if found.scans.len() == 1 => found
            .scans
            .into_iter()
            .next()
            .ok_or_else(|| ScanError::Internal("one scan, then none".into())),
        None => Err(ScanError::from(files::Error::bad_input(
            dir,
            format!(
                "{} scans; choose one with --series:\n  {}",
                found.scans.len(),
                found
                    .scans
                    .iter()
                    .map(|(u, s)| format!("{u}  ({}, {})", s.format(), s.path().display()))
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ),
        ))),
    }
}

fn uid_of(p: &Path) -> String {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".nii.gz", ".nii", ".mhd", ".mha"] {
        if name.to_ascii_lowercase().ends_with(ext) {
            return name[..name.len() - ext.len()].to_string();
        }
    }
    name
}

fn v3(v: [f64; 3], digits: usize) -> String {
    format!("({:.d$}, {:.d$}, {:.d$})", v[0], v[1], v[2], d = digits)
}

/// The report on a scan, with where each of `points` (world mm) lands.
pub fn report(uid: &str, src: &crate::Source, points: &[[f64; 3]]) -> Result<String> {
    let scan = src.read()?;
    let g = &scan.geometry;
    let mut out = String::new();
    out += &format!("scan: {} ({}), seriesuid {uid}\n", src.path().display(), src.format());
    out += &format!("size: {} × {} × {} voxels (x, y, z)\n", g.dims[0], g.dims[1], g.dims[2]);
    out += &format!(
        "spacing: {:.6} × {:.6} × {:.6} mm\n",
        g.spacing[0], g.spacing[1], g.spacing[2]
    );
    out += &format!("origin: {} mm (world LPS of voxel 0, 0, 0)\n", v3(g.offset, 4));
    out += &format!(
        "direction: x {}, y {}, z {}{}\n",
        v3(g.direction[0], 6),
        v3(g.direction[1], 6),
        v3(g.direction[2], 6),
        if g.is_orthonormal() { "" } else { " (not orthonormal)" }
    );
    let far = g.voxel_to_world([g.dims[0] as f64 - 1.0, g.dims[1] as f64 - 1.0, g.dims[2] as f64 - 1.0]);
    let (lo, hi) = (0..3).fold(([0.0; 3], [0.0; 3]), |(mut lo, mut hi), k| {
        lo[k] = g.offset[k].min(far[k]);
        hi[k] = g.offset[k].max(far[k]);
        (lo, hi)
    });
    out += &format!(
        "extent (voxel centres): x [{:.2}, {:.2}], y [{:.2}, {:.2}], z [{:.2}, {:.2}] mm\n",
        lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]
    );
    let mut sorted = scan.voxels.clone();
    sorted.sort_by(f32::total_cmp);
    let q = |f: f64| sorted[((sorted.len() - 1) as f64 * f).round() as usize];
    let mean = scan.voxels.iter().map(|&v| f64::from(v)).sum::<f64>() / scan.voxels.len().max(1) as f64;
    out += &format!(
        "HU: min {:.1}, 1% {:.1}, median {:.1}, 99% {:.1}, max {:.1}, mean {:.1}\n",
        q(0.0),
        q(0.01),
        q(0.5),
        q(0.99),
        q(1.0),
        mean
    );
    for &p in points {
        let v = g.world_to_voxel(p);
        let inside = g.contains_world(p);
        out += &format!(
            "world {} mm -> voxel {} ({})\n",
            v3(p, 2),
            v3(v, 2),
            if inside { "inside" } else { "outside the scan" }
        );
    }
    Ok(out)
}
