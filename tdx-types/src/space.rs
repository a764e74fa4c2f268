//! Address spaces, and unique inert handles to pages in them.
//!
//! On a TDX host a physical page is in one of three hands:
//!
//! - [`Host`]: the host kernel or VMM may read and write it through its
//!   direct map;
//! - [`Firmware`]: the TDX module owns it (TDR, TDCS, TDVPR, TDCX, S-EPT
//!   pages, PAMTs, the extension memory pool). A host write to it corrupts
//!   the module's state; a host read returns ciphertext or, on some
//!   platforms, poisons the line;
//! - [`Guest`]: a Trust Domain's private memory, mapped through the S-EPT.
//!   The host must not touch it either.
//!
//! A [`Frame<A, S>`] is a handle to one page of size `S` in space `A`. It is
//! **unique** (neither `Clone` nor `Copy`: ownership moves with the value),
//! and **inert**: it has no `Deref`, holds no pointer, and exposes only the
//! page's address. Nothing in this crate reads or writes memory.
//!
//! A `Frame` is a *claim* about which space a page is in, checked by the
//! types so that a module-owned address cannot be passed where a host-owned
//! one is expected. It is not a capability: it grants no access to memory,
//! so making one needs no `unsafe`. The crates that do grant access (the
//! `Platform` direct-map interface in `tdx-api`) establish ownership with
//! their own contracts, and move a page between spaces only after the step
//! that really moves it: a successful SEAMCALL that hands the page to the
//! module, `TDH.PHYMEM.PAGE.RECLAIM` plus the cache maintenance the ABI
//! requires, or an explicit `unsafe` promise by the caller. Nothing in this
//! crate converts a frame from one space to another.

use core::{fmt, marker::PhantomData};

use crate::{
    addr::{Hpa, Pfn},
    page::{PageSize, PfnRange, Size4K, TdxLevel},
};

mod sealed {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a TDX address space",
        note = "a page is in one of three hands: `Host`, `Firmware` or `Guest`"
    )]
    pub trait Sealed {}
}

/// An address space a physical page can belong to. Sealed.
pub trait AddressSpace: sealed::Sealed + 'static {
    /// "host", "firmware" or "guest".
    const NAME: &'static str;
}

/// The host's own memory: reachable through the direct map.
#[derive(Debug)]
pub enum Host {}
/// Memory the TDX module owns (control structures, PAMTs, pools).
#[derive(Debug)]
pub enum Firmware {}
/// A Trust Domain's private memory.
#[derive(Debug)]
pub enum Guest {}

impl sealed::Sealed for Host {}
impl sealed::Sealed for Firmware {}
impl sealed::Sealed for Guest {}

impl AddressSpace for Host {
    const NAME: &'static str = "host";
}
impl AddressSpace for Firmware {
    const NAME: &'static str = "firmware";
}
impl AddressSpace for Guest {
    const NAME: &'static str = "guest";
}

/// A unique, inert handle to one page of size `S` in address space `A`.
///
/// See the [module documentation](self) for what a frame is and is not.
/// Dropping a frame does nothing to the page: for a [`FirmwarePage`] that
/// means the page stays with the module (leaked on purpose), which is why
/// dropping one unused is flagged by `#[must_use]`.
#[must_use = "a frame is the only record of who owns the page; dropping it leaks the page"]
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frame<A: AddressSpace, S: PageSize = Size4K> {
    range: PfnRange<S>,
    _space: PhantomData<A>,
}

/// A 4 KiB page the TDX module owns: TDR, TDCS, TDVPR, TDCX, S-EPT, PAMT or
/// extension-pool page. Its address is readable; its contents are not.
pub type FirmwarePage = Frame<Firmware, Size4K>;

impl<A: AddressSpace, S: PageSize> Frame<A, S> {
    /// A handle claiming that the page `range` is in space `A`.
    ///
    /// This records a claim; it moves nothing and grants no access. Code
    /// that hands out frames (tdx-api) calls it right after the step that
    /// made the claim true.
    pub const fn new(range: PfnRange<S>) -> Self {
        Self {
            range,
            _space: PhantomData,
        }
    }

    /// The page's first frame.
    #[inline]
    pub const fn pfn(&self) -> Pfn {
        self.range.first()
    }

    /// The page's physical address.
    #[inline]
    pub const fn hpa(&self) -> Hpa {
        self.range.hpa()
    }

    /// The page's frames.
    #[inline]
    pub const fn range(&self) -> PfnRange<S> {
        self.range
    }

    /// The TDX level of the page size.
    #[inline]
    pub const fn level(&self) -> TdxLevel {
        S::LEVEL
    }

    /// Gives up the handle and keeps the numbers. For a firmware page this
    /// is how a page is deliberately leaked: the frames stay with the module
    /// and the caller is left with an address to report, nothing more.
    pub const fn into_range(self) -> PfnRange<S> {
        self.range
    }
}

impl FirmwarePage {
    /// A handle to the 4 KiB firmware page at `pfn`.
    pub const fn from_pfn(pfn: Pfn) -> Self {
        // Every frame is 4 KiB aligned, so the conversion cannot fail.
        Self::new(PfnRange::<Size4K>::containing(pfn))
    }
}

impl<A: AddressSpace, S: PageSize> fmt::Debug for Frame<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Frame<{}, {}>({:#x})",
            A::NAME,
            S::NAME,
            self.range.hpa().as_u64()
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::page::Size2M;
    use std::format;

    #[test]
    fn frames_expose_their_address_only() {
        let p = FirmwarePage::from_pfn(Pfn::new(0x1234));
        assert_eq!(p.hpa(), Hpa::new(0x123_4000));
        assert_eq!(p.level(), TdxLevel::L4K);
        assert_eq!(format!("{p:?}"), "Frame<firmware, 4K>(0x1234000)");
        let g: Frame<Guest, Size2M> = Frame::new(PfnRange::new(Pfn::new(0x200)));
        assert_eq!(format!("{g:?}"), "Frame<guest, 2M>(0x200000)");
        assert_eq!(g.into_range().frames(), 512);
    }
}
