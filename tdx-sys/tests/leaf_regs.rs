//! The register layout of the raw leaves that nothing else in tdx-rs calls
//! (neither `tdx-api`, nor the simulator, nor another test): the metadata
//! reads' version 1, the DICE quoting and TDX Connect leaves, the legacy
//! TDH.SYS.INFO, the runtime-update and disable leaves. They exist for the
//! VMM or kernel that needs them (each one's doc says which ABI it follows),
//! and this file pins each to that ABI: leaf number and version in RAX,
//! inputs in the documented registers, the register shape, and the outputs
//! read back from the documented registers. The backend records what it is
//! given and answers with a fixed register block.

// UNSAFETY: the mock backend implements the `unsafe trait Seamcall`, and
// the raw leaves are `unsafe fn`s; the backend touches no memory.
#![allow(unsafe_code)]

use std::sync::Mutex;

use tdx_sys::{RegShape, Seamcall, SeamcallArgs, leaf};
use tdx_types::{
    Hpa, Pfn, TdxStatus, metadata::MdFieldId, metadata::TdxFeatures0, regs::HpaArrayT,
};

/// Records the last call and answers with `reply` in the registers the
/// shape returns.
struct Mock {
    seen: Mutex<Option<(u64, SeamcallArgs, RegShape)>>,
    reply: SeamcallArgs,
}

impl Mock {
    fn new() -> Self {
        Self {
            seen: Mutex::new(None),
            // Distinct values, so an output read from the wrong register shows.
            reply: SeamcallArgs {
                rcx: 0xc1,
                rdx: 0xd1,
                r8: 0x81,
                r9: 0x91,
                r10: 0xa1,
                r11: 0xb1,
                r12: 0x121,
                r13: 0x131,
                r14: 0x141,
                r15: 0x151,
                rbx: 0xbb1,
                rdi: 0xdd1,
                rsi: 0x551,
            },
        }
    }

