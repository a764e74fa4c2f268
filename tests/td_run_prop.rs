//! A deterministic property test of running TDs through the safe API
//! (`Vcpu::enter` on the simulator's guest programs): guest accesses, host
//! unmaps and private/shared conversions interleaved across the vCPUs of
//! one TD, with every frame accounted for at the end.
//!
//! Generated: the number of vCPUs (2 or 3); for each, a guest script over
//! its own window of `PRIV` private pages and `PAGES - PRIV` pages it only
//! uses shared: accept a page, write a byte, read it back, convert a range
//! of the private window to shared (MapGPA) or back to private (then
//! accepted again before use), ask CPUID; every script ends with HLT. And
//! a host schedule: which vCPU to enter next, on which CPU (so vCPUs move
//! between CPUs), and whether to remove one of the TD's mapped private
//! pages (any vCPU's, accepted or not, but not the one a vCPU faulted on
//! and has not run since) before that entry. After the schedule the host
//! enters the vCPUs in turn, without removals, until all halted.
//!
//! Deterministic: one host thread drives every vCPU in turn, and a guest
//! program runs only while the host is inside TDH.VP.ENTER for its vCPU, so
//! a run is a function of the generated input. (The removal's kick kicks
//! every vCPU in the guest, which between entries is none: it must find
//! no vCPU there.)
//!
//! The host maps private memory lazily on the EPT violations and ACCEPT
//! exits, its shared memory (the simulator's stand-in for the VMM's EPT) on
//! shared EPT violations, removes private pages on MapGPA to shared and
//! drops shared mappings on MapGPA to private, answers CPUID and HLT. Every
//! frame comes from one memslot, a frame per GPA.
//!
//! Checked: each guest keeps its own model of its pages and checks every
//! status and every byte it reads back (a page the host removed after the
//! guest accepted it is seen as a #VE on the next access, as on real
//! hardware: the guest accepts it again and forgets its contents); the
//! guests report to the host through a channel. Every vCPU halts within a
//! bound on the entries; then the TD is torn down (clean report), the
//! memslot is freed, and the simulator's accounting is the baseline after
//! bring-up, with no rule violation and its invariants holding.
//!
//! `PROPTEST_CASES` sets the number of cases (64 by default, 1 under
//! Miri); failures are not persisted to files.

// UNSAFETY: the host hands frames of its memslot to the TD
// (`GuestFrame::new`) and frees the memslot when the TD gave them all back.
#![allow(unsafe_code)]

mod td_host;

use std::{collections::BTreeSet, sync::mpsc};

use proptest::prelude::*;
use td_host::{host, sim};
use tdx::{
    Gpa, Pfn, Size4K,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, X2ApicId,
        td::{GuestFrame, TdConfig, Vcpu},
    },
    types::{
        TdxStatus,
        exit::{TdExit, VmcallRegs, VmcallRequest, VmcallStatus, subfunction},
    },
};
use tdx_sim::{Exception, Guest, SharedMapping};

/// The shared bit of a 4-level EPT TD's GPAs (GPAW 48: bit 47).
const SHARED: u64 = 1 << 47;
/// RDX, RBX, RSI, RDI, R8-R15: what Linux guests expose.
const EXPOSE: u64 = 0xFFCC;
/// Pages of each vCPU's window: the first `PRIV` private (convertible),
/// the others used shared only.
const PAGES: u8 = 12;
const PRIV: u8 = 8;
/// vCPU `i`'s window starts at GPA `(i + 1) * SPAN`.
const SPAN: u64 = 16 * 4096;
/// The bound on entries for one case (a case needs at most a few hundred).
const MAX_ENTRIES: usize = 2000;
/// CPUs of the simulated machine (2 sockets of 2).
const CPUS: u32 = 4;

/// One step of a guest script.
#[derive(Clone, Copy, Debug)]
enum GOp {
    Accept(u8),
    Write(u8, u8),
    Read(u8),
    /// Pages `[start, start + len)` of the private window to shared.
    ToShared(u8, u8),
    /// And back to private.
    ToPrivate(u8, u8),
    Cpuid,
}

