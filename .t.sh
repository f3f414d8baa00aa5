#!/bin/bash
# helper: run test binaries of podnet-tests with the worktree's object
cd /work/wt-nat6
export PODNET_EBPF_OBJECT=/work/wt-nat6/target/bpf/bpfel-unknown-none/release/podnet-ebpf
export PODNET_TESTS_REQUIRE_ROOT=1
cargo build -q --workspace --bins 2>&1 | grep -v "^$" | head -30
for t in "$@"; do cargo test -q -p podnet-tests --test "$t" 2>&1 | tail -25; done
