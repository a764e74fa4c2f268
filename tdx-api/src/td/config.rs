//! A typed builder for TD_PARAMS.

#[cfg(doc)]
use tdx_types::abi::{CPUID_CONFIG_1_5_01, IA32_ARCH_CAPABILITIES_CONFIG_MASK_1_5_01};
use tdx_types::abi::{CpuidValues, EptPageWalk, EptpControls, MAX_CPUID_CONFIGS, TdParams};
use typed_builder::TypedBuilder;

/// The configuration of a Trust Domain, built with named fields and
/// defaults, turned into the TD_PARAMS that TDH.MNG.INIT reads.
///
/// Only `max_vcpus` is required. The defaults make an ordinary TD: no
/// attributes (not a debug TD), XFAM x87 and SSE, 4-level EPT, a 2.5 GHz
/// virtual TSC, zero owner measurements, no CPUID values configured.
/// `CONFIG_FLAGS.NO_RBP_MOD` is always set: bring-up requires a module with
/// that feature.
///
/// [`Td::init`](super::Td::init) checks the result against the module's
/// `SysInfo` before any SEAMCALL ([`check_params`](super::check_params)).
///
/// ```
/// use tdx_api::td::TdConfig;
///
/// let params = TdConfig::builder()
///     .max_vcpus(4)
///     .tsc_frequency_mhz(2_000)
///     .build()
///     .to_params();
/// assert_eq!(params.max_vcpus(), 4);
/// assert_eq!(params.tsc_frequency(), 80);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, TypedBuilder)]
#[non_exhaustive]
pub struct TdConfig {
    /// Most vCPUs the TD may have (1 up to `SysInfo::vcpu_limit`).
    pub max_vcpus: u16,
    /// TD attributes (`ATTRIBUTES`, `TdParams::ATTRIBUTE_*`), checked
    /// against the module's fixed-0 and fixed-1 bits; a migratable TD can
    /// be neither a debug TD nor use PERFMON.
    #[builder(default = 0)]
    pub attributes: u64,
    /// Extended features the guest may use (`XFAM`); x87 and SSE by
    /// default. AVX-512 needs AVX and all three of its bits; CET's and
    /// AMX's two bits go together.
    #[builder(default = 0x3)]
    pub xfam: u64,
    /// The EPT page-walk length.
    #[builder(default = EptPageWalk::FourLevel)]
    pub ept: EptPageWalk,
    /// `CONFIG_FLAGS.MAX_GPAW`: the shared bit is GPA bit 51 (needs 5-level
    /// EPT) instead of 47.
    #[builder(default = false)]
    pub max_gpaw: bool,
    /// `CONFIG_FLAGS.FLEXIBLE_PENDING_VE`: the guest controls #VE on
    /// pending pages.
    #[builder(default = false)]
    pub flexible_pending_ve: bool,
    /// The virtual TSC frequency in MHz; a multiple of 25 from 100 to
    /// 10,000 (TD_PARAMS holds units of 25 MHz). Other values are rounded
    /// down to a multiple of 25 and then refused by the check if out of
    /// range.
    #[builder(default = 2_500)]
    pub tsc_frequency_mhz: u32,
    /// `MRCONFIGID`: software-defined, measured into the TD report.
    #[builder(default = [0; 48])]
    pub mr_config_id: [u8; 48],
    /// `MROWNER`.
    #[builder(default = [0; 48])]
    pub mr_owner: [u8; 48],
    /// `MROWNERCONFIG`.
    #[builder(default = [0; 48])]
    pub mr_owner_config: [u8; 48],
    /// CPUID values, one per configurable leaf in `SysInfo::cpuid_config`
    /// order (index into that list, values); unset entries stay zero.
    /// The module reads as many entries as it has configurable leaves (12
    /// on TDX module 1.5.01, [`CPUID_CONFIG_1_5_01`] lists them with the
    /// bits each may set; 18 on 1.5.05,
    /// [`CPUID_CONFIG_1_5_05`](tdx_types::abi::CPUID_CONFIG_1_5_05), whose
    /// entries 12-17 are the CPUID(0x1F) topology, all zero for the CPU's
    /// own); an entry past them is refused.
    #[builder(default)]
    pub cpuid: alloc::vec::Vec<(usize, CpuidValues)>,
    /// The TD's virtual IA32_ARCH_CAPABILITIES configuration: `Some` sets
    /// `msr_config_ctls` bit 0 and `ia32_arch_capabilities_config` (module
    /// 1.5.01 lets it hold SSB_NO, RRSBA, BHI_NO and PBRSB_NO,
    /// [`IA32_ARCH_CAPABILITIES_CONFIG_MASK_1_5_01`]). `None` leaves both 0:
    /// the TD sees the CPU's value with those bits cleared.
    #[builder(default, setter(strip_option))]
    pub ia32_arch_capabilities: Option<u64>,
}

