//! Reading a PEFT adapter and checking it against the base model. Everything is validated before
//! any `LoraWeights` exists, so a refused adapter leaves no trace.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device};

use loraplex_models::{
    Kernels, LoraDelta, LoraPrecision, LoraTarget, LoraWeights, ModelConfig, Proj, RopeLayout,
};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{AdapterError, Result};
use crate::peft::PeftConfig;
use crate::targets::{check_base_name, module_name, targets};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// What an adapter is checked against.
#[derive(Debug, Clone)]
pub struct BaseModel {
    pub config: ModelConfig,
    /// The served base's name, compared with `base_model_name_or_path`.
    pub name: String,
    /// Dtype and device the deltas are held in (the model's activations).
    pub dtype: DType,
    pub device: Device,
    /// How the CPU holds the deltas (the model's choice, see `Decoder::lora_precision`).
    pub precision: LoraPrecision,
    /// What runs the model: the CPU wing holds deltas on the host, candle's ops as tensors.
    pub kernels: Kernels,
}

impl BaseModel {
    pub fn of(lm: &loraplex_models::LoadedModel) -> Self {
        Self {
            config: lm.model.config().clone(),
            name: lm.name.clone(),
            dtype: lm.model.dtype(),
            device: lm.model.device().clone(),
            precision: lm.model.lora_precision(),
            kernels: lm.model.kernels(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AdapterLimits {
    /// Largest rank accepted (`--max-lora-rank`).
    pub max_rank: usize,
}

impl Default for AdapterLimits {
    fn default() -> Self {
        Self { max_rank: 64 }
    }
}

/// Facts about a validated adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// sha256 over the config and weights bytes: what a store records and shows. `None` when
    /// the load did not need it (see [`Identity::Checksum`]).
    pub sha256: Option<String>,
    /// Tensor-wise xxh3-128 over the same bytes (`t1:` prefix): computed while converting (no
    /// extra pass), always from the bytes actually loaded, so it is the key of any cache.
    pub checksum: String,
    pub rank: usize,
    pub alpha: f64,
    /// PEFT module names adapted, e.g. `q_proj`.
    pub targets: Vec<String>,
    pub modules: usize,
    /// Bytes of the deltas as held in memory.
    pub bytes: usize,
    pub base_model: Option<String>,
}

/// What a store recorded when it accepted a version. Loading a recorded version re-checks only
/// the fast checksum (sha256 would dominate a cold load) and keeps the recorded sha256 as the identity; without a checksum the sha256 is recomputed
/// and compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub sha256: String,
    pub checksum: Option<String>,
    /// The store's version number, reported to clients (routes name versions by it); not
    /// part of what a load checks.
    pub version: Option<u64>,
}

/// What a load does to name the version it read.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// Hash every byte with sha256: bytes about to be recorded (uploads) or shown.
    Sha256,
    /// A version a store recorded: its checksum is re-checked (its sha256 recomputed only when
    /// it recorded none) and its sha256 kept.
    Recorded(&'a Recorded),
    /// Only the checksum computed while converting: a folder given by flag, whose sha256 no
    /// store records and no API shows. Hashing it was two thirds of its cold load.
    Checksum,
}

#[derive(Debug)]
pub struct LoadedAdapter {
    pub weights: LoraWeights,
    pub info: AdapterInfo,
}

fn io_error(path: &Path, e: std::io::Error) -> AdapterError {
    match e.kind() {
        std::io::ErrorKind::NotFound => AdapterError::NotFound(path.to_path_buf()),
        _ => AdapterError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    }
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_error(path, e))
}

/// Loads `adapter_config.json` + `adapter_model.safetensors` from a PEFT folder, with its
/// sha256.
///
/// The weights are mapped, not read: hashing and conversion then read the page cache directly
/// instead of a copy of it (a fifth of a cold load's time for a 20 MB adapter).
pub fn load_dir(dir: &Path, base: &BaseModel, limits: &AdapterLimits) -> Result<LoadedAdapter> {
    load_dir_checked(dir, base, limits, Identity::Sha256)
}

/// [`load_dir`] naming the version as `identity` says; a recorded version whose bytes changed
/// since is refused.
pub fn load_dir_checked(
    dir: &Path,
    base: &BaseModel,
    limits: &AdapterLimits,
    identity: Identity<'_>,
) -> Result<LoadedAdapter> {
    let config = read(&dir.join(CONFIG_FILE))?;
    let path = dir.join(WEIGHTS_FILE);
    let file = std::fs::File::open(&path).map_err(|e| io_error(&path, e))?;
    let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
    if empty {
        // Nothing to map (mapping zero bytes is an error on some systems); the parser says why.
        return load_bytes_checked(&config, &[], &path, base, limits, identity);
    }
    // Populated: one pass of read-ahead instead of a page fault per 4 KiB on first touch.
    // SAFETY: store versions are immutable (written once, then renamed into place), and a
    // folder given by flag is the operator's; a file truncated while mapped could fault, which
    // is the same trust `mmap`-loading model weights already asks for. Tensors are read from
    // the mapping more than once (checked, then converted), so a folder rewritten in place
    // during its load could build values that were never checked; replacing files by rename,
    // as the store does, cannot.
    let weights = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
        .map_err(|e| io_error(&path, e))?;
    load_bytes_checked(&config, &weights, &path, base, limits, identity)
}

/// Validates and builds an adapter from the two files' bytes (`origin` names them in errors).
///
/// Tensors are read in place from the buffer, each converted to f32 and checked for non-finite
/// values in one pass (tensors in parallel), while the sha256 runs alongside.
pub fn load_bytes(
    config: &[u8],
    weights: &[u8],
    origin: &Path,
    base: &BaseModel,
    limits: &AdapterLimits,
) -> Result<LoadedAdapter> {
    load_bytes_checked(config, weights, origin, base, limits, Identity::Sha256)
}

/// Whole-file xxh3-128 over the same framing as the sha256: the checksum format of versions
/// recorded before tensor-wise checksums (no prefix); still verified for them.
fn whole_file_checksum(config: &[u8], weights: &[u8]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(config.len() as u64).to_le_bytes());
    h.update(config);
    h.update(weights);
    format!("{:032x}", h.digest128())
}

