//! Every plan the planner makes for the memory maps in
//! `tdx-plan/testdata/memmaps` is accepted by the simulated TDX module:
//! TDH.SYS.CONFIG validates the TDMR_INFOs (every check of the module's
//! `tdh_sys_config.c`, in order), KEY.CONFIG and TDMR.INIT complete, and the
//! simulator's invariants hold. Both strategies; Linux's plans are accepted
//! when its construction succeeds (the maps carry no CMRs, so the CMRs are
//! the usable ranges, as Linux assumes).

mod common;

use common::maps;
use tdx::api::plan::{self, Strategy};
use tdx_sim::{MachineDesc, Simulator, SysState, testkit};

#[test]
#[cfg_attr(miri, ignore = "reads memory maps from disk; Miri isolates files")]
fn every_shared_map_plans_and_the_module_accepts_it() {
    for (name, json) in maps() {
        let desc = MachineDesc::from_memmap_json(&json)
            .unwrap()
            .with_cpus(2, 2);
        let input = desc.plan_input();
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
