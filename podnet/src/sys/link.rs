//! Links, addresses and routes over rtnetlink, in the network namespace of the thread that
//! opened the [`Netlink`] connection. Every operation is idempotent where that makes sense
//! (`ensure_*`, `delete`, `rename`, `create_veth`), so a CNI ADD can be retried.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::pin;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::{
    model::names::{NameError, validate_ifname},
    sys::netns::{Netns, NetnsError},
};

mod v6;
pub use v6::enable_ipv6_forwarding;

/// The gateway of `route` if it is a unicast default route of the main table (either family).
fn main_default_gateway(route: &RouteMessage) -> Option<&RouteAddress> {
    let header = &route.header;
    let mut table = u32::from(header.table);
    let mut gateway = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Gateway(gw) => gateway = Some(gw),
            _ => {}
        }
    }
    let default = header.destination_prefix_length == 0
        && header.kind == RouteType::Unicast
        && table == u32::from(RouteHeader::RT_TABLE_MAIN);
    gateway.filter(|_| default)
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The interface name would be refused by the kernel.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// Entering or using a network namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// [`Netlink::new`] was called outside a tokio runtime.
    #[error("rtnetlink connection needs a tokio runtime on the calling thread")]
    NoRuntime,
    /// Building the tokio runtime the netlink connection runs on failed.
    #[error("starting the netlink runtime: {0}")]
    Runtime(#[source] io::Error),
    /// Opening the rtnetlink socket failed.
    #[error("opening rtnetlink socket: {0}")]
    Connect(#[source] io::Error),
    /// A netlink request failed; `op` says which.
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A link that must exist does not.
    #[error("link {link} not found")]
    NotFound { link: String },
    /// A link of that name exists but is of another kind.
    #[error("link {name:?} exists but is {} (wanted {wanted})", .found.as_deref().unwrap_or("of no kind"))]
    WrongKind {
        name: String,
        wanted: &'static str,
        found: Option<String>,
    },
    /// A default route exists with another gateway.
    #[error("a default route via {existing} exists (wanted via {wanted})")]
    DefaultRouteConflict {
        existing: Ipv4Addr,
        wanted: Ipv4Addr,
    },
    /// An IPv6 default route exists with another gateway.
    #[error("an IPv6 default route via {existing} exists (wanted via {wanted})")]
    DefaultRouteConflict6 {
        existing: std::net::Ipv6Addr,
        wanted: std::net::Ipv6Addr,
    },
    /// An address dumped by the kernel cannot be an IPv4 network.
    #[error("address {addr}/{prefix} on link {index}: {source}")]
    BadAddress {
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
        #[source]
        source: ipnetwork::IpNetworkError,
    },
    /// Reading or writing a file (sysctl) failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What podnet needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// ifindex.
    pub index: u32,
    pub name: String,
    /// Hardware address; zeros if the link has none (or not 6 bytes).
    pub mac: [u8; 6],
    pub mtu: u32,
    /// `IFLA_INFO_KIND`: "veth", "bridge", ...; `None` for e.g. `lo` or physical devices.
    pub kind: Option<String>,
    /// ifindex of the controller (bridge) the link is enslaved to.
    pub controller: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// For a veth: the peer's ifindex (`IFLA_LINK`), in the peer's namespace.
    pub peer_index: Option<u32>,
}

impl From<&LinkMessage> for LinkInfo {
    fn from(msg: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mac: [0; 6],
            mtu: 0,
            kind: None,
            controller: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            peer_index: None,
        };
        let mut link = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => info.name.clone_from(name),
                LinkAttribute::Address(mac) => {
                    if let Ok(mac) = <[u8; 6]>::try_from(mac.as_slice()) {
                        info.mac = mac;
                    }
                }
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                LinkAttribute::Controller(index) if *index != 0 => info.controller = Some(*index),
                LinkAttribute::Link(index) => link = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let NlLinkInfo::Kind(kind) = i {
                            info.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        if info.kind.as_deref() == Some("veth") {
            info.peer_index = link;
        }
        info
    }
}

/// An rtnetlink connection, bound to the network namespace of the thread that created it.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

/// The errno of a netlink error reply, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    move |source| LinkError::Netlink {
        op: op.into(),
        source: Box::new(source),
    }
}

