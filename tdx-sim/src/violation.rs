//! Rule breaks the simulator records instead of letting them pass: things a
//! real host could do that real hardware would punish later (corruption,
//! poison, a machine check), or that break page accounting.

use std::fmt;

use crate::memory::PageState;

/// One recorded rule break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The host read or wrote a page the TDX module owns.
    HostTouchedModulePage {
        /// Physical address of the access.
        pa: u64,
        /// Bytes.
        len: usize,
        /// A write (else a read).
        write: bool,
    },
    /// The host read or wrote memory that is not RAM.
    HostTouchedNonRam {
        /// Physical address of the access.
        pa: u64,
        /// Bytes.
        len: usize,
        /// A write (else a read).
        write: bool,
    },
    /// The host freed a page it had not allocated (or freed it twice), or a
    /// page the module owns.
    FreedPageNotAllocated {
        /// The frame.
        pfn: u64,
        /// Its state at the time.
        state: PageState,
    },
    /// A page was freed, or handed out by the allocator, while it may still
    /// hold dirty cache lines written under a private KeyID: a later
    /// write-back would corrupt the new owner's data.
    PrivateLinesReachedHost {
        /// The frame.
        pfn: u64,
        /// The KeyID of the lines.
        keyid: u16,
        /// "freed" or "allocated".
        how: &'static str,
    },
    /// TDH.SYS.KEY.CONFIG ran while a PAMT page may still hold host dirty
    /// lines (KeyID 0): their write-back would corrupt PAMT entries the module
    /// writes under the global KeyID. The host must WBINVD on every CPU first.
    KeyConfigWithDirtyPamt {
        /// A PAMT frame that may be dirty.
        pfn: u64,
    },
    /// The module was told to read memory that is not RAM.
    ModuleReadNonRam {
        /// Physical address.
        pa: u64,
        /// The leaf.
        leaf: &'static str,
    },
    /// A SEAMCALL after the host took the module's PAMT memory back: the
    /// module must be reloaded first.
    ModuleUsedAfterAbandon {
        /// The leaf number.
        leaf: u16,
    },
    /// The module hit one of its fatal errors (`tdx_sanity_check`,
    /// "Module shutdown initiated"): a host did something the module does
    /// not survive, e.g. TDH.PHYMEM.PAMT.REMOVE while a removal in the
    /// range was still running. The module is shut down afterwards.
    ModuleFatalError {
        /// The leaf number.
        leaf: u16,
        /// What the module found.
        what: String,
    },
    /// TDH.PHYMEM.PAMT.REMOVE of a 2 MiB range while another leaf was
    /// taking a page of that range back (its 4K entry locked by a removal
    /// in flight): the module has no lock that excludes it, and depending
    /// on timing it fails, shuts down, or returns the pair while the other
    /// leaf still writes a lock word inside it (Intel TDX module 1.5.16+,
    /// `tdh_phymem_pamt_remove.c`, `tdh_mem_page_remove.c`). A host must
    /// issue PAMT.REMOVE only after every removal SEAMCALL of the range
    /// returned.
    PamtRemoveRacedRemoval {
        /// The 2 MiB range.
        range: u64,
        /// The page being removed.
        pfn: u64,
    },
    /// A frame came back to the VMM as a dropped TD's guest frame
    /// (`FrameDeallocator::return_guest_frames`) while it was not host
    /// memory.
    ReturnedGuestFrameNotHost {
        /// The frame.
        pfn: u64,
        /// Its state at the time.
        state: PageState,
    },
    /// The host leaked a page it did not own.
    LeakedPageNotOwned {
        /// The frame.
        pfn: u64,
        /// Its state at the time.
        state: PageState,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HostTouchedModulePage { pa, len, write } => write!(
                f,
                "host {} {len} bytes at {pa:#x}, a page the TDX module owns",
                if *write { "wrote" } else { "read" }
            ),
            Self::HostTouchedNonRam { pa, len, write } => write!(
                f,
                "host {} {len} bytes at {pa:#x}, which is not RAM",
                if *write { "wrote" } else { "read" }
            ),
            Self::FreedPageNotAllocated { pfn, state } => {
                write!(
                    f,
                    "host freed frame {pfn:#x}, which was {state:?}, not host-allocated"
                )
            }
            Self::PrivateLinesReachedHost { pfn, keyid, how } => write!(
                f,
                "frame {pfn:#x} was {how} while it may hold dirty lines of private KeyID {keyid} \
                 (no WBINVD / TDH.PHYMEM.PAGE.WBINVD since the module wrote it)"
            ),
            Self::KeyConfigWithDirtyPamt { pfn } => write!(
                f,
                "TDH.SYS.KEY.CONFIG while PAMT frame {pfn:#x} may hold host dirty lines \
                 (WBINVD on every CPU must come first)"
            ),
            Self::ModuleReadNonRam { pa, leaf } => {
                write!(f, "{leaf} made the module read {pa:#x}, which is not RAM")
            }
            Self::ModuleUsedAfterAbandon { leaf } => write!(
                f,
                "{} after the host took the PAMT memory back (the module must be reloaded first)",
                tdx_types::Leaf(*leaf)
            ),
            Self::ModuleFatalError { leaf, what } => write!(
                f,
                "{}: module fatal error: {what} (module shut down)",
                tdx_types::Leaf(*leaf)
            ),
            Self::PamtRemoveRacedRemoval { range, pfn } => write!(
                f,
                "TDH.PHYMEM.PAMT.REMOVE of the 2 MiB range at {range:#x} while the removal of \
                 frame {pfn:#x} in it was still running"
            ),
            Self::ReturnedGuestFrameNotHost { pfn, state } => write!(
                f,
                "frame {pfn:#x} came back to the VMM as a guest frame while it was {state:?}"
            ),
            Self::LeakedPageNotOwned { pfn, state } => {
                write!(f, "host leaked frame {pfn:#x}, which was {state:?}")
            }
        }
    }
}
