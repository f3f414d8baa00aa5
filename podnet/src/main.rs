//! The `podnet` binary: argument parsing, entering the node's namespace, and printing. All the
//! work is in the library; errors become one clear line on stderr and a non-zero exit.

#![deny(clippy::too_many_lines)]

mod cli;
mod demo;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // Invoked by a container runtime as a CNI plugin (`"type": "podnet"`): runtimes pass the
    // request in the environment and no arguments, so a `podnet` command started with
    // arguments (e.g. the collector `node init` spawns from within a CNI ADD) is never
    // mistaken for one, whatever it inherited.
    if std::env::var_os("CNI_COMMAND").is_some() && std::env::args_os().len() == 1 {
        return podnet::cni::main();
    }
    let args = cli::args::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("podnet: error: {}", one_line(&err));
            cli::exit_status(&err)
        }
    }
}

/// The error and its causes on one line, like `{:#}`, but without repeating a cause that the
/// message before it already ends with (library errors such as `open PATH: {source}` name their
/// source in their own message).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if line.ends_with(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}