/// Prefix of tensor-wise checksums: xxh3-128 over the config, the safetensors header and each
/// tensor's own xxh3-128 (by name). Each tensor is hashed by the task that converts it, while its
/// bytes are in cache, so verifying a stored version costs no extra pass over the file. The
/// header fixes every tensor's offsets and safetensors rejects bytes outside them, so every byte
/// of the file is covered.
const TENSORWISE: &str = "t1:";

fn tensorwise_checksum(config: &[u8], weights: &[u8], mut digests: Vec<(&str, u128)>) -> String {
    let header_len = weights.get(..8).map_or(0, |b| {
        u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize
    });
    let header = weights.get(..8 + header_len).unwrap_or(weights);
    digests.sort_unstable();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(config.len() as u64).to_le_bytes());
    h.update(config);
    h.update(&(weights.len() as u64).to_le_bytes());
    h.update(header);
    for (name, d) in digests {
        h.update(name.as_bytes());
        h.update(&d.to_le_bytes());
    }
    format!("{TENSORWISE}{:032x}", h.digest128())
}

/// [`tensorwise_checksum`] on its own, for bytes that failed to build (to tell corruption from
/// an adapter that was always bad). `None` when the file does not even parse.
fn tensorwise_checksum_of(config: &[u8], weights: &[u8]) -> Option<String> {
    let st = safetensors::SafeTensors::deserialize(weights).ok()?;
    let views = st.tensors();
    let digests = views
        .iter()
        .map(|(n, v)| (n.as_str(), xxhash_rust::xxh3::xxh3_128(v.data())))
        .collect();
    Some(tensorwise_checksum(config, weights, digests))
}

