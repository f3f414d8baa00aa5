//! Running podnet's classifiers on crafted frames through `BPF_PROG_TEST_RUN`: loading them,
//! the namespace they run in, and one run.

use std::net::Ipv4Addr;

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use podnet_ebpf::abi::program_name;

use crate::{InNetns as _, Netns};

/// The embedded object with its classifiers loaded (verified), its maps private to it, and the
/// IPv6 programs in the program array the classifiers tail-call.
pub fn load_classifiers() -> Ebpf {
    let mut ebpf = EbpfLoader::new()
        .load(podnet::datapath::OBJECT)
        .expect("object loads");
    let tail_called = program_name::TAIL_CALLED.map(|(name, _)| name);
    for name in program_name::CLASSIFIERS.into_iter().chain(tail_called) {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("classifier");
        prog.load()
            .unwrap_or_else(|e| panic!("verifier rejects {name}: {e:?}"));
    }
    podnet::datapath::loader::fill_ipv6_progs(&mut ebpf).expect("fill IPV6_PROGS");
    ebpf
}

/// `aa:bb:...` for `ip`.
pub fn mac_str(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Runs `test` on a thread inside a new namespace (named after `prefix`) wired like a node's
/// uplink, where `bpf_fib_lookup` and the neighbour table answer as on a node: `up0` (MAC
/// `uplink_mac`) with `node_ip`/24, forwarding on, a permanent neighbour entry for each of
/// `neighbours`, then the shell commands `extra`. The namespace is deleted afterwards, also
/// when `test` panics (the panic propagates).
pub fn in_uplink_netns(
    prefix: &str,
    uplink_mac: [u8; 6],
    node_ip: Ipv4Addr,
    neighbours: &[(Ipv4Addr, [u8; 6])],
    extra: &str,
    test: impl FnOnce() + Send,
) {
    let ns = Netns::new(prefix);
    let mut script = format!(
        "sysctl -qw net.ipv4.ip_forward=1 \
         && ip link add up0 address {} type veth peer name up1 \
         && ip link set up0 up && ip link set up1 up \
         && ip addr add {node_ip}/24 dev up0",
        mac_str(uplink_mac)
    );
    for (ip, mac) in neighbours {
        script.push_str(&format!(
            " && ip neigh replace {ip} lladdr {} dev up0 nud permanent",
            mac_str(*mac)
        ));
    }
    if !extra.is_empty() {
        script.push_str(" && ");
        script.push_str(extra);
    }
    ns.ok(&script);
    let netns = podnet::sys::netns::Netns::open(&ns.path()).expect("open the test namespace");
    netns.run(test).expect("enter the test namespace");
}

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

/// The service maps of `ebpf` (taken out of it; its programs keep using them), through the
/// same accessor a node uses.
pub fn services_map(ebpf: &mut Ebpf) -> podnet::datapath::services_map::ServicesMap {
    use podnet_ebpf::abi::map_name;
    let selection = podnet::datapath::selection::Selection::from_maps(
        ebpf.map(map_name::AFFINITY).expect("map AFFINITY"),
        ebpf.map(map_name::AFFINITY6).expect("map AFFINITY6"),
        ebpf.map(map_name::MAGLEV).expect("map MAGLEV"),
    )
    .expect("selection maps");
    podnet::datapath::services_map::ServicesMap::from_maps(
        |name| Ok(ebpf.take_map(name).unwrap_or_else(|| panic!("map {name}"))),
        selection,
    )
    .expect("service maps")
}

/// A service on `frontend` with `backends` (address, port), all ready, and `flags`
/// (`abi::svc_flag`).
pub fn service_spec(
    frontend: podnet::datapath::services_map::Frontend,
    backends: &[(Ipv4Addr, u16)],
    flags: u16,
) -> podnet::datapath::services_map::Service {
    use podnet::datapath::services_map::{Backend, Service};
    use podnet_ebpf::abi::backend_flag;
    Service {
        frontend,
        backends: backends
            .iter()
            .map(|&(addr, port)| Backend {
                addr: addr.into(),
                port,
                flags: backend_flag::READY | backend_flag::SERVING,
            })
            .collect(),
        flags,
        local_count: 0,
        affinity_timeout: 0,
    }
}
