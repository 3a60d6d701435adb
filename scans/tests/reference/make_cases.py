"""Writes scans with other tools (pydicom, nibabel) for scans/tests/reference.rs, and what
those tools read from them: every case the Rust readers must read as the reference does, or
refuse with a reason.

    python make_cases.py OUT

OUT/cases.json lists the cases: {name, path, format ("dicom" or "nifti"), expect: "read" or
"refuse", why (words the refusal must contain), dims [x, y, z], spacing, offset,
direction (rows: the x, y, z axes in LPS), voxels (a file of float32 HU, x fastest)}. The
geometry is computed here from the files' own attributes as the standard defines it (DICOM:
ImagePositionPatient along the slice normal; NIfTI: nibabel's affine, RAS turned into LPS)
and the voxels are what pydicom's pixel_array and nibabel's get_fdata give. The corpora that
ship with pydicom and nibabel (their own test files) are listed too.
"""
import json
import os
import shutil
import gzip
import struct
import sys

import numpy as np
import nibabel as nib
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

OUT = sys.argv[1]
CASES = []


def case(name, path, fmt, expect, **kw):
    c = {"name": name, "path": os.path.relpath(path, OUT), "format": fmt, "expect": expect}
    c.update(kw)
    CASES.append(c)


def save_voxels(name, hu_zyx):
    """HU as float32, x fastest (z, y, x C order)."""
    p = os.path.join(OUT, name + ".f32")
    np.ascontiguousarray(hu_zyx, dtype="<f4").tofile(p)
    return os.path.relpath(p, OUT)


# ---------------------------------------------------------------- DICOM (pydicom)
RNG = np.random.default_rng(11)
NX, NY, NZ = 20, 16, 5


def ct_slice(z, series="1.2.826.0.1.3680043.8.498.61", patient="P1", study="1.2.826.0.1.3680043.8.498.60",
             frame="1.2.826.0.1.3680043.8.498.62", stored=None, slope=1.0, intercept=-1024.0):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = f"{series}.{z + 1}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientID = patient
    ds.StudyInstanceUID = study
    ds.FrameOfReferenceUID = frame
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = NZ - z
    # Rows along −y (LPS), columns along +x: a rotated in-plane orientation.
    ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
    ds.ImagePositionPatient = [-12.5, 30.25, -70.0 - 2.5 * z]
    ds.PixelSpacing = [0.75, 0.6]
    ds.Rows, ds.Columns = NY, NX
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if stored is None:
        y, x = np.mgrid[0:NY, 0:NX]
        stored = (200 + 150 * np.sin(x / 3.0 + z) * np.cos(y / 4.0) + RNG.integers(-30, 30, (NY, NX))).astype(np.int16)
    ds.PixelData = stored.astype("<i2").tobytes()
    return ds


def dicom_geometry(datasets):
    """Geometry of a series as ITK defines it, from the attributes alone."""
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    order = sorted(datasets, key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), normal)))
    pos = [np.dot(np.array(d.ImagePositionPatient, float), normal) for d in order]
    dz = float(np.median(np.diff(pos)))
    ps = [float(v) for v in order[0].PixelSpacing]
    hu = np.stack([d.pixel_array.astype(float) * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
                   for d in order])
    return {
        "dims": [int(order[0].Columns), int(order[0].Rows), len(order)],
        "spacing": [ps[1], ps[0], dz],
        "offset": [float(v) for v in order[0].ImagePositionPatient],
        "direction": [row.tolist(), col.tolist(), normal.tolist()],
    }, hu


def write_series(name, edit=None, save=None, folder=None):
    d = folder or os.path.join(OUT, "dicom", name)
    os.makedirs(d, exist_ok=True)
    slices = []
    for z in range(NZ):
        ds = ct_slice(z)
        if edit:
            edit(z, ds)
        p = os.path.join(d, f"IM{(z * 37) % 101:04d}.dcm")
        (save or (lambda ds, p: ds.save_as(p, enforce_file_format=True)))(ds, p)
        slices.append(p)
    return d, slices