/// The version identity's framing, in one place for bytes in memory and for files: sha256
/// over the config's length (u64, little-endian), then `feed`, which hashes the config's and
/// the weights' bytes in that order.
fn framed_sha256<E>(
    config_len: u64,
    feed: impl FnOnce(&mut Sha256) -> std::result::Result<(), E>,
) -> std::result::Result<String, E> {
    let mut h = Sha256::new();
    h.update(config_len.to_le_bytes());
    feed(&mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// [`sha256`] of the two files, read in pieces rather than whole.
pub(crate) fn sha256_files(config: &Path, weights: &Path) -> Result<String> {
    let len = std::fs::metadata(config)
        .map_err(|e| io_error(config, e))?
        .len();
    framed_sha256(len, |h| {
        for p in [config, weights] {
            let mut f = std::fs::File::open(p).map_err(|e| io_error(p, e))?;
            std::io::copy(&mut f, h).map_err(|e| io_error(p, e))?;
        }
        Ok(())
    })
}

pub(crate) fn sha256(config: &[u8], weights: &[u8]) -> String {
    let Ok(hash) = framed_sha256::<std::convert::Infallible>(config.len() as u64, |h| {
        h.update(config);
        h.update(weights);
        Ok(())
    });
    hash
}

/// [`load_bytes`] naming the version as `identity` says; a recorded version is checked against
/// its record.
pub fn load_bytes_checked(
    config: &[u8],
    weights: &[u8],
    origin: &Path,
    base: &BaseModel,
    limits: &AdapterLimits,
    identity: Identity<'_>,
) -> Result<LoadedAdapter> {
    let recorded = match identity {
        Identity::Recorded(r) => Some(r),
        _ => None,
    };
    let recorded_sum = recorded.and_then(|r| r.checksum.as_deref());
    let ((hash, old_sum), built) = rayon::join(
        || {
            // A recorded checksum lets the recorded sha256 stand; a record without one has its
            // sha256 recomputed and compared; `Checksum` loads compute none.
            let hash = match identity {
                Identity::Recorded(r) if r.checksum.is_some() => Some(r.sha256.clone()),
                Identity::Sha256 | Identity::Recorded(_) => Some(sha256(config, weights)),
                Identity::Checksum => None,
            };
            let old = recorded_sum
                .filter(|c| !c.starts_with(TENSORWISE))
                .map(|_| whole_file_checksum(config, weights));
            (hash, old)
        },
        || build(config, weights, origin, base, limits),
    );
    let corrupt = |r: &Recorded| AdapterError::Corrupt {
        path: origin.to_path_buf(),
        reason: format!("the bytes no longer match version {}", r.sha256),
    };
    if let Some(r) = recorded {
        let sum_now = match (&built, &old_sum) {
            (_, Some(old)) => Some(old.clone()),
            (Ok(b), None) => Some(b.checksum.clone()),
            (Err(_), None) => tensorwise_checksum_of(config, weights),
        };
        if Some(&r.sha256) != hash.as_ref()
            || recorded_sum.is_some_and(|c| Some(c) != sum_now.as_deref())
        {
            return Err(corrupt(r));
        }
    }
    let Built {
        weights: weights_obj,
        cfg,
        targets,
        max_rank,
        checksum,
    } = built?;
    let info = AdapterInfo {
        sha256: hash,
        checksum,
        rank: max_rank,
        alpha: cfg.lora_alpha,
        targets,
        modules: weights_obj.len(),
        bytes: weights_obj.size_in_bytes(),
        base_model: cfg.base_model_name_or_path.clone(),
    };
    Ok(LoadedAdapter {
        weights: weights_obj,
        info,
    })
}

/// A tensor of the file as f32, with its shape: borrowed from the file's bytes where they
/// already are f32 in place (aligned, little-endian), else converted.
pub(crate) struct Host<'a> {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Cow<'a, [f32]>,
    /// xxh3-128 of the tensor's bytes (see [`tensorwise_checksum`]).
    pub(crate) digest: u128,
}

pub(crate) fn read_tensor<'a>(
    name: &str,
    view: &safetensors::tensor::TensorView<'a>,
) -> Result<Host<'a>> {
    let bytes = view.data();
    let digest = xxhash_rust::xxh3::xxh3_128(bytes);
    let data: Cow<'a, [f32]> = match view.dtype() {
        safetensors::Dtype::F32 => f32_from_le(bytes),
        safetensors::Dtype::F16 => Cow::Owned(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        safetensors::Dtype::BF16 => Cow::Owned(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        other => {
            return Err(AdapterError::BadTensor {
                tensor: name.to_string(),
                reason: format!("dtype {other:?} (expected f32, f16 or bf16)"),
            })
        }
    };
    // A branch-free pass first (it vectorizes); the position only when something is wrong.
    if data.iter().fold(false, |bad, x| bad | !x.is_finite()) {
        let i = data
            .iter()
            .position(|x| !x.is_finite())
            .expect("found above");
        return Err(AdapterError::BadTensor {
            tensor: name.to_string(),
            reason: format!("non-finite value {} at flat index {i}", data[i]),
        });
    }
    Ok(Host {
        shape: view.shape().to_vec(),
        data,
        digest,
    })
}

