//! The one error type of the operations layer. Every operation returns [`Error`]; its
//! [`Error::kind`] is what the front ends map, each in one place: the CLI to an exit status
//! (`cli::exit_status`), the CNI plugin to the spec's error code (`cni::code_of`).

use std::{net::Ipv4Addr, path::PathBuf};

use ipnetwork::Ipv4Network;
use podnet_ebpf::abi::MAX_BACKENDS;

use crate::{
    config::{ConfigError, PortRange},
    datapath::DatapathError,
    model::{names::NameError, nodeport::Proto},
    store::{file::StateError, ipam::IpamError},
    sys::{link::LinkError, netns::NetnsError, sockdiag::SockDiagError},
};

/// What kind of failure an [`Error`] is, for the front ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input (an argument, a file, a configuration) cannot be used; nothing was changed.
    InvalidInput,
    /// The node has not been initialised.
    NotInitialised,
    /// What the command names does not exist.
    NotFound,
    /// It exists already, or something else holds it.
    Conflict,
    /// A pool or table is full (addresses, service entries).
    Exhausted,
    /// A file, a system call or netlink failed.
    Io,
    /// The datapath (programs, maps, bpffs) failed or cannot be set up.
    Datapath,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- the node
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("this node is not initialised (no {path}): run `podnet node init` first")]
    NotInitialised { path: PathBuf },
    #[error(
        "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified: mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or pass --cgroup"
    )]
    NoCgroup2,
    #[error("cgroup {} is not a directory", .path.display())]
    NotACgroup { path: PathBuf },
    #[error("uplink {name} does not exist in the node's namespace")]
    NoUplink { name: String },
    #[error("uplink {name} has no IPv4 address; pass --node-ip")]
    NoNodeIp { name: String },
    #[error("bridge {name} is missing: re-run `podnet node init`")]
    NoBridge { name: String },
    #[error(
        "the node already runs with pod CIDR {current} and has {pods} pod(s); delete them (or `podnet node reset`) before changing it to {requested}"
    )]
    PodCidrInUse {
        current: Ipv4Network,
        requested: Ipv4Network,
        pods: usize,
    },

    // --- pods and attachments
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("pod {name} already exists (delete it first)")]
    PodExists { name: String },
    #[error("no pod named {name}")]
    PodNotFound { name: String },
    #[error(
        "{} is the node's own network namespace: a pod needs a namespace of its own",
        .path.display()
    )]
    NodeNetns { path: PathBuf },
    #[error(
        "container address {ip} is outside the node's pod CIDR {pod_cidr}: node.pod_cidr must be host-local's subnet"
    )]
    OutsidePodCidr { ip: Ipv4Addr, pod_cidr: Ipv4Network },
    #[error("no interface {ifname} in the container's namespace")]
    NoContainerInterface { ifname: String },
    #[error("{ifname} in the container's namespace is not a veth")]
    NotAVeth { ifname: String },
    #[error("the host end of {ifname} is missing")]
    NoHostEnd { ifname: String },

    // --- NodePorts
    #[error(
        "port {port} is outside the NodePort range {range} (set with `node init --nodeport-range`)"
    )]
    OutOfRange { port: u16, range: PortRange },
    #[error("{proto} port {port} is already a NodePort (delete it first, or use `nodeport set`)")]
    PortInUse { port: u16, proto: Proto },
    #[error("{proto} port {port} is in use by a socket in the node's namespace")]
    SocketInUse { port: u16, proto: Proto },
    #[error("no {proto} NodePort {port}")]
    NodePortNotFound { port: u16, proto: Proto },
    #[error("backend {backend}: no pod named {pod} on this node")]
    UnknownPod { backend: String, pod: String },
    #[error(
        "backend {ip} is neither in this node's pod CIDR {pod_cidr} nor (with policy cluster) in a peer's"
    )]
    NotLocal { ip: Ipv4Addr, pod_cidr: Ipv4Network },
    #[error("a NodePort needs at least one --backend")]
    NoBackends,
    #[error("{count} backends given; a NodePort has at most {MAX_BACKENDS}")]
    TooManyBackends { count: usize },
    #[error("backend {backend} is given twice")]
    DuplicateBackend { backend: String },
    #[error("{proto} port {port} is listed twice")]
    Repeated { port: u16, proto: Proto },
    #[error("{0}")]
    BadBackend(String),
    #[error(
        "the NodePorts need {needed} service map entries (one per NodePort plus one per backend); the map holds {max} (set with `node init --services-max`)"
    )]
    ServicesFull { needed: usize, max: u32 },
    #[error("NodePort {port}/{proto} (entry {index} of the file): {source}")]
    Entry {
        index: usize,
        port: u16,
        proto: Proto,
        source: Box<Error>,
    },
    #[error("reading {path}: {reason}")]
    File { path: String, reason: String },

    // --- services
    #[error(transparent)]
    Service(#[from] crate::model::service::ServiceError),
    #[error("no service {name}")]
    ServiceNotFound { name: String },

    // --- peers
    #[error("peer {name}: pod CIDR {pod_cidr} is not inside the cluster CIDR {cluster_cidr}")]
    PeerOutsideCluster {
        name: String,
        pod_cidr: Ipv4Network,
        cluster_cidr: Ipv4Network,
    },
    #[error("peer {name}: pod CIDR {pod_cidr} has host bits set")]
    PeerHostBits { name: String, pod_cidr: Ipv4Network },
    #[error("peer {name}: pod CIDR {pod_cidr} overlaps {other}'s {other_cidr}")]
    PeerOverlap {
        name: String,
        pod_cidr: Ipv4Network,
        other: String,
        other_cidr: Ipv4Network,
    },
    #[error("peer {name}: node IP {node_ip} is already node {other}'s")]
    PeerDuplicateIp {
        name: String,
        node_ip: Ipv4Addr,
        other: String,
    },
    #[error("peer {name} already exists (delete it first)")]
    PeerExists { name: String },
    #[error("no peer named {name}")]
    PeerNotFound { name: String },
    #[error("invalid peer name {name:?}: use 1-63 characters from [A-Za-z0-9_.-]")]
    PeerName { name: String },
    #[error("reading cluster file {path}: {msg}")]
    ClusterFile { path: String, msg: String },
    #[error("updating the node's routes to other nodes' pods: {0}")]
    PeerRoutes(#[source] LinkError),

    // --- IPv6 on dual-stack nodes (see ops::peer6, ops::pod)
    #[error("peer {name}: {reason}")]
    Peer6 { name: String, reason: String },
    #[error(
        "container address {ip} is outside the node's IPv6 pod CIDR {pod_cidr}: node.pod_cidr6 must be host-local's IPv6 subnet"
    )]
    OutsidePodCidr6 {
        ip: std::net::Ipv6Addr,
        pod_cidr: ipnetwork::Ipv6Network,
    },
    #[error(
        "the node already runs with IPv6 pod CIDR {current} and has {pods} pod(s); delete them (or `podnet node reset`) before changing it to {requested}"
    )]
    PodCidr6InUse {
        current: String,
        requested: String,
        pods: usize,
    },

    // --- monitor
    #[error("unknown drop reason {name:?}; valid reasons: {valid}")]
    UnknownReason { name: String, valid: String },

    // --- processes
    #[error("a conntrack collector already runs for this node (pid {pid})")]
    CollectorRunning { pid: u32 },

    // --- what the lower layers report
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    SockDiag(#[from] SockDiagError),
}

