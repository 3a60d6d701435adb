//! The CSV files every stage reads and writes, read one way: [`csvio`] opens a CSV (a
//! regular file, `\r\n` line ends, headers checked) and walks its rows with the right line
//! numbers; [`index`] is the patch index (`patch_index.csv`) and the scoring index;
//! [`scores`] a scores CSV with labels.
pub mod csvio;
pub mod error;
pub mod index;
pub mod scores;

pub use error::{Error, Result};