/// Maps an error reply with errno `ok_errno` to `Ok(false)`, success to `Ok(true)`.
fn tolerate(
    result: Result<(), rtnetlink::Error>,
    ok_errno: i32,
    op: impl FnOnce() -> String,
) -> Result<bool, LinkError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(ok_errno) => Ok(false),
        Err(e) => Err(nl_err(op())(e)),
    }
}

impl Netlink {
    /// Opens an rtnetlink connection in the calling thread's network namespace and spawns
    /// its driver on the current tokio runtime (which must exist).
    pub fn new() -> Result<Self, LinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LinkError::NoRuntime)?;
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(LinkError::Connect)?;
        runtime.spawn(connection);
        Ok(Netlink { handle })
    }

    /// The link named `name`, or `None` if there is none.
    pub async fn get(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        validate_ifname(name)?;
        let request = self.handle.link().get().match_name(name);
        first_link(request, || format!("get link {name:?}")).await
    }

    /// The link with ifindex `index`, or `None` if there is none.
    pub async fn get_by_index(&self, index: u32) -> Result<Option<LinkInfo>, LinkError> {
        let request = self.handle.link().get().match_index(index);
        first_link(request, || format!("get link {index}")).await
    }

    /// Whether a `cls_bpf` filter sits at `priority` on the clsact ingress of link `index`
    /// (what `tc filter show dev X ingress` lists).
    pub async fn has_bpf_ingress_filter(
        &self,
        index: u32,
        priority: u16,
    ) -> Result<bool, LinkError> {
        let Ok(index) = i32::try_from(index) else {
            return Ok(false);
        };
        let mut stream = pin!(self.handle.traffic_filter(index).get().ingress().execute());
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(nl_err(format!("list filters of link {index}")))?
        {
            let prio = u16::try_from(msg.header.info >> 16).unwrap_or(0);
            let bpf = msg.attributes.iter().any(|a| {
                matches!(a, rtnetlink::packet_route::tc::TcAttribute::Kind(kind) if kind == "bpf")
            });
            if bpf && prio == priority {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// All links of the namespace.
    pub async fn list(&self) -> Result<Vec<LinkInfo>, LinkError> {
        let mut stream = pin!(self.handle.link().get().execute());
        let mut links = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(nl_err("list links"))? {
            links.push(LinkInfo::from(&msg));
        }
        Ok(links)
    }

    /// Creates bridge `name` if it does not exist (a concurrent creator winning is fine) and
    /// sets it up, without duplicate address detection for its IPv6 link-local address (see
    /// [`v6::disable_dad`]). Fails if `name` exists and is not a bridge.
    pub async fn ensure_bridge(&self, name: &str) -> Result<LinkInfo, LinkError> {
        validate_ifname(name)?;
        let info = match self.get(name).await? {
            Some(info) => info,
            None => {
                let result = self
                    .handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await;
                tolerate(result, libc::EEXIST, || format!("create bridge {name:?}"))?;
                self.get(name).await?.ok_or_else(|| LinkError::NotFound {
                    link: format!("{name:?}"),
                })?
            }
        };
        if info.kind.as_deref() != Some("bridge") {
            return Err(LinkError::WrongKind {
                name: name.to_owned(),
                wanted: "bridge",
                found: info.kind,
            });
        }
        if info.up {
            return Ok(info);
        }
        v6::disable_dad(name)?;
        self.set_up(info.index).await?;
        self.get_by_index(info.index)
            .await?
            .ok_or_else(|| LinkError::NotFound {
                link: format!("{name:?}"),
            })
    }

    /// A VXLAN device in external (collect_md) mode on UDP `port`, up and without ARP: programs
    /// choose each packet's remote and VNI with `bpf_skb_set_tunnel_key`, and the node's own
    /// routes to other nodes' pods through it carry theirs in the route (see
    /// [`Self::replace_encap_route`]); ARP could not cross it (a request has no tunnel key),
    /// so the kernel addresses frames to the device's own MAC instead. An existing one is
    /// reused.
    pub async fn ensure_vxlan(&self, name: &str, port: u16) -> Result<LinkInfo, LinkError> {
        validate_ifname(name)?;
        let info = match self.get(name).await? {
            Some(info) => info,
            None => {
                let message = LinkVxlan::new(name, 0)
                    .collect_metadata(true)
                    .port(port)
                    .learning(false)
                    .build();
                let result = self.handle.link().add(message).execute().await;
                tolerate(result, libc::EEXIST, || format!("create vxlan {name:?}"))?;
                self.get(name).await?.ok_or_else(|| LinkError::NotFound {
                    link: format!("{name:?}"),
                })?
            }
        };
        if info.kind.as_deref() != Some("vxlan") {
            return Err(LinkError::WrongKind {
                name: name.to_owned(),
                wanted: "vxlan",
                found: info.kind,
            });
        }
        self.set(
            LinkUnspec::new_with_index(info.index)
                .up()
                .arp(false)
                .build(),
            format!("set link {name:?} up without ARP"),
        )
        .await?;
        Ok(info)
    }

    /// Adds `addr` to link `index`; an address that is already there is fine.
    pub async fn ensure_address(&self, index: u32, addr: Ipv4Network) -> Result<(), LinkError> {
        let result = self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.ip()), addr.prefix())
            .execute()
            .await;
        tolerate(result, libc::EEXIST, || {
            format!("add address {addr} to link {index}")
        })?;
        Ok(())
    }

    /// The IPv4 addresses of link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Network>, LinkError> {
        let mut stream = pin!(
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
        );
        let mut addrs = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(nl_err(format!("list addresses of link {index}")))?
        {
            if let Some(net) = ipv4_of(&msg)? {
                addrs.push(net);
            }
        }
        Ok(addrs)
    }

    /// Sets link `index` administratively up.
    pub async fn set_up(&self, index: u32) -> Result<(), LinkError> {
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            format!("set link {index} up"),
        )
        .await
    }

    /// Enslaves link `index` to bridge `bridge_index`.
    pub async fn set_controller(&self, index: u32, bridge_index: u32) -> Result<(), LinkError> {
        self.set(
            LinkUnspec::new_with_index(index)
                .controller(bridge_index)
                .build(),
            format!("set controller of link {index} to {bridge_index}"),
        )
        .await
    }

    /// Creates a veth pair `host` <-> `peer`: `host` in this namespace, `peer` created
    /// directly in `peer_ns` (`IFLA_NET_NS_FD` on the peer), both with `mtu` if given, both
    /// down. Returns the host side. Idempotent: if `host` already is a veth, it is returned
    /// as is (its peer is not checked).
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: &Netns,
        mtu: Option<u32>,
    ) -> Result<LinkInfo, LinkError> {
        validate_ifname(host)?;
        validate_ifname(peer)?;
        let existing = self.get(host).await?;
        if existing.is_none() {
            let mut peer_msg =
                LinkUnspec::new_with_name(peer).setns_by_fd(peer_ns.fd().as_raw_fd());
            let mut builder = LinkVeth::new(host, peer);
            if let Some(mtu) = mtu {
                peer_msg = peer_msg.mtu(mtu);
                builder = builder.mtu(mtu);
            }
            let message = builder
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
                .build();
            // `peer_ns` (and so the fd in the message) stays open until the reply is in.
            let result = self.handle.link().add(message).execute().await;
            tolerate(result, libc::EEXIST, || {
                format!(
                    "create veth {host:?} with peer {peer:?} in {}",
                    peer_ns.path().display()
                )
            })?;
        }
        let info = match existing {
            Some(info) => info,
            None => self.get(host).await?.ok_or_else(|| LinkError::NotFound {
                link: format!("{host:?}"),
            })?,
        };
        if info.kind.as_deref() != Some("veth") {
            return Err(LinkError::WrongKind {
                name: host.to_owned(),
                wanted: "veth",
                found: info.kind,
            });
        }
        Ok(info)
    }

    /// Renames link `index` to `new_name` (a no-op if it already has that name). A link that
    /// is up is taken down for the rename and brought up again.
    pub async fn rename(&self, index: u32, new_name: &str) -> Result<(), LinkError> {
        validate_ifname(new_name)?;
        let info = self
            .get_by_index(index)
            .await?
            .ok_or_else(|| LinkError::NotFound {
                link: index.to_string(),
            })?;
        if info.name == new_name {
            return Ok(());
        }
        if info.up {
            self.set(
                LinkUnspec::new_with_index(index).down().build(),
                format!("set link {index} down for rename"),
            )
            .await?;
        }
        self.set(
            LinkUnspec::new_with_index(index).name(new_name).build(),
            format!("rename link {index} ({:?}) to {new_name:?}", info.name),
        )
        .await?;
        if info.up {
            self.set_up(index).await?;
        }
        Ok(())
    }

    /// Sets the MTU of link `index`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), LinkError> {
        self.set(
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
            format!("set mtu of link {index} to {mtu}"),
        )
        .await
    }

    /// Adds `0.0.0.0/0 via gateway` to the main table. Already there is fine; a default
    /// route via another gateway is an error ([`LinkError::DefaultRouteConflict`]).
    pub async fn ensure_default_route(&self, gateway: Ipv4Addr) -> Result<(), LinkError> {
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        let result = self.handle.route().add(message).execute().await;
        let added = tolerate(result, libc::EEXIST, || {
            format!("add default route via {gateway}")
        })?;
        if added {
            return Ok(());
        }
        let gateways = self.default_gateways().await?;
        match gateways.first() {
            Some(existing) if !gateways.contains(&gateway) => {
                Err(LinkError::DefaultRouteConflict {
                    existing: *existing,
                    wanted: gateway,
                })
            }
            _ => Ok(()),
        }
    }

    /// `ip route replace DST via GATEWAY`: the node's own traffic to another node's pods (the
    /// pods' traffic never uses it: the datapath sends that by itself).
    pub async fn replace_route(
        &self,
        dst: Ipv4Network,
        gateway: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("replace route {dst} via {gateway}")))
    }

    /// `ip route replace DST dev DEV encap ip id VNI dst REMOTE src SRC`: the node's own
    /// traffic to `dst` goes through the collect_md tunnel device `dev` to `remote`, with the
    /// tunnel key in the route (a lightweight tunnel), from the address `src`.
    pub async fn replace_encap_route(
        &self,
        dst: Ipv4Network,
        dev: u32,
        vni: u32,
        remote: Ipv4Addr,
        src: Ipv4Addr,
    ) -> Result<(), LinkError> {
        use rtnetlink::packet_route::route::{
            RouteIpTunnel, RouteLwEnCapType, RouteLwTunnelEncap, RouteScope,
        };
        let mut message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .output_interface(dev)
            .pref_source(src)
            .scope(RouteScope::Link)
            .build();
        message
            .attributes
            .push(RouteAttribute::EncapType(RouteLwEnCapType::Ip));
        message.attributes.push(RouteAttribute::Encap(vec![
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(u64::from(vni))),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(remote)),
        ]));
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!(
                "replace route {dst} dev {dev} encap ip id {vni} dst {remote}"
            )))
    }

    /// `ip route del DST`, whatever its scope (a gateway route's or a device route's). `Ok(false)`
    /// if there was no such route.
    pub async fn delete_route(&self, dst: Ipv4Network) -> Result<bool, LinkError> {
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .scope(rtnetlink::packet_route::route::RouteScope::NoWhere)
            .build();
        let result = self.handle.route().del(message).execute().await;
        tolerate(result, libc::ESRCH, || format!("delete route {dst}"))
    }

    /// The gateways of the IPv4 default routes in the main table.
    pub async fn default_gateways(&self) -> Result<Vec<Ipv4Addr>, LinkError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = pin!(self.handle.route().get(query).execute());
        let mut gateways = Vec::new();
        while let Some(route) = stream
            .try_next()
            .await
            .map_err(nl_err("list IPv4 routes"))?
        {
            if let Some(RouteAddress::Inet(gw)) = main_default_gateway(&route) {
                gateways.push(*gw);
            }
        }
        Ok(gateways)
    }

    /// Deletes link `name`; `Ok(false)` if it did not exist.
    pub async fn delete(&self, name: &str) -> Result<bool, LinkError> {
        let Some(info) = self.get(name).await? else {
            return Ok(false);
        };
        let result = self.handle.link().del(info.index).execute().await;
        tolerate(result, libc::ENODEV, || {
            format!("delete link {name:?} ({})", info.index)
        })
    }

    async fn set(&self, message: LinkMessage, op: String) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(nl_err(op))
    }
}

