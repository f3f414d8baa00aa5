//! The test Kubernetes API server (`podnet_tests::apiserver`) as a process, for trying an agent
//! or `kubectl` against it by hand:
//!
//! ```text
//! podnet-test-apiserver [--listen 127.0.0.1:6443] [--netns /run/netns/NAME]
//!                       [--kubeconfig PATH] [--history N] [--bookmark-ms MS]
//! ```
//!
//! It prints `listening on http://ADDR` and serves until killed. Objects are created over REST
//! (POST), e.g. `kubectl --kubeconfig PATH create -f node.json`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use podnet_tests::apiserver::{ApiServer, Options};

fn main() -> Result<()> {
    let mut options = Options::default();
    let mut kubeconfig: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => options.listen = value()?.parse::<SocketAddr>()?,
            "--netns" => options.netns = Some(PathBuf::from(value()?)),
            "--kubeconfig" => kubeconfig = Some(PathBuf::from(value()?)),
            "--history" => options.history = value()?.parse()?,
            "--bookmark-ms" => {
                options.bookmark_interval = Duration::from_millis(value()?.parse()?);
            }
            other => bail!(
                "unknown argument {other:?}; usage: podnet-test-apiserver [--listen ADDR] \
                 [--netns PATH] [--kubeconfig PATH] [--history N] [--bookmark-ms MS]"
            ),
        }
    }
    let server = ApiServer::start(options).context("starting the API server")?;
    if let Some(path) = &kubeconfig {
        server
            .write_kubeconfig(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("listening on {}", server.url());
    loop {
        std::thread::park();
    }
}
