//! Compiles the BPF programs in bpf/ with Debian's clang (`-target bpf -O2 -g`,
//! BTF kept). A missing clang is a clear error naming the packages to install.

use std::path::PathBuf;
use std::process::Command;

/// (object name, source, extra clang flags).
const PROGRAMS: &[(&str, &str, &[&str])] = &[
    ("sock", "sock", &[]),
    // For kernels before 5.18 (no bpf_set_retval in cgroup hooks).
    ("sock_compat", "sock", &["-DPIER_NO_SET_RETVAL"]),
    ("tc_nodeport", "tc_nodeport", &[]),
];

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
    for (program, source, flags) in PROGRAMS {
        let object = out.join(format!("{program}.o"));
        let output = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
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