/// The single reply of a non-dump link get; ENODEV means no such link.
async fn first_link(
    request: rtnetlink::LinkGetRequest,
    op: impl FnOnce() -> String,
) -> Result<Option<LinkInfo>, LinkError> {
    let mut stream = pin!(request.execute());
    match stream.try_next().await {
        Ok(msg) => Ok(msg.as_ref().map(LinkInfo::from)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(op())(e)),
    }
}

/// The IPv4 network of an address message; `None` for other families.
fn ipv4_of(msg: &AddressMessage) -> Result<Option<Ipv4Network>, LinkError> {
    if msg.header.family != AddressFamily::Inet {
        return Ok(None);
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS differs from it only on
    // point-to-point links (where it is the peer's).
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            _ => {}
        }
    }
    let Some(ip) = local.or(address) else {
        return Ok(None);
    };
    let prefix = msg.header.prefix_len;
    Ipv4Network::new(ip, prefix)
        .map(Some)
        .map_err(|source| LinkError::BadAddress {
            index: msg.header.index,
            addr: ip,
            prefix,
            source,
        })
}

/// Runs netlink work inside a namespace: on a fresh thread that enters `ns`, with a
/// current-thread tokio runtime and a [`Netlink`] connection opened there.
pub trait InNetns {
    /// `ns.run_netlink(|nl| async move { nl.ensure_bridge("br0").await })`.
    fn run_netlink<T, F, Fut>(&self, f: F) -> Result<T, LinkError>
    where
        F: FnOnce(Netlink) -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send;
}

