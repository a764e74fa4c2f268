//! Fallible heap allocation for the TD code: a box whose room is allocated
//! before its value exists, and a list several threads append to whose
//! push never allocates infallibly.
//!
//! `Box::new` and `Vec::push` abort (or panic) when the global allocator
//! fails; a kernel cannot accept that after bring-up. `Box::try_new` is not
//! stable, so [`BoxSlot`] allocates with [`alloc::alloc::alloc`] and the
//! value's layout, which is what `Box` itself uses.

// UNSAFETY: `BoxSlot` allocates and frees by hand and hands its memory to a
// `Box` once written.
#![allow(unsafe_code)]

use alloc::{boxed::Box, vec::Vec};
use core::{alloc::Layout, marker::PhantomData, ptr::NonNull};

/// Heap room for one `T`, allocated fallibly and filled later: a TD
/// allocates its record's room before any page or SEAMCALL, so a failed
/// allocation leaves nothing to undo.
pub(crate) struct BoxSlot<T> {
    ptr: NonNull<T>,
    _owns: PhantomData<T>,
}

impl<T> BoxSlot<T> {
    /// Room for a `T`, or `None` if the global allocator has none.
    pub(crate) fn new() -> Option<Self> {
        let layout = Layout::new::<T>();
        let ptr = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            // SAFETY: the layout has a non-zero size.
            NonNull::new(unsafe { alloc::alloc::alloc(layout) }.cast::<T>())?
        };
        Some(Self {
            ptr,
            _owns: PhantomData,
        })
    }

    /// The box holding `value`, in the room allocated by [`new`](Self::new).
    pub(crate) fn fill(self, value: T) -> Box<T> {
        let ptr = self.ptr;
        core::mem::forget(self);
        // SAFETY: `ptr` is valid for a write of `T` and aligned for it
        // (allocated with `Layout::new::<T>()`, or dangling for a
        // zero-sized `T`); nothing was there to drop.
        unsafe { ptr.as_ptr().write(value) };
        // SAFETY: the memory comes from the global allocator with the layout
        // `Box<T>` uses (or is a dangling pointer for a zero-sized `T`, as
        // `Box` makes), it holds an initialized `T`, and this slot gave up
        // its ownership above (forget), so the box is its only owner.
        unsafe { Box::from_raw(ptr.as_ptr()) }
    }
}

impl<T> Drop for BoxSlot<T> {
    fn drop(&mut self) {
        let layout = Layout::new::<T>();
        if layout.size() != 0 {
            // SAFETY: allocated in `new` with this layout and never filled
            // (`fill` forgets the slot); no `T` to drop.
            unsafe { alloc::alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

/// A list several threads append to on paths that are already failing
/// (pages in doubt, frames waiting for a write-back, errors for the
/// teardown report): a spin lock held only for the push, which asks the
/// allocator for room fallibly and gives the item back if there is none,
/// so the caller keeps it some other way.
pub(crate) struct Shared<T>(spin::Mutex<Vec<T>>);

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self(spin::Mutex::new(Vec::new()))
    }
}

impl<T> Shared<T> {
    /// Appends `item`, or gives it back if the list cannot grow.
    pub(crate) fn try_push(&self, item: T) -> Result<(), T> {
        let mut list = self.0.lock();
        if list.try_reserve(1).is_err() {
            return Err(item);
        }
        list.push(item);
        Ok(())
    }

    /// Everything appended so far; the list is empty afterwards.
    pub(crate) fn take(&mut self) -> Vec<T> {
        core::mem::take(self.0.get_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_fills_or_frees_its_room() {
        let b = BoxSlot::<[u64; 4]>::new().unwrap().fill([1, 2, 3, 4]);
        assert_eq!(*b, [1, 2, 3, 4]);
        drop(BoxSlot::<[u64; 4]>::new().unwrap());
        let z = BoxSlot::<()>::new().unwrap().fill(());
        assert_eq!(*z, ());
    }

    #[test]
    fn shared_pushes_and_takes() {
        let mut s = Shared::default();
        assert_eq!(s.try_push(3), Ok(()));
        assert_eq!(s.try_push(4), Ok(()));
        assert_eq!(s.take(), [3, 4]);
        assert!(s.take().is_empty());
    }
}
