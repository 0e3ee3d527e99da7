//! What the admin-API clients (`loraplex adapters`, `loraplex experiments`) share: the flags that
//! say which server and key, one HTTP client, and how outcomes map to exit codes, so a script
//! sees the same conventions from every subcommand.
//!
//! Exit codes: 0 done; 1 the server refused the request (its message is printed); 2 bad usage
//! (clap's); 3 the server could not be reached or failed; 4 local validation failed (nothing was
//! sent).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::Value;

/// The `after_help` both subcommands print.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 done; 1 refused by the server (its reason is \
printed); 2 bad usage; 3 server unreachable or failing; 4 local validation failed (nothing was sent).";

/// Which server, with which key, and how to print.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
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
}

/// Why a command failed, mapped to the exit codes above.
pub enum Failure {
    Refused(String),
    Unreachable(String),
    /// What was checked locally and failed; `what` names the thing ("adapter", "spec").
    Invalid {
        what: &'static str,
        msg: String,
    },
}

/// A blocking client bound to one server and key.
pub struct AdminClient {
    client: Client,
    base: String,
    key: Option<String>,
}

impl AdminClient {
    pub fn new(args: &AdminArgs) -> Result<Self, Failure> {
        let client = Client::builder()
            // Uploads and reports over large record sets take as long as they take.
            .timeout(None)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        Ok(Self {
            client,
            base: args.url.trim_end_matches('/').to_string(),
            key: args.admin_key.clone(),
        })
    }

    /// A request to `path` (starting with `/`) with the admin key attached.
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let rb = self.client.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// Sends and decodes: a 2xx body, or the failure it maps to.
    pub fn send(&self, rb: RequestBuilder) -> Result<Value, Failure> {
        let resp = rb
            .send()
            .map_err(|e| Failure::Unreachable(format!("cannot reach {}: {e}", self.base)))?;
        decode(resp)
    }
}

/// A 2xx JSON body, or the server's error message with the status.
pub fn decode(resp: Response) -> Result<Value, Failure> {
    let status = resp.status();
    let text = resp
        .text()
        .map_err(|e| Failure::Unreachable(format!("unexpected response ({status}): {e}")))?;
    if status.is_success() && text.trim().is_empty() {
        // A 204 (or an empty 200) is done, with nothing to print.
        return Ok(Value::Null);
    }
    let body: Value = serde_json::from_str(&text)
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

/// Prints the outcome (JSON, or the text `human` renders) and gives the exit code.
pub fn finish(json: bool, outcome: Result<Value, Failure>, human: impl FnOnce(&Value)) -> ExitCode {
    match outcome {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                human(&v);
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
        Err(Failure::Invalid { what, msg }) => {
            eprintln!("error: invalid {what}, nothing was sent: {msg}");
            ExitCode::from(4)
        }
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