impl InNetns for Netns {
    fn run_netlink<T, F, Fut>(&self, f: F) -> Result<T, LinkError>
    where
        F: FnOnce(Netlink) -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        self.run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(LinkError::Runtime)?;
            runtime.block_on(async {
                let netlink = Netlink::new()?;
                Ok(f(netlink).await)
            })
        })?
    }
}

/// The sysctls that turn IPv4 forwarding on.
const FORWARDING_SYSCTLS: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv4/conf/all/forwarding",
];

/// Turns IPv4 forwarding on (`net.ipv4.ip_forward` and `net.ipv4.conf.all.forwarding` = 1)
/// in the *calling thread's* network namespace: `/proc/sys/net` resolves to the namespace
/// of the task that looks the file up, and that is the thread (checked by the tests). Call
/// it inside [`Netns::run`] to change another namespace. Values already 1 are not written.
pub fn enable_ip_forwarding() -> Result<(), LinkError> {
    for path in FORWARDING_SYSCTLS {
        let path = Path::new(path);
        let current = std::fs::read_to_string(path).map_err(|source| LinkError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        })?;
        if current.trim() != "1" {
            std::fs::write(path, b"1\n").map_err(|source| LinkError::Io {
                op: "write",
                path: path.to_owned(),
                source,
            })?;
        }
    }
    Ok(())
}

