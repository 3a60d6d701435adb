//! Exclusive use of an output: an OS lock (`flock`) on a lock file, held for the whole run
//! and released by the kernel however the process ends (a crash or `kill -9` leaves no
//! stale lock). A second process that would write there is refused with a message naming
//! the holder (its PID and command line, which the holder writes into the lock file).
//!
//! The lock file is removed when the run ends. Removing a lock file races with a process
//! that opened it just before; so after locking, the path is checked to still name the
//! locked file, and if it does not (the holder removed it meanwhile) locking starts again.
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The lock file of an output folder ([`Lock::within`]).
pub const DIR_LOCK: &str = ".nodule.lock";

/// A held lock; dropping it releases the lock and (unless made with
/// [`Lock::acquire_kept`]) removes the lock file.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    file: Option<File>,
    keep: bool,
}

/// The command line of this process, for the lock file.
fn command_line() -> String {
    std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Lock {
    /// Takes the lock at `path` (creating the file) or fails at once with `busy` and the
    /// holder's PID and command line. The file is removed when the lock is dropped.
    pub fn acquire(path: &Path, busy: &str) -> Result<Lock> {
        Self::take(path, busy, false)
    }

    /// Like [`Lock::acquire`], but the lock file stays when the lock is released (a
    /// documented, visible lock file such as `prepare.lock`).
    pub fn acquire_kept(path: &Path, busy: &str) -> Result<Lock> {
        Self::take(path, busy, true)
    }

    fn take(path: &Path, busy: &str, keep: bool) -> Result<Lock> {
        for _ in 0..100 {
            // Never through a symlink, and only a regular file: a lock file planted as a link
            // to another file must not get that file truncated.
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| {
                    if e.raw_os_error() == Some(libc::ELOOP) {
                        Error::Busy {
                            path: path.to_path_buf(),
                            msg: "the lock file is a symbolic link; remove it".into(),
                        }
                    } else {
                        Error::io(path, e)
                    }
                })?;
            let m = f.metadata().map_err(|e| Error::io(path, e))?;
            if !m.is_file() {
                return Err(Error::Busy {
                    path: path.to_path_buf(),
                    msg: "the lock file is not a regular file; remove it".into(),
                });
            }
            // A hard link to another file would get that file truncated just the same.
            if m.nlink() != 1 {
                return Err(Error::Busy {
                    path: path.to_path_buf(),
                    msg: format!(
                        "the lock file has {} names (a hard link to another file?); remove it",
                        m.nlink()
                    ),
                });
            }
            match f.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = f.read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Err(Error::Busy {
                        path: path.to_path_buf(),
                        msg: format!(
                            "{busy} (held by {})",
                            if holder.is_empty() {
                                "a process that has not said which"
                            } else {
                                holder
                            }
                        ),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path, e)),
            }
            // Still the file the path names? (The previous holder may have removed it
            // between our open and our lock.)
            let ours = f.metadata().map_err(|e| Error::io(path, e))?;
            match std::fs::metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {
                    f.set_len(0).map_err(|e| Error::io(path, e))?;
                    f.rewind().map_err(|e| Error::io(path, e))?;
                    writeln!(f, "PID {}: {}", std::process::id(), command_line()).map_err(|e| Error::io(path, e))?;
                    return Ok(Lock {
                        path: path.to_path_buf(),
                        file: Some(f),
                        keep,
                    });
                }
                _ => continue,
            }
        }
        Err(Error::Busy {
            path: path.to_path_buf(),
            msg: format!("{busy}: the lock file keeps changing (another process starting and stopping?)"),
        })
    }

    /// Takes the lock of one output file: `.NAME.lock` beside it. `what` names the output
    /// in the message ("output scores.csv").
    pub fn beside(file: &Path, what: &str) -> Result<Lock> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Lock::acquire(&file.with_file_name(format!(".{name}.lock")), &in_use(what))
    }

    /// Like [`Lock::beside`], but a lock another process holds is waited for, up to
    /// `patience`: for short critical sections many processes pass through (the array
    /// tasks of one sweep recording its plan together), not for a whole run.
    pub fn beside_waiting(file: &Path, what: &str, patience: std::time::Duration) -> Result<Lock> {
        let until = std::time::Instant::now() + patience;
        loop {
            match Lock::beside(file, what) {
                Err(Error::Busy { .. }) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    /// Takes the lock of an output folder: `.nodule.lock` inside it. `what` names the folder
    /// in the message ("run folder runs/a").
    pub fn within(dir: &Path, what: &str) -> Result<Lock> {
        Lock::acquire(&dir.join(DIR_LOCK), &in_use(what))
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The message of an output another process is writing.
fn in_use(what: &str) -> String {
    format!("{what} is in use by another process; wait for it to finish, or choose another output")
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held, then released (see the module documentation); only if
        // the path still names our file, not one someone put in its place.
        if !self.keep {
            let same = match (
                self.file.as_ref().map(File::metadata),
                std::fs::symlink_metadata(&self.path),
            ) {
                (Some(Ok(ours)), Ok(now)) => ours.dev() == now.dev() && ours.ino() == now.ino(),
                _ => false,
            };
            if same {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        self.file.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_the_lock_goes_with_it() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join(".out.csv.lock");
        let first = Lock::beside(&d.path().join("out.csv"), "output out.csv").expect("first");
        // flock locks belong to the open file, so a second open in this process conflicts
        // as another process's would.
        let e = Lock::beside(&d.path().join("out.csv"), "output out.csv")
            .expect_err("second")
            .to_string();
        assert!(
            e.contains("output out.csv is in use") && e.contains(&format!("PID {}", std::process::id())),
            "{e}"
        );
        drop(first);
        assert!(!p.exists(), "the lock file is removed with the lock");
        let again = Lock::beside(&d.path().join("out.csv"), "output out.csv").expect("free again");
        assert_eq!(again.path(), p);
        drop(again);
        // A lock file planted as a symlink to another file: refused, the file untouched.
        let victim = d.path().join("precious.txt");
        std::fs::write(&victim, b"keep me").expect("w");
        std::os::unix::fs::symlink(&victim, &p).expect("ln");
        let e = Lock::beside(&d.path().join("out.csv"), "output out.csv")
            .expect_err("symlink")
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&victim).expect("read"), b"keep me");
        std::fs::remove_file(&p).expect("rm");
        // Planted as a hard link: refused, the file untouched.
        std::fs::hard_link(&victim, &p).expect("ln");
        let e = Lock::beside(&d.path().join("out.csv"), "output out.csv")
            .expect_err("hard link")
            .to_string();
        assert!(e.contains("hard link"), "{e}");
        assert_eq!(std::fs::read(&victim).expect("read"), b"keep me");
        std::fs::remove_file(&p).expect("rm");
        // A lock file replaced while held: the holder leaves the replacement alone.
        let held = Lock::beside(&d.path().join("out.csv"), "output out.csv").expect("lock");
        std::fs::remove_file(&p).expect("rm");
        std::fs::write(&p, b"someone else's").expect("w");
        drop(held);
        assert_eq!(std::fs::read(&p).expect("read"), b"someone else's");
        std::fs::remove_file(&p).expect("rm");
        let kept = Lock::acquire_kept(&p, "busy").expect("kept");
        drop(kept);
        assert!(p.exists(), "a kept lock file stays");
    }

    #[test]
    fn a_waiting_lock_gets_the_lock_when_it_is_let_go_and_not_before_its_patience_ends() {
        use std::time::{Duration, Instant};
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("plan.yaml");
        let held = Lock::beside(&out, "plan").expect("lock");
        let t0 = Instant::now();
        let e = Lock::beside_waiting(&out, "plan", Duration::from_millis(200))
            .expect_err("held past the patience")
            .to_string();
        assert!(e.contains("in use") && t0.elapsed() >= Duration::from_millis(200), "{e}");
        let (tx, rx) = std::sync::mpsc::channel();
        let o = out.clone();
        let waiter = std::thread::spawn(move || {
            tx.send(()).expect("send");
            Lock::beside_waiting(&o, "plan", Duration::from_secs(20)).map(drop)
        });
        rx.recv().expect("started");
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
        waiter.join().expect("join").expect("got the lock once it was let go");
    }
}
