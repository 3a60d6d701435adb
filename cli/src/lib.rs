//! The command line every binary of the toolchain shares: what `main` does first
//! ([`default_sigpipe`]), the argument groups several commands take ([`PreprocessFlags`],
//! [`ArchFlags`], [`ScoreColumnFlags`]),
//! choices parsed from a library's enums without clap in the library ([`choice`]), and one
//! way to report an error and exit ([`fail`], [`error_text`]). Binaries only: no library crate
//! depends on clap.
use std::process::ExitCode;

/// Restores the default action of SIGPIPE, so `trainer doctor | head` ends quietly when
/// `head` closes the pipe, as Unix tools do. Rust's runtime ignores SIGPIPE, which turns a
/// closed pipe into an error on the next `println!` and so into a panic; no kept crate
/// offers this (the standard library's switch is unstable), hence the one `libc` call.
/// Files are unaffected: only writes to a pipe nobody reads raise the signal.
#[allow(unsafe_code)]
pub fn default_sigpipe() {
    // SAFETY: called at the start of `main`, before any thread exists; `signal` with
    // SIG_DFL installs no handler code.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The preprocessing flags of the commands that make a model from something else
/// (`infer import`, `trainer export`): each one given replaces that field of the
/// preprocessing the command starts from (another model's, a config's, or the defaults).
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct PreprocessFlags {
    /// Cube side in voxels (8 to 512).
    #[arg(long)]
    pub cube_size: Option<usize>,
    /// HU window low end (default -1000).
    #[arg(long, allow_hyphen_values = true)]
    pub hu_min: Option<f32>,
    /// HU window high end (default 400).
    #[arg(long, allow_hyphen_values = true)]
    pub hu_max: Option<f32>,
    /// The window's low end maps onto this (default 0).
    #[arg(long, allow_hyphen_values = true)]
    pub out_min: Option<f32>,
    /// The window's high end maps onto this (default 1).
    #[arg(long, allow_hyphen_values = true)]
    pub out_max: Option<f32>,
    /// HU of the padding where a patch is smaller than the cube (default -1000, air).
    #[arg(long, allow_hyphen_values = true)]
    pub pad_hu: Option<f32>,
}

impl From<PreprocessFlags> for models::preprocess::Overrides {
    fn from(f: PreprocessFlags) -> Self {
        models::preprocess::Overrides {
            cube_size: f.cube_size,
            hu_min: f.hu_min,
            hu_max: f.hu_max,
            out_min: f.out_min,
            out_max: f.out_max,
            pad_hu: f.pad_hu,
        }
    }
}

/// The architecture flags of the commands that build a network (`trainer train`,
/// `trainer export`): a built-in by name or a spec file, and the baseline's width. Each one
/// given replaces the config's.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ArchFlags {
    /// baseline_cnn, r3d_18, mc3_18 or r2plus1d_18 (default: the config's, else
    /// baseline_cnn).
    #[arg(long, conflicts_with = "spec")]
    pub arch: Option<String>,
    /// An architecture spec file (see `trainer spec`) instead of a built-in.
    #[arg(long)]
    pub spec: Option<std::path::PathBuf>,
    /// Width of the baseline CNN's first stage (1 to 256).
    #[arg(long)]
    pub width: Option<usize>,
}

/// Which columns of a scores CSV hold what (`calibrate`, `froc compare`).
#[derive(clap::Args, Debug, Clone)]
pub struct ScoreColumnFlags {
    /// Column holding the raw logit.
    #[arg(long, default_value = "logit")]
    pub logit_col: String,
    /// Column holding a probability instead of a logit.
    #[arg(long)]
    pub prob_col: Option<String>,
    /// Column holding the 0/1 label.
    #[arg(long, default_value = "label")]
    pub label_col: String,
    /// Column holding the series id (bootstraps and cross-validation group by it).
    #[arg(long, default_value = "seriesuid")]
    pub series_col: String,
}

impl From<ScoreColumnFlags> for tables::scores::Columns {
    fn from(f: ScoreColumnFlags) -> Self {
        tables::scores::Columns {
            logit: f.logit_col,
            probability: f.prob_col,
            label: f.label_col,
            seriesuid: f.series_col,
            ..tables::scores::Columns::default()
        }
    }
}

/// A value parser for a library's enum, from its names and doc comments (strum's
/// `VariantArray`, `IntoStaticStr`, `EnumMessage`): the library needs no clap, and `--help`
/// still lists each possible value with its description, as clap's own `ValueEnum` does.
pub fn choice<T>() -> impl clap::builder::TypedValueParser<Value = T>
where
    T: strum::VariantArray + strum::EnumMessage + Into<&'static str> + Copy + Send + Sync + 'static,
{
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = T::VARIANTS.iter().map(|v| {
        let name: &'static str = (*v).into();
        let value = PossibleValue::new(name);
        match v.get_documentation() {
            Some(doc) => value.help(doc.trim()),
            None => value,
        }
    });
    PossibleValuesParser::new(values).map(|s| {
        // clap has checked `s` against exactly these names.
        *T::VARIANTS
            .iter()
            .find(|v| Into::<&'static str>::into(**v) == s)
            .unwrap_or(&T::VARIANTS[0])
    })
}

/// Reports `e` (with its causes, each said once) as `PROGRAM: error: …` on stderr and
/// returns the failure exit code: the one way every binary ends on an error.
pub fn fail(program: &str, e: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("{program}: error: {}", error_text(e));
    ExitCode::FAILURE
}

/// An error and its causes as one line for a person: `outer: cause: cause`, each cause
/// added only when the text so far does not already say it (our errors print the cause they
/// wrap, and also expose it as their `source` for callers that match on it: printing the
/// chain naively said "No such file or directory" twice).
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How fast to go.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr, strum::EnumMessage)]
    #[strum(serialize_all = "kebab-case")]
    enum Pace {
        /// Slowly, checking each step.
        Slow,
        VeryFast,
    }

    #[test]
    fn a_library_enum_is_a_flag_with_its_names_and_docs() {
        let cmd = || {
            clap::Command::new("t").arg(
                clap::Arg::new("pace")
                    .long("pace")
                    .value_parser(choice::<Pace>())
                    .default_value("slow"),
            )
        };
        let m = cmd().try_get_matches_from(["t", "--pace", "very-fast"]).expect("parses");
        assert_eq!(m.get_one::<Pace>("pace"), Some(&Pace::VeryFast));
        let m = cmd().try_get_matches_from(["t"]).expect("default");
        assert_eq!(m.get_one::<Pace>("pace"), Some(&Pace::Slow));
        let e = cmd().try_get_matches_from(["t", "--pace", "fast"]).expect_err("unknown");
        assert!(e.to_string().contains("very-fast"), "{e}");
        let help = cmd().render_long_help().to_string();
        assert!(help.contains("slow") && help.contains("Slowly, checking each step."), "{help}");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{what}: {source}")]
    struct Wrapped {
        what: String,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading the scans")]
    struct Outer(#[source] Wrapped);

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let w = Wrapped {
            what: "c.csv".into(),
            source: io(),
        };
        assert_eq!(error_text(&w), "c.csv: No such file or directory");
        let o = Outer(Wrapped {
            what: "c.csv".into(),
            source: io(),
        });
        assert_eq!(error_text(&o), "reading the scans: c.csv: No such file or directory");
    }
}
