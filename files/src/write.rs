//! Writing outputs: atomically where the output is a regular file, through where it is a
//! stream, and never by replacing something that is not a regular file.
//!
//! * A regular file (existing or not) is written to a temporary file beside it, synced and
//!   renamed over it: a crash half-way leaves the old file or none, never a truncated one.
//! * A symbolic link is followed: its target is replaced and the link stays a link.
//! * A character device (`/dev/null`, a terminal) or a FIFO is written through, in place:
//!   renaming a temporary file over `/dev/null` would replace the device node itself.
//! * A folder, a socket or a block device is refused.
//!
//! Temporary files are named `.tmp-nodule.<pid>.<random>[.ext]` ([`TEMP_PREFIX`]); a later
//! run removes those whose process is gone ([`clean_stale_temps`]), so a run that was
//! killed leaves nothing behind for long.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The start of every temporary file's name; the process id and a random part follow.
pub const TEMP_PREFIX: &str = ".tmp-nodule.";

/// Where an output goes, once its path is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A regular file at this absolute path (symlinks followed), existing or to be created:
    /// replaced atomically.
    File(PathBuf),
    /// A character device or a FIFO: written through, not replaced.
    Stream(PathBuf),
}

impl Target {
    /// The path written to.
    pub fn path(&self) -> &Path {
        match self {
            Target::File(p) | Target::Stream(p) => p,
        }
    }
}

fn bad_output(path: &Path, msg: impl Into<String>) -> Error {
    Error::BadOutput {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Makes the folder an output file goes into when it does not exist yet (a model, a bundle
/// or a page often goes into a new folder of its own: `-o site/model.onnx`). Scores outputs
/// do not call this: a mistyped folder there is refused before any work.
pub fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
        }
        _ => Ok(()),
    }
}

/// Resolves an output path: symlinks followed (a dangling one names the file to create),
/// `..` resolved through the real parent folder. A folder, a socket or a block device is
/// an error, and so is a parent folder that does not exist.
pub fn resolve_output(path: &Path) -> Result<Target> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
                p = match p.parent() {
                    Some(dir) if to.is_relative() => dir.join(to),
                    _ => to,
                };
            }
            Ok(m) => {
                let ft = m.file_type();
                if ft.is_file() {
                    return Ok(Target::File(p.canonicalize().map_err(|e| Error::io(&p, e))?));
                }
                if ft.is_char_device() || ft.is_fifo() {
                    return Ok(Target::Stream(p));
                }
                return Err(bad_output(
                    path,
                    format!(
                        "is {}: an output must be a file (or a device or FIFO to write through)",
                        super::read::kind_of(ft)
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = p
                    .file_name()
                    .filter(|n| *n != "." && *n != "..")
                    .ok_or_else(|| bad_output(path, "names no file"))?
                    .to_os_string();
                let dir = match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let dir =
                    dir.canonicalize().ok().filter(|d| d.is_dir()).ok_or_else(|| {
                        bad_output(path, format!("the output folder {} does not exist", dir.display()))
                    })?;
                return Ok(Target::File(dir.join(name)));
            }
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    Err(bad_output(path, "too many levels of symbolic links"))
}

/// Refuses to replace an existing file at `path` that this toolchain did not write: a
/// regular, non-empty file whose first bytes `ours` does not recognise as a `what` of ours
/// (another run's scores named as an errors file, a patch index named as an output) is left
/// as it is, with an error saying so, before any work. Nothing else is checked (a missing
/// file, an empty one, a device or FIFO written through).
pub fn check_replaceable(path: &Path, what: &str, ours: &dyn Fn(&[u8]) -> bool) -> Result<()> {
    use std::io::Read;
    let Ok(Target::File(p)) = resolve_output(path) else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(&p) else {
        return Ok(());
    };
    if !meta.is_file() || meta.len() == 0 {
        return Ok(());
    }
    let mut head = Vec::with_capacity(4096);
    super::read::open_regular(&p)?
        .take(4096)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(&p, e))?;
    if ours(&head) {
        return Ok(());
    }
    Err(bad_output(
        path,
        format!(
            "exists and is not a {what} this toolchain writes: it is not replaced; remove it yourself, or choose another path"
        ),
    ))
}

/// Whether process `pid` exists (signal 0 checks without sending anything).
#[allow(unsafe_code)]
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 performs only the existence and permission checks.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The process id in a temporary file's name, if it is one of ours.
fn temp_owner(name: &str) -> Option<i32> {
    name.strip_prefix(TEMP_PREFIX)?.split('.').next()?.parse().ok()
}

/// How old a temporary file must be before [`clean_stale_temps`] removes it: its process id
/// alone is not proof (a PID is reused, and a process in another PID namespace sharing
/// the folder looks dead from here), so a file still being written is left alone.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Removes the temporary files in `dir` that a process no longer running left behind (a run
/// killed while writing) and that nothing has touched for [`STALE_AFTER`]. Best effort:
/// what cannot be removed stays. Returns how many went.
pub fn clean_stale_temps(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let me = std::process::id() as i32;
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        let old = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old && pid != me && pid > 0 && !alive(pid) && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// A temporary file beside `dest` with our name pattern (and `dest`'s extension), with the
/// permissions `dest` has now (0644 for a new file), so replacing a file keeps its mode.
fn temp_beside(dest: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let suffix = dest
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}.", std::process::id()))
        .suffix(&suffix)
        // Outputs are ordinary files others may read (tempfile defaults to 0600).
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode_of(dest)))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))
}