def dcmread(p):
    # Read UN elements by their dictionary VR (pydicom's default).
    pydicom.config.replace_un_with_known_vr = True
    raw = open(p, "rb").read()
    if raw[:4] == b"DICM":
        # pydicom reads a file meta group only after a preamble.
        raw = bytes(128) + raw
    import io
    ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # A bare data set: pydicom tells its encoding as it reads it.
        implicit, little = ds.original_encoding
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else (
            ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def read_case(name, d, slices):
    read = [dcmread(p) for p in slices]
    geo, hu = dicom_geometry(read)
    case(name, d, "dicom", "read", voxels=save_voxels(name, hu), **geo)


# Transfer syntaxes, each written by pydicom and read back by pydicom.
d, s = write_series("explicit_le")
read_case("explicit_le", d, s)


def implicit(ds, p):
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(p, enforce_file_format=True)


d, s = write_series("implicit_le", save=implicit)
read_case("implicit_le", d, s)


def big_endian(ds, p):
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    arr = np.frombuffer(ds.PixelData, dtype="<i2")
    ds.PixelData = arr.astype(">i2").tobytes()
    ds.save_as(p, enforce_file_format=True)


d, s = write_series("explicit_be", save=big_endian)
read_case("explicit_be", d, s)


def deflated(ds, p):
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(p, enforce_file_format=True)


d, s = write_series("deflated", save=deflated)
read_case("deflated", d, s)


def rle(ds, p):
    ds.compress(RLELossless)
    ds.save_as(p, enforce_file_format=True)


d, s = write_series("rle", save=rle)
read_case("rle", d, s)


def no_meta(ds, p):
    """A bare data set: no preamble, no DICM, no file meta group (implicit VR LE)."""
    del ds.file_meta
    ds.save_as(p, enforce_file_format=False, implicit_vr=True, little_endian=True)


d, s = write_series("no_meta", save=no_meta)
read_case("no_meta", d, s)


def no_meta_explicit(ds, p):
    del ds.file_meta
    ds.save_as(p, enforce_file_format=False, implicit_vr=False, little_endian=True)


d, s = write_series("no_meta_explicit", save=no_meta_explicit)
read_case("no_meta_explicit", d, s)


def no_preamble(ds, p):
    """DICM and the file meta group, but no 128-byte preamble."""
    ds.save_as(p, enforce_file_format=True)
    b = open(p, "rb").read()
    open(p, "wb").write(b[128:])


d, s = write_series("no_preamble", save=no_preamble)
read_case("no_preamble", d, s)


# Attributes stored as UN (as anonymisers rewrite them): pydicom decodes them by the
# dictionary, and so must we.
def un(*tags):
    def edit(z, ds):
        for tag in tags:
            el = ds[tag]
            raw = pydicom.dataset.Dataset()
            raw.add(el)
            # The value's bytes as implicit VR little endian writes them.
            from pydicom.filebase import DicomBytesIO
            from pydicom.filewriter import write_dataset
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, True
            write_dataset(fp, raw)
            value = fp.getvalue()[8:]
            del ds[tag]
            # pydicom would turn a new UN element of a known tag into its dictionary VR.
            pydicom.config.replace_un_with_known_vr = False
            ds.add_new(tag, "UN", value)
    return edit


def un_slope(z, ds):
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    un(0x00281053, 0x00281052)(z, ds)


d, s = write_series("un_rescale", edit=un_slope)
read_case("un_rescale", d, s)
d, s = write_series("un_geometry", edit=un(0x00200032, 0x00200037, 0x00280030, 0x00280010, 0x00280011))
read_case("un_geometry", d, s)
d, s = write_series("un_series_uid", edit=un(0x0020000E, 0x00080060))
read_case("un_series_uid", d, s)

# Refusals.
d, _ = write_series("slope_zero", edit=lambda z, ds: setattr(ds, "RescaleSlope", 0))
case("slope_zero", d, "dicom", "refuse", why="RescaleSlope is 0")
d, _ = write_series("slope_nan", edit=lambda z, ds: setattr(ds, "RescaleSlope", "NaN"))
case("slope_nan", d, "dicom", "refuse", why="RescaleSlope")
# Two patients under one SeriesInstanceUID, in two folders (an anonymiser's fault): the
# slices would interleave into one volume.
two = os.path.join(OUT, "dicom", "two_patients")
write_series("a", folder=os.path.join(two, "a"), edit=lambda z, ds: setattr(ds, "PatientID", "ANON1"))


def other_patient(z, ds):
    ds.PatientID = "ANON2"
    ds.ImagePositionPatient = [-12.5, 30.25, -71.25 - 2.5 * z]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.63.{z}"


write_series("b", folder=os.path.join(two, "b"), edit=other_patient)
case("two_patients", two, "dicom", "refuse", why="PatientID")
# Spacing of 1e-30 mm: absurd, named as such.
d, _ = write_series("tiny_spacing", edit=lambda z, ds: setattr(ds, "PixelSpacing", ["1e-30", "1e-30"]))
case("tiny_spacing", d, "dicom", "refuse", why="PixelSpacing")

# pydicom's own test files: every one must be read or refused by name, never crash.
corpus = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
case("pydicom_corpus", corpus, "dicom", "corpus")
# Its DICOMDIR folder holds a CT series of four slices (no file extensions) beside CR
# images and DICOMDIR indexes; the four slices lie 1.25 mm apart but for one jump of
# 202.5 mm, so they are no volume: refused as a missing slice, naming the files.
case("pydicom_dicomdir_ct2", os.path.join(corpus, "dicomdirtests", "77654033", "CT2"), "dicom", "refuse",
     why="a missing slice")

# ---------------------------------------------------------------- NIfTI (nibabel)
NIFTI = os.path.join(OUT, "nifti")
os.makedirs(NIFTI, exist_ok=True)


def lps_geometry(affine, shape):
    a = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, float)[:3]
    spacing = np.linalg.norm(a[:, :3], axis=0)
    return {
        "dims": [int(v) for v in shape[:3]],
        "spacing": spacing.tolist(),
        "offset": a[:, 3].tolist(),
        "direction": (a[:, :3] / spacing).T.tolist(),
    }


