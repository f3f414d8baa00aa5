//! The command line as a front end: parse ([`args`]), enter the node's namespace, build the
//! command's context, call one operation, render its report ([`render`]). Errors become one
//! line on stderr and an exit status chosen by their kind ([`exit_status`]).

pub mod args;
mod render;

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use args::{
    Cli, Command, ConntrackCommand, InstallCniArgs, NodeCommand, NodePortArgs, NodePortCommand,
    PeerCommand, PodCommand, ServiceCommand,
};
use podnet::{
    config::NodeSettings,
    datapath::object::EbpfObject,
    model::peer::PeerNode,
    ops::{self, Ctx, ErrorKind},
    sys::netns::Netns,
};
use render::print;

/// The exit status of a failed command: 1 for every failure an operation reports (clap exits
/// with 2 for arguments it cannot parse). One place, so a new kind is decided here.
pub fn exit_status(err: &anyhow::Error) -> ExitCode {
    match err.downcast_ref::<ops::Error>().map(ops::Error::kind) {
        Some(
            ErrorKind::InvalidInput
            | ErrorKind::NotInitialised
            | ErrorKind::NotFound
            | ErrorKind::Conflict
            | ErrorKind::Exhausted
            | ErrorKind::Io
            | ErrorKind::Datapath,
        )
        | None => ExitCode::FAILURE,
    }
}

/// Enters the node's namespace for the whole process. Called before any other thread exists.
fn enter_node_netns(path: Option<&Path>) -> Result<()> {
    if let Some(path) = path {
        Netns::open(path)
            .and_then(|ns| ns.enter())
            .with_context(|| format!("entering the node's namespace {}", path.display()))?;
    }
    Ok(())
}

pub fn run(cli: Cli) -> Result<()> {
    let Cli {
        state_dir,
        json,
        command,
    } = cli;
    match command {
        Command::Node(NodeCommand::Init(mut args)) => {
            // Read and check a given object first, so a bad one changes nothing.
            let object = match args.ebpf_object.take() {
                Some(path) => EbpfObject::from_file(&path)?,
                None => EbpfObject::embedded(),
            };
            let settings = args::init_settings(&state_dir, *args)?;
            enter_node_netns(settings.netns.as_deref())?;
            let report = ops::node::check(settings)?.init_with(&object)?;
            let exe = std::env::current_exe().context("locating the podnet binary")?;
            let collector = ops::collector::start(&report.settings, &exe)?;
            let view = render::InitView { report, collector };
            print(json, &view, render::init);
        }
        Command::Demo(args) => crate::demo::run(&args)?,
        Command::InstallCni(args) => install_cni(&state_dir, json, args)?,
        Command::Agent(args) => {
            let settings = args.settings(&state_dir)?;
            enter_node_netns(args.netns().as_deref())?;
            podnet::agent::run(&podnet::agent::AgentOptions {
                node_name: args.node_name.clone(),
                kubeconfig: args.kubeconfig.clone(),
                settings,
                metrics_addr: args.metrics_addr,
            })?;
        }
        command => {
            let settings = ops::node::load(&state_dir)?;
            enter_node_netns(settings.netns.as_deref())?;
            run_on_node(&Ctx::new(settings), json, command)?;
        }
    }
    Ok(())
}