/// One host step of the generated schedule (after it, the host enters
/// the vCPUs in turn without removals until all halted): remove a mapped
/// private page (the `n`th, modulo how
/// many there are) or not, then enter a vCPU (the first unhalted from
/// `vcpu` modulo the count) on `cpu`.
#[derive(Clone, Copy, Debug)]
struct Step {
    unmap: Option<usize>,
    vcpu: usize,
    cpu: u32,
}

/// The guest's model of one of its pages.
#[derive(Clone, Copy, Debug)]
enum Page {
    Private { accepted: bool, value: Option<u8> },
    Shared { value: Option<u8> },
}

fn window(i: usize) -> u64 {
    (i as u64 + 1) * SPAN
}

fn vmcall(g: &mut Guest, sub: u64, r12: u64, r13: u64) -> Result<VmcallRegs, String> {
    let regs = VmcallRegs {
        r11: sub,
        r12,
        r13,
        ..VmcallRegs::default()
    };
    g.vmcall(EXPOSE, regs)
        .map_err(|s| format!("TDG.VP.VMCALL refused: {s:?}"))
}

/// Accepts `gpa`, which must succeed.
fn accept(g: &mut Guest, gpa: u64) -> Result<(), String> {
    match g.accept(gpa, 0) {
        TdxStatus::SUCCESS => Ok(()),
        s => Err(format!("accept {gpa:#x}: {s:?}")),
    }
}

/// The #VE handler's first step: TDG.VP.VEINFO.GET, which frees VE_INFO
/// for the next #VE (a #VE while it is still valid would be a #DF).
fn handle_ve(g: &mut Guest, e: &Exception) -> Result<(), String> {
    match e {
        Exception::Ve(ve) => match g.veinfo_get() {
            Ok(got) if got == *ve => Ok(()),
            r => Err(format!("VEINFO.GET after {ve:?}: {r:?}")),
        },
        e => Err(format!("not a #VE: {e:?}")),
    }
}