/// Little-endian f32 bytes (safetensors' byte order) as values: the bytes themselves where
/// they are aligned on a little-endian machine (a mapped file's tensors usually are; copying
/// them was a tenth of a cold load), else a copy.
fn f32_from_le(bytes: &[u8]) -> Cow<'_, [f32]> {
    let n = bytes.len() / 4;
    if cfg!(target_endian = "little") {
        // SAFETY: every bit pattern is a valid f32, and on a little-endian machine these bytes
        // are exactly the values; `align_to` yields only the correctly aligned middle part.
        let (head, mid, _) = unsafe { bytes[..4 * n].align_to::<f32>() };
        if head.is_empty() && mid.len() == n {
            return Cow::Borrowed(mid);
        }
        let mut v = Vec::<f32>::with_capacity(n);
        // SAFETY: `v` has room for `n` f32s, i.e. `4n` bytes, all of which are written before
        // `set_len`; on a little-endian machine these bytes are exactly the values.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, 4 * n);
            v.set_len(n);
        }
        Cow::Owned(v)
    } else {
        Cow::Owned(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

struct Built {
    weights: LoraWeights,
    cfg: PeftConfig,
    targets: Vec<String>,
    max_rank: usize,
    /// Tensor-wise, see [`tensorwise_checksum`].
    checksum: String,
}

/// One module: its deltas (several for a fused module), the module, its rank, and the digests
/// of its two tensors (by name).
type BuiltModule<'a> = (
    Vec<((usize, Proj), LoraDelta)>,
    Proj,
    usize,
    [(&'a str, u128); 2],
);

/// A module's `lora_A` and `lora_B` tensor names, as found in the file.
type PairNames<'a> = (Option<&'a str>, Option<&'a str>);

fn build(
    config: &[u8],
    weights: &[u8],
    origin: &Path,
    base: &BaseModel,
    limits: &AdapterLimits,
) -> Result<Built> {
    let text =
        std::str::from_utf8(config).map_err(|_| AdapterError::InvalidConfig("not UTF-8".into()))?;
    let cfg = PeftConfig::parse(text)?;
    if let Some(b) = &cfg.base_model_name_or_path {
        if check_base_name(b, &base.name, base.config.arch())? {
            tracing::warn!(adapter_base = %b, base = %base.name, "adapter was trained on a differently named base model");
        }
    }
    if cfg.fan_in_fan_out {
        tracing::warn!(
            "fan_in_fan_out is set but Llama projections are plain linear layers; ignoring it"
        );
    }
    let arch = base.config.arch();
    let table = targets(arch);
    let targeted = cfg.targeted(arch, base.config.num_layers)?;
    let st = safetensors::SafeTensors::deserialize(weights).map_err(|e| AdapterError::Corrupt {
        path: origin.to_path_buf(),
        reason: e.to_string(),
    })?;
    let by_module: HashMap<String, (usize, Proj)> = (0..base.config.num_layers)
        .flat_map(|l| {
            table
                .iter()
                .map(move |(p, _)| (module_name(l, *p), (l, *p)))
        })
        .collect();
    // Names first (cheap, and the errors a user most often hits), then one task per module that
    // reads, checks and converts its pair: a cold load is mostly this, and keeping each pair's
    // f32 intermediates inside one task keeps them in cache instead of a second 20 MB copy.
    let views = st.tensors();
    let mut pairs: HashMap<(usize, Proj), PairNames<'_>> = HashMap::new();
    for (name, _) in &views {
        let (module, which) = parse_tensor_name(name)?;
        let key = *by_module
            .get(module)
            .ok_or_else(|| AdapterError::UnknownTarget(module.to_string()))?;
        if !targeted.contains(&key) {
            return Err(AdapterError::BadTensor {
                tensor: name.clone(),
                reason: "its module is not among target_modules/layers_to_transform".into(),
            });
        }
        let slot = pairs.entry(key).or_default();
        match which {
            Which::A => slot.0 = Some(name),
            Which::B => slot.1 = Some(name),
        }
    }
    let by_name: HashMap<&str, &safetensors::tensor::TensorView<'_>> =
        views.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let c = &base.config;
    let jobs: Vec<_> = targeted
        .into_iter()
        .map(|key| (key, pairs.remove(&key)))
        .collect();
    let built: Vec<BuiltModule<'_>> = jobs
        .into_par_iter()
        .map(|((layer, proj), pair)| {
            let module = module_name(layer, proj);
            let Some((a, b)) = pair else {
                return Err(AdapterError::BadTensor {
                    tensor: format!("{module}.lora_A/lora_B"),
                    reason: "a targeted module has no weights".into(),
                });
            };
            let (Some(a), Some(b)) = (a, b) else {
                return Err(AdapterError::BadTensor {
                    tensor: module,
                    reason: "lora_A and lora_B must both be present".into(),
                });
            };
            let (a_name, b_name) = (a, b);
            let (a, b) = (read_tensor(a, by_name[a])?, read_tensor(b, by_name[b])?);
            let digests = [(a_name, a.digest), (b_name, b.digest)];
            let (rank, alpha) = cfg.rank_alpha(&module)?;
            if rank > limits.max_rank {
                return Err(AdapterError::RankTooLarge {
                    module,
                    rank,
                    max: limits.max_rank,
                });
            }
            let (out, inp) = proj_shape(c, proj);
            expect_shape(&format!("{module}.lora_A.weight"), &a.shape, &[rank, inp])?;
            expect_shape(&format!("{module}.lora_B.weight"), &b.shape, &[out, rank])?;
            let scale = cfg.scale(rank, alpha);
            let target = LoraTarget {
                kernels: base.kernels,
                dtype: base.dtype,
                precision: base.precision,
                device: &base.device,
            };
            // A fused module's B stacks its projections' rows: each slice is one delta, all
            // sharing A.
            let mut deltas = Vec::new();
            let mut at = 0;
            for (p, rows) in parts(c, proj) {
                let slice = &b.data[at * rank..(at + rows) * rank];
                at += rows;
                let slice = match (p, c.rope_layout) {
                    (Proj::Q, RopeLayout::Interleaved) => {
                        Cow::Owned(permute_rows_for_gguf(slice, rows, rank, c.num_heads))
                    }
                    (Proj::K, RopeLayout::Interleaved) => {
                        Cow::Owned(permute_rows_for_gguf(slice, rows, rank, c.num_kv_heads))
                    }
                    _ => Cow::Borrowed(slice),
                };
                let delta =
                    LoraDelta::from_host(&a.data, &slice, (rows, rank, inp), scale, target)?;
                deltas.push(((layer, p), delta));
            }
            Ok((deltas, proj, rank, digests))
        })
        .collect::<Result<_>>()?;
    let mut deltas = HashMap::new();
    let mut targets = HashSet::new();
    let mut max_rank = 0;
    let mut digests = Vec::with_capacity(2 * built.len());
    for (built, module, rank, d) in built {
        digests.extend(d);
        deltas.extend(built);
        let name = table.iter().find(|(p, _)| *p == module).expect("known").1;
        targets.insert(name.to_string());
        max_rank = max_rank.max(rank);
    }
    let mut targets: Vec<String> = targets.into_iter().collect();
    targets.sort_by_key(|t| table.iter().position(|(_, n)| n == t));
    Ok(Built {
        weights: LoraWeights::new(deltas),
        cfg,
        targets,
        max_rank,
        checksum: tensorwise_checksum(config, weights, digests),
    })
}

/// llama.cpp's converter permutes q/k rows so its adjacent-pair RoPE matches HF's `rotate_half`;
/// an HF-layout `lora_B` (row-major `[out, r]`) must follow:
/// `B.reshape(heads, 2, out/heads/2, r).swapaxes(1, 2).reshape(out, r)`.
pub fn permute_rows_for_gguf(b: &[f32], out: usize, r: usize, heads: usize) -> Vec<f32> {
    let half = out / heads / 2;
    let mut res = vec![0f32; out * r];
    for hh in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let new = hh * 2 * half + i * 2 + j;
                let old = hh * 2 * half + j * half + i;
                res[new * r..(new + 1) * r].copy_from_slice(&b[old * r..(old + 1) * r]);
            }
        }
    }
    res
}

