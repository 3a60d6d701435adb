//! `infer gallery`: its flags and what it prints (the page itself is `infer::gallery`).
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub(crate) struct GalleryArgs {
    /// Scores written by infer (CSV or JSONL), a trainer's val_scores.csv, or a run folder.
    scores: PathBuf,
    /// The folder the patch names are relative to (default: the index's folder; for a run
    /// folder, its config's data).
    #[arg(long)]
    patches: Option<PathBuf>,
    /// An index for the series, centres and labels the scores lack (default: the patch
    /// folder's patch_index.csv, when the scores lack them).
    #[arg(long)]
    index: Option<PathBuf>,
    /// A calibration: its probabilities and its operating point's decisions (a run
    /// folder's own calibration.yaml is taken by default).
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Which of the calibration's operating points (default: its default).
    #[arg(long)]
    operating_point: Option<String>,
    /// Call positive at a probability (the one shown) at or above this.
    #[arg(long)]
    threshold: Option<f64>,
    /// The page to write.
    #[arg(short, long, default_value = "review.html")]
    out: PathBuf,
    /// Thumbnails in a folder beside the page (NAME_thumbs/), or embedded in it.
    #[arg(long, value_parser = cli::choice::<infer::gallery::Thumbnails>(), default_value = "folder")]
    thumbnails: infer::gallery::Thumbnails,
    /// Patches in the highest-scores section.
    #[arg(long, default_value_t = 50)]
    top: usize,
    /// Patches on each side of the threshold in the borderline section.
    #[arg(long, default_value_t = 25)]
    borderline: usize,
    /// Voxel size of the patches in mm, for the scale bar (default: the patch folder's
    /// prepare.yaml; cutting from --scans: the cut's, default 1).
    #[arg(long)]
    spacing_mm: Option<f64>,
    /// Cut each candidate from the scans under this folder, at its world centre (scores of
    /// `infer --scans`, or any scores with seriesuid and centre columns).
    #[arg(long, conflicts_with = "patches")]
    scans: Option<PathBuf>,
    /// Read only scans of this format under --scans (metaimage, dicom, nifti).
    #[arg(long, requires = "scans")]
    scan_format: Option<scans::Format>,
    /// The cube's edge in mm when cutting from --scans (default 64).
    #[arg(long, requires = "scans")]
    size_mm: Option<f64>,
}

impl From<&GalleryArgs> for infer::gallery::GallerySettings {
    fn from(a: &GalleryArgs) -> Self {
        infer::gallery::GallerySettings {
            scores: a.scores.clone(),
            patches: a.patches.clone(),
            index: a.index.clone(),
            calibration: a.calibration.clone(),
            operating_point: a.operating_point.clone(),
            threshold: a.threshold,
            out: a.out.clone(),
            thumbnails: a.thumbnails,
            top: a.top,
            borderline: a.borderline,
            spacing_mm: a.spacing_mm,
            scans: a.scans.clone(),
            scan_format: a.scan_format,
            size_mm: a.size_mm,
        }
    }
}

/// `infer gallery`.
pub(crate) fn gallery(a: &GalleryArgs) -> ExitCode {
    match infer::gallery::run(&a.into()) {
        Ok(g) => {
            for p in g.problems.iter().take(20) {
                eprintln!("infer gallery: not shown in full: {p}");
            }
            if g.problems.len() > 20 {
                eprintln!(
                    "infer gallery: ... and {} more not shown in full (listed on the page)",
                    g.problems.len() - 20
                );
            }
            for w in &g.warnings {
                eprintln!("infer gallery: note: {w}");
            }
            let secs: Vec<String> = g.sections.iter().map(|(t, n)| format!("{t} {n}")).collect();
            let thumbs = g.thumbs_dir.as_ref().map_or_else(
                || "thumbnails embedded".to_string(),
                |d| {
                    format!(
                        "thumbnails {:.1} MiB in {}",
                        g.thumbs_bytes as f64 / 1048576.0,
                        d.display()
                    )
                },
            );
            println!(
                "wrote {} ({} patches; {}; page {:.1} MiB, {thumbs}) in {:.1} s",
                a.out.display(),
                g.patches,
                secs.join(", "),
                g.html_bytes as f64 / 1048576.0,
                g.seconds
            );
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail("infer", &e),
    }
}
