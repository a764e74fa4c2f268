//! The Dynamic PAMT register ABI of the raw leaves (Intel TDX module
//! 1.5.16+: `tdh_phymem_pamt_add.c`, `tdh_phymem_pamt_remove.c`,
//! `tdh_mem_page_demote.c`, `tdh_mem_page_promote.c`,
//! `tdh_phymem_page_reclaim.c`), checked against a backend that records
//! what it is given and answers with fixed registers.

// UNSAFETY: the mock backend implements the `unsafe trait Seamcall`, and
// the raw leaves are `unsafe fn`s; the backend touches no memory.
#![allow(unsafe_code)]

use std::sync::Mutex;

use tdx_sys::{RegShape, Seamcall, SeamcallArgs, leaf};
use tdx_types::{
    Gpa, Hpa, Leaf, Pfn, TdxLevel, TdxStatus,
    regs::{HpaLevel, PAMT_REMOVAL_HINT, PageInfo},
};

/// Records the last call and answers with `reply` in the registers the
/// shape returns.
struct Mock {
    seen: Mutex<Option<(u64, SeamcallArgs, RegShape)>>,
    reply: SeamcallArgs,
}

impl Mock {
    fn new(reply: SeamcallArgs) -> Self {
        Self {
            seen: Mutex::new(None),
            reply,
        }
    }

    fn seen(&self) -> (u64, SeamcallArgs, RegShape) {
        self.seen.lock().unwrap().expect("a call")
    }
}

// SAFETY: the mock reads the inputs of `shape` and writes exactly the
// outputs of `shape`; it moves no memory.
unsafe impl Seamcall for Mock {
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        *self.seen.lock().unwrap() = Some((rax, *args, shape));
        let r = self.reply;
        match shape {
            RegShape::NoOutputs => {}
            RegShape::Ret => {
                (args.rcx, args.rdx, args.r8, args.r9, args.r10, args.r11) =
                    (r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11);
            }
            RegShape::SavedRet => *args = r,
        }
        TdxStatus::SUCCESS
    }
}

const RANGE: u64 = 0x1_4020_0000;
const P0: u64 = 0x1_7000_0000;
const P1: u64 = 0x1_7000_5000;

fn pfn(pa: u64) -> Pfn {
    Hpa::new(pa).pfn()
}

#[test]
fn pamt_add_passes_the_range_and_the_pair() {
    let m = Mock::new(SeamcallArgs::ZERO);
    let range = HpaLevel::try_new(Hpa::new(RANGE), TdxLevel::L2M).unwrap();
    // SAFETY: the mock moves no memory.
    let s = unsafe { leaf::tdh_phymem_pamt_add(&m, range, pfn(P0), pfn(P1)) };
    assert_eq!(s, TdxStatus::SUCCESS);
    let (rax, a, shape) = m.seen();
    assert_eq!(rax, Leaf::PHYMEM_PAMT_ADD.v0().rax());
    assert_eq!(rax, 58);
    assert_eq!((a.rcx, a.rdx, a.r8), (RANGE | 1, P0, P1));
    assert_eq!(shape, RegShape::NoOutputs);
}

#[test]
fn pamt_remove_returns_the_pair_in_rdx_r8() {
    let m = Mock::new(SeamcallArgs::regs6(0, P0, P1, 0, 0, 0));
    let range = HpaLevel::try_new(Hpa::new(RANGE), TdxLevel::L2M).unwrap();
    // SAFETY: the mock moves no memory.
    let c = unsafe { leaf::tdh_phymem_pamt_remove(&m, range) };
    assert_eq!(c.out, [P0, P1]);
    let (rax, a, shape) = m.seen();
    assert_eq!(rax, 59);
    assert_eq!(a.rcx, RANGE | 1);
    assert_eq!(shape, RegShape::Ret);
}

fn info(gpa: u64) -> PageInfo {
    PageInfo::try_new(Gpa::new(gpa), TdxLevel::L2M).unwrap()
}

#[test]
fn demote_with_a_pair_passes_r12_r13() {
    let m = Mock::new(SeamcallArgs::ZERO);
    // SAFETY: the mock moves no memory.
    let c = unsafe {
        leaf::tdh_mem_page_demote_pair(
            &m,
            info(0x20_0000),
            pfn(0x1000),
            pfn(0x5000),
            [pfn(P0), pfn(P1)],
        )
    };
    assert_eq!(c.status, TdxStatus::SUCCESS);
    let (rax, a, shape) = m.seen();
    assert_eq!(rax, Leaf::MEM_PAGE_DEMOTE.v0().rax());
    assert_eq!(shape, RegShape::SavedRet);
    assert_eq!((a.rcx, a.rdx, a.r8), (0x20_0001, 0x1000, 0x5000));
    assert_eq!((a.r9, a.r10, a.r11), (u64::MAX, u64::MAX, u64::MAX));
    assert_eq!((a.r12, a.r13), (P0, P1));
}

#[test]
fn promote_returns_the_pair_and_the_hint() {
    let reply = SeamcallArgs {
        rcx: 0x5000 | PAMT_REMOVAL_HINT,
        r12: P0,
        r13: P1,
        ..SeamcallArgs::ZERO
    };
    let m = Mock::new(reply);
    // SAFETY: the mock moves no memory.
    let c = unsafe { leaf::tdh_mem_page_promote_pair(&m, info(0x20_0000), pfn(0x1000)) };
    assert_eq!(c.out.pair, Some([pfn(P0), pfn(P1)]));
    assert_eq!(c.out.sept.removed(), Some(pfn(0x5000)));
    assert!(c.out.sept.pamt_removal_hint());
    let (_, a, shape) = m.seen();
    assert_eq!(shape, RegShape::SavedRet);
    assert_eq!((a.r12, a.r13), (0, 0));
    // No pair returned (R12 0): None.
    let m = Mock::new(SeamcallArgs {
        rcx: 0x5000,
        ..SeamcallArgs::ZERO
    });
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_mem_page_promote_pair(&m, info(0x20_0000), pfn(0x1000)) };
    assert_eq!(c.out.pair, None);
    assert!(!c.out.sept.pamt_removal_hint());
}

#[test]
fn page_remove_masks_the_hint() {
    let m = Mock::new(SeamcallArgs::regs6(
        0x7_0000 | PAMT_REMOVAL_HINT,
        0,
        0,
        0,
        0,
        0,
    ));
    let i = PageInfo::try_new(Gpa::new(0x1000), TdxLevel::L4K).unwrap();
    // SAFETY: the mock moves no memory.
    let c = unsafe { leaf::tdh_mem_page_remove(&m, i, pfn(0x1000)) };
    assert_eq!(c.out.removed(), Some(pfn(0x7_0000)));
    assert!(c.out.pamt_removal_hint());
}

#[test]
fn reclaim_reads_the_hint_in_r9_and_rdmd_does_not() {
    let reply = SeamcallArgs::regs6(3, 0x1000, 0, PAMT_REMOVAL_HINT, 0, 0);
    let m = Mock::new(reply);
    // SAFETY: the mock moves no memory.
    let c = unsafe { leaf::tdh_phymem_page_reclaim(&m, pfn(0x7_0000)) };
    assert!(c.out.pamt_removal_hint);
    // RDMD's R9 is the block epoch: never a hint.
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_phymem_page_rdmd(&m, pfn(0x7_0000)) };
    assert!(!c.out.pamt_removal_hint);
}