pub(crate) enum Which {
    A,
    B,
}

/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` → (module, A).
pub(crate) fn parse_tensor_name(name: &str) -> Result<(&str, Which)> {
    let bad = |reason: &str| AdapterError::BadTensor {
        tensor: name.to_string(),
        reason: reason.to_string(),
    };
    let rest = name
        .strip_prefix("base_model.model.")
        .ok_or_else(|| bad("expected the PEFT prefix base_model.model."))?;
    let rest = rest
        .strip_suffix(".weight")
        .ok_or_else(|| bad("expected a .weight tensor"))?;
    if let Some(m) = rest.strip_suffix(".lora_A") {
        Ok((m, Which::A))
    } else if let Some(m) = rest.strip_suffix(".lora_B") {
        Ok((m, Which::B))
    } else {
        Err(bad(
            "only lora_A/lora_B weights are supported (no embeddings, magnitudes or biases)",
        ))
    }
}

fn proj_shape(c: &ModelConfig, p: Proj) -> (usize, usize) {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    match p {
        Proj::Q => (q, h),
        Proj::K | Proj::V => (kv, h),
        Proj::O => (h, q),
        Proj::Gate | Proj::Up => (i, h),
        Proj::Down => (h, i),
        Proj::Qkv => (q + 2 * kv, h),
        Proj::GateUp => (2 * i, h),
        _ => unreachable!("not a LoRA target"),
    }
}

/// The projections a module's rows hold, in order, with their row counts: itself, or a fused
/// module's parts (the same order as the base's split, `Decoder`'s `Block::load`).
fn parts(c: &ModelConfig, p: Proj) -> Vec<(Proj, usize)> {
    let part = |p| (p, proj_shape(c, p).0);
    match p {
        Proj::Qkv => vec![part(Proj::Q), part(Proj::K), part(Proj::V)],
        Proj::GateUp => vec![part(Proj::Gate), part(Proj::Up)],
        _ => vec![part(p)],
    }
}

fn expect_shape(name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(AdapterError::ShapeMismatch {
            tensor: name.to_string(),
            got: got.to_vec(),
            want: want.to_vec(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn gguf_row_permutation_interleaves_the_two_halves_of_each_head() {
        let b: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let p = super::permute_rows_for_gguf(&b, 8, 1, 2);
        assert_eq!(p, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    /// f32 tensors are borrowed from the file where aligned and copied where not, with the
    /// same values either way.
    #[test]
    fn f32_tensors_are_borrowed_when_aligned() {
        use std::borrow::Cow;
        let want = [1.5f32, -2.0, 3.25, f32::MIN_POSITIVE];
        let le: Vec<u8> = want.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut buf = vec![0u8; le.len() + 8];
        let base = buf.as_ptr() as usize;
        let at = |aligned: bool| {
            (0..4)
                .find(|o| (base + o).is_multiple_of(4) == aligned)
                .unwrap()
        };
        for (aligned, borrowed) in [(true, true), (false, false)] {
            let o = at(aligned);
            buf[o..o + le.len()].copy_from_slice(&le);
            let got = super::f32_from_le(&buf[o..o + le.len()]);
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                borrowed && cfg!(target_endian = "little")
            );
            assert_eq!(&got[..], &want);
        }
    }
}
