//! Reading patch cubes from `.npy` files (float32, float64 or int16, in HU).
use std::path::Path;

use ndarray::{Array3, ArrayD};
use ndarray_npy::ReadNpyError;

use crate::preprocess::Preprocess;
use crate::{Error, Result};

/// Reads a `.npy` array of HU values as float32. Accepts float32, float64 and int16 (either
/// byte order); anything else, a truncated file, or a non-finite value is an error naming
/// the file.
pub fn read_npy_hu(path: &Path) -> Result<ArrayD<f32>> {
    let bad = |msg: String| Error::BadPatch {
        path: path.to_path_buf(),
        msg,
    };
    let describe = |e: ReadNpyError| match e {
        ReadNpyError::Io(e) => Error::io(path, e),
        ReadNpyError::MissingData => bad("truncated: the file holds less data than its header declares".into()),
        ReadNpyError::ExtraBytes(n) => bad(format!("{n} unexpected bytes after the array data")),
        ReadNpyError::ParseHeader(e) => bad(format!("not a valid .npy file ({e})")),
        other => bad(other.to_string()),
    };
    let arr = match ndarray_npy::read_npy::<_, ArrayD<f32>>(path) {
        Ok(a) => a,
        Err(ReadNpyError::WrongDescriptor(_)) => match ndarray_npy::read_npy::<_, ArrayD<f64>>(path) {
            Ok(a) => a.mapv(|v| v as f32),
            Err(ReadNpyError::WrongDescriptor(_)) => match ndarray_npy::read_npy::<_, ArrayD<i16>>(path) {
                Ok(a) => a.mapv(f32::from),
                Err(ReadNpyError::WrongDescriptor(d)) => {
                    return Err(bad(format!(
                        "unsupported array type {d}: expected float32, float64 or int16 HU values"
                    )))
                }
                Err(e) => return Err(describe(e)),
            },
            Err(e) => return Err(describe(e)),
        },
        Err(e) => return Err(describe(e)),
    };
    if arr.is_empty() {
        return Err(bad(format!("empty array of shape {:?}", arr.shape())));
    }
    if let Some(i) = arr.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("non-finite value (NaN or Inf) at flat index {i}")));
    }
    Ok(arr)
}

/// Reads a patch and applies `pre`: the one function training and scoring share.
pub fn load_patch(path: &Path, pre: &Preprocess) -> Result<Array3<f32>> {
    pre.apply(&read_npy_hu(path)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};
    use ndarray_npy::write_npy;

    #[test]
    fn reads_all_supported_dtypes() {
        let dir = tempfile::tempdir().expect("tmp");
        let a32 = Array3::<f32>::from_elem((2, 3, 4), -500.0);
        let a64 = a32.mapv(f64::from);
        let a16 = a32.mapv(|v| v as i16);
        for (name, write) in [
            (
                "f32.npy",
                Box::new(|p: &Path| write_npy(p, &a32)) as Box<dyn Fn(&Path) -> Result<(), ndarray_npy::WriteNpyError>>,
            ),
            ("f64.npy", Box::new(|p: &Path| write_npy(p, &a64))),
            ("i16.npy", Box::new(|p: &Path| write_npy(p, &a16))),
        ] {
            let p = dir.path().join(name);
            write(&p).expect("write");
            let r = read_npy_hu(&p).expect(name);
            assert_eq!(r.shape(), &[2, 3, 4]);
            assert!(r.iter().all(|&v| v == -500.0), "{name}");
        }
    }

    #[test]
    fn rejects_other_dtypes_truncation_and_nan() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("u8.npy");
        write_npy(&p, &Array2::<u8>::zeros((2, 2))).expect("write");
        let msg = read_npy_hu(&p).expect_err("u8").to_string();
        assert!(
            msg.contains("u8.npy") && msg.contains("expected float32, float64 or int16"),
            "{msg}"
        );

        let p = dir.path().join("cut.npy");
        write_npy(&p, &Array3::<f32>::zeros((4, 4, 4))).expect("write");
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() - 10]).expect("truncate");
        let msg = read_npy_hu(&p).expect_err("cut").to_string();
        assert!(msg.contains("cut.npy") && msg.contains("truncated"), "{msg}");

        let p = dir.path().join("nan.npy");
        let mut a = Array3::<f32>::zeros((2, 2, 2));
        a[[1, 1, 1]] = f32::NAN;
        write_npy(&p, &a).expect("write");
        let msg = read_npy_hu(&p).expect_err("nan").to_string();
        assert!(msg.contains("nan.npy") && msg.contains("non-finite"), "{msg}");

        let p = dir.path().join("junk.npy");
        std::fs::write(&p, b"hello").expect("write");
        let msg = read_npy_hu(&p).expect_err("junk").to_string();
        assert!(msg.contains("junk.npy"), "{msg}");
    }
}