/// vCPU `i`'s program: runs `script` against its model of its pages.
fn guest_script(g: &mut Guest, i: usize, script: &[GOp]) -> Result<(), String> {
    let base = window(i);
    let gpa = |p: u8| base + u64::from(p) * 4096;
    let mut pages: Vec<Page> = (0..PAGES)
        .map(|p| {
            if p < PRIV {
                Page::Private {
                    accepted: false,
                    value: None,
                }
            } else {
                Page::Shared { value: None }
            }
        })
        .collect();
    for (k, &op) in script.iter().enumerate() {
        let ctx = |e: String| format!("vCPU {i} op {k} {op:?}: {e}");
        match op {
            GOp::Accept(p) => {
                if let Page::Private { accepted, value } = pages[p as usize] {
                    let at = gpa(p);
                    match g.accept(at, 0) {
                        // Fresh, or removed by the host since: contents
                        // unknown.
                        TdxStatus::SUCCESS => {}
                        s if s == TdxStatus::PAGE_ALREADY_ACCEPTED && accepted => {
                            continue;
                        }
                        s => return Err(ctx(format!("accept: {s:?} (model {value:?})"))),
                    }
                    pages[p as usize] = Page::Private {
                        accepted: true,
                        value: None,
                    };
                }
            }
            GOp::Write(p, b) => match pages[p as usize] {
                Page::Private { accepted, .. } => {
                    let at = gpa(p);
                    if !accepted {
                        accept(g, at).map_err(ctx)?;
                    }
                    if let Err(ve) = g.write(at, &[b]) {
                        handle_ve(g, &ve).map_err(ctx)?;
                        // Removed by the host since the accept: a #VE for
                        // a PENDING page after it was mapped again.
                        if !accepted {
                            return Err(ctx(format!("#VE right after accept: {ve:?}")));
                        }
                        accept(g, at).map_err(ctx)?;
                        g.write(at, &[b])
                            .map_err(|ve| ctx(format!("#VE after accept: {ve:?}")))?;
                    }
                    pages[p as usize] = Page::Private {
                        accepted: true,
                        value: Some(b),
                    };
                }
                Page::Shared { .. } => {
                    g.write(gpa(p) | SHARED, &[b])
                        .map_err(|ve| ctx(format!("shared write: {ve:?}")))?;
                    pages[p as usize] = Page::Shared { value: Some(b) };
                }
            },
            GOp::Read(p) => match pages[p as usize] {
                Page::Private {
                    accepted: false, ..
                } => {
                    // Not accepted: a #VE (the page is PENDING once the
                    // host mapped it on the EPT violation).
                    match g.read(gpa(p), 1) {
                        Ok(v) => return Err(ctx(format!("read an unaccepted page: {v:?}"))),
                        Err(e) => handle_ve(g, &e).map_err(ctx)?,
                    }
                }
                Page::Private {
                    accepted: true,
                    value,
                } => {
                    let at = gpa(p);
                    match g.read(at, 1) {
                        Ok(v) => {
                            if let Some(x) = value
                                && v != [x]
                            {
                                return Err(ctx(format!("read {v:?}, wrote {x}")));
                            }
                        }
                        Err(e) => {
                            handle_ve(g, &e).map_err(ctx)?;
                            accept(g, at).map_err(ctx)?;
                            g.read(at, 1)
                                .map_err(|ve| ctx(format!("#VE after accept: {ve:?}")))?;
                            pages[p as usize] = Page::Private {
                                accepted: true,
                                value: None,
                            };
                        }
                    }
                }
                Page::Shared { value } => {
                    let v = g
                        .read(gpa(p) | SHARED, 1)
                        .map_err(|ve| ctx(format!("shared read: {ve:?}")))?;
                    if let Some(x) = value
                        && v != [x]
                    {
                        return Err(ctx(format!("shared read {v:?}, wrote {x}")));
                    }
                }
            },
            GOp::ToShared(s, len) => {
                let r = vmcall(
                    g,
                    subfunction::MAP_GPA,
                    gpa(s) | SHARED,
                    u64::from(len) * 4096,
                )
                .map_err(ctx)?;
                if r.r10 != VmcallStatus::SUCCESS.0 {
                    return Err(ctx(format!("MapGPA status {:#x}", r.r10)));
                }
                for p in s..s + len {
                    pages[p as usize] = Page::Shared { value: None };
                }
            }
            GOp::ToPrivate(s, len) => {
                let r =
                    vmcall(g, subfunction::MAP_GPA, gpa(s), u64::from(len) * 4096).map_err(ctx)?;
                if r.r10 != VmcallStatus::SUCCESS.0 {
                    return Err(ctx(format!("MapGPA status {:#x}", r.r10)));
                }
                for p in s..s + len {
                    if let Page::Shared { .. } = pages[p as usize] {
                        pages[p as usize] = Page::Private {
                            accepted: false,
                            value: None,
                        };
                    }
                }
            }
            GOp::Cpuid => {
                let r = vmcall(g, subfunction::CPUID, 0x4000_0000, 0).map_err(ctx)?;
                if (r.r10, r.r12, r.r13) != (0, 0x4000_0001, i as u64) {
                    return Err(ctx(format!("CPUID answer {r:?}")));
                }
            }
        }
    }
    Ok(())
}

