//! Where a scoring run writes: its output and errors file planned against its inputs and
//! locked before any work ([`plan_outputs`]), the output streamed to a temporary file (or a
//! pipe) and committed at the end ([`Out`]), and the errors file ([`write_errors`]).
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use files::{Lock, RunIo, Sink, Target};

use crate::inputs::Inputs;
use crate::output::Format;
use crate::settings::Settings;
use crate::InferError;

/// Where a run writes, decided before any work.
pub(crate) struct OutputPlan {
    /// `None`: standard output.
    pub(crate) out: Option<Target>,
    pub(crate) errors: Option<(PathBuf, Target)>,
    /// Held for the whole run: one per output file.
    pub(crate) _locks: Vec<Lock>,
}

/// The errors file: `--errors`, else `OUT.errors.csv` beside a regular output (none for
/// standard output, a device or a FIFO: the reasons are on stderr).
pub(crate) fn errors_path(s: &Settings, out: Option<&Target>) -> Option<PathBuf> {
    s.errors.clone().or_else(|| {
        matches!(out, Some(Target::File(_))).then(|| {
            let mut p = s.out.clone().into_os_string();
            p.push(".errors.csv");
            PathBuf::from(p)
        })
    })
}

/// The header line of an errors file (`candidate,error` for LUNA16's candidates scored from
/// scans).
pub(crate) const ERRORS_HEADER: &str = "patch_file,error";

/// Whether the first bytes of a file are one of our errors files.
pub(crate) fn is_errors(head: &[u8]) -> bool {
    head.starts_with(format!("{ERRORS_HEADER}\n").as_bytes()) || head.starts_with(b"candidate,error\n")
}

/// Declares the run's inputs and outputs (no output may name an input or another output;
/// devices and FIFOs are written through; an existing file is replaced only if it is one of
/// ours of that kind) and locks each output file against a second run.
pub(crate) fn plan_outputs(s: &Settings, inputs: &Inputs) -> Result<OutputPlan, InferError> {
    let mut io = RunIo::new();
    io.input("model", &s.model);
    if let Some(c) = &s.calibration {
        io.input("calibration", c);
    }
    if let Some(i) = &inputs.index {
        io.input("index", i);
    }
    if let Some(f) = &s.features_csv {
        io.input("features CSV", f);
    }
    match &inputs.scans {
        Some(set) => {
            io.inputs("scan", crate::from_scans::scan_files(set).iter().map(PathBuf::as_path));
        }
        None => {
            io.inputs("patch", inputs.items.iter().map(|it| it.path.as_path()));
        }
    }
    let out = if s.out.as_os_str() == "-" {
        None
    } else {
        let t = io.output("output", &s.out)?;
        files::check_replaceable(&s.out, "scores output", &crate::output::is_scores)?;
        Some(t)
    };
    let mut locks = Vec::new();
    if let Some(Target::File(p)) = &out {
        locks.push(Lock::beside(p, &format!("output {}", s.out.display()))?);
    }
    if let Some(sh) = s.shard {
        if !matches!(out, Some(Target::File(_))) {
            return Err(InferError::Usage(format!(
                "--shard {}/{} needs -o a file: its record (OUT.shard.yaml) goes beside it for `infer merge`",
                sh.k, sh.n
            )));
        }
        let rec = crate::shard::record_path(&s.out);
        io.output("shard record", &rec)?;
        files::check_replaceable(&rec, "shard record", &|h| h.starts_with(b"shard:"))?;
    }
    if s.held_out.is_some() {
        if !matches!(out, Some(Target::File(_))) {
            return Err(InferError::Usage(
                "--held-out needs -o a file: its record (OUT.fold.yaml) goes beside it for `infer merge --folds`"
                    .into(),
            ));
        }
        let rec = crate::folds::record_path(&s.out);
        io.output("fold record", &rec)?;
        files::check_replaceable(&rec, "fold record", &|h| h.starts_with(b"fold:"))?;
    }
    let errors = match errors_path(s, out.as_ref()) {
        Some(p) => {
            let t = io.output("errors file", &p)?;
            files::check_replaceable(&p, "errors list", &is_errors)?;
            if let Target::File(f) = &t {
                locks.push(Lock::beside(f, &format!("errors file {}", p.display()))?);
            }
            Some((p, t))
        }
        None => None,
    };
    Ok(OutputPlan {
        out,
        errors,
        _locks: locks,
    })
}