/// The ifindex of `name` in the calling thread's namespace, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of interface `index` in the calling thread's namespace, if it exists.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` is IF_NAMESIZE bytes, as if_indextoname requires; it writes a
    // NUL-terminated name into it or returns NULL.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netns::testutil::{TestRunDir, need_root, unique};

    /// A short link name unique in this test process (fits in 15 bytes).
    fn ifname(tag: &str) -> String {
        let name = format!("pt{}{tag}{}", std::process::id() % 100_000, unique());
        validate_ifname(&name).expect("test ifname");
        name
    }

    #[test]
    fn link_netlink_new_needs_runtime() {
        assert!(matches!(Netlink::new(), Err(LinkError::NoRuntime)));
    }

    #[test]
    fn link_bridge_veth_route_lifecycle() {
        if !need_root() {
            return;
        }
        let mut run = TestRunDir::new();
        let node = run.create("node");
        let pod = run.create("pod");
        let bridge = ifname("b");
        let host = ifname("h");
        let peer = ifname("p");
        let bridge_net: Ipv4Network = "10.244.7.1/24".parse().expect("net");
        let pod_net: Ipv4Network = "10.244.7.2/24".parse().expect("net");
        let gateway = bridge_net.ip();

        // Node side: bridge, address, veth with its peer in the pod namespace.
        let (br, host_info) = node
            .run_netlink(|nl| async {
                let nl = nl;
                assert!(nl.get(&bridge).await.expect("get").is_none());
                assert!(nl.get_by_index(999_999).await.expect("get").is_none());

                let br = nl.ensure_bridge(&bridge).await.expect("bridge");
                let br2 = nl.ensure_bridge(&bridge).await.expect("bridge again");
                assert_eq!(br.index, br2.index);
                assert_eq!(br.kind.as_deref(), Some("bridge"));
                assert!(br.up);

                nl.ensure_address(br.index, bridge_net).await.expect("addr");
                nl.ensure_address(br.index, bridge_net)
                    .await
                    .expect("addr again");
                assert_eq!(
                    nl.addresses(br.index).await.expect("addresses"),
                    vec![bridge_net]
                );

                let h = nl
                    .create_veth(&host, &peer, &pod, Some(1400))
                    .await
                    .expect("veth");
                assert_eq!(h.kind.as_deref(), Some("veth"));
                assert_eq!(h.mtu, 1400);
                assert!(h.peer_index.is_some());
                assert_ne!(h.mac, [0; 6]);
                let again = nl
                    .create_veth(&host, &peer, &pod, Some(1400))
                    .await
                    .expect("veth again");
                assert_eq!(again.index, h.index);
                // The peer is not in this namespace.
                assert!(nl.get(&peer).await.expect("get peer").is_none());
                // A bridge name taken by a veth is an error.
                assert!(matches!(
                    nl.ensure_bridge(&host).await,
                    Err(LinkError::WrongKind { .. })
                ));

                nl.set_controller(h.index, br.index).await.expect("enslave");
                nl.set_up(h.index).await.expect("up");
                nl.set_mtu(h.index, 1450).await.expect("mtu");
                let h = nl.get(&host).await.expect("get").expect("host exists");
                assert_eq!(h.controller, Some(br.index));
                assert!(h.up);
                assert_eq!(h.mtu, 1450);

                let links = nl.list().await.expect("list");
                let kind_of = |name: &str| {
                    links
                        .iter()
                        .find(|l| l.name == name)
                        .map(|l| l.kind.clone())
                };
                assert_eq!(kind_of(&bridge), Some(Some("bridge".to_owned())));
                assert_eq!(kind_of(&host), Some(Some("veth".to_owned())));
                assert_eq!(kind_of("lo"), Some(None));
                (br, h)
            })
            .expect("node netlink");

        pod_side_lifecycle(&pod, &peer, &host_info, pod_net, gateway);

        // Delete, idempotently; the pod side of the veth goes with it.
        node.run_netlink(|nl| async {
            let nl = nl;
            assert!(nl.delete(&host).await.expect("delete"));
            assert!(!nl.delete(&host).await.expect("delete again"));
            assert!(nl.get(&host).await.expect("get").is_none());
            assert!(nl.delete(&bridge).await.expect("delete bridge"));
            assert!(!nl.delete(&bridge).await.expect("delete bridge again"));
            assert!(nl.get_by_index(br.index).await.expect("get").is_none());
        })
        .expect("node netlink");
        pod.run_netlink(|nl| async move { nl.get("eth0").await.expect("get").is_none() })
            .map(|gone| assert!(gone, "pod side deleted with the host side"))
            .expect("pod netlink");
    }

    /// The pod side of [`link_bridge_veth_route_lifecycle`]: the peer is there; rename it to
    /// eth0, address, default route.
    fn pod_side_lifecycle(
        pod: &Netns,
        peer: &str,
        host_info: &LinkInfo,
        pod_net: Ipv4Network,
        gateway: Ipv4Addr,
    ) {
        pod.run_netlink(|nl| async {
            let nl = nl;
            let p = nl.get(peer).await.expect("get").expect("peer in pod ns");
            assert_eq!(Some(p.index), host_info.peer_index);
            assert_eq!(p.peer_index, Some(host_info.index));
            assert_eq!(p.kind.as_deref(), Some("veth"));
            assert_eq!(p.mtu, 1400);
            assert!(!p.up);

            nl.rename(p.index, "eth0").await.expect("rename");
            nl.rename(p.index, "eth0").await.expect("rename again");
            assert!(nl.get(peer).await.expect("get").is_none());
            let eth0 = nl.get("eth0").await.expect("get").expect("eth0");
            assert_eq!(eth0.index, p.index);

            nl.ensure_address(eth0.index, pod_net).await.expect("addr");
            nl.set_up(eth0.index).await.expect("up");
            // Renaming an up link works too (down, rename, up).
            nl.rename(eth0.index, "eth1").await.expect("rename up");
            nl.rename(eth0.index, "eth0").await.expect("rename back");
            let eth0 = nl.get("eth0").await.expect("get").expect("eth0");
            assert!(eth0.up);
            let lo = nl.get("lo").await.expect("get").expect("lo");
            nl.set_up(lo.index).await.expect("lo up");

            nl.ensure_default_route(gateway).await.expect("route");
            nl.ensure_default_route(gateway).await.expect("route again");
            assert_eq!(
                nl.default_gateways().await.expect("gateways"),
                vec![gateway]
            );
            assert!(matches!(
                nl.ensure_default_route(Ipv4Addr::new(10, 244, 7, 3)).await,
                Err(LinkError::DefaultRouteConflict { .. })
            ));
        })
        .expect("pod netlink");
    }

    fn read_sysctl(path: &str) -> String {
        std::fs::read_to_string(path)
            .expect("read sysctl")
            .trim()
            .to_owned()
    }

    #[test]
    fn link_enable_ip_forwarding_only_in_test_netns() {
        if !need_root() {
            return;
        }
        let mut run = TestRunDir::new();
        let ns = run.create("fwd");
        let marker = ifname("f");
        let marker_conf = format!("/proc/sys/net/ipv4/conf/{marker}");
        let root_before: Vec<String> = FORWARDING_SYSCTLS.iter().map(|p| read_sysctl(p)).collect();

        let after = ns
            .run_netlink(|nl| async {
                let nl = nl;
                // Prove, before writing anything, that /proc/sys/net on this thread is the
                // test namespace's: it shows a link that only exists there.
                nl.ensure_bridge(&marker).await.expect("marker bridge");
                assert!(
                    Path::new(&marker_conf).exists(),
                    "/proc/sys/net does not follow the thread's namespace"
                );
                // A new namespace may inherit forwarding from the root: start from 0.
                for path in FORWARDING_SYSCTLS {
                    std::fs::write(path, b"0\n").expect("reset forwarding");
                }
                assert!(FORWARDING_SYSCTLS.iter().all(|p| read_sysctl(p) == "0"));
                enable_ip_forwarding().expect("enable forwarding");
                enable_ip_forwarding().expect("enable forwarding again");
                FORWARDING_SYSCTLS
                    .iter()
                    .map(|p| read_sysctl(p))
                    .collect::<Vec<_>>()
            })
            .expect("run");
        assert_eq!(after, ["1", "1"]);
        assert!(
            !Path::new(&marker_conf).exists(),
            "marker only in the test netns"
        );
        let root_after: Vec<String> = FORWARDING_SYSCTLS.iter().map(|p| read_sysctl(p)).collect();
        assert_eq!(root_before, root_after, "root namespace untouched");
    }
}
