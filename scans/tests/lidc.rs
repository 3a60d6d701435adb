//! The real LIDC-IDRI-0002 slab in `../shared/data/`: its 12 DICOM slices read as a series
//! equal the MetaImage of the same voxels beside them (geometry to the MetaImage's rounding
//! of the spacing, every voxel exactly).
use std::path::PathBuf;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/lidc-idri-0002")
}

#[test]
fn the_lidc_dicom_slices_equal_their_metaimage() {
    let dir = data();
    let uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919";
    // The MetaImage and the DICOM series name the same seriesuid (LUNA16's is the
    // SeriesInstanceUID): found together they are one series twice, and that series is
    // refused (listed, naming both, and not read), never one of them picked silently.
    let both = scans::find(&dir, None).expect("find");
    assert!(both.scans.is_empty(), "{:?}", both.scans.keys());
    assert_eq!(both.unreadable.len(), 1, "{:?}", both.unreadable);
    let e = &both.unreadable[0].1;
    assert!(
        e.contains(&format!("series {uid} appears 2 times")) && e.contains(".mhd") && e.contains("--format"),
        "{e}"
    );
    let found = scans::find(&dir, Some(scans::Format::Dicom)).expect("find");
    assert!(found.unreadable.is_empty(), "{:?}", found.unreadable);
    let dicom = &found.scans[uid];
    assert!(matches!(dicom, scans::Source::Dicom { files, .. } if files.len() == 12));
    let a = dicom.read().expect("dicom");
    let found = scans::find(&dir, Some(scans::Format::MetaImage)).expect("find");
    let b = found.scans[uid].read().expect("mhd");
    assert_eq!(a.geometry.dims, b.geometry.dims);
    for k in 0..3 {
        assert!(
            (a.geometry.spacing[k] - b.geometry.spacing[k]).abs() < 1e-5,
            "{:?} {:?}",
            a.geometry.spacing,
            b.geometry.spacing
        );
        assert!(
            (a.geometry.offset[k] - b.geometry.offset[k]).abs() < 1e-4,
            "{:?} {:?}",
            a.geometry.offset,
            b.geometry.offset
        );
        for j in 0..3 {
            assert!((a.geometry.direction[k][j] - b.geometry.direction[k][j]).abs() < 1e-9);
        }
    }
    assert_eq!(a.voxels.len(), b.voxels.len());
    let diff = a.voxels.iter().zip(&b.voxels).filter(|(x, y)| x != y).count();
    assert_eq!(diff, 0, "voxels differ");
}