impl Error {
    /// The kind of failure, for the front ends' mappings.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind::{
            Conflict, Datapath, Exhausted, InvalidInput, Io, NotFound, NotInitialised,
        };
        match self {
            Self::Config(_)
            | Self::NoCgroup2
            | Self::NotACgroup { .. }
            | Self::NoUplink { .. }
            | Self::NoNodeIp { .. }
            | Self::Name(_)
            | Self::NodeNetns { .. }
            | Self::OutsidePodCidr { .. }
            | Self::NoContainerInterface { .. }
            | Self::NotAVeth { .. }
            | Self::OutOfRange { .. }
            | Self::UnknownPod { .. }
            | Self::NotLocal { .. }
            | Self::NoBackends
            | Self::TooManyBackends { .. }
            | Self::DuplicateBackend { .. }
            | Self::Repeated { .. }
            | Self::BadBackend(_)
            | Self::File { .. }
            | Self::PeerOutsideCluster { .. }
            | Self::PeerHostBits { .. }
            | Self::PeerOverlap { .. }
            | Self::PeerDuplicateIp { .. }
            | Self::PeerName { .. }
            | Self::Peer6 { .. }
            | Self::OutsidePodCidr6 { .. }
            | Self::ClusterFile { .. }
            | Self::Service(_)
            | Self::UnknownReason { .. } => InvalidInput,
            Self::Link(LinkError::InvalidName(_)) => InvalidInput,
            Self::Netns(NetnsError::NotFound { .. } | NetnsError::NotANetns { .. }) => InvalidInput,
            Self::NotInitialised { .. }
            | Self::NoBridge { .. }
            | Self::Datapath(DatapathError::NotInitialised { .. }) => NotInitialised,
            Self::PodNotFound { .. }
            | Self::NodePortNotFound { .. }
            | Self::PeerNotFound { .. }
            | Self::ServiceNotFound { .. } => NotFound,
            Self::PodCidrInUse { .. }
            | Self::PodCidr6InUse { .. }
            | Self::PodExists { .. }
            | Self::PortInUse { .. }
            | Self::SocketInUse { .. }
            | Self::PeerExists { .. }
            | Self::CollectorRunning { .. } => Conflict,
            Self::ServicesFull { .. } | Self::Ipam(_) => Exhausted,
            Self::Entry { source, .. } => source.kind(),
            Self::State(_)
            | Self::Link(_)
            | Self::Netns(_)
            | Self::SockDiag(_)
            | Self::PeerRoutes(_)
            | Self::NoHostEnd { .. } => Io,
            Self::Datapath(_) => Datapath,
        }
    }
}

/// The result of an operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
