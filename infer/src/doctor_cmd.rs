//! `infer doctor`: what this scorer links and sees: ONNX Runtime, its providers, a model.
use std::path::PathBuf;
use std::process::ExitCode;

/// `infer doctor`, with the bundle's report first when started from one.
pub(crate) fn doctor(
    model: Option<PathBuf>,
    ort_lib: Option<&std::path::Path>,
    bundle: &Option<(PathBuf, infer::bundle::BundleInfo)>,
) -> ExitCode {
    if let Some((_, info)) = bundle {
        print!("{}", infer::doctor::bundle_report(info));
    }
    let model = model.or_else(|| bundle.as_ref().map(|(d, i)| d.join(&i.model)));
    match infer::doctor::report(model.as_deref(), ort_lib) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail("infer doctor", &e),
    }
}
