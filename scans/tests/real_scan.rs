//! The real LIDC-IDRI slab in `../shared/data/lidc-idri-0002/` (see its ATTRIBUTION.md):
//! 12 slices of 512 × 512 int16 HU as a LUNA-style `.mhd`/`.raw`.
use std::path::PathBuf;

use scans::metaimage::{ElementType, Scan};
use scans::resample::{extract, PatchGrid, AIR_HU};

fn slab() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/lidc-idri-0002");
    let mhd = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the shared test data sits beside the repository)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "mhd"))
        .unwrap_or_else(|| panic!("{}: no .mhd", dir.display()));
    mhd
}

#[test]
fn the_real_slab_reads_with_its_shape_spacing_and_hu_range() {
    let scan = Scan::read(&slab()).expect("read the slab");
    let g = &scan.geometry;
    assert_eq!(g.dims, [512, 512, 12]);
    assert_eq!(scan.element_type, ElementType::Short);
    assert!((g.spacing[0] - 0.681641).abs() < 1e-9 && (g.spacing[1] - 0.681641).abs() < 1e-9);
    assert!((g.spacing[2] - 1.25).abs() < 1e-9);
    assert_eq!(g.offset, [-175.5, -174.5, -94.5]);
    assert!(g.is_orthonormal());
    assert_eq!(scan.voxels.len(), 512 * 512 * 12);
    let (lo, hi) = scan.range();
    // CT in HU: air and the scanner's outside-the-bore padding at the bottom, dense bone at
    // the top; nothing like raw unsigned detector values.
    assert!((-3024.0..=-1000.0).contains(&lo), "min {lo}");
    assert!((300.0..=4000.0).contains(&hi), "max {hi}");
    // Lung CT: a large share of voxels is air or lung (< −500 HU), and soft tissue exists.
    let low = scan.voxels.iter().filter(|&&v| v < -500.0).count() as f64 / scan.voxels.len() as f64;
    let soft = scan.voxels.iter().filter(|&&v| (-100.0..=100.0).contains(&v)).count();
    assert!(
        low > 0.3 && soft > 10_000,
        "air/lung share {low}, soft-tissue voxels {soft}"
    );
    // The centre voxel's world position round-trips.
    let w = g.voxel_to_world([255.5, 255.5, 5.5]);
    let back = g.world_to_voxel(w);
    assert!((back[0] - 255.5).abs() < 1e-9 && (back[2] - 5.5).abs() < 1e-9);
    // A 64 mm cube at the slab's centre: the slab is 15 mm thick, so most z planes are
    // outside (air) and the middle planes hold the real HU values.
    let cube = extract(&scan, w, &PatchGrid::default());
    assert_eq!(cube.dim(), (64, 64, 64));
    assert!(cube.slice(ndarray::s![0, .., ..]).iter().all(|&v| v == AIR_HU));
    let mid = cube.slice(ndarray::s![32, .., ..]);
    assert!(mid.iter().any(|&v| v > 0.0) && mid.iter().any(|&v| v < -700.0));
}
