//! `scans`: step 1 of the flow, scan → cubes. `scans prepare` cuts a patch folder from CT
//! scans and LUNA16's CSVs; `scans inspect` prints a scan's geometry as it is read and where
//! world points land. (Cubes straight into a scorer: `infer --scans`.)
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "scans",
    version,
    about = "Step 1, scan → cubes: cut patch folders from CT scans (MetaImage, DICOM, NIfTI-1), inspect a scan's geometry"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Cut a patch folder from CT scans (MetaImage .mhd/.mha, DICOM series, NIfTI-1
    /// .nii/.nii.gz): positives from the annotations and the candidates labelled 1, real
    /// negatives from the candidates labelled 0. Resumable: run it again with the same
    /// settings to finish.
    Prepare(Box<PrepareArgs>),
    /// Print a scan's geometry as prepare reads it (size, spacing, origin, direction,
    /// extent, HU range) and where world points land: a .mhd/.mha/.nii/.nii.gz file, a
    /// DICOM file (its series), or a folder holding one scan (or --series among several).
    Inspect {
        scan: PathBuf,
        /// Read only this format (metaimage, dicom or nifti).
        #[arg(long)]
        format: Option<scans::Format>,
        /// The series to inspect when the folder holds several.
        #[arg(long)]
        series: Option<String>,
        /// A world point in mm, `X,Y,Z` (LPS, as LUNA16's CSVs): where it lands (repeatable).
        #[arg(long, value_name = "X,Y,Z", allow_hyphen_values = true)]
        world: Vec<String>,
    },
    /// Benchmarks (scripts/bench-scans): cubes per second of cutting alone, in memory, per
    /// thread count (reading the scans timed apart).
    #[command(hide = true)]
    BenchCut {
        #[arg(long)]
        scans: PathBuf,
        #[arg(long)]
        candidates: PathBuf,
        #[arg(long, default_value_t = 64.0)]
        size_mm: f64,
        #[arg(long, default_value_t = 1.0)]
        spacing_mm: f64,
        /// Thread counts to time, e.g. 1,2.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        threads: Vec<usize>,
        /// Time the per-voxel general path instead of the separable one.
        #[arg(long)]
        general: bool,
    },
}

#[derive(clap::Args, Debug)]
struct PrepareArgs {
    /// Folder of scans: LUNA16's subset*/ layout or flat (searched recursively); .mhd/.mha,
    /// .nii/.nii.gz, and DICOM files (.dcm, .dicom, .ima or no extension) grouped by
    /// SeriesInstanceUID.
    #[arg(long)]
    scans: PathBuf,
    /// Read only this format (metaimage, dicom or nifti): needed where one series is
    /// stored in two formats side by side.
    #[arg(long)]
    format: Option<scans::Format>,
    /// annotations.csv (seriesuid, coordX, coordY, coordZ, diameter_mm; world mm).
    #[arg(long)]
    annotations: PathBuf,
    /// candidates.csv or candidates_V2.csv (seriesuid, coordX, coordY, coordZ, class).
    #[arg(long)]
    candidates: PathBuf,
    /// Patch folder to write (patch_index.csv and patches/<seriesuid>/*.npy).
    #[arg(short, long)]
    out: PathBuf,
    /// Cube edge in mm (8 to 512 voxels per edge at --spacing-mm).
    #[arg(long, default_value_t = 64.0)]
    size_mm: f64,
    /// Isotropic voxel size of the cubes in mm (0.001 to 100).
    #[arg(long, default_value_t = 1.0)]
    spacing_mm: f64,
    /// Negatives per positive, per scan.
    #[arg(long, default_value_t = 3.0)]
    neg_ratio: f64,
    /// Negatives per scan at least (scans without nodules get this many).
    #[arg(long, default_value_t = 5)]
    min_negatives: usize,
    /// Keep every negative candidate (about 480 per nodule in LUNA16).
    #[arg(long)]
    all_negatives: bool,
    /// Seed of the negative subsampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Storage type of the cubes: int16 or float32.
    #[arg(long, default_value = "int16")]
    dtype: scans::prepare::CubeDtype,
    /// Scans processed at once (0: one per core, at most 8; each holds a scan in memory;
    /// no more than max(8, 4 x CPUs)).
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    #[arg(short, long)]
    quiet: bool,
}