fn run_on_node(ctx: &Ctx, json: bool, command: Command) -> Result<()> {
    match command {
        Command::Node(NodeCommand::Status) => {
            print(json, &ops::node::status(ctx)?, render::status);
        }
        Command::Node(NodeCommand::Reset) => print(json, &ops::node::reset(ctx)?, render::reset),
        Command::Node(NodeCommand::Peer(cmd)) => run_peer(ctx, json, cmd)?,
        Command::Pod(cmd) => run_pod(ctx, json, cmd)?,
        Command::Maps => print(json, &ops::stats::maps(ctx)?, render::maps),
        Command::Stats => print(json, &ops::stats::stats(ctx)?, render::stats),
        Command::Nodeport(cmd) => run_nodeport(ctx, json, cmd)?,
        Command::Service(cmd) => run_service(ctx, json, cmd)?,
        Command::Conntrack(ConntrackCommand::List) => {
            print(json, &ops::conntrack::list(ctx)?, |f| render::flows(f));
        }
        Command::Conntrack(ConntrackCommand::Gc { every: None }) => {
            print(json, &ops::conntrack::gc(ctx)?, render::ct_gc);
        }
        Command::Conntrack(ConntrackCommand::Gc { every: Some(secs) }) => {
            ops::collector::run(ctx, Duration::from_secs(secs), |pass| {
                print(json, pass, render::ct_gc);
            })?;
        }
        Command::Log { seconds } => podnet::datapath::log::follow(
            &ctx.settings.pin_dir,
            podnet_ebpf::abi::program_name::FROM_POD,
            seconds.map(Duration::from_secs),
            |line| println!("{line}"),
        )?,
        Command::Monitor {
            reasons,
            count,
            seconds,
        } => {
            let opts = ops::monitor::MonitorOptions {
                reasons,
                count,
                duration: seconds.map(Duration::from_secs),
            };
            let monitor = ops::monitor::Monitor::open(ctx, opts)?;
            eprintln!(
                "following drops and refusals on {} (Ctrl-C to stop)",
                ctx.settings.pin_dir.display()
            );
            let summary = monitor.run(|event| {
                render::print_line(json, event, render::drop_event);
            })?;
            eprintln!("{}", render::monitor_summary(&summary));
        }
        Command::Gc { keep } => {
            let keep = keep
                .iter()
                .map(|k| {
                    k.split_once('/')
                        .map(|(id, ifname)| (id.to_owned(), ifname.to_owned()))
                        .with_context(|| format!("--keep {k:?} is not CONTAINERID/IFNAME"))
                })
                .collect::<Result<Vec<_>>>()?;
            print(json, &ops::gc::gc_dead(ctx, &keep)?, render::gc);
        }
        Command::Node(NodeCommand::Init(_))
        | Command::Demo(_)
        | Command::InstallCni(_)
        | Command::Agent(_) => {
            unreachable!("handled before entering the node")
        }
    }
    Ok(())
}

fn run_pod(ctx: &Ctx, json: bool, cmd: PodCommand) -> Result<()> {
    match cmd {
        PodCommand::Add { name, netns } => {
            print(
                json,
                &ops::pod::add(ctx, &name, netns.as_deref())?,
                render::pod_added,
            );
        }
        PodCommand::Del { name } => print(json, &ops::pod::del(ctx, &name)?, render::pod_deleted),
        PodCommand::List => print(json, &ops::pod::list(ctx)?, |p| render::pods(p)),
    }
    Ok(())
}

fn install_cni(state_dir: &Path, json: bool, args: InstallCniArgs) -> Result<()> {
    let InstallCniArgs {
        bin_dir,
        conf_dir,
        mode,
        pod_cidr,
        node_name,
        kubeconfig,
        cluster_cidr,
        uplink,
        pin_dir,
    } = args;
    let pod_cidr = podnet::config::split_by_family("--pod-cidr", &pod_cidr)?;
    let cluster_cidr = podnet::config::split_by_family("--cluster-cidr", &cluster_cidr)?;
    let (mut pod_cidr6, mut cluster_cidr6) = (pod_cidr.v6, cluster_cidr.v6);
    let pod_cidr = match (pod_cidr.v4, node_name) {
        (Some(cidr), _) => cidr,
        (None, Some(node)) => {
            // A dual-stack Node gives both; an IPv4-only one on a dual-stack cluster runs IPv4.
            let (v4, v6) = podnet::agent::node_pod_cidrs(&node, kubeconfig.as_ref())?;
            pod_cidr6 = v6;
            cluster_cidr6 = cluster_cidr6.filter(|_| v6.is_some());
            v4
        }
        (None, None) if pod_cidr6.is_some() => {
            bail!("install-cni needs an IPv4 --pod-cidr too: IPv6-only nodes are not supported yet")
        }
        (None, None) => bail!("install-cni needs --pod-cidr or --node-name"),
    };
    let cluster_cidr = cluster_cidr
        .v4
        .ok_or_else(|| anyhow::anyhow!("install-cni needs an IPv4 --cluster-cidr"))?;
    let mode: podnet::cni::spec::Mode =
        serde_json::from_value(serde_json::Value::String(mode.clone()))
            .map_err(|_| anyhow::anyhow!("--mode {mode:?} is not chained or standalone"))?;
    let settings: NodeSettings = serde_json::from_value(serde_json::json!({
        "pod_cidr": pod_cidr.to_string(),
        "cluster_cidr": cluster_cidr.to_string(),
        "pod_cidr6": pod_cidr6,
        "cluster_cidr6": cluster_cidr6,
        "uplink": uplink,
        "pin_dir": pin_dir,
        "state_dir": state_dir,
    }))
    .context("invalid node settings")?;
    settings.validate()?;
    let exe = std::env::current_exe().context("locating the podnet binary")?;
    let report = podnet::cni::install::install(&exe, &bin_dir, &conf_dir, &settings, mode)?;
    print(json, &report, |r| {
        format!(
            "installed {} and {} (example of the other mode: {})",
            r.binary.display(),
            r.network.display(),
            r.example.display()
        )
    });
    Ok(())
}

