//! A last line of defence around third-party decoders (dicom-rs's pixel decoders): a panic
//! inside one becomes that file's error instead of ending the process, and is not printed
//! as a crash. The checks before each decoder (lengths, headers) are what keep hostile
//! input away from them; this only makes sure that a case they miss is still a named error.
use std::cell::Cell;
use std::sync::Once;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Runs `f`; a panic inside it is returned as its message.
pub fn decoder<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_inside_is_an_error_and_outside_still_a_panic() {
        let e = super::decoder(|| -> u8 { panic!("bad data at {}", 3) }).expect_err("caught");
        assert_eq!(e, "bad data at 3");
        assert_eq!(super::decoder(|| 5), Ok(5));
        assert!(std::panic::catch_unwind(|| panic!("outside")).is_err());
    }
}
