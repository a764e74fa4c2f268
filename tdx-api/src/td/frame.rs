//! Guest frames: the caller's promise, made once, that the host leaves a
//! run of frames alone while a TD owns it.

// UNSAFETY: `GuestFrame::new` is an `unsafe fn`: it is where the caller
// promises not to touch the frames while the TD owns them.
#![allow(unsafe_code)]

use core::fmt;

use tdx_types::{AddrError, PageSize, Pfn, PfnRange, PfnRun, Size4K};

/// A run of host frames the caller hands to a TD as private memory: one
/// 4 KiB frame, or an aligned, physically contiguous run of 512 (2 MiB) or
/// 512 × 512 (1 GiB) frames, as the page size `S` says.
///
/// The library checks only arithmetic (alignment of the first frame to the
/// page size, width); it never asks how the frames were allocated (no page
/// object, folio or "one allocation"). Unique, not `Clone`: while a TD owns
/// the frames the token is held by the TD, and it comes back to the caller
/// when the frames are host memory again (after unmapping or teardown,
/// with the cache maintenance the ABI requires).
///
/// # Examples
///
/// ```
/// # use tdx_api::{CpuId, TdxModule, td::{TdConfig, TdHost}};
/// # use tdx_sim::{MachineDesc, Simulator};
/// # const GIB: u64 = 1 << 30;
/// # let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2);
/// # let sim = Simulator::new(desc.clone()).unwrap();
/// # let module = TdxModule::init(&sim, &sim).unwrap().configure(&desc.plan_input()).unwrap();
/// # let host = TdHost::new(module.init_extensions().unwrap()).unwrap();
/// # let mut td = host.build_td(&TdConfig::builder().max_vcpus(1).build().to_params()).unwrap();
/// # td.create_vcpu(CpuId(0), tdx_api::InitialRcx(0), tdx_api::X2ApicId(0)).unwrap();
/// # let mut td = td.finalize().map_err(|f| f.error).unwrap();
/// use tdx_api::{FrameAllocator, FrameDeallocator, Placement, td::GuestFrame};
/// use tdx_types::{Gpa, Pfn, Size2M};
///
/// // Any frames the VMM owns will do; here 2 MiB from the host allocator.
/// let run = sim.alloc_pages(512, 512, Placement::Anywhere).unwrap();
/// // SAFETY: the run was allocated above for this TD; the host neither
/// // touches nor frees it until the TD gives the token back.
/// let frame = unsafe { GuestFrame::<Size2M>::new(run.first()) }.unwrap();
/// // The only check is arithmetic: a 2M frame starts on a multiple of 512.
/// let odd = Pfn::new(run.first().as_u64() + 1);
/// // SAFETY: refused, so never handed to a TD.
/// assert!(unsafe { GuestFrame::<Size2M>::new(odd) }.is_err());
///
/// td.map(Gpa::new(0x20_0000), frame).map_err(|f| f.error).unwrap();
/// // Unmapping hands the token back: the frames are host memory again.
/// let back = td.unmap::<Size2M>(Gpa::new(0x20_0000), &|| {}).unwrap();
/// assert_eq!(back.run(), run);
/// // SAFETY: the TD gave the frames back, flushed; nothing else holds them.
/// unsafe { sim.free_pages(back.run()) };
/// ```
#[must_use = "the token is the caller's record of frames given to a TD"]
#[derive(PartialEq, Eq, Hash)]
pub struct GuestFrame<S: PageSize = Size4K> {
    range: PfnRange<S>,
}

impl<S: PageSize> GuestFrame<S> {
    /// A token for the `S`-sized run starting at `first`.
    ///
    /// Fails if `first` is not aligned to `S` (arithmetic only).
    ///
    /// # Safety
    ///
    /// From the moment the token is passed to a TD mapping call until the
    /// TD gives it back (an unmap, or a teardown report), the host:
    ///
    /// 1. does not read or write any of the frames through any mapping
    ///    (a host write with a non-TD KeyID corrupts the TD's memory and, on
    ///    platforms with the partial-write erratum, poisons the line);
    /// 2. does not free the frames to its allocator nor give them to
    ///    anyone else (another TD, a device);
    ///
    /// and the frames are ordinary RAM (convertible memory the module
    /// covers with its TDMRs), owned by the caller.
    pub unsafe fn new(first: Pfn) -> Result<Self, AddrError> {
        Ok(Self {
            range: PfnRange::try_new(first)?,
        })
    }

    /// The frames.
    pub fn range(&self) -> PfnRange<S> {
        self.range
    }

    /// The first frame.
    pub fn pfn(&self) -> Pfn {
        self.range.first()
    }

    /// The frames as a run.
    pub fn run(&self) -> PfnRun {
        self.range.into()
    }

    /// Gives up the token: the caller takes the frames back as plain
    /// numbers (they are host memory again when the TD returned the token).
    pub fn into_range(self) -> PfnRange<S> {
        self.range
    }

    /// Internal: a token for frames the TD is giving back (the promise was
    /// made when they were handed over).
    pub(crate) fn returned(range: PfnRange<S>) -> Self {
        Self { range }
    }
}

impl<S: PageSize> fmt::Debug for GuestFrame<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestFrame<{}>({:?})", S::NAME, self.range.first())
    }
}
