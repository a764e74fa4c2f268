//! Leaf versions: what the module writes when a versioned leaf rejects a
//! version above its highest. The dispatcher of module 1.5.01
//! (`src/vmm_dispatcher/tdx_vmm_dispatcher.c`) lets any version of
//! TDH.MEM.SEPT.ADD, TDH.MEM.SEPT.REMOVE, TDH.MEM.PAGE.PROMOTE, TDH.MNG.RD
//! and TDH.VP.RD through; each leaf sets some output registers before it
//! checks the version (`src/vmm_dispatcher/api_calls/`), so the host sees
//! those, not its inputs.

mod td_support;

use td_support::*;
use tdx_types::{Leaf, TdxStatus};

const IN: [u64; 6] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66];

fn regs(a: &tdx_sys::SeamcallArgs) -> [u64; 6] {
    [a.rcx, a.rdx, a.r8, a.r9, a.r10, a.r11]
}

#[test]
fn sept_add_v2_clears_rcx_rdx_only() {
    let sim = host();
    let (s, a) = raw(&sim, Leaf::MEM_SEPT_ADD.v(2), IN);
    assert_eq!(s, TdxStatus::OPERAND_INVALID);
    assert_eq!(regs(&a), [0, 0, 0x33, 0x44, 0x55, 0x66]);
}

#[test]
fn sept_remove_and_promote_v2_clear_rcx_rdx_and_name_no_l2_pages() {
    let sim = host();
    for leaf in [Leaf::MEM_SEPT_REMOVE, Leaf::MEM_PAGE_PROMOTE] {
        let (s, a) = raw(&sim, leaf.v(2), IN);
        assert_eq!(s, TdxStatus::OPERAND_INVALID, "{leaf:?}");
        assert_eq!(
            regs(&a),
            [0, 0, 0x33, u64::MAX, u64::MAX, u64::MAX],
            "{leaf:?}"
        );
    }
}

#[test]
fn metadata_reads_v2_say_no_next_field_and_no_value() {
    let sim = host();
    for leaf in [Leaf::MNG_RD, Leaf::VP_RD] {
        let (s, a) = raw(&sim, leaf.v(2), IN);
        assert_eq!(s, TdxStatus::OPERAND_INVALID, "{leaf:?}");
        assert_eq!(regs(&a), [0x11, u64::MAX, 0, 0x44, 0x55, 0x66], "{leaf:?}");
    }
}

#[test]
fn unversioned_leaves_are_refused_by_the_dispatcher_with_nothing_written() {
    let sim = host();
    for leaf in [Leaf::MEM_PAGE_AUG, Leaf::MNG_WR, Leaf::MEM_RANGE_BLOCK] {
        let (s, a) = raw(&sim, leaf.v(1), IN);
        assert_eq!(s, TdxStatus::OPERAND_INVALID, "{leaf:?}");
        assert_eq!(regs(&a), IN, "{leaf:?}");
    }
}
