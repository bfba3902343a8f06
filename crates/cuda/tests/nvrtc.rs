//! Every kernel file compiles with NVRTC for Ampere (sm_80) and Hopper (sm_90), and
//! defines every kernel the crate loads. Runs without a GPU: only libnvrtc is needed.
//! CI sets LLAMA_GPU_REQUIRE_NVRTC=1 (and puts the PyPI wheel's libnvrtc on the library
//! path), so there a missing compiler fails instead of skipping.

use cuda::kernels::FILES;

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if let Err(e) = cuda::nvrtc_version() {
        assert!(
            std::env::var_os("LLAMA_GPU_REQUIRE_NVRTC").is_none(),
            "LLAMA_GPU_REQUIRE_NVRTC is set but NVRTC cannot be loaded: {e}"
        );
        eprintln!("skipped: {e}");
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for file in FILES {
            let ptx = cuda::compile_ptx(file.name, &file.source(), arch)
                .unwrap_or_else(|e| panic!("{e}"));
            for f in file.functions() {
                assert!(
                    ptx.contains(&format!(".entry {f}(")),
                    "{} for {arch} has no kernel {f}",
                    file.name
                );
            }
        }
    }
}

#[test]
fn a_compile_error_reports_the_file_and_the_log() {
    if cuda::nvrtc_version().is_err() {
        eprintln!("skipped: NVRTC not found");
        return;
    }
    let err = cuda::compile_ptx(
        "broken.cu",
        "__global__ void f() { undefined_name; }",
        "sm_80",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("broken.cu") && err.contains("undefined_name"),
        "{err}"
    );
}
