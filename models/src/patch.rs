//! Reading patch cubes from `.npy` files (float32, float64 or int16, in HU).
use std::path::Path;

use ndarray::{Array3, ArrayD};
use ndarray_npy::ReadNpyError;

use crate::preprocess::Preprocess;
use crate::{Error, Result};

/// What a `.npy` header declares.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Bytes before the data.
    pub data_offset: u64,
    /// The header is exactly what numpy writes (version x.0, the three keys with the values
    /// parsed here and nothing else), so its parse here is the whole truth about it.
    pub canonical: bool,
}

/// Reads and checks only the header of a `.npy` file: magic, version, dictionary, and that
/// the file is long enough for the data it declares. This runs before any array is
/// allocated, so a header claiming more elements than the file holds is refused without
/// allocating them. (ndarray-npy allocates from the header first; this check is why it is
/// written here.)
pub fn npy_header(path: &Path) -> Result<NpyHeader> {
    open_npy(path).map(|(h, _, _)| h)
}

/// [`npy_header`], also handing back the open file (positioned after the header) and its
/// length, for a reader that goes on to the data.
fn open_npy(path: &Path) -> Result<(NpyHeader, std::fs::File, u64)> {
    use std::io::Read;
    let bad = |msg: String| Error::BadPatch {
        path: path.to_path_buf(),
        msg,
    };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut pre = [0u8; 12];
    let n = f.read(&mut pre).map_err(|e| Error::io(path, e))?;
    if n < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err(bad(if file_len == 0 {
            "empty file".into()
        } else {
            "not a .npy file (no NUMPY magic)".into()
        }));
    }
    let (hlen, start) = match pre[6] {
        1 => (u64::from(u16::from_le_bytes([pre[8], pre[9]])), 10u64),
        2 | 3 if n >= 12 => (u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]])), 12u64),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    if hlen > 1 << 20 || start + hlen > file_len {
        return Err(bad(format!(
            "truncated: header of {hlen} bytes in a {file_len}-byte file"
        )));
    }
    let mut header = vec![0u8; hlen as usize];
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(start))
        .map_err(|e| Error::io(path, e))?;
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8_lossy(&header);
    let after = |key: &str| {
        text.find(key)
            .map(|i| text[i + key.len()..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = after("'descr'")
        .and_then(|s| {
            let q = s.chars().next()?;
            s[1..].split(q).next().map(str::to_string)
        })
        .ok_or_else(|| bad(format!("header without a dtype: {}", text.trim())))?;
    let fortran_order = after("'fortran_order'").is_some_and(|s| s.starts_with("True"));
    let shape_txt = after("'shape'")
        .and_then(|s| s.strip_prefix('(').and_then(|s| s.split(')').next()))
        .ok_or_else(|| bad(format!("header without a shape: {}", text.trim())))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("bad shape in header: ({shape_txt})")))
        })
        .collect::<Result<_>>()?;
    let item: u64 = descr
        .trim_start_matches(['<', '>', '|', '='])
        .get(1..)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("unsupported array type {descr}")))?;
    let elements = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    let need = elements
        .and_then(|e| e.checked_mul(item))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let have = file_len - start - hlen;
    if need > have {
        return Err(bad(format!(
            "truncated: the header declares {} elements ({need} bytes of data) but the file holds {have}",
            elements.unwrap_or(0)
        )));
    }
    let dims = match shape.as_slice() {
        [d] => format!("{d},"),
        s => s.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
    };
    // numpy ends the dictionary with ", }", ndarray-npy with "}".
    let want = format!(
        "{{'descr':'{descr}','fortran_order':{},'shape':({dims})",
        if fortran_order { "True" } else { "False" }
    );
    let got: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let canonical = got.strip_prefix(&want).is_some_and(|end| end == "}" || end == ",}");
    let h = NpyHeader {
        canonical: pre[7] == 0 && canonical,
        descr,
        fortran_order,
        shape,
        data_offset: start + hlen,
    };
    Ok((h, f, file_len))
}