    fn seen(&self) -> (u64, SeamcallArgs, RegShape) {
        self.seen.lock().unwrap().take().expect("a call")
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

fn pfn(pa: u64) -> Pfn {
    Hpa::new(pa).pfn()
}

/// RAX of leaf `n`, version `v` (version in bits 23:16).
fn rax(n: u64, v: u64) -> u64 {
    n | v << 16
}

/// The six `Ret`/`NoOutputs` input registers.
fn six(a: &SeamcallArgs) -> [u64; 6] {
    [a.rcx, a.rdx, a.r8, a.r9, a.r10, a.r11]
}

const FIELD: u64 = 0x9110_0003_0000_0010;

#[test]
fn metadata_reads_version_1() {
    let m = Mock::new();
    // SAFETY: the mock moves no memory.
    let c = unsafe { leaf::tdh_mng_rd_v1(&m, pfn(0x5000), MdFieldId::from_raw(FIELD)) };
    let (ax, a, shape) = m.seen();
    assert_eq!((ax, shape), (rax(11, 1), RegShape::Ret));
    assert_eq!(six(&a), [0x5000, FIELD, 0, 0, 0, 0]);
    assert_eq!(c.out.value, 0x81, "value in R8");
    assert_eq!(c.out.next, MdFieldId::from_raw(0xd1), "next ID in RDX");

    // SAFETY: as above.
    let c = unsafe { leaf::tdh_vp_rd_v1(&m, pfn(0x6000), MdFieldId::from_raw(FIELD)) };
    let (ax, a, shape) = m.seen();
    assert_eq!((ax, shape), (rax(26, 1), RegShape::Ret));
    assert_eq!(six(&a), [0x6000, FIELD, 0, 0, 0, 0]);
    assert_eq!((c.out.value, c.out.next.into_raw()), (0x81, 0xd1));
}

#[test]
fn quoting_leaves() {
    let m = Mock::new();
    // SAFETY: the mock moves no memory.
    let s = unsafe { leaf::tdh_quote_init(&m) };
    assert_eq!(s, TdxStatus::SUCCESS);
    let (ax, a, shape) = m.seen();
    assert_eq!((ax, shape), (100, RegShape::NoOutputs));
    assert_eq!(a, SeamcallArgs::ZERO);

    // SAFETY: as above.
    let c = unsafe {
        leaf::tdh_quote_get(
            &m,
            pfn(0x7000),
            leaf::QUOTE_ID_DEFAULT,
            Hpa::new(0x8000),
            64,
            Hpa::new(0x9000),
            0x3000,
        )
    };
    let (ax, a, shape) = m.seen();
    assert_eq!((ax, shape), (98, RegShape::Ret));
    assert_eq!(
        six(&a),
        [0x7000, 0xffff << 32, 0x8000, 64, 0x9000, 0x3000],
        "TDR, quote ID in RDX 47:32, input, length, buffer list, buffer bytes"
    );
    assert_eq!(c.out, 0xc1, "quote length in RCX");
}

#[test]
fn tdx_connect_leaves() {
    let m = Mock::new();
    // SAFETY: the mock moves no memory.
    let c = unsafe { leaf::tdh_iommu_setup(&m, 0xfed9_0000, pfn(0xa000)) };
    let (ax, a, shape) = m.seen();
    assert_eq!((ax, shape), (128, RegShape::Ret));
    assert_eq!(six(&a), [0xfed9_0000, 0xa000, 0, 0, 0, 0]);
    assert_eq!(c.out, 0xc1, "IOMMU ID in RCX");

    // SAFETY: as above.
    let s = unsafe { leaf::tdh_iommu_clear(&m, 3, pfn(0xa000)) };
    assert_eq!(s, TdxStatus::SUCCESS);
    let (ax, a, _) = m.seen();
    assert_eq!(ax, 129);
    assert_eq!(six(&a), [3, 0xa000, 0, 0, 0, 0]);

    let dev = HpaArrayT::encode(pfn(0xe000), pfn(0xf000), 3).unwrap();
    // SAFETY: as above.
    let c = unsafe {
        leaf::tdh_spdm_mng(
            &m,
            7,
            2,
            Some(pfn(0xb000)),
            pfn(0xc000),
            pfn(0xd000),
            Some(dev),
        )
    };
    let (ax, a, shape) = m.seen();
    assert_eq!((ax, shape), (144, RegShape::Ret));
    assert_eq!(
        six(&a),
        [7, 2, 0xb000, 0xc000, 0xd000, dev.into_bits()],
        "session, operation, parameter, response, request, device info"
    );
    assert_eq!(dev.into_bits(), 0xe000 | 2 << 55);
    assert_eq!(c.out, 0xc1, "response length in RCX");

    // No parameter page and no device info: -1 in R8 and R11.
    // SAFETY: as above.
    let _ = unsafe { leaf::tdh_spdm_mng(&m, 7, 2, None, pfn(0xc000), pfn(0xd000), None) };
    let (_, a, _) = m.seen();
    assert_eq!((a.r8, a.r11), (u64::MAX, u64::MAX));
}

#[test]
fn legacy_sys_info() {
    let m = Mock::new();
    // SAFETY: the mock moves no memory.
    let c = unsafe { leaf::tdh_sys_info(&m, Hpa::new(0x1_0400), 1024, Hpa::new(0x2_0200), 32) };
    let (ax, a, shape) = m.seen();
    assert_eq!((ax, shape), (32, RegShape::Ret));
    assert_eq!(six(&a), [0x1_0400, 1024, 0x2_0200, 32, 0, 0]);
    assert_eq!(
        (c.out.sysinfo_len, c.out.num_cmrs),
        (0xd1, 0x91),
        "bytes written in RDX, CMR entries in R9"
    );
}

#[test]
fn update_and_disable() {
    let m = Mock::new();
    // SAFETY: the mock moves no memory.
    let _ = unsafe { leaf::tdh_sys_update(&m) };
    let (ax, a, shape) = m.seen();
    assert_eq!(
        (ax, shape, a),
        (53, RegShape::NoOutputs, SeamcallArgs::ZERO)
    );

    let features = TdxFeatures0::from_bits(1 << 36);
    // SAFETY: as above.
    let _ = unsafe { leaf::tdh_sys_update_v1(&m, features) };
    let (ax, a, shape) = m.seen();
    assert_eq!((ax, shape), (rax(53, 1), RegShape::NoOutputs));
    assert_eq!(six(&a), [0, 0, 0, 1 << 36, 0, 0], "features in R9");

    // SAFETY: as above.
    let _ = unsafe { leaf::tdh_sys_disable(&m) };
    let (ax, a, shape) = m.seen();
    assert_eq!(
        (ax, shape, a),
        (69, RegShape::NoOutputs, SeamcallArgs::ZERO)
    );
}
