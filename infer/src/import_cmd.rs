//! `infer import`: an ONNX classifier from elsewhere made into a model our tools take.
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub(crate) struct ImportArgs {
    /// The ONNX model to import.
    pub(crate) source: PathBuf,
    /// Where to write the imported model.
    #[arg(short, long)]
    pub(crate) out: PathBuf,
    /// What the output is: logit (log-odds), probability (after a sigmoid), or for an
    /// [N, 2] output two-class-logits (before a softmax) or softmax (probabilities).
    #[arg(long, value_parser = cli::choice::<infer::import::OutputKind>())]
    pub(crate) output_kind: infer::import::OutputKind,
    /// For a two-class output: the index of the nodule class (0 or 1).
    #[arg(long, default_value_t = 1)]
    pub(crate) positive_class: usize,
    /// The output to use, when the model has several.
    #[arg(long)]
    pub(crate) output: Option<String>,
    /// Copy the preprocessing from this model of ours (the flags below override it).
    #[arg(long)]
    pub(crate) like: Option<PathBuf>,
    /// The preprocessing (--cube-size is needed when the input's size is symbolic).
    #[command(flatten)]
    pub(crate) pre: cli::PreprocessFlags,
    #[arg(long, help = scorer::ORT_LIB_HELP)]
    pub(crate) ort_lib: Option<PathBuf>,
}

/// `infer import`.
pub(crate) fn import(a: &ImportArgs) -> ExitCode {
    let s = infer::import::ImportSettings {
        source: a.source.clone(),
        out: a.out.clone(),
        kind: a.output_kind,
        positive_class: a.positive_class,
        output: a.output.clone(),
        like: a.like.clone(),
        pre: a.pre.into(),
        ort_lib: a.ort_lib.clone(),
    };
    match infer::import::import(&s) {
        Ok(r) => {
            let p = &r.preprocess;
            println!(
                "imported {} (input `{}`, output `{}` as a {}) -> {}",
                a.source.display(),
                r.input,
                r.output,
                match a.output_kind {
                    infer::import::OutputKind::Logit => "logit".to_string(),
                    infer::import::OutputKind::Probability => "probability, its log-odds as the logit".to_string(),
                    infer::import::OutputKind::TwoClassLogits => format!(
                        "two class scores, class {} minus class {} as the logit",
                        a.positive_class,
                        1 - a.positive_class.min(1)
                    ),
                    infer::import::OutputKind::Softmax => format!(
                        "two softmax probabilities, log(p{} / p{}) as the logit",
                        a.positive_class,
                        1 - a.positive_class.min(1)
                    ),
                },
                r.out.display()
            );
            println!(
                "preprocessing: {}³ cubes, HU window [{}, {}] onto [{}, {}], padding {} HU",
                p.cube_size, p.hu_min, p.hu_max, p.out_min, p.out_max, p.pad_hu
            );
            for (name, sha) in &r.external {
                println!("made inline the external data file {name} (sha256 {sha})");
            }
            if let Some(b) = r.fixed_batch {
                println!(
                    "the input's batch size is fixed at {b}: scored {b} cube(s) per run (a last, smaller batch padded)"
                );
            }
            for w in &r.warnings {
                eprintln!("infer import: warning: {w}");
            }
            for (from, to) in &r.renamed {
                println!("renamed the source's value `{from}` to `{to}` (the name is ours)");
            }
            println!(
                "checked with ONNX Runtime {} on a test batch: max |Δlogit| against the source {:.2e}; source sha256 {}",
                r.onnxruntime_version, r.max_abs_diff, r.source_sha256
            );
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail("infer import", &e),
    }
}
