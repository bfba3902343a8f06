//! `doctor` reports the machine and a device choice that agrees with what it found.

use std::process::Command;

#[test]
fn doctor_json_describes_the_machine_and_explains_the_auto_choice() {
    let out = Command::new(env!("CARGO_BIN_EXE_llama-gpu"))
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["cpu"]["threads"].as_u64().unwrap() >= 1);
    assert!(!r["cpu"]["kernels"].as_str().unwrap().is_empty());
    let usable_gpu = r["cuda"]["nvrtc_library"].as_bool().unwrap()
        && r["cuda"]["gpus"]
            .as_array()
            .unwrap()
            .first()
            .is_some_and(|g| g["supported"].as_bool().unwrap());
    let auto = r["auto_device"].as_str().unwrap();
    assert_eq!(auto == "cuda:0", usable_gpu, "{r}");
    assert!(!r["auto_reason"].as_str().unwrap().is_empty());
}
