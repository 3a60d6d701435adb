//! Opening inputs: only regular files, and never in a way that can block.
//!
//! A FIFO named `x.npy` would block `open(2)` until a writer appears, and a device such as
//! `/dev/zero` reads forever. Every input goes through [`open_regular`]: the file is opened
//! with `O_NONBLOCK` (which makes opening a FIFO return at once and changes nothing for a
//! regular file) and refused unless `fstat` says it is a regular file, so the check and the
//! read concern the same file even if the path is swapped in between.
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::{Error, Result};

/// What a file type is, in words, for messages ("a FIFO", "a folder").
pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (symlinks followed); anything else, or
/// a file that cannot be opened, is an error naming the path and what it is.
pub fn open_regular(path: &Path) -> Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::BadInput {
            path: path.to_path_buf(),
            msg: format!(
                "not a regular file ({}); inputs must be regular files",
                kind_of(meta.file_type())
            ),
        });
    }
    Ok(f)
}

/// The largest file [`read_regular`] reads whole: 2 GiB, protobuf's own limit on a message
/// (an ONNX model larger than that cannot be read by anyone).
pub const MAX_WHOLE_FILE: u64 = 2 << 30;

/// The largest text file [`read_regular_to_string`] reads (configs, `calibration.yaml`,
/// state files are kilobytes).
pub const MAX_TEXT_FILE: u64 = 64 << 20;

/// The bytes of a regular file ([`open_regular`]) of at most `max` bytes.
fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > max {
        return Err(Error::BadInput {
            path: path.to_path_buf(),
            msg: format!("{len} bytes: more than the {max} a file of this kind may have"),
        });
    }
    let mut v = Vec::new();
    v.try_reserve_exact(len as usize).map_err(|_| Error::BadInput {
        path: path.to_path_buf(),
        msg: format!("cannot allocate {len} bytes to read it"),
    })?;
    f.take(max).read_to_end(&mut v).map_err(|e| Error::io(path, e))?;
    Ok(v)
}

/// The bytes of a regular file ([`open_regular`]), up to [`MAX_WHOLE_FILE`].
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    read_limited(path, MAX_WHOLE_FILE)
}

/// The text of a regular file ([`open_regular`]), up to [`MAX_TEXT_FILE`]; invalid UTF-8 is
/// an error naming it.
pub fn read_regular_to_string(path: &Path) -> Result<String> {
    let bytes = read_limited(path, MAX_TEXT_FILE)?;
    String::from_utf8(bytes).map_err(|e| Error::BadInput {
        path: path.to_path_buf(),
        msg: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open_and_a_fifo_does_not_block() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("a.npy");
        std::fs::write(&f, b"x").expect("w");
        assert_eq!(read_regular(&f).expect("regular"), b"x");
        let fifo = d.path().join("fifo.npy");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("c");
        #[allow(unsafe_code)]
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system node.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
        assert_eq!(rc, 0);
        let e = open_regular(&fifo).expect_err("fifo").to_string();
        assert!(e.contains("fifo.npy") && e.contains("FIFO"), "{e}");
        let e = open_regular(d.path()).expect_err("dir").to_string();
        assert!(e.contains("a folder"), "{e}");
        let e = open_regular(Path::new("/dev/zero")).expect_err("dev").to_string();
        assert!(e.contains("character device"), "{e}");
        let e = open_regular(&d.path().join("absent")).expect_err("absent").to_string();
        assert!(e.contains("absent"), "{e}");
        std::fs::write(&f, [0xff, 0xfe]).expect("w");
        let e = read_regular_to_string(&f).expect_err("utf8").to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        // A "config" of 65 MiB (sparse): refused by its size before anything is read.
        let big = d.path().join("big.yaml");
        std::fs::File::create(&big)
            .expect("create")
            .set_len(MAX_TEXT_FILE + 1)
            .expect("len");
        let e = read_regular_to_string(&big).expect_err("big").to_string();
        assert!(e.contains("more than the 67108864"), "{e}");
    }
}
