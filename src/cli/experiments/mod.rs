//! `loraplex experiments …`: routes and experiments on a running server, through its admin API
//! (`/v1/experiments`). Same flags, key and exit codes as `loraplex adapters` (see `admin`).
//!
//! `spec` turns flags into request bodies, `render` turns answers into text; this file only
//! sends.

mod render;
mod report;
mod spec;

use std::io::Read;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::admin::{finish, AdminArgs, AdminClient, Failure, EXIT_CODES_HELP};
use spec::{CreateFlags, UpdateFlags};

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct ExperimentsArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(subcommand)]
    pub command: ExperimentsCommand,
}

#[derive(Subcommand, Debug)]
pub enum ExperimentsCommand {
    /// Create a route: a model name clients send, served by a policy (single, segmented, ab,
    /// switchback), with optional shadows.
    #[command(after_help = CREATE_EXAMPLES)]
    Create(Box<CreateFlags>),
    /// List routes: name, type, status, arms, shadows.
    List,
    /// One route: its arms, segments, shadows and, for a switchback, the coming windows.
    Show { name: String },
    /// Change a live route: weights, pause/resume, shadows, segment entries.
    Update {
        name: String,
        #[command(flatten)]
        flags: UpdateFlags,
    },
    /// Stop a route: its name stops routing (404 for new requests); its records stay.
    Stop { name: String },
    /// Per-arm requests, errors, TTFT/latency, feedback with 95% intervals, the differences
    /// against the control arm, and the shadows' scores.
    Report { name: String },
}

const CREATE_EXAMPLES: &str = "Examples:
  loraplex experiments create --name support --type ab --unit user \\
      --arm a=support-v1:50 --arm b=support-v2:50 --shadow support-v3@0.25
  loraplex experiments create --name batch --type switchback --window-s 600 --burn-in-s 60 \\
      --seed 7 --arm a=ad-v1 --arm b=ad-v2
  loraplex experiments create --name assist --segment-key geo \\
      --segment eu=assist-eu --segment us=assist-us --default assist-base
  loraplex experiments create --file routes/support.toml";

pub fn run(args: ExperimentsArgs) -> ExitCode {
    let outcome = execute(&args);
    finish(args.admin.json, outcome, |v| {
        print!("{}", render::human(&args.command, v, render::now_ms()))
    })
}

fn execute(args: &ExperimentsArgs) -> Result<Value, Failure> {
    // Local checks first: a bad spec or an empty update sends nothing.
    let body = match &args.command {
        ExperimentsCommand::Create(flags) => Some(match &flags.file {
            Some(path) => read_spec(path)?,
            None => spec::create_body(flags),
        }),
        ExperimentsCommand::Update { flags, .. } => {
            Some(spec::update_body(flags).ok_or_else(|| {
                Failure::Invalid {
                    what: "update",
                    msg: "nothing to change: give --weight, --pause, --resume, --shadow, \
                      --no-shadows, --segment, --unset-segment or --default"
                        .into(),
                }
            })?)
        }
        _ => None,
    };
    let api = AdminClient::new(&args.admin)?;
    let path = |name: &str| format!("/v1/experiments/{name}");
    let req = match &args.command {
        ExperimentsCommand::Create(_) => api.request(Method::POST, "/v1/experiments"),
        ExperimentsCommand::List => api.request(Method::GET, "/v1/experiments"),
        ExperimentsCommand::Show { name } => api.request(Method::GET, &path(name)),
        ExperimentsCommand::Update { name, .. } => api.request(Method::PATCH, &path(name)),
        ExperimentsCommand::Stop { name } => api.request(Method::DELETE, &path(name)),
        ExperimentsCommand::Report { name } => {
            api.request(Method::GET, &format!("{}/report", path(name)))
        }
    };
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    api.send(req)
}

fn read_spec(path: &str) -> Result<Value, Failure> {
    let invalid = |msg: String| Failure::Invalid {
        what: "spec",
        msg: format!("{path}: {msg}"),
    };
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| invalid(e.to_string()))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?
    };
    spec::parse_spec(&text, path).map_err(invalid)
}