def nifti_read_case(name, path, affine=None, data_from=None):
    img = nib.load(data_from or path)
    hdr = img.header
    # (nibabel itself refuses the quaternion of norm 2: the affine is given for it.)
    if affine is None:
        # The form the file says (nibabel's get_best_affine: sform first).
        affine = hdr.get_sform() if hdr["sform_code"] > 0 else hdr.get_qform()
    data = np.asarray(img.dataobj, dtype=np.float64)
    hu = np.transpose(data[..., 0] if data.ndim == 4 else data, (2, 1, 0))
    geo = lps_geometry(affine, img.shape)
    case(name, path, "nifti", "read", voxels=save_voxels(name, hu), **geo)


vol = (-600 + 300 * RNG.standard_normal((12, 10, 6))).astype(np.int16)
rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
aff = np.eye(4)
aff[:3, :3] = rot @ np.diag([0.8, 0.7, 2.5])
aff[:3, 3] = [40.5, -20.0, -110.0]


def write_nifti(name, sform=2, qform=1, dtype=np.int16, scl=None, byteswap=False, gz=False):
    """Both forms written by nibabel, then the codes set as asked (nibabel's update_header
    would otherwise fill in the sform again)."""
    img = nib.Nifti1Image(vol.astype(dtype), aff)
    img.header.set_sform(aff, code=2)
    img.header.set_qform(aff, code=1)
    if scl:
        img.header.set_slope_inter(*scl)
    if byteswap:
        hdr = img.header.as_byteswapped(">")
        img = nib.Nifti1Image(vol.astype(dtype), None, header=hdr)
    p = os.path.join(NIFTI, name + (".nii.gz" if gz else ".nii"))
    nib.save(img, p)
    opener = gzip.open if gz else open
    b = bytearray(opener(p, "rb").read())
    struct.pack_into((">" if byteswap else "<") + "2h", b, 252, qform, sform)
    with opener(p, "wb") as f:
        f.write(bytes(b))
    return p


for name, kw in [
    ("sform_and_qform", {}),
    ("sform_only", {"qform": 0}),
    ("qform_only", {"sform": 0}),
    ("gzipped", {"gz": True}),
    ("big_endian", {"byteswap": True}),
    ("scaled", {"scl": (2.0, -1024.0), "dtype": np.int16}),
    ("float64", {"dtype": np.float64}),
]:
    p = write_nifti(name, **kw)
    nifti_read_case(name, p)


def patch(path, name, offset, fmt, value):
    """A copy of a .nii with one header field changed."""
    b = bytearray(open(path, "rb").read())
    struct.pack_into("<" + fmt, b, offset, *(value if isinstance(value, tuple) else (value,)))
    q = os.path.join(NIFTI, name + ".nii")
    open(q, "wb").write(bytes(b))
    return q


