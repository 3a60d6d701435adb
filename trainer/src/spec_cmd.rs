//! `trainer spec`: an architecture printed as a spec file.
use std::path::Path;

use anyhow::Result;

/// `trainer spec`: prints an architecture as a spec file writes it, with its size.
pub(crate) fn show_spec(arch: &str, cube: usize) -> Result<()> {
    let spec = if models::spec::ARCHITECTURES.contains(&arch) {
        models::spec::ArchSpec::by_name(arch)?
    } else {
        let p = Path::new(arch);
        models::spec::ArchSpec::from_yaml(&files::read_regular_to_string(p)?, &p.display().to_string())?
    };
    if !(8..=models::preprocess::MAX_CUBE).contains(&cube) {
        anyhow::bail!(
            "--cube-size must be from 8 to {}, got {cube}",
            models::preprocess::MAX_CUBE
        );
    }
    let size = spec.check_input(cube)?;
    println!(
        "# {}: {} trainable parameters; a {cube}³ cube is {size} voxels (z, y, x) before global pooling",
        spec.name,
        spec.num_trainable()
    );
    print!("{}", spec.to_yaml()?);
    Ok(())
}