/// The output being written. With `--fail-fast`, an output that cannot be replaced
/// atomically (standard output, a device, a FIFO) is spooled to an anonymous temporary file
/// and copied there only when the run succeeds, so a failed run writes nothing.
pub(crate) enum Out {
    Direct(Sink),
    Spooled {
        spool: std::io::BufWriter<std::fs::File>,
        then: Sink,
    },
}

impl Out {
    fn open(target: Option<&Target>, shown: &Path, fail_fast: bool) -> Result<Out, InferError> {
        let sink = match target {
            Some(t) => Sink::to(t, shown)?,
            None => Sink::stdout(),
        };
        if !fail_fast || matches!(target, Some(Target::File(_))) {
            return Ok(Out::Direct(sink));
        }
        let spool = tempfile::tempfile().map_err(|e| files::Error::io(std::env::temp_dir(), e))?;
        Ok(Out::Spooled {
            spool: std::io::BufWriter::new(spool),
            then: sink,
        })
    }

    pub(crate) fn commit(self) -> Result<(), InferError> {
        match self {
            Out::Direct(s) => Ok(s.commit()?),
            Out::Spooled { spool, mut then } => {
                let shown = then.shown().to_path_buf();
                let io = |e: std::io::Error| InferError::from(files::Error::io(&shown, e));
                let mut f = spool.into_inner().map_err(|e| io(e.into_error()))?;
                f.rewind().map_err(io)?;
                std::io::copy(&mut f, &mut then).map_err(io)?;
                Ok(then.commit()?)
            }
        }
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Direct(s) => s.write(buf),
            Out::Spooled { spool, .. } => spool.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Direct(s) => s.flush(),
            Out::Spooled { spool, .. } => spool.flush(),
        }
    }
}

/// Lists the files that failed (`patch_file,error`), or removes the errors file an earlier
/// run left when there are none.
pub(crate) fn write_errors(
    errors: &[(String, String)],
    name_col: &str,
    file: Option<&(PathBuf, Target)>,
) -> Result<Option<PathBuf>, InferError> {
    let Some((path, target)) = file else {
        return Ok(None);
    };
    if errors.is_empty() {
        if let Target::File(p) = target {
            if p.is_file() {
                std::fs::remove_file(p).map_err(|e| files::Error::io(p, e))?;
            }
        }
        return Ok(None);
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([name_col, "error"])
        .map_err(|e| crate::output_err(path, e))?;
    for (f, why) in errors {
        w.write_record([f, why]).map_err(|e| crate::output_err(path, e))?;
    }
    let bytes = w.into_inner().map_err(|e| crate::output_err(path, e.into_error()))?;
    let mut sink = Sink::to(target, path)?;
    sink.write_all(&bytes).map_err(|e| files::Error::io(path, e))?;
    sink.commit()?;
    Ok(Some(path.clone()))
}

/// The output, opened for writing (replaced only when the run commits), holding what comes
/// first: the rows `--resume` keeps, or the CSV header.
pub(crate) fn open_output(
    s: &Settings,
    target: Option<&Target>,
    previous: Option<&crate::resume::Previous>,
    header: &[&str],
) -> Result<Out, InferError> {
    let mut out = Out::open(target, &s.out, s.fail_fast)?;
    let io = |e: std::io::Error| InferError::from(files::Error::io(&s.out, e));
    match previous {
        Some(p) => out.write_all(&p.text).map_err(io)?,
        None if s.format != Format::Jsonl => writeln!(out, "{}", header.join(",")).map_err(io)?,
        None => {}
    }
    Ok(out)
}