/// Reads a `.npy` array of HU values as float32. Accepts float32, float64 and int16 (either
/// byte order); anything else, a truncated file, or a non-finite value is an error naming
/// the file.
pub fn read_npy_hu(path: &Path) -> Result<ArrayD<f32>> {
    npy_header(path)?;
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

/// Reads a patch and applies `pre`: the one function training and scoring share. The rank
/// is checked from the header, before the data are read.
pub fn load_patch(path: &Path, pre: &Preprocess) -> Result<Array3<f32>> {
    let h = npy_header(path)?;
    if h.shape.len() != 3 {
        return Err(Error::BadPatch {
            path: path.to_path_buf(),
            msg: format!("expected a 3-D cube (z, y, x), got shape {:?}", h.shape),
        });
    }
    pre.apply(&read_npy_hu(path)?, path)
}

/// [`load_patch`] into `out` (`cube_size³` values, z-y-x order): the same values and the
/// same errors, for a scorer that decodes straight into its batch buffer.
///
/// Cubes already at the model's size, in C order, little-endian float32, float64 or int16,
/// with a header as numpy writes it, take one pass from the file's bytes to `out` through a
/// reused per-thread buffer, with no array allocated; anything else goes through
/// [`load_patch`] (and so ndarray-npy's stricter header checks) and is copied.
pub fn load_patch_into(path: &Path, pre: &Preprocess, out: &mut [f32]) -> Result<()> {
    use std::io::Read;
    let c = pre.cube_size;
    if out.len() != c * c * c {
        return Err(Error::BadPatch {
            path: path.to_path_buf(),
            msg: format!("internal: a buffer of {} values for a {c}³ cube", out.len()),
        });
    }
    let (h, mut f, len) = open_npy(path)?;
    let width = match h.descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        "<i2" => 2,
        _ => 0,
    };
    if width == 0 || !h.canonical || h.fortran_order || h.shape != [c, c, c] {
        let cube = load_patch(path, pre)?;
        out.iter_mut().zip(cube.iter()).for_each(|(o, &v)| *o = v);
        return Ok(());
    }
    let bad = |msg: String| Error::BadPatch {
        path: path.to_path_buf(),
        msg,
    };
    let need = out.len() * width;
    let extra = len
        .checked_sub(h.data_offset + need as u64)
        .ok_or_else(|| bad("truncated: the file holds less data than its header declares".into()))?;
    if extra > 0 {
        // What ndarray-npy (and so `load_patch`) says of such a file.
        return Err(bad(format!("{extra} unexpected bytes after the array data")));
    }
    thread_local! {
        static BYTES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BYTES.with_borrow_mut(|bytes| {
        bytes.resize(need, 0);
        f.read_exact(bytes).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad("truncated: the file holds less data than its header declares".into())
            } else {
                Error::io(path, e)
            }
        })?;
        // One loop per type, so each compiles to a tight conversion; a non-finite value (a
        // float64 beyond float32's range included, as in `read_npy_hu`) is looked for after,
        // only when there is one. Returns its flat index.
        fn convert(
            out: &mut [f32],
            bytes: &[u8],
            width: usize,
            decode: impl Fn(&[u8]) -> f32,
            pre: &Preprocess,
        ) -> Option<usize> {
            let mut finite = true;
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(width)) {
                let v = decode(b);
                finite &= v.is_finite();
                *o = pre.scale(v);
            }
            if finite {
                return None;
            }
            bytes.chunks_exact(width).position(|b| !decode(b).is_finite())
        }
        let first_bad = match width {
            4 => convert(out, bytes, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]), pre),
            8 => convert(
                out,
                bytes,
                8,
                |b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
                pre,
            ),
            _ => convert(out, bytes, 2, |b| f32::from(i16::from_le_bytes([b[0], b[1]])), pre),
        };
        match first_bad {
            Some(i) => Err(bad(format!("non-finite value (NaN or Inf) at flat index {i}"))),
            None => Ok(()),
        }
    })
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

        // A header that claims far more data than the file holds: refused before allocating.
        let p = dir.path().join("huge.npy");
        let mut dict = String::from("{'descr': '<f4', 'fortran_order': False, 'shape': (99999, 99999, 9), }");
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((dict.len() as u16).to_le_bytes());
        bytes.extend(dict.as_bytes());
        bytes.extend([0u8; 32]);
        std::fs::write(&p, bytes).expect("write");
        let msg = read_npy_hu(&p).expect_err("huge").to_string();
        assert!(
            msg.contains("huge.npy") && msg.contains("declares 89998200009 elements"),
            "{msg}"
        );

        let p = dir.path().join("empty.npy");
        std::fs::write(&p, b"").expect("write");
        assert!(read_npy_hu(&p).expect_err("empty").to_string().contains("empty file"));

        let p = dir.path().join("junk.npy");
        std::fs::write(&p, b"hello").expect("write");
        let msg = read_npy_hu(&p).expect_err("junk").to_string();
        assert!(msg.contains("junk.npy"), "{msg}");
    }

    /// The direct decoder gives `load_patch`'s values and errors, on its fast path (cubes
    /// at the model's size in f32/f64/i16) and off it (cropping, padding, big-endian,
    /// Fortran order).
    #[test]
    fn decoding_into_a_buffer_equals_load_patch() {
        use ndarray::ShapeBuilder;
        let dir = tempfile::tempdir().expect("tmp");
        let pre = Preprocess {
            cube_size: 8,
            ..Preprocess::default()
        };
        let f = |z: usize, y: usize, x: usize| (z * 97 + y * 13 + x * 7) as f32 * 9.0 - 1200.0;
        let cube = Array3::from_shape_fn((8, 8, 8), |(z, y, x)| f(z, y, x));
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let npy = |write: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Vec::new();
            write(&mut b);
            b
        };
        use ndarray_npy::WriteNpyExt;
        files.push(("f32".into(), npy(&|b| cube.write_npy(b).expect("npy"))));
        files.push(("f64".into(), npy(&|b| cube.mapv(f64::from).write_npy(b).expect("npy"))));
        files.push((
            "i16".into(),
            npy(&|b| cube.mapv(|v| v as i16).write_npy(b).expect("npy")),
        ));
        let small = Array3::from_shape_fn((5, 8, 11), |(z, y, x)| f(z, y, x));
        files.push(("crop_pad".into(), npy(&|b| small.write_npy(b).expect("npy"))));
        let fortran = Array3::from_shape_fn((8, 8, 8).f(), |(z, y, x)| f(z, y, x));
        files.push(("fortran".into(), npy(&|b| fortran.write_npy(b).expect("npy"))));
        // Big-endian float32: the header says '>f4' and the bytes are swapped.
        let mut be = npy(&|b| cube.write_npy(b).expect("npy"));
        let at = be.windows(3).position(|w| w == b"<f4").expect("descr");
        be[at] = b'>';
        let data = be.len() - 8 * 8 * 8 * 4;
        for w in be[data..].chunks_exact_mut(4) {
            w.reverse();
        }
        files.push(("big_endian".into(), be));
        // Headers ndarray-npy refuses must be refused here too, not read on the fast path.
        let mut odd_key = npy(&|b| cube.write_npy(b).expect("npy"));
        let at = odd_key.windows(6).position(|w| w == b"'shape").expect("shape key");
        odd_key[at + 1..at + 6].copy_from_slice(b"SHAPE");
        let mut minor = npy(&|b| cube.write_npy(b).expect("npy"));
        minor[7] = 9;
        for (name, bytes) in [("odd_key", odd_key), ("minor_version", minor)] {
            let p = dir.path().join(format!("{name}.npy"));
            std::fs::write(&p, &bytes).expect("write");
            assert!(!npy_header(&p).map(|h| h.canonical).unwrap_or(false), "{name}");
            let mut got = vec![0.0; 512];
            match (load_patch(&p, &pre), load_patch_into(&p, &pre, &mut got)) {
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{name}"),
                (Ok(a), Ok(())) => assert_eq!(a.as_slice().expect("standard"), &got[..], "{name}"),
                (a, b) => panic!("{name}: load_patch {a:?}, load_patch_into {b:?}"),
            }
        }
        for (name, bytes) in &files {
            let p = dir.path().join(format!("{name}.npy"));
            std::fs::write(&p, bytes).expect("write");
            if ["f32", "f64", "i16"].contains(&name.as_str()) {
                assert!(
                    npy_header(&p).expect(name).canonical,
                    "{name} should take the fast path"
                );
            }
            let want = load_patch(&p, &pre).expect(name);
            let mut got = vec![f32::NAN; 512];
            load_patch_into(&p, &pre, &mut got).expect(name);
            assert_eq!(want.as_slice().expect("standard"), &got[..], "{name}");
        }
        // Errors, with load_patch's words.
        let mut nan = cube.clone();
        nan[[3, 2, 1]] = f32::NAN;
        let mut extra = npy(&|b| cube.write_npy(b).expect("npy"));
        extra.extend_from_slice(&[0, 0, 0, 0]);
        let full = npy(&|b| cube.write_npy(b).expect("npy"));
        let f64_inf = npy(&|b| {
            cube.mapv(|v| if v > 1000.0 { 1e300 } else { f64::from(v) })
                .write_npy(b)
                .expect("npy")
        });
        for (name, bytes) in [
            ("nan", npy(&|b| nan.write_npy(b).expect("npy"))),
            ("extra", extra),
            ("truncated", full[..full.len() - 6].to_vec()),
            ("f64_beyond_f32", f64_inf),
            (
                "rank2",
                npy(&|b| ndarray::Array2::<f32>::zeros((8, 64)).write_npy(b).expect("npy")),
            ),
        ] {
            let p = dir.path().join(format!("{name}.npy"));
            std::fs::write(&p, &bytes).expect("write");
            let want = load_patch(&p, &pre).expect_err(name).to_string();
            let mut got = vec![0.0; 512];
            let err = load_patch_into(&p, &pre, &mut got).expect_err(name).to_string();
            assert_eq!(err, want, "{name}");
        }
    }
}
