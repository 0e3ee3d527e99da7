//! `loraplex serve`: the OpenAI-compatible server, with vLLM-style flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use loraplex_adapters::{AdapterLimits, AdapterRegistry, AdapterStore, CacheConfig, DirStore};
use loraplex_gateway::experiments::{read_routes_file, RouteTable, SystemClock};
use loraplex_gateway::records::{Recorder, RecorderConfig};
use loraplex_gateway::shadow::ShadowConfig;
use loraplex_gateway::{AppState, GatewayConfig};
use loraplex_models::{HubOptions, KernelChoice, WeightDtype};
use loraplex_runtime::{EngineConfig, SchedulerConfig};

pub const DEFAULT_MODEL: &str = "weights/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A `.gguf` file, a Hugging Face model directory, or a hub id.
    #[arg(default_value = DEFAULT_MODEL)]
    pub model: String,
    #[arg(long, default_value = "auto")]
    pub dtype: WeightDtype,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The CPU kernels: auto (the fastest this CPU runs), portable, avx2, avxvnni, avx512, or
    /// candle (candle's generic ops, the path every GPU takes).
    #[arg(long, default_value = "auto")]
    pub cpu_kernels: KernelChoice,
    /// A Jinja chat template used instead of the model's own (a file, or the template itself).
    #[arg(long)]
    pub chat_template: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed at start-up).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The id clients use for the base model (default: the model's file or folder name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Adapters as `name=path`, repeatable.
    #[arg(long, num_args = 1..)]
    pub lora_modules: Vec<String>,
    /// Every PEFT folder in this directory becomes an adapter named after the folder.
    #[arg(long)]
    pub adapter_dir: Option<PathBuf>,
    /// Adapters active at once (and distinct adapters in one batch).
    #[arg(long, default_value_t = 8)]
    pub max_loras: usize,
    #[arg(long, default_value_t = 64)]
    pub max_lora_rank: usize,
    /// Validated adapters kept in memory, active ones included.
    #[arg(long, default_value_t = 32)]
    pub max_cpu_loras: usize,
    /// Bytes of active adapter weights.
    #[arg(long, default_value_t = 2 << 30)]
    pub max_lora_bytes: usize,
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Tokens per engine step (prefill chunks and decodes together).
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Longest prompt + completion (default: the model's context).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Requests allowed to wait; more get 429.
    #[arg(long, default_value_t = 1024)]
    pub max_queue: usize,
    /// Milliseconds a step may wait for adapter loads in flight, so their requests join it.
    #[arg(long, default_value_t = 20)]
    pub max_adapter_load_wait_ms: u64,
    #[arg(long, env = "LORAPLEX_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds before a request is abandoned.
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// Seconds a graceful shutdown waits for running requests.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// Where uploaded and pulled adapters are kept (default: the user's data dir).
    #[arg(long, env = "LORAPLEX_ADAPTER_STORE")]
    pub adapter_store: Option<PathBuf>,
    /// Key of the admin API (adapter upload/pull/delete); inference keys are refused there.
    #[arg(long, env = "LORAPLEX_ADMIN_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Largest adapter upload in bytes (also bounds what an archive may unpack to).
    #[arg(long, default_value_t = 512 << 20)]
    pub max_upload_bytes: usize,
    /// Server folder under which pulls and `load_lora_adapter` may read adapters.
    #[arg(long)]
    pub allowed_local_adapter_root: Option<PathBuf>,
    /// Routes (experiments) to serve, TOML, YAML or JSON: applied at start-up over the
    /// persisted ones (all or nothing), then kept with them.
    #[arg(long)]
    pub routes: Option<PathBuf>,
    /// Where routes are persisted (default: `.routes` in the adapter store).
    #[arg(long)]
    pub routes_dir: Option<PathBuf>,
    /// Where request, shadow and feedback records (JSONL) go (default: `.records` in the
    /// adapter store).
    #[arg(long)]
    pub records_dir: Option<PathBuf>,
    /// Shadow jobs waiting to run; past this they are dropped (and counted).
    #[arg(long, default_value_t = 256)]
    pub shadow_queue: usize,
    /// Shadow jobs in the engine at once.
    #[arg(long, default_value_t = 4)]
    pub shadow_concurrency: usize,
    /// Tokens of shadow work a step may carry beside interactive work (idle steps give shadows
    /// the whole budget); 0, the default, runs shadows only in steps without interactive work,
    /// which on a CPU is what keeps them from slowing the streams they shadow.
    #[arg(long, default_value_t = 0)]
    pub shadow_step_tokens: usize,
}

/// `$XDG_DATA_HOME/loraplex/adapters` or the platform's equivalent.
fn default_store() -> anyhow::Result<PathBuf> {
    Ok(dirs::data_dir()
        .context("no data directory for this user; pass --adapter-store")?
        .join("loraplex")
        .join("adapters"))
}

pub fn run(args: ServeArgs, hub: HubOptions) -> anyhow::Result<()> {
    let opts = loraplex_models::LoadOptions {
        dtype: args.dtype,
        device: loraplex_models::parse_device(&args.device)?,
        kernels: args.cpu_kernels,
        hub: hub.clone(),
        chat_template: super::chat_template_arg(args.chat_template.as_deref())?,
    };
    let lm = Arc::new(
        loraplex_models::load(&args.model, &opts)
            .with_context(|| format!("loading {}", args.model))?,
    );
    tracing::info!(
        kernels = lm.model.kernels().name(),
        weight_bytes = lm.model.weight_bytes(),
        "model loaded"
    );
    let context = lm.model.config().max_position_embeddings;
    let max_model_len = args.max_model_len.unwrap_or(context);
    anyhow::ensure!(
        max_model_len <= context,
        "--max-model-len {max_model_len} exceeds the model's context {context}"
    );
    let registry = AdapterRegistry::new();
    let store_dir = match &args.adapter_store {
        Some(d) => d.clone(),
        None => default_store()?,
    };
    let (store, check) = DirStore::open(&store_dir)
        .with_context(|| format!("opening the adapter store {}", store_dir.display()))?;
    tracing::info!(store = %store_dir.display(), ?check, "adapter store opened");
    for s in store.list()? {
        registry.register_version(&s.manifest.name, s.dir, Some(s.manifest.recorded()));
    }
    if let Some(dir) = &args.adapter_dir {
        let names = registry
            .scan_dir(dir)
            .with_context(|| format!("--adapter-dir {}", dir.display()))?;
        tracing::info!(?names, "adapters from {}", dir.display());
    }
    for spec in &args.lora_modules {
        let (name, path) = spec
            .split_once('=')
            .with_context(|| format!("--lora-modules {spec:?}: expected name=path"))?;
        anyhow::ensure!(
            std::path::Path::new(path).is_dir(),
            "--lora-modules {name}: {path} is not a folder"
        );
        if registry.get(name).is_some() {
            tracing::warn!(
                adapter = name,
                "--lora-modules overrides the stored adapter of this name"
            );
        }
        registry.register(name, PathBuf::from(path));
    }
    let served = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| lm.name.clone());
    anyhow::ensure!(
        registry.get(&served).is_none(),
        "an adapter is named like the base model ({served})"
    );
    let engine_cfg = EngineConfig {
        scheduler: SchedulerConfig {
            max_running: args.max_num_seqs,
            max_step_tokens: args.max_num_batched_tokens,
            max_waiting: args.max_queue,
            shadow_step_tokens: args.shadow_step_tokens,
        },
        cache: CacheConfig {
            max_loras: args.max_loras,
            max_bytes: args.max_lora_bytes,
            max_cpu_loras: args.max_cpu_loras,
        },
        limits: AdapterLimits {
            max_rank: args.max_lora_rank,
        },
        load_wait: std::time::Duration::from_millis(args.max_adapter_load_wait_ms),
    };
    let engine = loraplex_runtime::start(lm.clone(), registry, engine_cfg)?;
    let cfg = GatewayConfig {
        served_model_name: served,
        api_key: args.api_key.clone(),
        max_model_len,
        max_body_bytes: args.max_body_bytes,
        request_timeout: Duration::from_secs(args.request_timeout),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        admin_api_key: args.admin_api_key.clone(),
        max_upload_bytes: args.max_upload_bytes,
        allowed_local_adapter_root: args.allowed_local_adapter_root.clone(),
        hub: hub.clone(),
    };
    let is_loopback = args.host == "127.0.0.1" || args.host == "::1" || args.host == "localhost";
    if cfg.admin_api_key.is_none() && cfg.api_key.is_none() && !is_loopback {
        tracing::warn!("the admin API is open to the network: set --admin-api-key");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Inside the store, in dot folders the store never takes for adapters: a replica sharing
    // the store shares its routes and records.
    let routes_dir = args
        .routes_dir
        .clone()
        .unwrap_or_else(|| store_dir.join(".routes"));
    let records_dir = args
        .records_dir
        .clone()
        .unwrap_or_else(|| store_dir.join(".records"));
    let table = RouteTable::open(
        Some(&routes_dir),
        &cfg.served_model_name,
        Arc::new(SystemClock),
    )
    .map_err(|e| anyhow::anyhow!("opening the routes in {}: {e}", routes_dir.display()))?;
    let routes_file = match &args.routes {
        Some(path) => Some(
            read_routes_file(path)
                .map_err(|e| anyhow::anyhow!("--routes {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let recorder = Recorder::start(RecorderConfig::new(&records_dir));
    tracing::info!(routes = %routes_dir.display(), records = %records_dir.display(), "experiments");
    rt.block_on(async {
        let state = AppState::new(cfg, engine.clone(), lm, loraplex_gateway::install_metrics())
            .with_store(Arc::new(store))
            .with_experiments(Arc::new(table))
            .with_recorder(recorder.clone())
            .with_shadow_queue(ShadowConfig {
                capacity: args.shadow_queue,
                concurrency: args.shadow_concurrency,
                ..ShadowConfig::default()
            });
        if let Some(specs) = routes_file {
            let st = state.clone();
            tokio::task::spawn_blocking(move || st.experiments.sync(specs, &st))
                .await?
                .map_err(|e| anyhow::anyhow!("--routes: {e}"))?;
        }
        let addr: SocketAddr = format!("{}:{}", args.host, args.port)
            .parse()
            .context("--host/--port")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!("listening on http://{local}");
        eprintln!("loraplex: listening on http://{local}");
        loraplex_gateway::run(listener, state, shutdown_signal()).await?;
        recorder.flush().await;
        anyhow::Ok(())
    })?;
    engine.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