qonly = os.path.join(NIFTI, "qform_only.nii")
both = os.path.join(NIFTI, "sform_and_qform.nii")
# A quaternion of norm above 1: nifti1_io and ITK normalise it (the same rotation).
hdr = nib.load(qonly).header
b, c, d = (float(hdr[k]) for k in ("quatern_b", "quatern_c", "quatern_d"))
k = 2.0 / np.sqrt(b * b + c * c + d * d) if (b, c, d) != (0.0, 0.0, 0.0) else 1.0
p = patch(qonly, "quaternion_norm_2", 256, "3f", (b * k, c * k, d * k))
# The expected map: the rotation of the unit quaternion (b, c, d)/|(b, c, d)| with a = 0.
n = np.array([b, c, d]) / np.linalg.norm([b, c, d])
bb, cc, dd = n
R = np.array([[bb*bb - cc*cc - dd*dd, 2*bb*cc, 2*bb*dd],
              [2*bb*cc, cc*cc - bb*bb - dd*dd, 2*cc*dd],
              [2*bb*dd, 2*cc*dd, dd*dd - cc*cc - bb*bb]])
qfac = -1.0 if hdr["pixdim"][0] < 0 else 1.0
A = np.eye(4)
A[:3, :3] = R @ np.diag([hdr["pixdim"][1], hdr["pixdim"][2], qfac * hdr["pixdim"][3]])
A[:3, 3] = [hdr["qoffset_x"], hdr["qoffset_y"], hdr["qoffset_z"]]
# (nibabel refuses to load this file: its voxels are qform_only's, which it loads.)
nifti_read_case("quaternion_norm_2", p, affine=A, data_from=qonly)
# Where the standard readers disagree: refused with the reason.
case("negative_pixdim", patch(qonly, "negative_pixdim", 80, "f", -0.8), "nifti", "refuse", why="readers disagree")
case("qfac_half", patch(qonly, "qfac_half", 76, "f", -0.5), "nifti", "refuse", why="qfac")
case("pixdim_zero", patch(qonly, "pixdim_zero", 84, "f", 0.0), "nifti", "refuse", why="pixdim")
case("units_metres", patch(both, "units_metres", 123, "B", 1), "nifti", "refuse", why="metres")
case("slope_zero_intercept", patch(both, "slope_zero_intercept", 112, "2f", (0.0, 5.0)), "nifti", "refuse",
     why="scl_slope")
case("intercept_nan", patch(both, "intercept_nan", 112, "2f", (2.0, float("nan"))), "nifti", "refuse",
     why="scl_inter")
case("forms_disagree", patch(both, "forms_disagree", 268, "f", 99.0), "nifti", "refuse", why="sform")
case("sheared_sform", patch(both, "sheared_sform", 284, "f", 0.3), "nifti", "refuse", why="sheared")
case("no_xform", patch(both, "no_xform", 252, "2h", (0, 0)), "nifti", "refuse", why="neither")
case("analyze_magic", patch(both, "analyze_magic", 344, "4s", b"\0\0\0\0"), "nifti", "refuse", why="Analyze")
case("pair_magic", patch(both, "pair_magic", 344, "4s", b"ni1\0"), "nifti", "refuse", why=".hdr/.img")
case("vox_offset_low", patch(both, "vox_offset_low", 108, "f", 0.0), "nifti", "refuse", why="vox_offset")
case("dims_negative", patch(both, "dims_negative", 42, "h", -12), "nifti", "refuse", why="dim")
case("spacing_1e30", patch(qonly, "spacing_1e30", 80, "3f", (1e-30, 1e-30, 1e-30)), "nifti", "refuse", why="spacing")
# A 1024³ volume declared by a small gzip file: refused or failed by its length, never
# allocated (the Rust test bounds the memory).
img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), aff)
p = os.path.join(NIFTI, "huge_claim.nii.gz")
nib.save(img, p)
import gzip
raw = bytearray(gzip.decompress(open(p, "rb").read()))
struct.pack_into("<4h", raw, 40, 3, 1024, 1024, 1024)
open(p, "wb").write(gzip.compress(bytes(raw)))
case("huge_claim", p, "nifti", "refuse", why="truncated")
# nibabel's own test files.
corpus = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
case("nibabel_corpus", corpus, "nifti", "corpus")
for f in ["anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"]:
    src = os.path.join(corpus, f)
    h = nib.load(src).header
    if h["sform_code"] > 0 and h["qform_code"] > 0 and not np.allclose(h.get_sform(), h.get_qform(), atol=1e-4):
        continue
    nifti_read_case("nibabel_" + f.split(".")[0], src)
case("nibabel_functional_4d", os.path.join(corpus, "functional.nii"), "nifti", "refuse", why="3-D")
case("nibabel_nifti2", os.path.join(corpus, "example_nifti2.nii.gz"), "nifti", "refuse", why="NIfTI-2")

with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(CASES, f, indent=1)
print(f"{len(CASES)} cases in {OUT}")