fn run_peer(ctx: &Ctx, json: bool, cmd: PeerCommand) -> Result<()> {
    match cmd {
        PeerCommand::Add {
            name,
            node_ip,
            pod_cidr,
            pod_cidr6,
            node_ip6,
        } => {
            let peer = ops::peer::add(
                ctx,
                PeerNode {
                    name,
                    node_ip,
                    pod_cidr,
                    pod_cidr6,
                    node_ip6,
                },
            )?;
            print(json, &peer, |p| format!("peer added: {}", render::peer(p)));
        }
        PeerCommand::Del { name } => {
            let peer = ops::peer::del(ctx, &name)?;
            print(json, &peer, |p| {
                format!("peer deleted: {}", render::peer(p))
            });
        }
        PeerCommand::List => print(json, &ops::peer::list(ctx)?, |p| render::peers(p)),
    }
    Ok(())
}

fn run_nodeport(ctx: &Ctx, json: bool, cmd: NodePortCommand) -> Result<()> {
    let node_ip = ctx
        .settings
        .node_ip
        .map_or_else(|| "nodeIP".to_owned(), |ip| ip.to_string());
    let say = |verb: &str, np: &podnet::model::nodeport::NodePort| {
        format!("nodeport {verb}: {node_ip}:{}", render::nodeport(np))
    };
    match cmd {
        NodePortCommand::Add(NodePortArgs {
            port,
            proto,
            backends,
            policy,
        }) => {
            let np = ops::nodeport::add(ctx, port, proto, &backends, policy)?;
            print(json, &np, |np| say("added", np));
        }
        NodePortCommand::Set(NodePortArgs {
            port,
            proto,
            backends,
            policy: _,
        }) => {
            let np = ops::nodeport::set(ctx, port, proto, &backends)?;
            print(json, &np, |np| say("updated", np));
        }
        NodePortCommand::Del { port, proto } => {
            let np = ops::nodeport::del(ctx, port, proto)?;
            print(json, &np, |np| say("deleted", np));
        }
        NodePortCommand::Apply { file } => {
            let specs = ops::nodeport::read_specs(&file)?;
            print(json, &ops::nodeport::apply(ctx, &specs)?, render::applied);
        }
        NodePortCommand::List => {
            print(json, &ops::nodeport::list(ctx)?, |p| render::nodeports(p));
        }
    }
    Ok(())
}

fn run_service(ctx: &Ctx, json: bool, cmd: ServiceCommand) -> Result<()> {
    match cmd {
        ServiceCommand::Apply { file } => {
            let table = ops::service::read_table(&file)?;
            print(
                json,
                &ops::service::apply(ctx, table)?,
                render::services_applied,
            );
        }
        ServiceCommand::List => print(json, &ops::service::list(ctx)?, |s| render::services(s)),
        ServiceCommand::Show { name } => {
            print(json, &ops::service::show(ctx, &name)?, render::service);
        }
        ServiceCommand::Del { name } => {
            let gone = ops::service::del(ctx, &name)?;
            print(json, &gone, |s| {
                format!("service {}/{} deleted", s.namespace, s.name)
            });
        }
    }
    Ok(())
}