/// The permission bits of an existing regular file, 0644 otherwise.
fn mode_of(dest: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(dest)
        .ok()
        .filter(|m| m.is_file())
        .map_or(0o644, |m| m.permissions().mode() & 0o7777)
}

/// A test hook for the kill loops: `NODULE_FAILPOINT=kill_after_commit=N` makes the process
/// kill itself with SIGKILL right after its N-th committed output file, the instant between
/// two files of one command that a real kill can hit.
fn failpoint_after_commit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static AT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    static DONE: AtomicUsize = AtomicUsize::new(0);
    let at = AT.get_or_init(|| {
        std::env::var("NODULE_FAILPOINT")
            .ok()?
            .strip_prefix("kill_after_commit=")?
            .parse()
            .ok()
    });
    if let Some(n) = *at {
        if DONE.fetch_add(1, Ordering::SeqCst) + 1 == n {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on our own process id; no memory is touched.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

/// Renames `tmp` over `dest` and syncs the folder, so the rename itself survives a crash.
fn persist(tmp: tempfile::TempPath, dest: &Path) -> std::io::Result<()> {
    tmp.persist(dest).map_err(|e| e.error)?;
    failpoint_after_commit();
    if let Some(dir) = dest.parent() {
        // Best effort: some file systems refuse to sync a folder; the data is synced already.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

enum Inner {
    /// A temporary file renamed over `dest` by [`Sink::commit`]; dropped, it is removed.
    Atomic {
        w: BufWriter<File>,
        tmp: tempfile::TempPath,
        dest: PathBuf,
    },
    Stream(BufWriter<File>),
    Stdout(BufWriter<std::io::Stdout>),
}

/// An output being written. Nothing is visible at the destination of a regular file until
/// [`Sink::commit`]; a sink dropped without it leaves the destination as it was.
pub struct Sink {
    inner: Inner,
    /// The path as the user gave it, for messages.
    shown: PathBuf,
}

impl Sink {
    /// Resolves `path` ([`resolve_output`]) and opens it for writing.
    pub fn create(path: &Path) -> Result<Sink> {
        Sink::to(&resolve_output(path)?, path)
    }

    /// Opens a resolved target; `shown` is the path named in messages.
    pub fn to(target: &Target, shown: &Path) -> Result<Sink> {
        let inner = match target {
            Target::File(dest) => {
                let (file, tmp) = temp_beside(dest)?.into_parts();
                Inner::Atomic {
                    w: BufWriter::new(file),
                    tmp,
                    dest: dest.clone(),
                }
            }
            Target::Stream(p) => Inner::Stream(BufWriter::new(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|e| Error::io(shown, e))?,
            )),
        };
        Ok(Sink {
            inner,
            shown: shown.to_path_buf(),
        })
    }

    /// Standard output (written through).
    pub fn stdout() -> Sink {
        Sink {
            inner: Inner::Stdout(BufWriter::new(std::io::stdout())),
            shown: PathBuf::from("<stdout>"),
        }
    }

    /// The path as given.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// Makes the output final: flushes, and for a regular file syncs the temporary file and
    /// renames it over the destination.
    pub fn commit(self) -> Result<()> {
        let shown = self.shown;
        let io = |e: std::io::Error| Error::io(&shown, e);
        match self.inner {
            Inner::Atomic { w, tmp, dest } => {
                let f = w.into_inner().map_err(|e| io(e.into_error()))?;
                f.sync_all().map_err(io)?;
                persist(tmp, &dest).map_err(io)?;
                Ok(())
            }
            Inner::Stream(mut w) => w.flush().map_err(io),
            Inner::Stdout(mut w) => w.flush().map_err(io),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.inner {
            Inner::Atomic { w, .. } | Inner::Stream(w) => w.write(buf),
            Inner::Stdout(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.inner {
            Inner::Atomic { w, .. } | Inner::Stream(w) => w.flush(),
            Inner::Stdout(w) => w.flush(),
        }
    }
}

/// Writes `bytes` to `path` as [`Sink`] does: atomically for a regular file, through for a
/// device or FIFO.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`] but streams through a writer.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut Sink) -> std::io::Result<()>) -> Result<()> {
    let mut sink = Sink::create(path)?;
    fill(&mut sink).map_err(|e| Error::io(path, e))?;
    sink.commit()
}

/// Like [`write_atomic`] for writers that only take a path (safetensors, PNG encoders):
/// `write` fills a temporary file (beside a regular destination, so the rename is atomic;
/// in the temporary folder for a device or FIFO, then copied through). The writer's error is
/// kept inside the I/O error (`std::io::Error::get_ref` gives it back).
pub fn replace_with<E>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<()>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let target = resolve_output(path)?;
    let dest_like = match &target {
        Target::File(dest) => dest.clone(),
        Target::Stream(_) => std::env::temp_dir().join(path.file_name().unwrap_or_default()),
    };
    let tmp = temp_beside(&dest_like)?.into_temp_path();
    write(&tmp).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    match &target {
        Target::File(dest) => {
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(path, e))?;
            persist(tmp, dest).map_err(|e| Error::io(path, e))?;
        }
        Target::Stream(_) => {
            let mut sink = Sink::to(&target, path)?;
            let mut src = File::open(&tmp).map_err(|e| Error::io(path, e))?;
            std::io::copy(&mut src, &mut sink).map_err(|e| Error::io(path, e))?;
            sink.commit()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer's own error is kept inside the I/O error, for a caller to take back; the
    /// destination is left as it was.
    #[test]
    fn a_writers_error_is_kept_and_nothing_replaced() {
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("chart.png");
        std::fs::write(&out, b"old").expect("write");
        let e = replace_with(&out, |_| Err(std::fmt::Error)).expect_err("writer failed");
        match &e {
            Error::Io { path, source } => {
                assert_eq!(path, &out);
                assert!(source.get_ref().is_some_and(|inner| inner.is::<std::fmt::Error>()), "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&out).expect("read"), b"old");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044, "outputs must be readable by others, got {mode:o}");
        let n = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(n, 1, "temporary files left behind");
    }

    #[test]
    fn failed_fill_keeps_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"old").expect("write");
        let r = write_atomic_with(&p, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn symlinks_write_their_target_and_devices_are_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.csv");
        std::fs::write(&real, b"old").expect("w");
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink("real.csv", &link).expect("ln");
        write_atomic(&link, b"new").expect("through the link");
        assert!(std::fs::symlink_metadata(&link).expect("meta").file_type().is_symlink());
        assert_eq!(std::fs::read(&real).expect("read"), b"new");
        // A dangling link names the file to create.
        let dangling = dir.path().join("d.csv");
        std::os::unix::fs::symlink("made.csv", &dangling).expect("ln");
        write_atomic(&dangling, b"x").expect("dangling");
        assert_eq!(std::fs::read(dir.path().join("made.csv")).expect("read"), b"x");
        // /dev/null stays a device.
        write_atomic(Path::new("/dev/null"), b"gone").expect("dev null");
        replace_with(Path::new("/dev/null"), |p| std::fs::write(p, b"x")).expect("dev null");
        assert!(std::fs::metadata("/dev/null")
            .expect("meta")
            .file_type()
            .is_char_device());
        // A folder is refused.
        let e = write_atomic(dir.path(), b"x").expect_err("dir").to_string();
        assert!(e.contains("a folder"), "{e}");
        let e = write_atomic(&dir.path().join("no/such/dir/x.csv"), b"x")
            .expect_err("parent")
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert_eq!(
            resolve_output(&dir.path().join("sub/../real.csv")).ok(),
            None,
            "`sub` does not exist, so `sub/..` cannot be resolved"
        );
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        assert_eq!(
            resolve_output(&dir.path().join("sub/../link.csv")).expect("resolve"),
            Target::File(real.canonicalize().expect("canon"))
        );
    }

    #[test]
    fn replacing_a_file_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("private.yaml");
        write_atomic(&p, b"one").expect("write");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o644, "a new output is readable by others");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(mode(&p), 0o600, "replacing a private file made it readable by others");
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_cleaned_and_live_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        // PID 2^22 + 1 is above Linux's largest pid_max, so no process has it.
        let dead = dir.path().join(format!("{TEMP_PREFIX}4194305.abcdef.csv"));
        let mine = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}.abcdef.csv", std::process::id()));
        let other = dir.path().join(".tmp-something-else");
        // A dead owner but written just now: perhaps a live process in another namespace.
        let recent = dir.path().join(format!("{TEMP_PREFIX}4194305.ghijkl.csv"));
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in [&dead, &mine, &other, &recent] {
            std::fs::write(p, b"x").expect("w");
            if p != &recent {
                File::options()
                    .write(true)
                    .open(p)
                    .and_then(|f| f.set_modified(hour_ago))
                    .expect("mtime");
            }
        }
        assert_eq!(clean_stale_temps(dir.path()), 1);
        assert!(!dead.exists() && mine.exists() && other.exists() && recent.exists());
        assert_eq!(temp_owner(".tmp-nodule.77.x"), Some(77));
        assert_eq!(temp_owner("tmp-nodule.77.x"), None);
    }
}