fn run(scripts: &[Vec<GOp>], schedule: &[Step]) {
    let n = scripts.len();
    let sim = sim();
    let host = host(&sim);
    let base = sim.accounting();
    let params = TdConfig::builder().max_vcpus(n as u16).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    let ids: Vec<_> = (0..n)
        .map(|i| {
            td.create_vcpu(CpuId(i as u32), InitialRcx(0), X2ApicId(i as u32))
                .unwrap()
        })
        .collect();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    // The memslot: a frame for every GPA below the last window's end.
    let memory = sim
        .alloc_pages(window(n) / 4096, 1, Placement::Anywhere)
        .unwrap();
    let frame_of = |gpa: u64| Pfn::new(memory.first().as_u64() + (gpa & !SHARED) / 4096);
    let tdvprs: Vec<Pfn> = ids.iter().map(|v| v.tdvpr).collect();
    let (tx, results) = mpsc::channel();
    for (i, id) in ids.iter().enumerate() {
        let (script, tx) = (scripts[i].clone(), tx.clone());
        sim.set_guest(id.tdvpr, move |g: &mut Guest| {
            let r = guest_script(g, i, &script);
            let _ = tx.send((i, r));
            g.halt();
        });
    }
    drop(tx);
    // The kick of every removal: every vCPU in the guest leaves it. With
    // one host thread, none is.
    let kick = || {
        for &t in &tdvprs {
            assert!(!sim.kick(t), "a vCPU in the guest between entries");
        }
    };
    let mut vcpus: Vec<Vcpu<_>> = ids.iter().map(|id| td.vcpu(*id).unwrap()).collect();
    let mut done = vec![false; n];
    // Private GPAs the host has mapped.
    let mut mapped = BTreeSet::new();
    // The private page each vCPU faulted on at its last exit, mapped since
    // and not yet used: the host does not remove it before the vCPU ran
    // again. Removing it at every turn makes the vCPU fault at the same
    // RIP again and again; past 6 such faults the module's zero-step
    // filter lists the GPA and checks it at every entry, and a page the
    // host mapped but the guest has not accepted (PENDING) still counts as
    // faulting there: `is_epf_expected` (`src/td_transitions/
    // td_exit_stepping.c`) excuses only convertible violations, and S-EPT
    // entries always suppress #VE (`src/common/memory_handlers/
    // sept_manager.c`). The entry then fails with an emulated EPT
    // violation at a page the host has mapped, and the guest never runs
    // to accept it: the module's behaviour, which the simulator
    // reproduces, so a host must not keep pulling the page a vCPU waits
    // for (the assert on faults at mapped pages below would catch it).
    let mut waiting: Vec<Option<u64>> = vec![None; n];
    let mut entries = 0;
    let mut k = 0;
    while done.iter().any(|d| !d) {
        assert!(
            entries < MAX_ENTRIES,
            "vCPUs not halted after {MAX_ENTRIES} entries: {done:?}"
        );
        // The generated schedule, then (so that removals cannot starve a
        // guest forever) round robin over the CPUs without removals.
        let step = schedule.get(k).copied().unwrap_or(Step {
            unmap: None,
            vcpu: k,
            cpu: k as u32 % CPUS,
        });
        k += 1;
        // A mapped page no vCPU is waiting for (see `waiting`).
        let removable: Vec<u64> = mapped
            .iter()
            .copied()
            .filter(|g| !waiting.contains(&Some(*g)))
            .collect();
        if let Some(u) = step.unmap.filter(|_| !removable.is_empty()) {
            let gpa = removable[u % removable.len()];
            let f = td.unmap::<Size4K>(Gpa::new(gpa), &kick).unwrap();
            assert_eq!(f.pfn(), frame_of(gpa));
            let _ = f.into_range();
            mapped.remove(&gpa);
        }
        let i = (0..n)
            .map(|d| (step.vcpu + d) % n)
            .find(|&i| !done[i])
            .unwrap();
        let v = &mut vcpus[i];
        let cpu = CpuId(step.cpu);
        sim.set_lp(cpu.0);
        entries += 1;
        let exit = match v.enter(cpu) {
            Ok(exit) => exit,
            Err(e) => panic!("entering vCPU {i} on {cpu:?}: {e}"),
        };
        waiting[i] = None;
        match exit {
            TdExit::EptViolation { gpa, .. } if gpa & SHARED != 0 => {
                sim.map_shared(
                    td.tdr(),
                    gpa,
                    Some(SharedMapping::Memory(frame_of(gpa).hpa())),
                );
            }
            // A private access or an ACCEPT of a page the host has not
            // mapped.
            TdExit::EptViolation { gpa, .. } => {
                let gpa = gpa & !0xFFF;
                waiting[i] = Some(gpa);
                assert!(
                    mapped.insert(gpa),
                    "vCPU {i}: EPT violation at mapped {gpa:#x}: {exit:?}"
                );
                // SAFETY: the memslot's frame for this GPA, the host's
                // (never mapped, or given back by a removal); untouched by
                // the host while the TD holds it.
                let f = unsafe { GuestFrame::<Size4K>::new(frame_of(gpa)) }.unwrap();
                td.map(Gpa::new(gpa), f)
                    .map_err(|f| f.error)
                    .unwrap_or_else(|e| panic!("map {gpa:#x}: {e}"));
            }
            TdExit::Vmcall { .. } => match v.vmcall().unwrap().unwrap() {
                VmcallRequest::MapGpa { gpa, size } if gpa & SHARED != 0 => {
                    let start = gpa & !SHARED;
                    let r = td.unmap_range(Gpa::new(start), size, &kick);
                    assert!(r.is_complete(), "MapGPA {gpa:#x}+{size:#x}: {r:?}");
                    let gone: Vec<u64> = mapped.range(start..start + size).copied().collect();
                    assert_eq!(r.frames_returned(), gone.len() as u64, "{r:?}");
                    for g in gone {
                        mapped.remove(&g);
                    }
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                }
                VmcallRequest::MapGpa { gpa, size } => {
                    for page in (gpa..gpa + size).step_by(4096) {
                        sim.map_shared(td.tdr(), page | SHARED, None);
                    }
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                }
                VmcallRequest::Cpuid { leaf, .. } => {
                    assert_eq!(leaf, 0x4000_0000);
                    v.reply_cpuid([0x4000_0001, i as u32, 0, 0]).unwrap();
                }
                VmcallRequest::Hlt { .. } => {
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                    done[i] = true;
                }
                other => panic!("vCPU {i}: unexpected TDVMCALL {other:?}"),
            },
            other => panic!("vCPU {i}: unexpected exit {other:?}"),
        }
        assert_eq!(v.cpu(), Some(cpu));
    }
    eprintln!(
        "STAT n={n} entries={entries} mapped={} ops={}",
        mapped.len(),
        scripts.iter().map(Vec::len).sum::<usize>()
    );
    // Every guest ran its script to the end, its checks passed.
    let mut seen: Vec<(usize, Result<(), String>)> = results.try_iter().collect();
    seen.sort_by_key(|(i, _)| *i);
    assert_eq!(seen.len(), n, "{seen:?}");
    for (i, r) in seen {
        if let Err(e) = r {
            panic!("guest of vCPU {i}: {e}");
        }
    }
    drop(vcpus);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        report.guest_frames_returned(),
        mapped.len() as u64,
        "{report:?}"
    );
    // SAFETY: every frame of the memslot is the host's again: given back
    // by removals or by the teardown (flushed).
    unsafe { sim.free_pages(memory) };
    drop(host);
    assert_eq!(sim.accounting(), base);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.check_invariants().unwrap();
}

