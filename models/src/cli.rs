//! What every command-line binary of the toolchain does first.

/// Restores the default action of SIGPIPE, so `trainer doctor | head` ends quietly when
/// `head` closes the pipe, as Unix tools do. Rust's runtime ignores SIGPIPE, which turns a
/// closed pipe into an error on the next `println!` and so into a panic; no kept crate
/// offers this (the standard library's switch is unstable), hence the one `libc` call.
/// Files are unaffected: only writes to a pipe nobody reads raise the signal.
#[allow(unsafe_code)]
pub fn default_sigpipe() {
    // SAFETY: called at the start of `main`, before any thread exists; `signal` with
    // SIG_DFL installs no handler code.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
