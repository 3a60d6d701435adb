//! Raw access to CPU tensors' memory, for the fused CPU update.
use tch::{Device, Kind, Tensor};

use crate::{Result, TrainError};

fn check(t: &Tensor) -> Result<()> {
    if !t.defined() || t.device() != Device::Cpu || t.kind() != Kind::Float || !t.is_contiguous() {
        return Err(TrainError::Internal(
            "the fused CPU update needs contiguous f32 CPU tensors".into(),
        ));
    }
    Ok(())
}

/// The byte range a tensor's elements occupy.
pub fn span(t: &Tensor) -> std::ops::Range<usize> {
    let start = t.data_ptr() as usize;
    start..start + t.numel() * std::mem::size_of::<f32>()
}

/// A contiguous f32 CPU tensor's elements. tch has no safe borrowed view of a tensor's
/// memory (only copies), and copies are what the fused update exists to avoid.
///
/// # Safety
/// While the slice lives, nothing may write the tensor's memory: not through another
/// handle or view of the same storage, not by libtorch, and no mutable slice from
/// [`f32_slice_mut`] may overlap it.
#[allow(unsafe_code)]
pub unsafe fn f32_slice(t: &Tensor) -> Result<&[f32]> {
    check(t)?;
    if t.numel() == 0 {
        return Ok(&[]);
    }
    // SAFETY: checked above to be a defined, contiguous f32 tensor on the CPU, so
    // data_ptr points at numel initialised f32 values, kept alive by `t`'s storage for
    // the borrow of `t`; no writer exists meanwhile (the caller's contract).
    Ok(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) })
}

/// The same, writable.
///
/// # Safety
/// While the slice lives, nothing else may read or write the tensor's memory: not
/// through another handle or view (the model's parameters alias the optimizer's flat
/// buffer), not by libtorch, and no other slice may overlap it.
#[allow(unsafe_code)]
pub unsafe fn f32_slice_mut(t: &mut Tensor) -> Result<&mut [f32]> {
    check(t)?;
    if t.numel() == 0 {
        return Ok(&mut []);
    }
    // SAFETY: as in `f32_slice`, with exclusive use guaranteed by the caller.
    Ok(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) })
}
