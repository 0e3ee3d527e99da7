//! `loraplex adapters …`: a client of a running server's admin API (exit codes and flags in
//! `admin`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use loraplex_adapters::{inspect_dir, CONFIG_FILE, WEIGHTS_FILE};
use reqwest::blocking::multipart;
use reqwest::Method;
use serde_json::Value;

use super::admin::{cell, finish, AdminArgs, AdminClient, Failure, EXIT_CODES_HELP};

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct AdaptersArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(subcommand)]
    pub command: AdaptersCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdaptersCommand {
    /// Upload a PEFT adapter folder, or a .tar/.tar.gz/.zip of one; re-uploading a name makes a
    /// new version that new requests use at once.
    Upload {
        path: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// `key=value`, repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Have the server fetch an adapter from the hub (`org/name`) or from a server folder under
    /// its allowed root.
    Pull {
        source: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        revision: Option<String>,
        /// Hub token for a private repo.
        #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List adapters: name, version, rank, size, residency, requests.
    List,
    /// One adapter with its versions.
    Show { name: String },
    /// Delete an adapter and all its versions.
    Delete { name: String },
}

pub fn run(args: AdaptersArgs) -> ExitCode {
    let outcome = execute(&args);
    finish(args.admin.json, outcome, |v| print_human(&args.command, v))
}

fn execute(args: &AdaptersArgs) -> Result<Value, Failure> {
    let api = AdminClient::new(&args.admin)?;
    let req = match &args.command {
        AdaptersCommand::Upload {
            path,
            name,
            description,
            labels,
        } => {
            let form = upload_form(path, name, description.as_deref(), labels, !args.admin.json)?;
            // A refused key is answered before the body is read, which the client would see
            // as a broken upload; ask a cheap admin route first to get the server's reason.
            api.send(api.request(Method::GET, "/v1/adapters"))?;
            api.request(Method::POST, "/v1/adapters").multipart(form)
        }
        AdaptersCommand::Pull {
            source,
            name,
            revision,
            token,
            description,
        } => api
            .request(Method::POST, "/v1/adapters/pull")
            .json(&serde_json::json!({
                "name": name, "source": source, "revision": revision, "token": token,
                "description": description,
            })),
        AdaptersCommand::List => api.request(Method::GET, "/v1/adapters"),
        AdaptersCommand::Show { name } => api.request(Method::GET, &format!("/v1/adapters/{name}")),
        AdaptersCommand::Delete { name } => {
            api.request(Method::DELETE, &format!("/v1/adapters/{name}"))
        }
    };
    api.send(req)
}

/// The multipart body; a folder is checked locally first (the checks that need no base model).
fn upload_form(
    path: &Path,
    name: &str,
    description: Option<&str>,
    labels: &[String],
    progress: bool,
) -> Result<multipart::Form, Failure> {
    let mut form = multipart::Form::new().text("name", name.to_string());
    if let Some(d) = description {
        form = form.text("description", d.to_string());
    }
    for l in labels {
        if !l.contains('=') {
            return Err(Failure::Refused(format!(
                "--label {l:?}: expected key=value"
            )));
        }
        form = form.text("label", l.clone());
    }
    let files: Vec<PathBuf> = if path.is_dir() {
        inspect_dir(path).map_err(invalid)?;
        vec![path.join(CONFIG_FILE), path.join(WEIGHTS_FILE)]
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err(Failure::Invalid {
            what: "adapter",
            msg: format!("{} does not exist", path.display()),
        });
    };
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()))
        .collect::<std::io::Result<_>>()
        .map_err(invalid)?;
    let bar = if progress {
        let b = indicatif::ProgressBar::new(sizes.iter().sum());
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    for (f, len) in files.iter().zip(sizes) {
        let file = std::fs::File::open(f).map_err(invalid)?;
        let file_name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let part =
            multipart::Part::reader_with_length(bar.wrap_read(file), len).file_name(file_name);
        form = form.part("file", part);
    }
    Ok(form)
}

fn invalid(e: impl std::fmt::Display) -> Failure {
    Failure::Invalid {
        what: "adapter",
        msg: e.to_string(),
    }
}

fn print_human(cmd: &AdaptersCommand, v: &Value) {
    let s = cell;
    match cmd {
        AdaptersCommand::List => {
            println!(
                "{:<32} {:>7} {:>5} {:>12} {:>8} {:>9}",
                "NAME", "VERSION", "RANK", "SIZE", "RESIDENT", "REQUESTS"
            );
            for a in v["data"].as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:>7} {:>5} {:>12} {:>8} {:>9}",
                    s(&a["id"]),
                    s(&a["version"]),
                    s(&a["rank"]),
                    s(&a["size"]),
                    if a["resident"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                    s(&a["requests"])
                );
            }
        }
        AdaptersCommand::Delete { name } => println!("deleted {name}"),
        _ => {
            for key in [
                "id",
                "version",
                "sha256",
                "rank",
                "targets",
                "size",
                "base_model",
                "description",
                "resident",
                "requests",
            ] {
                println!("{key:<12} {}", s(&v[key]));
            }
            for ver in v["versions"].as_array().into_iter().flatten() {
                println!(
                    "  version {:>3}  {}  rank {}  {} bytes",
                    s(&ver["version"]),
                    s(&ver["sha256"]),
                    s(&ver["rank"]),
                    s(&ver["size"])
                );
            }
        }
    }
}
