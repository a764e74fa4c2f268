//! `tdx-plan`: plans TDX memory (TDMRs, reserved areas, PAMTs) for a
//! machine's physical memory map, compares the plan with Linux's
//! construction, and tries both on the simulated TDX module.
//!
//! Exit status: 0 with a plan; 1 when the chosen strategy has no plan (or,
//! for Linux's construction, a plan that breaks a TDH.SYS.CONFIG rule);
//! 2 when the input cannot be read (or an output file cannot be written).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Parser;
use tdx_plan::{
    analysis::Analysis,
    input::{self, InputError, MemoryMap},
    json, report, svg,
};

mod cli;

use cli::{Cli, Format};

/// Why the map could not be read: the message, and the reader's error when
/// there is one (for its line number).
struct Unreadable {
    message: String,
    error: Option<InputError>,
}

impl Unreadable {
    fn input(path: &Path, e: InputError) -> Self {
        Self {
            message: format!("{}: {e}", path.display()),
            error: Some(e),
        }
    }
}

fn read(path: &PathBuf) -> Result<String, Unreadable> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    };
    text.map_err(|e| Unreadable {
        message: format!("cannot read {}: {e}", path.display()),
        error: None,
    })
}

fn read_map(cli: &Cli) -> Result<MemoryMap, Unreadable> {
    let mut map = match &cli.file {
        None => input::read_running_machine().map_err(|e| Unreadable {
            message: e.to_string(),
            error: Some(e),
        })?,
        Some(path) => {
            let text = read(path)?;
            input::parse(&text, cli.input_format).map_err(|e| Unreadable::input(path, e))?
        }
    };
    if let Some(path) = &cli.cmrs {
        let text = read(path)?;
        let cmrs = input::parse_cmrs(&text).map_err(|e| Unreadable::input(path, e))?;
        let replaced = match &map.cmrs {
            Some(old) => format!(", replacing the input's {}", old.len()),
            None => String::new(),
        };
        map.source = format!("{}; CMRs from {}{replaced}", map.source, path.display());
        map.cmrs = Some(cmrs);
    }
    Ok(map)
}

/// The exit status for `a`: 1 when the chosen strategy has no plan or its
/// plan breaks a rule, else 0.
fn status(a: &Analysis) -> u8 {
    let o = a.chosen();
    match (&o.plan, &o.check) {
        (Ok(_), Some(Ok(()))) => 0,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let map = match read_map(&cli) {
        Ok(map) => map,
        Err(u) => {
            match cli.format {
                Format::Json => println!("{}", json::input_error(&u.message, u.error.as_ref())),
                Format::Text => eprintln!("tdx-plan: {}", u.message),
            }
            return ExitCode::from(2);
        }
    };
    let analysis = Analysis::new(map, cli.limits(), cli.strategy.into());
    let code = status(&analysis);
    let chosen = analysis.chosen();
    match cli.format {
        Format::Text => {
            print!("{}", report::text(&analysis));
            match (&chosen.plan, &chosen.check) {
                (Err(e), _) => eprintln!("tdx-plan: no plan: {e}"),
                (Ok(_), Some(Err(e))) => eprintln!("tdx-plan: {}", json::refusal(e)),
                _ => {}
            }
        }
        Format::Json => {
            let doc = match (&chosen.plan, &chosen.check) {
                (Err(e), _) => json::plan_error(e, chosen.strategy),
                (Ok(_), Some(Err(e))) => json::invalid_plan(e, chosen.strategy),
                _ => json::plan(&analysis).unwrap_or_default(),
            };
            println!("{doc}");
        }
    }
    if let Some(path) = &cli.svg
        && let Err(e) = std::fs::write(path, svg::render(&analysis))
    {
        eprintln!("tdx-plan: cannot write {}: {e}", path.display());
        return ExitCode::from(2);
    }
    ExitCode::from(code)
}