/// `scans prepare`.
fn prepare(a: &PrepareArgs) -> Result<()> {
    let job = scans::prepare::PrepareJob {
        scans: a.scans.clone(),
        format: a.format,
        annotations: a.annotations.clone(),
        candidates: a.candidates.clone(),
        out: a.out.clone(),
        sampling: scans::prepare::Sampling {
            grid: scans::resample::PatchGrid {
                size_mm: a.size_mm,
                spacing_mm: a.spacing_mm,
            },
            neg_ratio: a.neg_ratio,
            min_negatives: a.min_negatives,
            all_negatives: a.all_negatives,
            seed: a.seed,
            dtype: a.dtype,
        },
        jobs: a.jobs,
        quiet: a.quiet,
    };
    let s = scans::prepare::run(&job)?;
    println!(
        "prepared {} scan(s) now ({} done before, {} failed): {} patches written ({:.1} patches/s); index {} holds {} positives and {} negatives",
        s.scans_done_now,
        s.scans_done_before,
        s.scans_failed,
        s.patches_written,
        s.patches_per_s,
        a.out.join(tables::index::INDEX_FILE).display(),
        s.positives_total,
        s.negatives_total
    );
    if s.annotated_series_without_scan > 0 {
        println!(
            "note: {} annotated series have no scan under {} (other subsets?)",
            s.annotated_series_without_scan,
            a.scans.display()
        );
    }
    if s.scans_failed > 0 {
        anyhow::bail!(
            "{} scan(s) failed (see {}); run the same command again to retry them",
            s.scans_failed,
            a.out.join(scans::prepare::ERRORS_FILE).display()
        );
    }
    Ok(())
}

/// `--world X,Y,Z` points.
fn points(world: &[String]) -> Result<Vec<[f64; 3]>> {
    world
        .iter()
        .map(|w| {
            let v: Vec<f64> = w
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("--world {w}: {e}"))?;
            match v[..] {
                [x, y, z] if v.iter().all(|c| c.is_finite()) => Ok([x, y, z]),
                _ => anyhow::bail!("--world {w}: three finite numbers X,Y,Z expected"),
            }
        })
        .collect()
}

/// `scans bench-cut`.
fn bench_cut(
    scans: &Path,
    candidates: &Path,
    grid: &scans::resample::PatchGrid,
    threads: &[usize],
    general: bool,
) -> Result<()> {
    let (reading, n, speeds) = scans::bench::cut_speed(scans, candidates, grid, threads, general)?;
    println!(
        "read {n} scan(s) in {reading:.2} s ({:.2} s each)",
        reading / n.max(1) as f64
    );
    for sp in speeds {
        println!(
            "cut {} cubes of {}³ on {} thread(s){} in {:.2} s: {:.0} cubes/s, {:.0} per thread",
            sp.cubes,
            grid.voxels(),
            sp.threads,
            if general { " (general path)" } else { "" },
            sp.seconds,
            sp.cubes as f64 / sp.seconds,
            sp.cubes as f64 / sp.seconds / sp.threads as f64
        );
    }
    Ok(())
}

/// `scans inspect`.
fn inspect(scan: &Path, format: Option<scans::Format>, series: Option<&str>, world: &[String]) -> Result<()> {
    let points = points(world)?;
    let (uid, src) = scans::inspect::locate(scan, format, series)?;
    print!("{}", scans::inspect::report(&uid, &src, &points)?);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = || -> Result<()> {
        match cli.cmd {
            Cmd::Prepare(a) => prepare(&a),
            Cmd::BenchCut {
                scans,
                candidates,
                size_mm,
                spacing_mm,
                threads,
                general,
            } => bench_cut(
                &scans,
                &candidates,
                &scans::resample::PatchGrid { size_mm, spacing_mm },
                &threads,
                general,
            ),
            Cmd::Inspect {
                scan,
                format,
                series,
                world,
            } => inspect(&scan, format, series.as_deref(), &world),
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail("scans", e.as_ref()),
    }
}
