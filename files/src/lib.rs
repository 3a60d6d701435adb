//! Files in and out, as every binary of the toolchain handles them.
//!
//! * [`read`]: inputs are opened only if they are regular files, never in a way that can
//!   block ([`open_regular`]);
//! * [`write`](mod@write): outputs are written atomically, through symlinks to their targets, and
//!   devices and FIFOs are written through rather than replaced ([`Sink`],
//!   [`write_atomic`]); temporary files have one name pattern and stale ones are cleaned;
//! * [`lock`]: exclusive use of an output by one process at a time ([`Lock`]);
//! * [`policy`]: the checks every run makes before any work ([`RunIo`]): no output may
//!   name an input or another output.
//!
//! One implementation of each, called by every binary.
use std::path::Path;

use sha2::{Digest, Sha256};

pub mod error;
pub mod lock;
pub mod policy;
pub mod read;
pub mod write;

pub use error::{Error, Result};
pub use lock::{Lock, DIR_LOCK};
pub use policy::RunIo;
pub use read::{open_regular, read_regular, read_regular_to_string};
pub use write::{
    check_replaceable, clean_stale_temps, create_parent, replace_with, resolve_output, write_atomic, write_atomic_with, Sink, Target,
    TEMP_PREFIX,
};

/// Hex sha256 of a file's bytes (a regular file: see [`open_regular`]).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = open_regular(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex(&h.finalize()))
}

/// Hex sha256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_value() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
