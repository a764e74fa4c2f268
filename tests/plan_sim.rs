//! Every plan the planner makes for the shared memory maps is accepted by
//! the simulated TDX module: TDH.SYS.CONFIG validates the TDMR_INFOs
//! (model §2, in order), KEY.CONFIG and TDMR.INIT complete, and the
//! simulator's invariants hold. Both strategies; Linux's plans are accepted
//! when its construction succeeds (the maps carry no CMRs, so the CMRs are
//! the usable ranges, as Linux assumes).

use std::path::PathBuf;

use tdx::api::plan::{self, MemRange, PlanInput, Strategy};
use tdx_sim::{MachineDesc, Simulator, SysState, testkit};

fn maps() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tdx-plan/testdata/memmaps");
    let dir = if dir.exists() {
        dir
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/memmaps")
    };
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("memory maps")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 15, "expected the 15 shared maps in {dir:?}");
    out
}

fn input_of(desc: &MachineDesc) -> PlanInput {
    let usable = desc
        .memory
        .iter()
        .flat_map(|&(s, e)| {
            // Split at NUMA boundaries.
            let mut cuts: Vec<(u64, u64, u32)> = Vec::new();
            let mut a = s;
            for &(ns, ne, node) in &desc.numa {
                let (cs, ce) = (a.max(ns), e.min(ne));
                if cs < ce {
                    if cs > a {
                        cuts.push((a, cs, 0));
                    }
                    cuts.push((cs, ce, node));
                    a = ce;
                }
            }
            if a < e {
                cuts.push((a, e, 0));
            }
            cuts
        })
        .map(|(start, end, node)| MemRange { start, end, node })
        .collect();
    PlanInput::new(usable)
}

#[test]
fn every_shared_map_plans_and_the_module_accepts_it() {
    for (name, json) in maps() {
        let desc = MachineDesc::from_memmap_json(&json)
            .unwrap()
            .with_cpus(2, 2);
        let input = input_of(&desc);
        for strategy in [Strategy::Best, Strategy::Linux] {
            let p = match plan::plan(&input, strategy) {
                Ok(p) => p,
                Err(e) => {
                    assert_eq!(strategy, Strategy::Linux, "{name}: best found no plan: {e}");
                    eprintln!("{name}: linux: {e}");
                    continue;
                }
            };
            plan::check(&p, &input).unwrap_or_else(|e| panic!("{name} {strategy:?}: {e}"));
            let sim = Simulator::new(desc.clone()).unwrap();
            testkit::bring_up(&sim, &p.tdmr_infos(), Default::default());
            assert_eq!(sim.module_state(), SysState::Ready, "{name}");
            sim.check_invariants()
                .unwrap_or_else(|e| panic!("{name} {strategy:?}: {e}"));
            eprintln!(
                "{name}: {strategy:?}: {} TDMRs, max {} areas, PAMT {} KiB",
                p.tdmrs.len(),
                p.max_reserved(),
                p.pamt_bytes() >> 10
            );
        }
    }
}
