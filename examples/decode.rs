//! Decode what a TDX host log prints: SEAMCALL statuses, leaf numbers and
//! names, and metadata field IDs.
//!
//! ```text
//! cargo run --example decode -- 0xc0000a1000000103
//! cargo run --example decode -- --leaf 6 --leaf TDH.VP.INIT
//! cargo run --example decode -- --field 0x9100000100000008
//! ```

use std::process::ExitCode;

use tdx::{Leaf, LeafVersion, TdxStatus, types::metadata::MdFieldId};

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.replace('_', "");
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn status(raw: u64) {
    let s = TdxStatus::from_raw(raw);
    println!("status {raw:#018x}");
    println!("  {s}");
    println!(
        "  class {:#04x}, details L1 {:#04x}, low bits {:#010x}",
        s.class(),
        s.details_l1(),
        s.details_l2()
    );
    let mut flags = Vec::new();
    if s.is_error() {
        flags.push("error");
    }
    if s.is_non_recoverable() {
        flags.push("non-recoverable");
    }
    if s.is_fatal() {
        flags.push("fatal");
    }
    if s.host_recoverability_hint() {
        flags.push("host-recoverable hint");
    }
    if s.is_warning() {
        flags.push("warning (not an error)");
    }
    println!(
        "  flags: {}",
        if flags.is_empty() {
            "none".into()
        } else {
            flags.join(", ")
        }
    );
    match s.kind() {
        Some(k) => println!("  kind: {k:?}"),
        None => println!("  kind: not an error"),
    }
}

fn leaf(arg: &str) -> bool {
    let found = match parse_u64(arg) {
        Some(rax) => match LeafVersion::from_rax(rax) {
            Ok(lv) => Some(lv),
            Err(e) => {
                eprintln!("{e}");
                return false;
            }
        },
        None => Leaf::from_name(arg).map(Leaf::v0),
    };
    match found {
        Some(lv) => {
            println!("leaf {} (RAX {:#x}): {lv}", lv.leaf().0, lv.rax());
            true
        }
        None => {
            eprintln!("unknown leaf {arg:?}");
            false
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: decode [STATUS...] [--leaf N|NAME] [--field ID]");
        return ExitCode::FAILURE;
    }
    let mut ok = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--leaf" => ok &= it.next().is_some_and(|v| leaf(v)),
            "--field" => match it.next().and_then(|v| parse_u64(v)) {
                Some(id) => println!("field {:?}", MdFieldId::from_raw(id)),
                None => ok = false,
            },
            v => match parse_u64(v) {
                Some(raw) => status(raw),
                None => {
                    eprintln!("not a number: {v:?}");
                    ok = false;
                }
            },
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
