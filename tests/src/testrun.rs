//! Running a loaded classifier on a crafted frame through `BPF_PROG_TEST_RUN`.

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};

/// Runs the (loaded) classifier `program` of `ebpf` on `frame`; returns the verdict and the
/// frame as it left.
pub fn run_classifier(ebpf: &Ebpf, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let prog: &SchedClassifier = ebpf
        .program(program)
        .expect("program")
        .try_into()
        .expect("classifier");
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("test run");
    out.truncate(usize::try_from(result.data_size_out).expect("fits"));
    (result.return_value, out)
}
