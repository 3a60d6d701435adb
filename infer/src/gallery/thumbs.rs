//! A patch's thumbnail: the three orthogonal mid-slices through the cube's centre side by
//! side (axial, coronal, sagittal), in the lung window, with a scale bar when the voxel size
//! is known; one greyscale PNG.
//!
//! Orientation: a patch is a z-y-x cube on the world's axes in ITK/LPS order (x towards the
//! patient's left, y posterior, z superior), as `scans prepare` cuts it. The slices are shown
//! as radiologists read them: axial with anterior at the top and the patient's right on the
//! viewer's left; coronal with superior at the top and the right on the left; sagittal with
//! superior at the top and anterior on the left.
use ndarray::{ArrayD, Ix3};

/// The lung window: level −600 HU, width 1500 HU.
pub const LUNG_LEVEL: f32 = -600.0;
pub const LUNG_WIDTH: f32 = 1500.0;
/// The scale bar's length in mm (5 mm when 10 mm does not fit a slice).
pub const BAR_MM: f64 = 10.0;
/// Light grey columns between the slices (air outside a scan is dark grey in the lung window).
const GAP: usize = 2;
const GAP_GREY: u8 = 180;

/// One slice: rows top to bottom, each left to right.
struct Slice {
    h: usize,
    w: usize,
    v: Vec<u8>,
}

fn grey(hu: f32) -> u8 {
    let lo = LUNG_LEVEL - LUNG_WIDTH / 2.0;
    let t = ((hu - lo) / LUNG_WIDTH).clamp(0.0, 1.0);
    // A NaN voxel is drawn black (clamp keeps NaN; `as u8` makes it 0).
    (t * 255.0).round() as u8
}

/// The three mid-slices of a z-y-x cube, oriented as the module says.
fn slices(a: &ndarray::Array3<f32>) -> [Slice; 3] {
    let (nz, ny, nx) = a.dim();
    let (cz, cy, cx) = (nz / 2, ny / 2, nx / 2);
    let axial = Slice {
        h: ny,
        w: nx,
        v: (0..ny)
            .flat_map(|y| (0..nx).map(move |x| (y, x)))
            .map(|(y, x)| grey(a[[cz, y, x]]))
            .collect(),
    };
    let coronal = Slice {
        h: nz,
        w: nx,
        v: (0..nz)
            .rev()
            .flat_map(|z| (0..nx).map(move |x| (z, x)))
            .map(|(z, x)| grey(a[[z, cy, x]]))
            .collect(),
    };
    let sagittal = Slice {
        h: nz,
        w: ny,
        v: (0..nz)
            .rev()
            .flat_map(|z| (0..ny).map(move |y| (z, y)))
            .map(|(z, y)| grey(a[[z, y, cx]]))
            .collect(),
    };
    [axial, coronal, sagittal]
}

/// The scale bar's length in mm and pixels for a slice `w` wide at `spacing` mm per voxel:
/// 10 mm, else 5 mm, if it fits in 80% of the slice.
pub fn bar(w: usize, spacing: f64) -> Option<(f64, usize)> {
    [BAR_MM, BAR_MM / 2.0].into_iter().find_map(|mm| {
        let px = (mm / spacing).round() as usize;
        (px >= 2 && (px as f64) <= 0.8 * w as f64).then_some((mm, px))
    })
}

