//! `podnet demo`: a self-contained node in network namespaces, the whole of seed 000 without
//! iptables. It builds a "node" namespace with an uplink to an "outside" namespace, runs the real
//! CLI against it (node init, two pods), sends pod-to-pod ping and TCP over the fast path,
//! exposes a pod on `nodeIP:30080` and reaches it from the outside and from the node itself,
//! lets a pod reach the outside with its source translated to the node IP, shows the conntrack
//! table, counters and maps, and cleans up, also when a step fails. Nothing outside the
//! namespaces it creates is touched.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use ipnetwork::Ipv4Network;
use podnet::{
    model::pod::PodRecord,
    ops::{self, Ctx},
    store,
    sys::{
        link::{InNetns as _, LinkError, enable_ip_forwarding},
        netns::Netns,
    },
};

#[derive(Args)]
pub struct DemoArgs {
    /// Prefix for everything the demo creates (namespaces, pin and state directories).
    #[arg(long, default_value = "pndemo")]
    name: String,
    /// Leave the topology in place afterwards (remove it with `podnet demo --cleanup`).
    #[arg(long)]
    keep: bool,
    /// Only remove what an earlier `--keep` run left.
    #[arg(long)]
    cleanup: bool,
    /// 2: add a second node on another subnet behind the outside host (a router that knows no
    /// pod CIDRs), run both in VXLAN overlay mode, and show pod-to-pod traffic across them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    nodes: u8,
}

const NETNS_DIR: &str = "/run/netns";
const NODE_IP: &str = "198.18.0.10/24";
const OUTSIDE_IP: &str = "198.18.0.1/24";
const POD_CIDR: &str = "10.244.1.0/24";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const TCP_PORT: u16 = 8080;
const NODEPORT: u16 = 30080;
/// The second node (`--nodes 2`), on its own subnet behind the outside host.
const NODE2_IP: &str = "198.18.1.10/24";
const OUTSIDE2_IP: &str = "198.18.1.1/24";
const POD_CIDR2: &str = "10.244.2.0/24";

struct Demo {
    name: String,
    state_dir: PathBuf,
    pin_dir: PathBuf,
}

