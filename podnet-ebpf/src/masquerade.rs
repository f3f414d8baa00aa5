//! Masquerade exclusions (ip-masq-agent's `nonMasqueradeCIDRs`): destinations outside the
//! cluster that pods reach with their own address, because the network there routes pod
//! addresses back (a peered VPC, an on-premises network over a VPN). The node setting
//! `non_masquerade_cidrs` fills the `NON_MASQUERADE` LPM trie; `from_pod` asks it before SNAT.

use aya_ebpf::btf_maps::lpm_trie::Key;

use crate::maps::NON_MASQUERADE;

/// Whether traffic to `daddr` keeps the pod's address (no SNAT).
#[inline(always)]
pub fn excluded(daddr: [u8; 4]) -> bool {
    NON_MASQUERADE.get(&Key::new(32, daddr)).is_some()
}
