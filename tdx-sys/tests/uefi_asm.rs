//! The SEAMCALL blocks as the compiler emits them for a win64-ABI target.
//!
//! `x86_64-unknown-uefi` (like Windows) makes RSI and RDI callee-saved, and
//! TDH.VP.ENTER writes every GPR but RSP. A clobber list that is only right
//! for SysV (`clobber_abi("C")`) lets the compiler believe RSI survives the
//! block, so a function issuing SEAMCALL there would return to its caller
//! with RSI changed. No UEFI machine runs here, so this test builds
//! `tests/uefi_probe/probe.rs` (one `extern "efiapi"` function per register
//! shape) for that target, reads the assembly, and checks that each
//! function saves, before the SEAMCALL block, every callee-saved register
//! of the win64 ABI the block may change and the block does not restore
//! itself: RSI and RDI in every shape, and R12-R15 for TDH.VP.ENTER (the
//! block saves RBX and RBP itself, which this test checks too).
//!
//! The target is soft-float (no SSE), so the compiler uses no XMM register
//! and saves none; vector state is declared clobbered all the same.
//!
//! Needs the target's standard library: `rustup target add
//! x86_64-unknown-uefi` (`.ci/run` installs it).

#![cfg(all(target_arch = "x86_64", feature = "cpu"))]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "x86_64-unknown-uefi";

fn newest(dir: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with(prefix) && n.ends_with(".rlib")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no {prefix}*.rlib in {}", dir.display()))
        .path()
}

/// Builds the probe for UEFI and returns its assembly (AT&T syntax).
fn probe_asm() -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = Path::new(&cargo).with_file_name("rustc");
    let rustc = if rustc.is_file() {
        rustc
    } else {
        PathBuf::from("rustc")
    };
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .expect("run rustc");
    let libdir = String::from_utf8_lossy(&libdir.stdout).trim().to_owned();
    assert!(
        Path::new(&libdir).join("libcore.rlib").exists()
            || std::fs::read_dir(&libdir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
                })
                .unwrap_or(false),
        "the {TARGET} standard library is not installed: rustup target add {TARGET}"
    );

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uefi-asm");
    let st = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--lib",
            "-p",
            "tdx-sys",
            "--target",
            TARGET,
        ])
        .arg("--manifest-path")
        .arg(manifest.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &out)
        .status()
        .expect("run cargo");
    assert!(
        st.success(),
        "cargo build --target {TARGET} -p tdx-sys failed"
    );

    let deps = out.join(TARGET).join("release").join("deps");
    let host_deps = out.join("release").join("deps");
    let asm = out.join("uefi_probe.s");
    let st = Command::new(&rustc)
        .args(["--edition", "2024", "--crate-type", "rlib"])
        .args(["--crate-name", "uefi_probe", "--target", TARGET])
        .args(["-C", "opt-level=3", "-D", "warnings", "--emit", "asm", "-o"])
        .arg(&asm)
        .arg(manifest.join("tests/uefi_probe/probe.rs"))
        .arg("--extern")
        .arg(format!(
            "tdx_sys={}",
            newest(&deps, "libtdx_sys-").display()
        ))
        .arg("--extern")
        .arg(format!(
            "tdx_types={}",
            newest(&deps, "libtdx_types-").display()
        ))
        .arg("-L")
        .arg(format!("dependency={}", deps.display()))
        .arg("-L")
        .arg(format!("dependency={}", host_deps.display()))
        .status()
        .expect("run rustc");
    assert!(st.success(), "rustc --emit asm of the probe failed");
    std::fs::read_to_string(&asm).expect("read the assembly")
}

/// The instructions of function `name`, without directives and comments
/// other than the `#APP` / `#NO_APP` markers around inline assembly.
fn function<'a>(asm: &'a str, name: &str) -> Vec<&'a str> {
    let start = asm
        .lines()
        .position(|l| l.trim_end() == format!("{name}:"))
        .unwrap_or_else(|| panic!("{name} not in the assembly"));
    asm.lines()
        .skip(start + 1)
        .map(str::trim)
        .take_while(|l| !l.starts_with(".def") && !l.starts_with(".section"))
        .filter(|l| !l.is_empty() && (!l.starts_with('.') || l.starts_with(".byte")))
        .collect()
}

/// Whether `line` stores `reg` (as `%reg`) to the stack: a push, or a move
/// of the register to memory.
fn saves(line: &str, reg: &str) -> bool {
    let r = format!("%{reg}");
    line == format!("pushq\t{r}")
        || (line.starts_with("movq\t") && line.starts_with(&format!("movq\t{r}, ")) && {
            let dst = &line[format!("movq\t{r}, ").len()..];
            dst.contains('(')
        })
}

fn check(asm: &str, name: &str, must_save: &[&str]) {
    let body = function(asm, name);
    let app = body
        .iter()
        .position(|l| *l == "#APP")
        .unwrap_or_else(|| panic!("{name}: no inline assembly"));
    let block_end = body[app..]
        .iter()
        .position(|l| *l == "#NO_APP")
        .expect("#NO_APP")
        + app;
    let block = &body[app..block_end];
    assert!(
        block
            .windows(4)
            .any(|w| w == [".byte\t102", ".byte\t15", ".byte\t1", ".byte\t207"]),
        "{name}: no SEAMCALL (66 0F 01 CF) in the block"
    );
    // The block itself keeps RBP (and, where it writes it, RBX).
    assert_eq!(block[1], "pushq\t%rbp", "{name}: RBP saved first");
    for reg in must_save {
        assert!(
            body[..app].iter().any(|l| saves(l, reg)),
            "{name}: %{reg} is callee-saved on {TARGET} and the SEAMCALL may \
             change it, but the function does not save it before the block:\n{}",
            body.join("\n")
        );
    }
}

#[test]
fn win64_callee_saved_registers_survive_every_shape() {
    let asm = probe_asm();
    check(
        &asm,
        "tdx_probe_saved_ret",
        &["rsi", "rdi", "r12", "r13", "r14", "r15"],
    );
    check(&asm, "tdx_probe_no_outputs", &["rsi", "rdi"]);
    check(&asm, "tdx_probe_ret", &["rsi", "rdi"]);
    let body = function(&asm, "tdx_probe_saved_ret");
    assert!(body.contains(&"pushq\t%rbx") && body.contains(&"popq\t%rbx"));
}
