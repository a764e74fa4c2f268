//! TDH.SYS.TDMR.INIT and the cache model: each call leaves exactly the
//! PAMT pages it wrote private-dirty under the global KeyID, and writes
//! them again (marks them again) when a flush or a host write took the
//! mark away from a page that later calls also write.

use tdx_api::CacheMaintenance;
use tdx_sys::{RegShape, SeamcallArgs};
use tdx_types::{Leaf, Pfn, TdxStatus};

use super::Simulator;
use crate::{MachineDesc, Profile, memory::CacheLines, testkit};

const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

/// One TDH.SYS.TDMR.INIT on LP 0: its status and the next address.
fn tdmr_init(sim: &Simulator, base: u64) -> (TdxStatus, u64) {
    let mut a = SeamcallArgs::regs6(base, 0, 0, 0, 0, 0);
    let s = sim
        .s
        .seamcall(0, Leaf::SYS_TDMR_INIT.v0().rax(), &mut a, RegShape::Ret);
    (s, a.rdx)
}

/// True if frame `pfn` may hold lines of the module's global KeyID.
fn private(sim: &Simulator, pfn: u64, hkid: u16) -> bool {
    sim.s.mem.private_lines(pfn, pfn + 1) == Some((pfn, hkid))
}

/// True if frame `pfn` holds no dirty lines at all.
fn clean(sim: &Simulator, pfn: u64) -> bool {
    sim.s.mem.private_lines(pfn, pfn + 1).is_none() && sim.s.mem.host_dirty(pfn, pfn + 1).is_none()
}

#[test]
fn each_call_marks_the_pamt_pages_it_wrote_and_marks_a_shared_page_again_after_a_flush_or_host_write()
 {
    // One 1 GiB TDMR: 256 calls of 4 MiB; each writes 1024 16-byte 4K
    // entries (4 pages of the 4K area) and 2 2M entries (32 bytes of the
    // 2M area's first page, which 128 calls share).
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 5 * GIB)])
            .with_cpus(1, 1)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap();
    let tdmrs = testkit::simple_layout(&[(4 * GIB, 5 * GIB)], 1);
    let opts = testkit::BringUpOptions {
        init_tdmrs: false,
        ..Default::default()
    };
    testkit::bring_up(&sim, &tdmrs, opts);
    let hkid = sim.s.sys.global_hkid().unwrap();
    let t = &tdmrs[0];
    let p4k = t.pamt_4k().0 / PAGE;
    let p2m = t.pamt_2m().0 / PAGE;
    let p1g = t.pamt_1g().0 / PAGE;
    // The WBINVD before KEY.CONFIG left every PAMT page clean.
    for p in [p4k, p4k + 1023, p2m, p2m + 1, p1g] {
        assert!(clean(&sim, p), "page {p:#x} dirty before TDMR.INIT");
    }

    assert_eq!(tdmr_init(&sim, t.base()), (TdxStatus::SUCCESS, t.base()));
    for p in p4k..p4k + 4 {
        assert!(private(&sim, p, hkid), "4K-level page {p:#x} not marked");
    }
    assert!(
        clean(&sim, p4k + 4),
        "a 4K-level page not yet written is marked"
    );
    assert!(private(&sim, p2m, hkid));
    assert!(clean(&sim, p2m + 1), "the 2M level's second page is marked");
    assert!(private(&sim, p1g, hkid));

    // A flush of the shared 2M-level page: the next call writes it again.
    sim.clflush_page(Pfn::new(p2m));
    assert!(clean(&sim, p2m));
    assert_eq!(tdmr_init(&sim, t.base()).0, TdxStatus::SUCCESS);
    assert!(private(&sim, p2m, hkid), "not marked again after a flush");
    for p in p4k..p4k + 8 {
        assert!(private(&sim, p, hkid), "4K-level page {p:#x} not marked");
    }
    assert!(clean(&sim, p4k + 8));

    // Host lines on it (the host API refuses writes to module pages, but
    // the cache model takes them, and they must not hide the module's
    // next write): the next call makes them private again.
    sim.s.mem.mark_cache(p2m, p2m + 1, CacheLines::HostDirty);
    assert!(sim.s.mem.host_dirty(p2m, p2m + 1).is_some());
    assert_eq!(tdmr_init(&sim, t.base()).0, TdxStatus::SUCCESS);
    assert!(
        private(&sim, p2m, hkid),
        "not marked again after host lines"
    );

    // A flush of a page the next call does not write stays clean.
    sim.clflush_page(Pfn::new(p4k));
    assert_eq!(tdmr_init(&sim, t.base()).0, TdxStatus::SUCCESS);
    assert!(
        clean(&sim, p4k),
        "a page written by an earlier call marked again"
    );

    // The rest of the TDMR: the 2M level's second page is written from
    // the call that covers the TDMR's second half (entry 256 of 512).
    let mut calls = 4;
    loop {
        let (s, next) = tdmr_init(&sim, t.base());
        calls += 1;
        assert_eq!(s, TdxStatus::SUCCESS);
        if calls == 128 {
            assert!(clean(&sim, p2m + 1), "marked before it is written");
        }
        if next >= t.base() + t.size() {
            break;
        }
    }
    assert_eq!(calls, 256);
    assert!(private(&sim, p2m + 1, hkid));
    for p in p4k + 1..p4k + 1024 {
        assert!(private(&sim, p, hkid), "4K-level page {p:#x} not marked");
    }
    assert_eq!(
        tdmr_init(&sim, t.base()).0,
        TdxStatus::TDMR_ALREADY_INITIALIZED
    );
}
