//! [`Failed`]: the one shape of a failed call that hands something back.
//!
//! Many calls consume what they work on (a type-state handle, a
//! [`GuestFrame`](crate::td::GuestFrame), the backend and platform). When
//! such a call fails, whatever it did not consume comes back to the caller
//! in [`Failed::returned`], next to the error. Every such call in this
//! crate uses this one type; the aliases ([`TdFailure`](crate::td::TdFailure),
//! [`Refused`](crate::module::Refused)) only fix the error type.
//!
//! `Failed` is an [`Error`](core::error::Error) whose source is the inner
//! error, so `?` converts it into `Box<dyn Error>` when what it returns is
//! `'static` (a TD on an `Arc<TdHost>`, a frame, an owned module); with a
//! borrowed host, take the error out first ([`Failed::into_error`], or
//! `.map_err(|f| f.error)`), which drops (and so tears down) what came
//! back.

use core::fmt;

/// A call failed; `returned` holds what it did not consume.
///
/// # Examples
///
/// A map the module refused hands the frame back:
///
/// ```
/// # use tdx_api::{CpuId, TdxModule, td::{TdConfig, TdHost}};
/// # use tdx_sim::{MachineDesc, Simulator};
/// # const GIB: u64 = 1 << 30;
/// # let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2);
/// # let sim = Simulator::new(desc.clone()).unwrap();
/// # let module = TdxModule::init(&sim, &sim).unwrap().configure(&desc.plan_input()).unwrap();
/// # let host = TdHost::new(module.init_extensions().unwrap()).unwrap();
/// # let mut td = host.build_td(&TdConfig::builder().max_vcpus(1).build().to_params()).unwrap();
/// # td.create_vcpu(CpuId(0), tdx_api::InitialRcx(0), tdx_api::X2ApicId(0)).unwrap();
/// # let mut td = td.finalize().map_err(|f| f.error).unwrap();
/// use tdx_api::{FrameAllocator, Placement, td::{GuestFrame, TdError}};
/// use tdx_types::{Gpa, Size4K};
///
/// let run = sim.alloc_pages(2, 1, Placement::Anywhere).unwrap();
/// let [a, b] = [run.first().as_u64(), run.first().as_u64() + 1].map(|f| {
///     // SAFETY: frames allocated above for this TD and left alone.
///     unsafe { GuestFrame::<Size4K>::new(tdx_types::Pfn::new(f)) }.unwrap()
/// });
/// td.map(Gpa::new(0x1000), a).map_err(|f| f.error).unwrap();
/// // The GPA is taken: refused before any SEAMCALL, and `b` comes back.
/// let failed = td.map(Gpa::new(0x1000), b).unwrap_err();
/// assert!(matches!(failed.error, TdError::Occupied { .. }));
/// let b = failed.returned;
/// # let _ = b.into_range();
/// ```
#[must_use = "a failed call hands back what it did not consume"]
pub struct Failed<T, E> {
    /// What went wrong.
    pub error: E,
    /// What the call did not consume, back with the caller.
    pub returned: T,
}

impl<T, E> Failed<T, E> {
    /// The error and what came back.
    pub fn new(error: E, returned: T) -> Self {
        Self { error, returned }
    }

    /// The error; what came back is dropped.
    pub fn into_error(self) -> E {
        self.error
    }

    /// The error and what came back, apart.
    pub fn into_parts(self) -> (E, T) {
        (self.error, self.returned)
    }

    /// The same failure with what came back changed by `f`.
    pub fn map_returned<U>(self, f: impl FnOnce(T) -> U) -> Failed<U, E> {
        Failed {
            error: self.error,
            returned: f(self.returned),
        }
    }

    /// The same failure with the error changed by `f`.
    pub fn map_error<F>(self, f: impl FnOnce(E) -> F) -> Failed<T, F> {
        Failed {
            error: f(self.error),
            returned: self.returned,
        }
    }
}

/// Shows the error only: what came back may be a handle without a useful
/// `Debug` (a TD, a module).
impl<T, E: fmt::Debug> fmt::Debug for Failed<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failed")
            .field("error", &self.error)
            .field("returned", &core::any::type_name::<T>())
            .finish()
    }
}

impl<T, E: fmt::Display> fmt::Display for Failed<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<T, E: core::error::Error + 'static> core::error::Error for Failed<T, E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(&self.error)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{boxed::Box, error::Error, format, string::ToString};

    use super::Failed;
    use crate::td::TdError;

    struct NoDebug;

    #[test]
    fn converts_into_box_dyn_error_with_the_inner_error_as_source() {
        fn fails() -> Result<(), Box<dyn Error>> {
            Err(Failed::new(TdError::NoHkid, NoDebug))?;
            Ok(())
        }
        let e = fails().unwrap_err();
        assert_eq!(e.to_string(), TdError::NoHkid.to_string());
        let source = e.source().unwrap().downcast_ref::<TdError>();
        assert_eq!(source, Some(&TdError::NoHkid));
    }

    #[test]
    fn debug_needs_no_debug_of_what_came_back() {
        let f = Failed::new(TdError::NoHkid, NoDebug);
        let s = format!("{f:?}");
        assert!(s.contains("NoHkid") && s.contains("NoDebug"), "{s}");
        let (e, _back) = f.map_error(|_| 7u8).into_parts();
        assert_eq!(e, 7);
    }
}
