#![no_std]
//! podnet's kernel side: the map ABI shared with userspace ([`abi`]), and, when built for
//! `bpfel-unknown-none`, the TC programs (see `main.rs`).

#[cfg(test)]
extern crate std;

pub mod abi;
