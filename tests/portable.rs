//! The binary on CPUs it was not built on. Debian's `qemu-user` emulates older x86-64 CPUs
//! (and none with AVX-512): on an emulated Haswell (AVX2, no AVX-512) and on `qemu64` (no AVX
//! at all) `loraplex generate` must run, pick the tier that CPU has, and give the greedy ids
//! of a native run forced to that tier. Skipped, with a message, only where qemu-user is not
//! installed (`scripts/test.sh` installs it where it can).

use std::path::PathBuf;
use std::process::{Command, Output};

use loraplex_models::Tier;

use crate::util::smollm2_path;

fn qemu() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join("qemu-x86_64"))
        .find(|p| p.is_file())
}

/// `loraplex generate` on SmolLM2, natively or under `qemu-x86_64 -cpu CPU`.
fn generate(emulated: Option<(&PathBuf, &str)>, kernels: &str) -> Output {
    let bin = env!("CARGO_BIN_EXE_loraplex");
    let mut cmd = match emulated {
        Some((qemu, cpu)) => {
            let mut c = Command::new(qemu);
            c.args(["-cpu", cpu, bin]);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(["generate", smollm2_path().to_str().unwrap()])
        .args(["--prompt", "The capital of France is", "--max-tokens", "8"])
        .args(["--ignore-eos", "--json", "--cpu-kernels", kernels])
        .output()
        .unwrap()
}

fn ids(out: &Output, what: &str) -> Vec<u64> {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 8, "{what}");
    ids
}

#[test]
fn the_binary_runs_on_an_emulated_haswell_and_on_a_cpu_without_avx() {
    let Some(qemu) = qemu() else {
        eprintln!("skipped: qemu-x86_64 (Debian's qemu-user) is not installed");
        return;
    };
    let portable = ids(&generate(None, "portable"), "native, portable");
    let old = generate(Some((&qemu, "qemu64")), "auto");
    assert_eq!(
        ids(&old, "qemu64, auto"),
        portable,
        "qemu64 vs native portable"
    );
    // A tier the CPU lacks is refused with the tiers it has, not a SIGILL.
    let refused = generate(Some((&qemu, "qemu64")), "avx2");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("cannot run the avx2 kernels") && err.contains("portable"),
        "{err}"
    );
    if !Tier::Avx2.supported() {
        eprintln!("this CPU has no AVX2: the emulated Haswell has nothing native to match");
        return;
    }
    let avx2 = ids(&generate(None, "avx2"), "native, avx2");
    let haswell = generate(Some((&qemu, "Haswell")), "auto");
    assert_eq!(
        ids(&haswell, "Haswell, auto"),
        avx2,
        "Haswell vs native avx2"
    );
}
