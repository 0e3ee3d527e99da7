//! `loraplex adapters …`: a client of a running server's admin API.
//!
//! Exit codes a script can rely on: 0 done; 1 the server refused the request (its message is
//! printed); 3 the server could not be reached or failed; 4 the adapter failed local validation
//! (nothing was sent); clap's 2 for bad usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use loraplex_adapters::{inspect_dir, CONFIG_FILE, WEIGHTS_FILE};
use reqwest::blocking::{multipart, Client, RequestBuilder, Response};
use serde_json::Value;

#[derive(Args, Debug)]
#[command(
    after_help = "Exit codes: 0 done; 1 refused by the server (its reason is printed); \
2 bad usage; 3 server unreachable or failing; 4 local validation failed (nothing was sent)."
)]
pub struct AdaptersArgs {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        env = "LORAPLEX_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub url: String,
    /// The server's admin key (`--admin-api-key` of `loraplex serve`).
    #[arg(
        long,
        global = true,
        env = "LORAPLEX_ADMIN_KEY",
        hide_env_values = true
    )]
    pub admin_key: Option<String>,
    /// Print the server's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
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

/// Why a command failed, mapped to the exit codes above.
enum Failure {
    Refused(String),
    Unreachable(String),
    Invalid(String),
}

pub fn run(args: AdaptersArgs) -> ExitCode {
    let outcome = execute(&args);
    match outcome {
        Ok(v) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_human(&args.command, &v);
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Refused(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(3)
        }
        Err(Failure::Invalid(m)) => {
            eprintln!("error: invalid adapter, nothing was sent: {m}");
            ExitCode::from(4)
        }
    }
}

fn execute(args: &AdaptersArgs) -> Result<Value, Failure> {
    let base = args.url.trim_end_matches('/');
    let client = Client::builder()
        .timeout(None)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let auth = |rb: RequestBuilder| match &args.admin_key {
        Some(k) => rb.bearer_auth(k),
        None => rb,
    };
    let req = match &args.command {
        AdaptersCommand::Upload {
            path,
            name,
            description,
            labels,
        } => {
            let form = upload_form(path, name, description.as_deref(), labels, !args.json)?;
            // A refused key is answered before the body is read, which the client would see
            // as a broken upload; ask a cheap admin route first to get the server's reason.
            let probe = auth(client.get(format!("{base}/v1/adapters")))
                .send()
                .map_err(|e| Failure::Unreachable(format!("cannot reach {base}: {e}")))?;
            decode(probe)?;
            auth(client.post(format!("{base}/v1/adapters"))).multipart(form)
        }
        AdaptersCommand::Pull {
            source,
            name,
            revision,
            token,
            description,
        } => auth(client.post(format!("{base}/v1/adapters/pull"))).json(&serde_json::json!({
            "name": name, "source": source, "revision": revision, "token": token,
            "description": description,
        })),
        AdaptersCommand::List => auth(client.get(format!("{base}/v1/adapters"))),
        AdaptersCommand::Show { name } => auth(client.get(format!("{base}/v1/adapters/{name}"))),
        AdaptersCommand::Delete { name } => {
            auth(client.delete(format!("{base}/v1/adapters/{name}")))
        }
    };
    let resp = req
        .send()
        .map_err(|e| Failure::Unreachable(format!("cannot reach {base}: {e}")))?;
    decode(resp)
}

fn decode(resp: Response) -> Result<Value, Failure> {
    let status = resp.status();
    let body: Value = resp
        .json()
        .map_err(|e| Failure::Unreachable(format!("unexpected response ({status}): {e}")))?;
    if status.is_success() {
        return Ok(body);
    }
    let msg = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    let msg = format!("{msg} (HTTP {})", status.as_u16());
    if status.is_client_error() {
        Err(Failure::Refused(msg))
    } else {
        Err(Failure::Unreachable(msg))
    }
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
        inspect_dir(path).map_err(|e| Failure::Invalid(e.to_string()))?;
        vec![path.join(CONFIG_FILE), path.join(WEIGHTS_FILE)]
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err(Failure::Invalid(format!(
            "{} does not exist",
            path.display()
        )));
    };
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| Failure::Invalid(e.to_string()))?;
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
        let file = std::fs::File::open(f).map_err(|e| Failure::Invalid(e.to_string()))?;
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

fn print_human(cmd: &AdaptersCommand, v: &Value) {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
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
