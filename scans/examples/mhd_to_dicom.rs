//! Writes MetaImage scans as DICOM series (one file per slice, uncompressed), for
//! `scripts/bench-prepare`: `mhd_to_dicom OUT_DIR SCAN.mhd...` writes `OUT_DIR/<uid>/IM*.dcm`
//! with the file stem as the SeriesInstanceUID.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let out = PathBuf::from(args.next().ok_or("usage: mhd_to_dicom OUT_DIR SCAN.mhd...")?);
    for p in args.map(PathBuf::from) {
        let uid = p
            .file_stem()
            .ok_or("a scan without a name")?
            .to_string_lossy()
            .into_owned();
        let scan = scans::Scan::read(&p)?;
        scans::dicom::write_series(&scan, &out.join(&uid), &uid, None, &|_, _| {})?;
    }
    Ok(())
}
