//! Two vCPU threads running guests that write their pages over and over,
//! a host that maps pages lazily on EPT violations, and a zapper that
//! takes mapped pages away (BLOCK, TRACK, kick, REMOVE) meanwhile: nothing
//! deadlocks, every status is one the module gives for that race, and
//! every frame comes back.

mod td_support;

use std::{
    collections::HashMap,
    sync::{Mutex, mpsc},
};

use td_support::*;
use tdx_sim::{Guest, Simulator};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs};
use tdx_types::{Leaf, Pfn, TdxStatus, exit::subfunction};

const PAGES: u64 = 4;
const ROUNDS: u64 = 30;

fn enter(sim: &Simulator, lp: u32, tdvpr: Pfn) -> (TdxStatus, SeamcallArgs) {
    on(sim, lp, || {
        let mut a = SeamcallArgs {
            rcx: tdvpr.hpa().as_u64(),
            ..SeamcallArgs::default()
        };
        // SAFETY: the simulator's memory is simulated.
        #[allow(unsafe_code)]
        let s = unsafe { sim.seamcall(Leaf::VP_ENTER.v0().rax(), &mut a, RegShape::SavedRet) };
        (s, a)
    })
}

fn is_busy(s: TdxStatus) -> bool {
    s.raw() >> 32 == TdxStatus::OPERAND_BUSY.raw() >> 32
}

#[test]
fn guests_run_while_the_host_maps_and_zaps_their_pages() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let lps = [VCPU_LP, 2];
    let idx: Vec<usize> = lps.iter().map(|&lp| td.add_vcpu(&sim, lp)).collect();
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    let vcpus: Vec<Pfn> = idx.iter().map(|&i| td.vcpus[i].tdvpr).collect();
    // The guests' pages: vCPU i has PAGES pages at (i + 1) MiB. S-EPT
    // tables first, and a pool of host pages for the lazy mapping.
    for i in 0..2u64 {
        td.map_sept(&sim, (i + 1) << 20, 1);
    }
    let pool: Mutex<Vec<Pfn>> = Mutex::new((0..2 * PAGES + 4).map(|_| td.page(&sim)).collect());
    let mapped: Mutex<HashMap<u64, Pfn>> = Mutex::new(HashMap::new());
    for (i, &v) in vcpus.iter().enumerate() {
        let base = (i as u64 + 1) << 20;
        sim.set_guest(v, move |g: &mut Guest| {
            for round in 0..ROUNDS {
                for k in 0..PAGES {
                    let gpa = base + k * 4096;
                    // A pending page is a #VE: read VE_INFO (as a #VE
                    // handler does), accept, write again.
                    while g.write(gpa, &[round as u8]).is_err() {
                        assert!(g.veinfo_get().is_ok());
                        let _ = g.accept(gpa, 0);
                    }
                }
            }
            g.halt();
        });
    }
    let tdr = td.tdr;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        for (&v, &lp) in vcpus.iter().zip(&lps) {
            let (sim, pool, mapped, done_tx) = (&sim, &pool, &mapped, done_tx.clone());
            s.spawn(move || {
                loop {
                    let (st, a) = enter(sim, lp, v);
                    match st.raw() {
                        48 => {
                            // Map the page lazily. A BUSY AUG (the zapper
                            // holds the S-EPT tree) is retried here, as KVM
                            // retries a fault before entering again: every
                            // entry that faults again at the same guest RIP
                            // counts towards the zero-step threshold (6),
                            // past which a listed GPA that is only PENDING
                            // keeps the vCPU out for good (the module's
                            // rule; `td_entry_stepping_filter`).
                            let gpa = a.r8;
                            loop {
                                // Being zapped: wait until it is gone
                                // (entering again would only fault again at
                                // the same RIP).
                                let mut m = loop {
                                    let m = mapped.lock().unwrap();
                                    if !m.contains_key(&gpa) {
                                        break m;
                                    }
                                    drop(m);
                                    std::thread::yield_now();
                                };
                                let p = pool.lock().unwrap().pop().expect("a free page");
                                let c = on(sim, lp, || page_aug(sim, info(gpa, 0), tdr, p));
                                if c.status == TdxStatus::SUCCESS {
                                    m.insert(gpa, p);
                                    break;
                                }
                                pool.lock().unwrap().push(p);
                                if !is_busy(c.status) {
                                    assert_eq!(
                                        c.status.raw() >> 32,
                                        TdxStatus::EPT_ENTRY_STATE_INCORRECT.raw() >> 32,
                                        "AUG: {}",
                                        c.status
                                    );
                                    break;
                                }
                                drop(m);
                                std::thread::yield_now();
                            }
                        }
                        1 => {}
                        77 if a.r11 == subfunction::HLT => break,
                        _ => assert!(is_busy(st), "VP.ENTER: {st} {a:?}"),
                    }
                }
                drop(done_tx);
            });
        }
        drop(done_tx);
        // The zapper, on LP 3, until both guests halted.
        let (sim, pool, mapped) = (&sim, &pool, &mapped);
        s.spawn(move || {
            sim.set_lp(3);
            let retry = |f: &dyn Fn() -> TdxStatus, ok_also: &[TdxStatus]| loop {
                let st = f();
                if st == TdxStatus::SUCCESS || ok_also.contains(&st) {
                    return st;
                }
                assert!(
                    is_busy(st)
                        || st == TdxStatus::PREVIOUS_TLB_EPOCH_BUSY
                        || st.raw() >> 32 == TdxStatus::TLB_TRACKING_NOT_DONE.raw() >> 32,
                    "{st}"
                );
                for &v in &vcpus {
                    sim.kick(v);
                }
                std::thread::yield_now();
            };
            // Each page is zapped twice at most: a guest write faults at one
            // RIP at most three times, below the zero-step threshold (6),
            // past which a listed GPA that is only PENDING keeps the vCPU
            // out (the module's rule).
            let order: Vec<u64> = (0..2u64)
                .flat_map(|i| (0..PAGES).map(move |k| ((i + 1) << 20) + k * 4096))
                .collect();
            let mut zaps = 0;
            'zaps: for &gpa in order.iter().cycle().take(2 * order.len()) {
                let p = loop {
                    if done_rx.try_recv() == Err(mpsc::TryRecvError::Disconnected) {
                        break 'zaps;
                    }
                    if let Some(&p) = mapped.lock().unwrap().get(&gpa) {
                        break p;
                    }
                    std::thread::yield_now();
                };
                retry(&|| range_block(sim, info(gpa, 0), tdr).status, &[]);
                retry(&|| track(sim, tdr), &[]);
                retry(&|| page_remove(sim, info(gpa, 0), tdr).status, &[]);
                mapped.lock().unwrap().remove(&gpa);
                pool.lock().unwrap().push(p);
                zaps += 1;
            }
            eprintln!("zaps: {zaps}");
        });
    });
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}