/// The thumbnail of a cube in HU (z-y-x) as PNG bytes, and the scale bar drawn (mm), if any.
pub fn thumbnail(cube: &ArrayD<f32>, spacing_mm: Option<f64>) -> Result<(Vec<u8>, Option<f64>), String> {
    let a = cube
        .view()
        .into_dimensionality::<Ix3>()
        .map_err(|_| format!("a patch has 3 axes (z, y, x); this one has shape {:?}", cube.shape()))?
        .to_owned();
    if a.is_empty() {
        return Err("the patch is empty".into());
    }
    let s = slices(&a);
    let h = s.iter().map(|x| x.h).max().unwrap_or(0);
    let w = s.iter().map(|x| x.w).sum::<usize>() + GAP * 2;
    let mut img = vec![GAP_GREY; h * w];
    let mut x0 = 0;
    for sl in &s {
        for r in 0..sl.h {
            img[r * w + x0..r * w + x0 + sl.w].copy_from_slice(&sl.v[r * sl.w..(r + 1) * sl.w]);
        }
        x0 += sl.w + GAP;
    }
    // The bar along the axial slice's bottom left, white over a black edge.
    let drawn = spacing_mm.and_then(|sp| bar(s[0].w, sp)).filter(|_| s[0].h >= 8);
    if let Some((_, px)) = drawn {
        let (left, bottom) = (2, s[0].h - 3);
        for (row, v) in [(bottom - 1, 0u8), (bottom, 255), (bottom + 1, 255), (bottom + 2, 0)] {
            img[row * w + left..row * w + left + px].fill(v);
        }
    }
    Ok((encode(&img, w, h)?, drawn.map(|d| d.0)))
}

fn encode(img: &[u8], w: usize, h: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut e = png::Encoder::new(&mut out, w as u32, h as u32);
    e.set_color(png::ColorType::Grayscale);
    e.set_depth(png::BitDepth::Eight);
    e.set_compression(png::Compression::Fast);
    let mut wr = e.write_header().map_err(|e| format!("PNG: {e}"))?;
    wr.write_image_data(img).map_err(|e| format!("PNG: {e}"))?;
    wr.finish().map_err(|e| format!("PNG: {e}"))?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn slices_are_the_mid_planes_in_reading_orientation_and_the_window_is_the_lung_window() {
        // A cube whose voxel value says where it is: z*100 + y*10 + x (HU), 5x4x3.
        let a = ndarray::Array3::from_shape_fn((5, 4, 3), |(z, y, x)| (z * 100 + y * 10 + x) as f32);
        let [ax, co, sa] = slices(&a);
        assert_eq!((ax.h, ax.w, co.h, co.w, sa.h, sa.w), (4, 3, 5, 3, 5, 4));
        // Axial at z = 2: first row y = 0 (anterior), first column x = 0 (patient's right).
        assert_eq!(ax.v[0], grey(200.0));
        assert_eq!(ax.v[3 * 3 + 2], grey(232.0));
        // Coronal at y = 2: top row is the highest z (superior).
        assert_eq!(co.v[0], grey(420.0));
        assert_eq!(co.v[4 * 3], grey(20.0));
        // Sagittal at x = 1: top row highest z, first column y = 0 (anterior).
        assert_eq!(sa.v[0], grey(401.0));
        assert_eq!(sa.v[3], grey(431.0));
        assert_eq!(grey(-1350.0), 0);
        assert_eq!(grey(150.0), 255);
        assert_eq!(grey(-600.0), 128);
        assert_eq!(grey(f32::NAN), 0);
    }

    #[test]
    fn the_png_decodes_to_the_three_slices_and_the_bar_is_10_mm() {
        let a = ndarray::Array3::from_elem((32, 32, 32), -600.0f32).into_dyn();
        let (bytes, bar_mm) = thumbnail(&a, Some(1.0)).unwrap();
        assert_eq!(bar_mm, Some(10.0));
        let d = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = d.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (32 * 3 + 2 * GAP as u32, 32));
        let w = info.width as usize;
        assert_eq!(buf[5 * w + 40], 128, "lung level is mid grey");
        assert_eq!(buf[32 * w - w + 32], GAP_GREY, "the gap");
        // The bar: 10 px white on row 29 from column 2.
        assert!(buf[29 * w + 2..29 * w + 12].iter().all(|&v| v == 255));
        assert_eq!(buf[29 * w + 12], 128);
        // No bar without a voxel size, or one that does not fit (5 mm at 1 mm on 8 voxels: 5 px fits 6.4).
        assert_eq!(thumbnail(&a, None).unwrap().1, None);
        assert_eq!(bar(8, 1.0), Some((5.0, 5)));
        assert_eq!(bar(8, 2.0), Some((10.0, 5)));
        assert_eq!(bar(4, 1.0), None);
        assert!(thumbnail(&ndarray::Array2::<f32>::zeros((4, 4)).into_dyn(), None).is_err());
    }
}
