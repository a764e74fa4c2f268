//! The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`): the time it
//! ran, not the time it waited for a core, so other load on the machine
//! does not inflate it the way it inflates wall time. Shared by the benches
//! and examples that report it (`mod cpu_time;`, or `#[path]` from
//! `examples/`).

// UNSAFETY: one `clock_gettime` call into a local `timespec`.
#![allow(unsafe_code)]

use std::time::Duration;

/// This thread's CPU time so far.
pub(crate) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID
    // exists on every Linux these programs run on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
