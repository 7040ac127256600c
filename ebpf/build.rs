//! Compiles the BPF programs in bpf/ with Debian's clang (`-target bpf -O2 -g`,
//! BTF kept). A missing clang is a clear error naming the packages to install.
//! Also checks that every header of bpf/lib and bpf/include compiles on its
//! own (includes what it uses), and holds each program to its stack budget.

use std::path::PathBuf;
use std::process::Command;

/// (object name, source, extra clang flags).
const PROGRAMS: &[(&str, &str, &[&str])] = &[
    ("sock", "sock", &[]),
    // For kernels before 5.18 (no bpf_set_retval in cgroup hooks).
    ("sock_compat", "sock", &["-DPIER_NO_SET_RETVAL"]),
    ("tc_nodeport", "tc_nodeport", &[]),
];

/// The most stack one function of a program may use (bytes; the kernel's
/// limit is 512 for a program and its calls together). See the budget at the
/// top of bpf/tc_nodeport.c.
const STACK_BUDGET: u32 = 384;

fn clang() -> String {
    for candidate in [
        std::env::var("PIER_CLANG").unwrap_or_default(),
        "clang-19".into(),
        "clang".into(),
    ] {
        if !candidate.is_empty()
            && Command::new(&candidate)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        {
            return candidate;
        }
    }
    panic!("no clang found to build the BPF programs: install it with `apt-get install -y clang-19 libbpf-dev` (or set PIER_CLANG)");
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = clang();
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=PIER_CLANG");
    let arch_include = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    check_headers(&clang, &arch_include);
    for (program, source, flags) in PROGRAMS {
        let object = out.join(format!("{program}.o"));
        let output = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-Wframe-larger-than={STACK_BUDGET}"))
            .arg(format!("-I{arch_include}"))
            .args(["-Ibpf/include", "-Ibpf", "-c"])
            .args(*flags)
            .arg(format!("bpf/{source}.c"))
            .arg("-o")
            .arg(&object)
            .output()
            .expect("running clang");
        if !output.status.success() {
            panic!(
                "clang failed on bpf/{source}.c (is libbpf-dev installed? `apt-get install -y libbpf-dev`):\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Compiles each header alone (`#include` of it in an empty file): a header
/// that leans on what its includer defined first fails here, naming itself.
fn check_headers(clang: &str, arch_include: &str) {
    for dir in ["bpf/include", "bpf/lib"] {
        let mut headers: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "h"))
            .collect();
        headers.sort();
        for header in headers {
            let output = Command::new(clang)
                .args(["-target", "bpf", "-O2", "-Wall", "-Werror"])
                // A header may define helpers only its includers call.
                .arg("-Wno-unused-function")
                .arg(format!("-I{arch_include}"))
                .args([
                    "-Ibpf/include",
                    "-Ibpf",
                    "-fsyntax-only",
                    "-x",
                    "c",
                    "/dev/null",
                ])
                .arg("-include")
                .arg(&header)
                .output()
                .expect("running clang");
            if !output.status.success() {
                panic!(
                    "{} does not compile on its own (it must include what it uses):\n{}",
                    header.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
}
