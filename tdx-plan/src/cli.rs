//! The command line of `tdx-plan`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use tdx_api::plan::{Limits, Strategy};
use tdx_plan::input::InputFormat;

/// Plans TDX memory — the TDMRs that cover a machine's RAM, their reserved
/// areas and PAMTs — for a memory map, and says what Linux's construction
/// does on the same map and whether the (simulated) TDX module accepts each
/// plan at TDH.SYS.CONFIG.
///
/// Exit status: 0 with a plan; 1 when there is no plan within the limits
/// (or, with --strategy linux, when Linux's plan breaks a TDH.SYS.CONFIG
/// rule); 2 when the input cannot be read.
#[derive(Debug, Parser)]
#[command(name = "tdx-plan", version, about, long_about)]
pub(crate) struct Cli {
    /// The memory map: /proc/iomem text (read as root), a boot log with
    /// BIOS-e820 lines (dmesg, journalctl -k), JSON in the shape of the
    /// shared memory maps, or a sysfs memmap listing; `-` reads stdin.
    /// Without FILE: the running machine, from /sys/firmware/memmap (no root
    /// needed) with the NUMA nodes of /sys/devices/system/node.
    pub(crate) file: Option<PathBuf>,
    /// The format of FILE (detected when absent).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) input_format: Option<InputFormat>,
    /// MAX_TDMRS of the module.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub(crate) max_tdmrs: usize,
    /// MAX_RESERVED_PER_TDMR of the module.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub(crate) max_reserved: usize,
    /// PAMT entry sizes in bytes for the 4K, 2M and 1G levels.
    #[arg(long, value_name = "A,B,C", default_value = "16,16,16", value_parser = parse_entry_sizes)]
    pub(crate) pamt_entry_size: EntrySizes,
    /// Convertible memory ranges, when the input has none (replaces the
    /// input's): JSON [[start, end], ...] or lines "START-END" in hex.
    /// Without CMRs, the usable ranges are assumed convertible, as Linux
    /// assumes.
    #[arg(long, value_name = "FILE")]
    pub(crate) cmrs: Option<PathBuf>,
    /// Dynamic PAMT: the 4K level becomes a bitmap of BITS bits per 4 KiB
    /// page (PAMT_PAGE_BITMAP_ENTRY_BITS; 1 when BITS is not given). Write
    /// `--dynamic-pamt=BITS`.
    #[arg(
        long,
        value_name = "BITS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "1",
        value_parser = clap::value_parser!(u8).range(1..)
    )]
    pub(crate) dynamic_pamt: Option<u8>,
    /// The plan to describe: the best-effort planner's, or Linux's
    /// construction's. The other is summarized beside it.
    #[arg(long, value_enum, default_value_t = StrategyArg::Best)]
    pub(crate) strategy: StrategyArg,
    /// The output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Also draw the plan over physical memory as an SVG picture in FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) svg: Option<PathBuf>,
}

impl Cli {
    /// The module's limits the options describe.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_tdmrs: self.max_tdmrs,
            max_reserved_per_tdmr: self.max_reserved,
            pamt_entry_size: self.pamt_entry_size.0,
            dpamt_bitmap_bits: self.dynamic_pamt,
        }
    }
}

/// `--strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StrategyArg {
    /// A plan whenever one exists; fewest reserved areas, least PAMT.
    Best,
    /// Linux's construction, exactly (including its failures).
    Linux,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::Best => Self::Best,
            StrategyArg::Linux => Self::Linux,
        }
    }
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// A report for people.
    Text,
    /// One JSON document (see the README for its shape).
    Json,
}

/// `--pamt-entry-size A,B,C`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntrySizes(pub(crate) [u16; 3]);

fn parse_entry_sizes(s: &str) -> Result<EntrySizes, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [a, b, c] = parts.as_slice() else {
        return Err(format!(
            "expected three sizes A,B,C (4K, 2M, 1G levels), got {}",
            parts.len()
        ));
    };
    let one = |x: &str| -> Result<u16, String> {
        match x.parse::<u16>() {
            Ok(0) => Err("an entry size must be at least 1 byte".to_owned()),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("{x:?}: {e}")),
        }
    };
    Ok(EntrySizes([one(a)?, one(b)?, one(c)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_sizes_parse() {
        assert_eq!(parse_entry_sizes("16,16,16"), Ok(EntrySizes([16; 3])));
        assert_eq!(parse_entry_sizes(" 8, 16 ,32"), Ok(EntrySizes([8, 16, 32])));
        assert!(parse_entry_sizes("16,16").is_err());
        assert!(parse_entry_sizes("16,16,16,16").is_err());
        assert!(parse_entry_sizes("16,x,16").is_err());
        assert!(parse_entry_sizes("16,0,16").is_err());
        assert!(parse_entry_sizes("16,70000,16").is_err());
    }

    #[test]
    fn dynamic_pamt_takes_an_optional_value() {
        let cli = Cli::try_parse_from(["tdx-plan", "--dynamic-pamt", "map.json"]).unwrap();
        assert_eq!(cli.dynamic_pamt, Some(1));
        assert_eq!(cli.file, Some(PathBuf::from("map.json")));
        let cli = Cli::try_parse_from(["tdx-plan", "--dynamic-pamt=2"]).unwrap();
        assert_eq!(cli.dynamic_pamt, Some(2));
        let cli = Cli::try_parse_from(["tdx-plan"]).unwrap();
        assert_eq!(cli.dynamic_pamt, None);
        assert_eq!(cli.limits(), Limits::TDX_1_5);
        assert!(Cli::try_parse_from(["tdx-plan", "--dynamic-pamt=0"]).is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