fn gop() -> impl Strategy<Value = GOp> {
    let range = || (0..PRIV).prop_flat_map(|s| (Just(s), 1..=PRIV - s));
    prop_oneof![
        3 => (0..PAGES).prop_map(GOp::Accept),
        4 => (0..PAGES, any::<u8>()).prop_map(|(p, b)| GOp::Write(p, b)),
        4 => (0..PAGES).prop_map(GOp::Read),
        1 => range().prop_map(|(s, l)| GOp::ToShared(s, l)),
        1 => range().prop_map(|(s, l)| GOp::ToPrivate(s, l)),
        1 => Just(GOp::Cpuid),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop::option::weighted(0.3, any::<usize>()),
        any::<usize>(),
        0..CPUS,
    )
        .prop_map(|(unmap, vcpu, cpu)| Step { unmap, vcpu, cpu })
}

/// Most guest operations per vCPU script and steps per schedule (fewer
/// under Miri).
const SCRIPT_OPS: usize = if cfg!(miri) { 6 } else { 24 };
const STEPS: usize = if cfg!(miri) { 15 } else { 60 };

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        // Under Miri, which interprets each case's bring-up: 1 case.
        .unwrap_or(if cfg!(miri) { 1 } else { 64 });
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    #[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
    fn vcpus_interleaved_with_host_removals_lose_no_frame(
        scripts in (2..=3usize).prop_flat_map(|n| {
            prop::collection::vec(prop::collection::vec(gop(), 0..=SCRIPT_OPS), n)
        }),
        schedule in prop::collection::vec(step(), 1..=STEPS),
    ) {
        run(&scripts, &schedule);
    }
}
