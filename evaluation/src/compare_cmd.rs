//! `froc compare`: the command line of [`evaluation::compare`].
use std::path::PathBuf;
use std::process::ExitCode;

use tables::scores::Columns;

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Compare two or more models scored on the same labelled patches (the first is the
    /// reference): AUROC, AUPRC and sensitivity at a fixed specificity per model; paired
    /// DeLong test, series-level paired bootstrap and McNemar against the reference.
    Compare {
        /// Scores CSVs (infer --index output with labels, or a run's val_scores.csv): the
        /// same patches in each, with patch_file, seriesuid, label and the score.
        #[arg(required = true, num_args = 2..)]
        scores: Vec<PathBuf>,
        /// A name per scores file, in order (default: the file names).
        #[arg(long)]
        name: Vec<String>,
        /// The fixed specificity for the sensitivity and McNemar's test, in (0, 1).
        #[arg(long, default_value_t = 0.9)]
        specificity: f64,
        /// Series-level paired bootstrap resamples (0 to skip; at most 100000).
        #[arg(long, default_value_t = 1000)]
        bootstrap: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Folder for comparison.yaml, comparison.md and roc.png (default: print only).
        #[arg(short, long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        columns: cli::ScoreColumnFlags,
        /// LUNA16's annotations.csv: with --seriesuids, each model's CPM and the paired scan
        /// bootstrap of the CPM difference (the scores need center_x/y/z: infer --index).
        #[arg(long, requires = "seriesuids")]
        annotations: Option<PathBuf>,
        /// LUNA16's annotations_excluded.csv (candidates on these are ignored).
        #[arg(long, requires = "annotations")]
        excluded: Option<PathBuf>,
        /// The scans to evaluate (LUNA16's seriesuids.csv: one per row, no header).
        #[arg(long, requires = "annotations")]
        seriesuids: Option<PathBuf>,
    },
}

/// `froc compare`.
pub fn run(c: Cmd) -> ExitCode {
    let Cmd::Compare {
        scores,
        name,
        specificity,
        bootstrap,
        seed,
        out,
        columns,
        annotations,
        excluded,
        seriesuids,
    } = c;
    let columns: Columns = columns.into();
    let s = evaluation::compare::CompareSettings {
        scores: scores.clone(),
        names: name,
        columns: columns.clone(),
        specificity,
        bootstrap,
        seed,
        luna16: annotations
            .zip(seriesuids)
            .map(|(annotations, seriesuids)| evaluation::compare::Luna16Files {
                annotations,
                excluded,
                seriesuids,
            }),
    };
    let cmp = match evaluation::compare::compare(&s) {
        Ok(c) => c,
        Err(e) => return cli::fail("froc compare", &e),
    };
    print!("{}", evaluation::compare::table(&cmp));
    if let Some(dir) = out {
        if let Err(e) = evaluation::compare::write(&cmp, &dir, &scores, &columns) {
            return cli::fail("froc compare", &e);
        }
        println!("wrote {}/comparison.yaml, comparison.md and roc.png", dir.display());
    }
    ExitCode::SUCCESS
}