impl Demo {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state_dir: PathBuf::from(format!("/run/podnet-demo/{name}")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/podnet-demo-{name}")),
        }
    }

    fn node_ns(&self) -> String {
        format!("{}-node", self.name)
    }

    fn outside_ns(&self) -> String {
        format!("{}-outside", self.name)
    }

    /// Runs this binary with the demo's state directory, echoing the command like a transcript.
    fn podnet(&self, args: &[&str]) -> Result<String> {
        println!("\n$ podnet {}", args.join(" "));
        let out = Command::new(std::env::current_exe()?)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .output()
            .context("running podnet")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{stdout}");
        if !out.status.success() {
            bail!(
                "`podnet {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }

    fn cleanup(&self) {
        if store::node::exists(&self.state_dir) {
            let _ = self.podnet(&["node", "reset"]);
        }
        for ns in [self.node_ns(), self.outside_ns()] {
            let _ = Netns::delete_named(Path::new(NETNS_DIR), &ns);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Cleans up when dropped unless disarmed, so a failing step leaves nothing behind.
struct Guard<'a> {
    demo: &'a Demo,
    armed: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.armed {
            println!("\ncleaning up");
            self.demo.cleanup();
        }
    }
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let demo = Demo::new(&args.name);
    let demo2 = Demo::new(&format!("{}-n2", args.name));
    if args.cleanup {
        demo2.cleanup();
        demo.cleanup();
        println!("removed demo {}", args.name);
        return Ok(());
    }
    demo2.cleanup();
    demo.cleanup();
    let mut guard2 = Guard {
        demo: &demo2,
        armed: args.nodes == 2,
    };
    let mut guard = Guard {
        demo: &demo,
        armed: true,
    };
    println!(
        "podnet demo: node namespace {} with uplink to {} ({} <-> {}), pod CIDR {POD_CIDR}",
        demo.node_ns(),
        demo.outside_ns(),
        NODE_IP,
        OUTSIDE_IP
    );
    build_fabric(&demo)?;
    let (init, cluster_file) = init_args(&demo, &demo2, args.nodes)?;
    let refs: Vec<&str> = init.iter().map(String::as_str).collect();
    demo.podnet(&refs)?;
    let web = add_pod(&demo, "web")?;
    let client = add_pod(&demo, "client")?;
    demo.podnet(&["pod", "list"])?;
    show_one_node(&demo, &web, &client)?;
    if args.nodes == 2 {
        show_second_node(&demo, &demo2, &init, &client)?;
        let _ = std::fs::remove_file(&cluster_file);
    }
    show_maps(&demo)?;
    if args.keep {
        guard.armed = false;
        guard2.armed = false;
        println!(
            "\nleft in place: try `podnet --state-dir {} stats`; remove with `podnet demo --name {} --cleanup`",
            demo.state_dir.display(),
            demo.name
        );
    }
    Ok(())
}

/// The `node init` arguments of the first node (with two nodes: the overlay and the cluster
/// file, which this writes), and the cluster file's path.
fn init_args(demo: &Demo, demo2: &Demo, nodes: u8) -> Result<(Vec<String>, PathBuf)> {
    let mut init = vec![
        "node".to_owned(),
        "init".to_owned(),
        "--netns".to_owned(),
        demo.node_ns(),
        "--uplink".to_owned(),
        "uplink0".to_owned(),
        "--pod-cidr".to_owned(),
        POD_CIDR.to_owned(),
        "--cluster-cidr".to_owned(),
        CLUSTER_CIDR.to_owned(),
        "--pin-dir".to_owned(),
        demo.pin_dir.display().to_string(),
    ];
    let cluster_file = demo2.state_dir.with_extension("cluster.json");
    if nodes == 2 {
        build_second_node(demo, demo2)?;
        let node1: Ipv4Network = NODE_IP.parse()?;
        let node2: Ipv4Network = NODE2_IP.parse()?;
        let description = serde_json::json!({"nodes": [
            {"name": "node-1", "node_ip": node1.ip().to_string(), "pod_cidr": POD_CIDR},
            {"name": "node-2", "node_ip": node2.ip().to_string(), "pod_cidr": POD_CIDR2},
        ]});
        std::fs::create_dir_all(cluster_file.parent().unwrap_or(Path::new("/")))?;
        std::fs::write(&cluster_file, description.to_string())?;
        println!("\n# two nodes on different subnets, routed by the outside host: a VXLAN overlay");
        println!("$ cat {}\n{description}", cluster_file.display());
        init.extend([
            "--mode".to_owned(),
            "vxlan".to_owned(),
            "--cluster".to_owned(),
            cluster_file.display().to_string(),
        ]);
    }
    Ok((init, cluster_file))
}

/// Pod to pod, NodePort from outside and from the node, SNAT to the outside.
fn show_one_node(demo: &Demo, web: &PodRecord, client: &PodRecord) -> Result<()> {
    println!(
        "\n# ping web ({}) from client, over the eBPF fast path",
        web.address.ip()
    );
    let ping = Command::new("nsenter")
        .arg(format!("--net={}", client.netns.display()))
        .args(["ping", "-c", "3", "-i", "0.2", "-W", "1"])
        .arg(web.address.ip().to_string())
        .output();
    match ping {
        Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
        Err(err) => println!("(ping not available: {err})"),
    }

    println!("\n# TCP from client to web:{TCP_PORT}; web reports the source address it sees");
    let pod_to_pod = SocketAddr::from((web.address.ip(), TCP_PORT));
    let seen = exchange(&client.netns, &web.netns, pod_to_pod, pod_to_pod)?;
    println!(
        "web saw a connection from {seen} (client's pod IP is {})",
        client.address.ip()
    );
    if seen.ip() != IpAddr::V4(client.address.ip()) {
        bail!("source IP was not preserved: web saw {seen}");
    }

    println!(
        "\n# expose web:{TCP_PORT} on the node IP, like kube-proxy's DNAT rule, without iptables"
    );
    demo.podnet(&[
        "nodeport",
        "add",
        "--port",
        &NODEPORT.to_string(),
        "--backend",
        &format!("web:{TCP_PORT}"),
    ])?;
    let node_ip: Ipv4Network = NODE_IP.parse()?;
    let nodeport = SocketAddr::from((node_ip.ip(), NODEPORT));
    let outside_path = Path::new(NETNS_DIR).join(demo.outside_ns());
    let node_path = Path::new(NETNS_DIR).join(demo.node_ns());
    for (who, ns) in [
        ("the outside", &outside_path),
        ("the node itself", &node_path),
    ] {
        println!("\n# {who} connects to {nodeport}");
        let seen = exchange(
            ns,
            &web.netns,
            SocketAddr::from(([0, 0, 0, 0], TCP_PORT)),
            nodeport,
        )?;
        println!("web (behind the NodePort) saw a connection from {seen}");
    }

    let outside_ip: Ipv4Network = OUTSIDE_IP.parse()?;
    let outside_server = SocketAddr::from((outside_ip.ip(), TCP_PORT));
    println!("\n# client reaches {outside_server} outside the cluster: SNAT to the node IP");
    let seen = exchange(&client.netns, &outside_path, outside_server, outside_server)?;
    println!("the outside saw a connection from {seen}");
    if seen.ip() != IpAddr::V4(node_ip.ip()) {
        bail!("traffic left the node without SNAT: the outside saw {seen}");
    }

    demo.podnet(&["nodeport", "list"])?;
    demo.podnet(&["conntrack", "list"])?;

    Ok(())
}

/// The second node, and a connection from the first node's pod to one of its pods.
fn show_second_node(demo: &Demo, demo2: &Demo, init: &[String], client: &PodRecord) -> Result<()> {
    let mut init2 = init.to_vec();
    init2[3] = demo2.node_ns();
    init2[7] = POD_CIDR2.to_owned();
    init2[11] = demo2.pin_dir.display().to_string();
    let refs: Vec<&str> = init2.iter().map(String::as_str).collect();
    demo2.podnet(&refs)?;
    let far = add_pod(demo2, "far")?;
    demo.podnet(&["node", "peer", "list"])?;
    println!(
        "\n# client (node 1) to far ({}, node 2), pod IP to pod IP through the overlay",
        far.address.ip()
    );
    let cross = SocketAddr::from((far.address.ip(), TCP_PORT));
    let seen = exchange(&client.netns, &far.netns, cross, cross)?;
    println!(
        "far saw a connection from {seen} (client's pod IP is {})",
        client.address.ip()
    );
    if seen.ip() != IpAddr::V4(client.address.ip()) {
        bail!("source IP was not preserved across nodes: far saw {seen}");
    }
    demo2.podnet(&["stats"])?;
    Ok(())
}

/// The counters, the maps, and one map as bpftool prints it.
fn show_maps(demo: &Demo) -> Result<()> {
    demo.podnet(&["stats"])?;
    demo.podnet(&["maps"])?;
    println!(
        "\n$ bpftool map dump pinned {}/ENDPOINTS",
        demo.pin_dir.display()
    );
    if let Ok(out) = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(demo.pin_dir.join("ENDPOINTS"))
        .output()
    {
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

fn add_pod(demo: &Demo, name: &str) -> Result<PodRecord> {
    demo.podnet(&["pod", "add", name])?;
    let ctx = Ctx::new(ops::node::load(&demo.state_dir)?);
    ops::pod::list(&ctx)?
        .into_iter()
        .find(|p| p.name == name)
        .context("pod record missing after add")
}

/// The second node's namespace, on the outside host's second subnet; the outside host routes
/// between the nodes' subnets and knows nothing about pod CIDRs.
fn build_second_node(demo: &Demo, demo2: &Demo) -> Result<()> {
    let run_dir = Path::new(NETNS_DIR);
    let node = Netns::create_named(run_dir, &demo2.node_ns())?;
    let outside = Netns::open(&run_dir.join(demo.outside_ns()))?;
    let node_ip: Ipv4Network = NODE2_IP.parse()?;
    let gateway: Ipv4Network = OUTSIDE2_IP.parse()?;
    let outside_for_peer = Netns::open(outside.path())?;
    node.run_netlink(move |nl| async move {
        let uplink = nl
            .create_veth("uplink0", "eth1", &outside_for_peer, None)
            .await?;
        nl.ensure_address(uplink.index, node_ip).await?;
        nl.set_up(uplink.index).await?;
        if let Some(lo) = nl.get("lo").await? {
            nl.set_up(lo.index).await?;
        }
        nl.ensure_default_route(gateway.ip()).await
    })??;
    outside.run_netlink(move |nl| async move {
        let eth1 = nl.get("eth1").await?.ok_or_else(|| LinkError::NotFound {
            link: "eth1".to_owned(),
        })?;
        nl.ensure_address(eth1.index, gateway).await?;
        nl.set_up(eth1.index).await
    })??;
    outside.run(enable_ip_forwarding)??;
    Ok(())
}

/// The node and outside namespaces and the uplink veth between them.
fn build_fabric(demo: &Demo) -> Result<()> {
    let run_dir = Path::new(NETNS_DIR);
    let node = Netns::create_named(run_dir, &demo.node_ns())?;
    let outside = Netns::create_named(run_dir, &demo.outside_ns())?;
    let node_ip: Ipv4Network = NODE_IP.parse()?;
    let outside_ip: Ipv4Network = OUTSIDE_IP.parse()?;
    let outside_for_peer = Netns::open(outside.path())?;
    node.run_netlink(move |nl| async move {
        let uplink = nl
            .create_veth("uplink0", "eth0", &outside_for_peer, None)
            .await?;
        nl.ensure_address(uplink.index, node_ip).await?;
        nl.set_up(uplink.index).await?;
        if let Some(lo) = nl.get("lo").await? {
            nl.set_up(lo.index).await?;
        }
        nl.ensure_default_route(outside_ip.ip()).await
    })??;
    outside.run_netlink(move |nl| async move {
        let eth0 = nl.get("eth0").await?.ok_or_else(|| LinkError::NotFound {
            link: "eth0".to_owned(),
        })?;
        nl.ensure_address(eth0.index, outside_ip).await?;
        nl.set_up(eth0.index).await?;
        if let Some(lo) = nl.get("lo").await? {
            nl.set_up(lo.index).await?;
        }
        Ok::<_, LinkError>(())
    })??;
    Ok(())
}

/// Listens on `listen` in the namespace at `server_ns`, connects to `target` from the one at
/// `client_ns`, exchanges a line, and returns the peer address the server saw.
fn exchange(
    client_ns: &Path,
    server_ns: &Path,
    listen: SocketAddr,
    target: SocketAddr,
) -> Result<SocketAddr> {
    let listener = Netns::open(server_ns)?.run(move || TcpListener::bind(listen))??;
    let accept = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
        let (mut stream, peer) = listener.accept()?;
        let mut line = String::new();
        BufReader::new(stream.try_clone()?).read_line(&mut line)?;
        writeln!(stream, "hello {peer}, you said {}", line.trim())?;
        Ok(peer)
    });
    let reply = Netns::open(client_ns)?.run(move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        writeln!(stream, "ping")?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        Ok(reply)
    })?;
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => {
            // Unblock the accepting thread before reporting.
            let _ = Netns::open(server_ns)?.run(move || TcpStream::connect(listen));
            let _ = accept.join();
            return Err(e).with_context(|| format!("connecting to {target}"));
        }
    };
    print!("client got: {reply}");
    accept
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?
        .context("server side of the TCP exchange")
}
