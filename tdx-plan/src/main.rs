//! `tdx-plan`: plans TDX memory for a machine's physical memory map.
//!
//! Placeholder: reads a memory map and prints it normalized. With no FILE
//! it reads the running machine's `/sys/firmware/memmap`.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use tdx_plan::input::{self, InputFormat};

#[derive(Debug, Parser)]
#[command(
    name = "tdx-plan",
    version,
    about = "Plans TDX memory (TDMRs and PAMTs) for a memory map"
)]
struct Cli {
    /// The memory map (`-` reads stdin); without it, the running machine's
    /// /sys/firmware/memmap.
    file: Option<PathBuf>,
    /// The format of FILE (detected when absent).
    #[arg(long, value_enum)]
    input_format: Option<InputFormat>,
    /// Convertible memory ranges: JSON [[start, end], ...] or lines
    /// "start-end" in hex.
    #[arg(long)]
    cmrs: Option<PathBuf>,
    /// Print the map as JSON.
    #[arg(long)]
    json: bool,
}

fn read(path: &PathBuf) -> Result<String, String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn run(cli: &Cli) -> Result<input::MemoryMap, String> {
    let mut map = match &cli.file {
        None => input::read_running_machine().map_err(|e| e.to_string())?,
        Some(path) => {
            let text = read(path)?;
            input::parse(&text, cli.input_format).map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    if let Some(path) = &cli.cmrs {
        let text = read(path)?;
        map.cmrs = Some(input::parse_cmrs(&text).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    Ok(map)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(map) => {
            if cli.json {
                println!("{}", map.to_json());
            } else {
                print!("{map}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tdx-plan: {e}");
            ExitCode::from(2)
        }
    }
}