impl TdConfig {
    /// The TD_PARAMS for this configuration.
    ///
    /// A CPUID index past the 48 entries of TD_PARAMS' CPUID area is dropped here and
    /// reported by [`TdConfig::check_cpuid`].
    pub fn to_params(&self) -> TdParams {
        let mut p = TdParams::new();
        p.set_attributes(self.attributes);
        p.set_xfam(self.xfam);
        p.set_max_vcpus(self.max_vcpus);
        p.set_eptp_controls(EptpControls::write_back(self.ept));
        let mut flags = TdParams::CONFIG_FLAG_NO_RBP_MOD;
        if self.max_gpaw {
            flags |= TdParams::CONFIG_FLAG_MAX_GPAW;
        }
        if self.flexible_pending_ve {
            flags |= TdParams::CONFIG_FLAG_FLEXIBLE_PENDING_VE;
        }
        p.set_config_flags(flags);
        p.set_tsc_frequency(u16::try_from(self.tsc_frequency_mhz / 25).unwrap_or(u16::MAX));
        p.set_mrconfigid(&self.mr_config_id);
        p.set_mrowner(&self.mr_owner);
        p.set_mrownerconfig(&self.mr_owner_config);
        for &(i, v) in &self.cpuid {
            // Out-of-range indexes are reported by `check_cpuid`.
            let _ = p.set_cpuid_value(i, v);
        }
        if let Some(v) = self.ia32_arch_capabilities {
            p.set_msr_config_ctls(TdParams::MSR_CONFIG_IA32_ARCH_CAPABILITIES);
            p.set_ia32_arch_capabilities_config(v);
        }
        p
    }

    /// The first CPUID index that has no place in TD_PARAMS' 768-byte CPUID
    /// area (48 entries), if any. An index inside the area but past the
    /// module's configurable leaves is refused by
    /// [`check_params`](super::check_params), which knows the module.
    pub fn check_cpuid(&self) -> Option<usize> {
        self.cpuid
            .iter()
            .map(|&(i, _)| i)
            .find(|&i| i >= MAX_CPUID_CONFIGS)
    }
}

impl From<&TdConfig> for TdParams {
    fn from(c: &TdConfig) -> Self {
        c.to_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_the_params_linux_would() {
        let p = TdConfig::builder().max_vcpus(2).build().to_params();
        assert_eq!(p.max_vcpus(), 2);
        assert_eq!(p.attributes(), 0);
        assert_eq!(p.xfam(), 3);
        assert_eq!(p.eptp_controls().raw(), 0x1e);
        assert_eq!(p.config_flags(), TdParams::CONFIG_FLAG_NO_RBP_MOD);
        assert_eq!(p.tsc_frequency(), 100);
        assert!(p.reserved_is_zero());
    }

    #[test]
    fn every_field_lands_where_the_abi_says() {
        let v = CpuidValues::new(0, 0x1234, 0, 0);
        let c = TdConfig::builder()
            .max_vcpus(8)
            .attributes(1 << 28)
            .xfam(0xe7)
            .ept(EptPageWalk::FiveLevel)
            .max_gpaw(true)
            .flexible_pending_ve(true)
            .tsc_frequency_mhz(3_010)
            .mr_config_id([1; 48])
            .mr_owner([2; 48])
            .mr_owner_config([3; 48])
            .cpuid(alloc::vec![(5, v), (48, v)])
            .build();
        let p = c.to_params();
        assert_eq!(p.attributes(), 1 << 28);
        assert_eq!(p.xfam(), 0xe7);
        assert_eq!(p.eptp_controls().raw(), 0x26);
        assert_eq!(p.config_flags(), 0b111);
        assert_eq!(p.tsc_frequency(), 120, "3010 MHz rounds down to 3000");
        assert_eq!(p.mrconfigid(), &[1; 48]);
        assert_eq!(p.mrowner(), &[2; 48]);
        assert_eq!(p.mrownerconfig(), &[3; 48]);
        assert_eq!(p.cpuid_value(5), Some(v));
        assert_eq!(p.cpuid_value(4), Some(CpuidValues::default()));
        assert_eq!(c.check_cpuid(), Some(48), "the CPUID area has 48 entries");
        assert_eq!(TdParams::from(&c), p);
        assert_eq!(p.msr_config_ctls(), 0);
        assert_eq!(p.ia32_arch_capabilities_config(), 0);
    }

    #[test]
    fn arch_capabilities_sets_the_enable_bit() {
        let p = TdConfig::builder()
            .max_vcpus(1)
            .ia32_arch_capabilities(1 << 20)
            .build()
            .to_params();
        assert_eq!(p.msr_config_ctls(), 1);
        assert_eq!(p.ia32_arch_capabilities_config(), 1 << 20);
        let p = TdConfig::builder()
            .max_vcpus(1)
            .ia32_arch_capabilities(0)
            .build()
            .to_params();
        assert_eq!(p.msr_config_ctls(), 1, "Some(0) still enables it");
    }
}
