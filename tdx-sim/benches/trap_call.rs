//! One SEAMCALL (TDH.SYS.RD of MAX_TDMRS) on a brought-up simulator: issued
//! through the real instruction and served from the SIGILL/SIGSEGV handler
//! (`tdx_sim::trap::TrapBackend`), against the same call made directly on
//! the simulator (`&Simulator` as the backend), side by side in one run.
//! The difference is the trap's cost: the fault, the kernel's signal
//! delivery, the handler's hand-off to its server thread and back, and the
//! return from the signal.
//!
//! Run: `cargo bench -p tdx-sim --bench trap_call` (Linux x86_64; elsewhere
//! the bench does nothing).

// UNSAFETY: the bench issues a raw leaf on the simulator, whose memory is
// simulated.
#![allow(unsafe_code)]

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod bench {
    use std::hint::black_box;

    use criterion::Criterion;
    use tdx_sim::{MachineDesc, Profile, Simulator, testkit, trap::TrapBackend};
    use tdx_sys::leaf;
    use tdx_types::metadata::field;

    const GIB: u64 = 1 << 30;

    pub(crate) fn trap_call(c: &mut Criterion) {
        let memory = vec![(4 * GIB, 8 * GIB)];
        let sim = Simulator::new(
            MachineDesc::new(memory.clone())
                .with_cpus(1, 2)
                .with_profile(Profile::tdx_1_5()),
        )
        .unwrap();
        testkit::bring_up(
            &sim,
            &testkit::simple_layout(&memory, 4),
            Default::default(),
        );
        let trap = TrapBackend::new(&sim).unwrap();
        let mut g = c.benchmark_group("tdh_sys_rd");
        g.bench_function("direct", |b| {
            b.iter(|| {
                // SAFETY: the simulator's memory is simulated; SYS.RD reads.
                let r = unsafe { leaf::tdh_sys_rd(&sim, field::MAX_TDMRS) };
                assert!(!r.status.is_error());
                black_box(r)
            })
        });
        g.bench_function("trapped", |b| {
            b.iter(|| {
                // SAFETY: as above; the trap backend serves the real
                // instruction with the same simulator.
                let r = unsafe { leaf::tdh_sys_rd(&trap, field::MAX_TDMRS) };
                assert!(!r.status.is_error());
                black_box(r)
            })
        });
        g.finish();
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
criterion::criterion_group!(benches, bench::trap_call);
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
criterion::criterion_main!(benches);

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {}
