//! Shipping the scorer: one `.tar.gz` that scores patches on a host with no Rust, no Python
//! and no network.
//!
//! Layout of the archive (one top folder, `nodule-scorer/`):
//! * `infer` — this binary; `libonnxruntime.so.*` — the ONNX Runtime it loads (found next
//!   to the binary before anywhere else); with `--gpu`, also the CUDA provider libraries;
//! * the model: `model.onnx` with its `calibration.yaml` if any, or `model.calibrated.onnx`
//!   alone (it carries its calibration; a calibration file is bound to the uncalibrated model);
//! * `BUNDLE.yaml` — what the bundle holds and what the target needs (CPU architecture,
//!   minimum glibc; for the GPU variant the CUDA and cuDNN major versions and driver);
//! * `run` — a POSIX shell entry point that checks the architecture and glibc before the
//!   dynamic loader can fail obscurely, then runs `infer` with the bundled model;
//! * `README.txt` — the exact command; `SHA256SUMS` — every other file.
//!
//! `infer`, started from a bundle, checks `SHA256SUMS` first and refuses a missing or
//! modified file, and a calibration declared but absent.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::InferError;

/// Top folder inside the archive.
pub const TOP: &str = "nodule-scorer";
/// Manifest file name.
pub const MANIFEST: &str = "SHA256SUMS";
/// Description file name.
pub const DESCRIPTION: &str = "BUNDLE.yaml";

/// What a bundle holds and needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub tool_version: String,
    pub model: String,
    pub model_sha256: String,
    /// The calibration file, when the bundle was built with one.
    pub calibration: Option<String>,
    pub onnxruntime: String,
    pub onnxruntime_version: String,
    pub requires: Requirements,
}

/// What the target host needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    /// `uname -m`.
    pub arch: String,
    /// Newest `GLIBC_x.y` symbol version the binaries reference.
    pub min_glibc: String,
    /// GPU variant only.
    pub cuda_major: Option<u32>,
    pub cudnn_major: Option<u32>,
    pub nvidia_driver: Option<String>,
}

/// The newest `GLIBC_a.b[.c]` version string in a binary's bytes (the versions its dynamic
/// symbols need). Written by hand: a byte scan suffices and no kept crate reads ELF
/// version needs without pulling in a full object parser.
pub fn min_glibc(files: &[PathBuf]) -> Result<String, InferError> {
    let mut best: Vec<u32> = vec![2, 2, 5];
    for f in files {
        let bytes = files::read_regular(f)?;
        let pat = b"GLIBC_";
        let mut i = 0;
        while let Some(pos) = bytes[i..].windows(pat.len()).position(|w| w == pat) {
            let start = i + pos + pat.len();
            let end = bytes[start..]
                .iter()
                .position(|b| !(b.is_ascii_digit() || *b == b'.'))
                .map_or(bytes.len(), |n| start + n);
            let text = String::from_utf8_lossy(&bytes[start..end]);
            let v: Vec<u32> = text.split('.').filter_map(|p| p.parse().ok()).collect();
            if v.len() >= 2 && v > best {
                best = v;
            }
            i = end.max(start);
        }
    }
    Ok(best.iter().map(u32::to_string).collect::<Vec<_>>().join("."))
}

/// Options of `infer bundle`.
#[derive(Debug, Clone)]
pub struct BundleSettings {
    pub model: PathBuf,
    pub calibration: Option<PathBuf>,
    pub out: PathBuf,
    /// Include the CUDA provider libraries found next to the ONNX Runtime library.
    pub gpu: bool,
    pub ort_lib: Option<PathBuf>,
}

/// The entry point. Shell builtins only (besides absolute `uname` and `getconf`), so it
/// works under `env -i` with a PATH holding nothing but the bundle.
const RUN: &str = r#"#!/bin/sh
# Entry point of a nodule-scorer bundle: checks this host against BUNDLE.yaml, then runs
# infer with the bundled model (and calibration). Arguments go to infer.
case $0 in */*) here=${0%/*} ;; *) here=. ;; esac
here=$(cd "$here" && pwd) || exit 2
need_arch="" need_glibc=""
while IFS= read -r line; do
  case $line in
    "  arch: "*) need_arch=${line#  arch: } ;;
    "  min_glibc: "*) v=${line#  min_glibc: }; v=${v#\'}; need_glibc=${v%\'} ;;
  esac
done < "$here/BUNDLE.yaml"
arch=""
for u in /usr/bin/uname /bin/uname; do if [ -x "$u" ]; then arch=$("$u" -m); break; fi; done
if [ -n "$arch" ] && [ "$arch" != "$need_arch" ]; then
  echo "nodule-scorer: this bundle is for $need_arch; this host is $arch" >&2; exit 2
fi
have=""
for g in /usr/bin/getconf /bin/getconf; do
  if [ -x "$g" ]; then have=$("$g" GNU_LIBC_VERSION 2>/dev/null); have=${have#glibc }; break; fi
done
# version_ge A B: A >= B, numerically per component.
version_ge() {
  old_ifs=$IFS; IFS=.
  set -- $1 0 0 0 -- $2 0 0 0
  IFS=$old_ifs
  a1=$1 a2=$2 a3=$3
  while [ "$1" != "--" ]; do shift; done; shift
  b1=$1 b2=$2 b3=$3
  [ "$a1" -gt "$b1" ] && return 0; [ "$a1" -lt "$b1" ] && return 1
  [ "$a2" -gt "$b2" ] && return 0; [ "$a2" -lt "$b2" ] && return 1
  [ "$a3" -ge "$b3" ]
}
if [ -z "$have" ] && { [ -x /usr/bin/getconf ] || [ -x /bin/getconf ]; }; then
  echo "nodule-scorer: this host has no glibc (getconf knows no GNU_LIBC_VERSION, e.g. musl); the bundle needs glibc >= $need_glibc" >&2; exit 2
elif [ -z "$have" ]; then
  echo "nodule-scorer: warning: cannot tell this host's glibc (no getconf); the bundle needs glibc >= $need_glibc" >&2
elif ! version_ge "$have" "$need_glibc"; then
  echo "nodule-scorer: this bundle needs glibc >= $need_glibc; this host has glibc $have" >&2; exit 2
fi
exec "$here/infer" "$@"
"#;

/// Checks that the model loads and is scorable, and that its calibration belongs to it;
/// returns the model's sha256.
fn check_model(s: &BundleSettings) -> Result<String, InferError> {
    let bytes = files::read_regular(&s.model)?;
    let proto = models::onnx::parse_model(&bytes, &s.model)?;
    let md = models::onnx::metadata(&proto);
    models::preprocess::Preprocess::from_metadata(&md).map_err(|e| crate::bad_input(&s.model, e.to_string()))?;
    let model_sha = files::sha256_bytes(&bytes);
    let baked = crate::calib::read_baked(&md, &s.model, s.calibration.is_some())?;
    if let Some(c) = &s.calibration {
        let cal = models::calibration::CalibrationFile::load(c)?;
        crate::calib::check_binding(&cal, c, &s.model, &model_sha, baked.as_ref())?;
    }
    Ok(model_sha)
}

/// The files the archive carries, by their name in it: this binary, ONNX Runtime (with
/// `--gpu` its CUDA provider), the model and its calibration.
fn bundled_files(s: &BundleSettings, ort: &Path) -> Result<Vec<(String, PathBuf)>, InferError> {
    let exe = std::env::current_exe().map_err(|e| files::Error::io("current executable", e))?;
    let name_of = |p: &Path, default: &str| {
        p.file_name()
            .map_or(default.into(), |n| n.to_string_lossy().into_owned())
    };
    let mut files: Vec<(String, PathBuf)> = vec![
        ("infer".into(), exe),
        (name_of(ort, "libonnxruntime.so"), ort.to_path_buf()),
        (name_of(&s.model, "model.onnx"), s.model.clone()),
    ];
    if s.gpu {
        let ort_dir = ort.parent().map(Path::to_path_buf).unwrap_or_default();
        let provider = ["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"];
        for lib in provider {
            let p = ort_dir.join(lib);
            if p.is_file() {
                files.push((lib.into(), p));
            }
        }
        if files.len() < 5 {
            return Err(crate::bad_input(
                &ort_dir,
                "--gpu needs the ONNX Runtime GPU build (libonnxruntime_providers_cuda.so beside the library): \
                 set up with `scripts/setup --cuda` or pass --ort-lib from onnxruntime-gpu",
            ));
        }
    }
    if let Some(c) = &s.calibration {
        files.push(("calibration.yaml".into(), c.clone()));
    }
    Ok(files)
}

/// The bundle's description and its README text.
fn describe(
    s: &BundleSettings,
    files: &[(String, PathBuf)],
    model_sha: String,
) -> Result<(BundleInfo, String), InferError> {
    let bins: Vec<PathBuf> = files
        .iter()
        .filter(|(n, _)| n == "infer" || n.starts_with("lib"))
        .map(|(_, p)| p.clone())
        .collect();
    // onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9; NVIDIA's CUDA 13 needs a driver
    // of the 580 series or newer.
    let (cuda_major, cudnn_major, driver) = if s.gpu {
        (Some(13), Some(9), Some(">= 580".to_string()))
    } else {
        (None, None, None)
    };
    let info = BundleInfo {
        tool_version: models::TOOL_VERSION.into(),
        model: files[2].0.clone(),
        model_sha256: model_sha,
        calibration: s.calibration.as_ref().map(|_| "calibration.yaml".to_string()),
        onnxruntime: files[1].0.clone(),
        onnxruntime_version: scorer::runtime::init(s.ort_lib.as_deref())
            .map(|r| r.version.clone())
            .unwrap_or_default(),
        requires: Requirements {
            arch: std::env::consts::ARCH.into(),
            min_glibc: min_glibc(&bins)?,
            cuda_major,
            cudnn_major,
            nvidia_driver: driver,
        },
    };
    let cal_arg = if info.calibration.is_some() {
        " (calibrated with calibration.yaml)"
    } else {
        ""
    };
    let readme = format!(
        "nodule-scorer {} — scores 3D lung-nodule CT patches (.npy, HU) with {}{cal_arg}.\n\n\
         On the target host (no Rust, Python or network needed):\n\n  \
         tar -xzf {} && ./{TOP}/run PATCH_FOLDER -o scores.csv\n\n\
         or straight from CT scans (DICOM series, MetaImage, NIfTI) at LUNA16-style candidate points:\n\n  \
         ./{TOP}/run --scans SCAN_FOLDER --candidates candidates.csv -o scores.csv\n\n\
         `./{TOP}/run --help` lists every option; `./{TOP}/run doctor` checks this host.\n\
         Needs: {} Linux with glibc >= {}{}.\n",
        info.tool_version,
        info.model,
        s.out
            .file_name()
            .map_or("bundle.tar.gz".into(), |n| n.to_string_lossy().into_owned()),
        info.requires.arch,
        info.requires.min_glibc,
        if s.gpu {
            "; for --device cuda: an NVIDIA driver >= 580 with CUDA 13 and cuDNN 9 libraries"
        } else {
            ""
        }
    );
    Ok((info, readme))
}

/// Writes the archive: sorted names, fixed times and owners (deterministic), one top folder.
fn pack(contents: &BTreeMap<String, Vec<u8>>, w: &mut files::Sink) -> std::io::Result<()> {
    let gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    tar.append_data(&mut dir, format!("{TOP}/"), std::io::empty())?;
    for (name, data) in contents {
        let mut h = tar::Header::new_gnu();
        let exec = name == "infer" || name == "run" || name.starts_with("lib");
        h.set_mode(if exec { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        tar.append_data(&mut h, format!("{TOP}/{name}"), data.as_slice())?;
    }
    tar.into_inner()?.finish()?.flush()
}

/// Builds the bundle archive; returns (path, size in bytes).
pub fn make(s: &BundleSettings) -> Result<(PathBuf, u64), InferError> {
    let ort = scorer::runtime::locate(s.ort_lib.as_deref())?;
    let model_sha = check_model(s)?;
    let files = bundled_files(s, &ort)?;
    // Nothing the bundle is made of may be overwritten by it, and one bundle run at a time
    // writes there.
    let mut io = files::RunIo::new();
    io.inputs("bundled file", files.iter().map(|(_, p)| p.as_path()));
    files::create_parent(&s.out)?;
    let target = io.output("bundle", &s.out)?;
    // A bundle replaces only a gzip archive (an earlier bundle), never another file.
    files::check_replaceable(&s.out, "bundle", &|h| h.starts_with(&[0x1f, 0x8b]))?;
    let _lock = match &target {
        files::Target::File(p) => {
            Some(files::Lock::beside(p, &format!("bundle {}", s.out.display()))?)
        }
        files::Target::Stream(_) => None,
    };
    let (info, readme) = describe(s, &files, model_sha)?;
    let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, path) in &files {
        contents.insert(name.clone(), files::read_regular(path)?);
    }
    let yaml = yaml_serde::to_string(&info).map_err(|e| crate::output_err(&s.out, e))?;
    contents.insert(DESCRIPTION.into(), yaml.into_bytes());
    contents.insert("README.txt".into(), readme.into_bytes());
    contents.insert("run".into(), RUN.as_bytes().to_vec());
    let sums: String = contents
        .iter()
        .map(|(name, data)| format!("{}  {name}\n", files::sha256_bytes(data)))
        .collect();
    contents.insert(MANIFEST.into(), sums.into_bytes());
    let mut sink = files::Sink::to(&target, &s.out)?;
    pack(&contents, &mut sink).map_err(|e| files::Error::io(&s.out, e))?;
    sink.commit()?;
    let size = std::fs::metadata(&s.out)
        .map_err(|e| files::Error::io(&s.out, e))?
        .len();
    Ok((s.out.clone(), size))
}

/// When this binary runs from a bundle (a `SHA256SUMS` beside it), checks every file of
/// the manifest and the declared calibration; returns the bundle's description.
pub fn verify_self() -> Result<Option<(PathBuf, BundleInfo)>, InferError> {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    else {
        return Ok(None);
    };
    let manifest = dir.join(MANIFEST);
    if !manifest.is_file() {
        return Ok(None);
    }
    let text = files::read_regular_to_string(&manifest)?;
    let mut problems = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((sum, name)) = line.split_once("  ") else {
            problems.push(format!("malformed manifest line {line:?}"));
            continue;
        };
        let p = dir.join(name);
        if !p.is_file() {
            problems.push(format!("{name} is missing"));
            continue;
        }
        let got = files::sha256_file(&p)?;
        if got != sum {
            problems.push(format!(
                "{name} was modified (sha256 {} ≠ manifest {})",
                &got[..12],
                sum.get(..12).unwrap_or(sum)
            ));
        }
    }
    let desc = dir.join(DESCRIPTION);
    let info: Option<BundleInfo> = files::read_regular_to_string(&desc)
        .ok()
        .and_then(|t| yaml_serde::from_str(&t).ok());
    match &info {
        None => problems.push(format!("{DESCRIPTION} is missing or unreadable")),
        Some(i) => {
            if let Some(c) = &i.calibration {
                if !text.lines().any(|l| l.ends_with(&format!("  {c}"))) {
                    problems.push(format!(
                        "the bundle was built with {c} but its manifest does not list it"
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(crate::bad_input(
            &dir,
            format!(
                "this bundle is damaged and will not score: {}. Unpack the original archive again",
                problems.join("; ")
            ),
        ));
    }
    Ok(info.map(|i| (dir, i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_scan_finds_the_newest_version() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("bin");
        std::fs::write(&p, b"\0GLIBC_2.17\0xxGLIBC_2.34\0GLIBC_2.2.5\0GLIBC_PRIVATE\0").expect("w");
        assert_eq!(min_glibc(&[p]).expect("scan"), "2.34");
    }
}
